//! Events that are changes of state rather than acts: this CHN's view of
//! Raft (a leader elected here, the quorum lost and regained), and, on
//! the leader only so that each is recorded once, changes in the tables
//! (disks, LU health and jobs, CHNs joining, failing, recovering and
//! leaving).
//!
//! Both compare a small summary every quarter second with the last one.
//! A new leader starts from the tables as it finds them: what changed
//! while no leader watched is not reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nas_proto::{labels, DiskState, LuHealth, LuJob, PartnerHealth};

use super::{Events, Severity};
use crate::shared_lu::tables::Tables;
use crate::shared_lu::SharedLu;

const EVERY: Duration = Duration::from_millis(250);

/// Where found changes go: `Events::record` (a test collects them).
type Record<'a> = dyn FnMut(&str, Severity, String, &[(&str, String)]) + 'a;
/// Without a majority this long is a lost quorum (a new leader's
/// election takes less).
const QUORUM_LOST_AFTER: Duration = Duration::from_secs(2);
/// Rebuild progress reported at each of these percentages.
const MILESTONES: [u64; 3] = [25, 50, 75];
/// A CHN whose heartbeat is this recent when a leader starts watching
/// counts as one it saw up.
const RECENT: Duration = Duration::from_secs(10);

/// Watches Raft and, while this CHN leads, the tables. `quorum` says
/// whether this CHN reaches a majority now (readiness's judgment: the
/// leader confirmed a read lately), `health` which CHNs look failed (the
/// failover monitor's view).
pub async fn run(
    events: Events,
    lu: SharedLu,
    quorum: impl Fn() -> bool,
    health: impl Fn(&Tables) -> Vec<PartnerHealth>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut raft = RaftView::default();
    let mut tables: Option<(Summary, Chns)> = None;
    loop {
        tick.tick().await;
        let leading = raft.step(&events, &lu, quorum());
        if !leading {
            tables = None;
            continue;
        }
        let now = lu.read(|t| Summary::of(t, health(t)));
        match &mut tables {
            Some((before, chns)) => {
                let mut rec = |kind: &str, severity, message, fields: &[(&str, String)]| {
                    events.record(kind, severity, message, fields)
                };
                before.report(&now, &mut rec);
                chns.report(&now, &mut rec);
                *before = now;
            }
            None => {
                let chns = Chns::new(&now);
                tables = Some((now, chns));
            }
        }
    }
}

/// CHN failures as one leader saw them: a CHN is reported failed once,
/// and only if this leader saw it up (or its heartbeat was recent when
/// this leader took over); recovered only after a failure was reported.
/// CHNs still starting are neither.
struct Chns {
    seen_up: BTreeSet<String>,
    reported: BTreeSet<String>,
}

impl Chns {
    fn new(baseline: &Summary) -> Chns {
        Chns {
            seen_up: baseline.recent.clone(),
            reported: BTreeSet::new(),
        }
    }

    fn report(&mut self, now: &Summary, rec: &mut Record<'_>) {
        for chn in now.chns.keys() {
            let failed = now.failed.contains(chn);
            if failed && self.seen_up.contains(chn) && self.reported.insert(chn.clone()) {
                rec(
                    "chn.failed",
                    Severity::Error,
                    format!("{chn} stopped answering: no heartbeat or failed health probes"),
                    &[("chn", chn.clone())],
                );
            }
            if !failed {
                self.seen_up.insert(chn.clone());
                if self.reported.remove(chn) {
                    rec(
                        "chn.recovered",
                        Severity::Info,
                        format!("{chn} answers again"),
                        &[("chn", chn.clone())],
                    );
                }
            }
        }
    }
}

#[derive(Default)]
struct RaftView {
    leader: Option<u64>,
    /// Whether this CHN has reached a majority since it started: a CHN
    /// not yet in a cluster has none to lose.
    had_quorum: bool,
    /// Since when this CHN has lacked a quorum, and whether that was
    /// reported.
    without_quorum: Option<(tokio::time::Instant, bool)>,
}

impl RaftView {
    /// Records leader and quorum changes; returns whether this CHN leads
    /// with a quorum.
    fn step(&mut self, events: &Events, lu: &SharedLu, quorum: bool) -> bool {
        let m = lu.raft.metrics().borrow().clone();
        let me = lu.id;
        let leading = m.current_leader == Some(me);
        if leading && self.leader != Some(me) {
            let before = self
                .leader
                .and_then(|id| m.membership_config.membership().get_node(&id).map(|n| n.name.clone()));
            events.record(
                "leader.elected",
                Severity::Info,
                format!(
                    "{} is the leader in term {}{}",
                    lu.name,
                    m.current_term,
                    before.as_ref().map_or(String::new(), |b| format!(" (was {b})"))
                ),
                &[
                    ("chn", lu.name.clone()),
                    ("term", m.current_term.to_string()),
                    ("previous", before.unwrap_or_default()),
                ],
            );
        }
        if m.current_leader.is_some() {
            self.leader = m.current_leader;
        }
        self.had_quorum |= quorum;
        if !self.had_quorum {
            return false;
        }
        match (&mut self.without_quorum, quorum) {
            (None, false) => self.without_quorum = Some((tokio::time::Instant::now(), false)),
            (Some((since, reported)), false) if !*reported && since.elapsed() >= QUORUM_LOST_AFTER => {
                *reported = true;
                events.record(
                    "quorum.lost",
                    Severity::Error,
                    format!(
                        "{} cannot reach a majority of the CHNs: the shared LU takes no changes here",
                        lu.name
                    ),
                    &[("chn", lu.name.clone()), ("term", m.current_term.to_string())],
                );
            }
            (Some((since, reported)), true) => {
                if *reported {
                    events.record(
                        "quorum.regained",
                        Severity::Info,
                        format!(
                            "{} reaches a majority again, after {:.1} s without",
                            lu.name,
                            since.elapsed().as_secs_f64()
                        ),
                        &[
                            ("chn", lu.name.clone()),
                            ("term", m.current_term.to_string()),
                            ("outage_ms", since.elapsed().as_millis().to_string()),
                        ],
                    );
                }
                self.without_quorum = None;
            }
            _ => {}
        }
        leading && quorum
    }
}

/// What the table watch compares.
#[derive(PartialEq)]
struct Summary {
    disks: BTreeMap<u32, (i32, u32)>,
    lus: BTreeMap<u32, (i32, Option<LuJob>)>,
    chns: BTreeMap<String, i32>,
    failed: BTreeSet<String>,
    /// CHNs whose heartbeat is recent, failed or not.
    recent: BTreeSet<String>,
}

impl Summary {
    fn of(t: &Tables, health: Vec<PartnerHealth>) -> Summary {
        Summary {
            disks: t.disks.values().map(|d| (d.number, (d.state, d.raid_group))).collect(),
            lus: t
                .lus
                .values()
                .map(|l| {
                    let job = l.job.clone().map(|j| LuJob {
                        // Only what the comparisons read.
                        updated_ms: 0,
                        bytes_per_sec: 0,
                        eta_secs: 0,
                        ..j
                    });
                    (l.number, (l.health, job))
                })
                .collect(),
            chns: t.daemons.values().map(|d| (d.chn.clone(), d.state)).collect(),
            failed: health.iter().filter(|h| h.failed).map(|h| h.chn.clone()).collect(),
            recent: health
                .iter()
                .filter(|h| h.heartbeat_age_ms < RECENT.as_millis() as u64)
                .map(|h| h.chn.clone())
                .collect(),
        }
    }

    fn report(&self, now: &Summary, rec: &mut Record<'_>) {
        if self == now {
            return;
        }
        self.disks_changed(now, rec);
        for (lu, (health, job)) in &now.lus {
            // An LU created since the last look was NEW before (a disk of
            // it may have failed within the same quarter second).
            let (was, was_job) = self
                .lus
                .get(lu)
                .cloned()
                .unwrap_or((LuHealth::Unspecified as i32, None));
            // A rebuild's end comes before the health it restores.
            job_changed(*lu, was_job.as_ref(), job.as_ref(), rec);
            lu_changed(*lu, was, *health, rec);
        }
        self.chns_changed(now, rec);
    }

    fn disks_changed(&self, now: &Summary, rec: &mut Record<'_>) {
        for (disk, (state, lu)) in &now.disks {
            // A disk defined since the last look was not failed before.
            let (was, was_lu) = self
                .disks
                .get(disk)
                .copied()
                .unwrap_or((DiskState::DiskNotUsed as i32, *lu));
            let (was, state) = (labels::disk_state(was), labels::disk_state(*state));
            if was != "FAILED" && state == "FAILED" {
                let on = if *lu > 0 {
                    format!(" (member of LU {lu})")
                } else {
                    String::new()
                };
                rec(
                    "disk.failed",
                    Severity::Warning,
                    format!("disk {disk} failed{on}"),
                    &[("disk", disk.to_string()), ("lu", lu.to_string())],
                );
            }
            // A replacement takes the failed disk out of its LU and puts
            // a free one in.
            if state == "FAILED" && was_lu > 0 && *lu == 0 {
                let by = now
                    .disks
                    .iter()
                    .find(|(d, (_, l))| *l == was_lu && self.disks.get(*d).is_some_and(|(_, before)| *before == 0))
                    .map(|(d, _)| *d);
                rec(
                    "disk.replaced",
                    Severity::Info,
                    format!(
                        "failed disk {disk} of LU {was_lu} was replaced{}",
                        by.map_or(String::new(), |d| format!(" by disk {d}"))
                    ),
                    &[
                        ("disk", disk.to_string()),
                        ("lu", was_lu.to_string()),
                        ("by", by.map_or(String::new(), |d| d.to_string())),
                    ],
                );
            }
        }
    }

    fn chns_changed(&self, now: &Summary, rec: &mut Record<'_>) {
        for (chn, state) in &now.chns {
            let state = labels::chn_state(*state);
            let was = self.chns.get(chn).map(|s| labels::chn_state(*s));
            if state == "INSTALLED" && was != Some("INSTALLED") {
                rec(
                    "chn.joined",
                    Severity::Info,
                    format!("{chn} joined the cluster"),
                    &[("chn", chn.clone())],
                );
            }
            if state == "REMOVED" && was.is_some_and(|w| w != "REMOVED") {
                rec(
                    "chn.left",
                    Severity::Info,
                    format!("{chn} was removed from the cluster"),
                    &[("chn", chn.clone())],
                );
            }
        }
        for chn in self.chns.keys().filter(|c| !now.chns.contains_key(*c)) {
            rec(
                "chn.left",
                Severity::Info,
                format!("{chn} was removed from the cluster"),
                &[("chn", chn.clone())],
            );
        }
    }
}

fn lu_changed(lu: u32, was: i32, now: i32, rec: &mut Record<'_>) {
    if was == now {
        return;
    }
    let (was, now) = (labels::lu_health(was), labels::lu_health(now));
    let fields = [
        ("lu", lu.to_string()),
        ("from", was.to_string()),
        ("to", now.to_string()),
    ];
    let (kind, severity, message) = match (was, now) {
        (_, "DEGRADED") => (
            "lu.degraded",
            Severity::Warning,
            format!("LU {lu} is DEGRADED: a member failed; data is served from the others"),
        ),
        (_, "FAILED") => (
            "lu.failed",
            Severity::Error,
            format!("LU {lu} FAILED: more members failed than its RAID covers"),
        ),
        (_, "REBUILDING") => (
            "lu.rebuild_started",
            Severity::Info,
            format!("LU {lu} is rebuilding onto its new member"),
        ),
        ("NEW", "OPTIMAL") => return,
        (_, "OPTIMAL") => (
            "lu.optimal",
            Severity::Info,
            format!("LU {lu} is OPTIMAL again (was {was})"),
        ),
        _ => ("lu.health", Severity::Info, format!("LU {lu} is {now} (was {was})")),
    };
    rec(kind, severity, message, &fields);
}

fn job_changed(lu: u32, was: Option<&LuJob>, now: Option<&LuJob>, rec: &mut Record<'_>) {
    let Some(j) = now else { return };
    let pct = |j: &LuJob| j.done_bytes * 100 / j.total_bytes.max(1);
    // A job is new when there was none, or the last one had finished.
    let same_job = was.filter(|w| w.kind == j.kind && !w.finished);
    if j.finished {
        if same_job.is_none() && was.is_some_and(|w| w.finished) {
            return;
        }
        let (kind, severity) = match j.kind.as_str() {
            "scrub" if j.failed => ("lu.scrub_failed", Severity::Error),
            "scrub" if j.lost > 0 => ("lu.scrub_found_loss", Severity::Error),
            "scrub" if j.damaged > 0 => ("lu.scrub_found_damage", Severity::Warning),
            "scrub" => ("lu.scrub_finished", Severity::Info),
            _ if j.failed => ("lu.rebuild_failed", Severity::Error),
            _ => ("lu.rebuild_finished", Severity::Info),
        };
        rec(
            kind,
            severity,
            format!("LU {lu}: {} finished on {}: {}", j.kind, j.chn, j.result),
            &[
                ("lu", lu.to_string()),
                ("chn", j.chn.clone()),
                ("damaged", j.damaged.to_string()),
                ("lost", j.lost.to_string()),
            ],
        );
        return;
    }
    if j.kind != "rebuild" {
        return;
    }
    let before = same_job.map_or(0, pct);
    if let Some(m) = MILESTONES.iter().rev().find(|m| before < **m && pct(j) >= **m) {
        rec(
            "lu.rebuild_progress",
            Severity::Info,
            format!("LU {lu}: rebuild {m}% done on {}", j.chn),
            &[
                ("lu", lu.to_string()),
                ("percent", m.to_string()),
                ("chn", j.chn.clone()),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(disks: &[(u32, DiskState, u32)], lus: &[(u32, LuHealth)]) -> Summary {
        Summary {
            disks: disks.iter().map(|(d, s, lu)| (*d, (*s as i32, *lu))).collect(),
            lus: lus.iter().map(|(l, h)| (*l, (*h as i32, None))).collect(),
            chns: BTreeMap::new(),
            failed: BTreeSet::new(),
            recent: BTreeSet::new(),
        }
    }

    fn kinds(before: &Summary, now: &Summary) -> Vec<String> {
        let mut found = Vec::new();
        before.report(now, &mut |kind: &str, _, _, _: &[(&str, String)]| {
            found.push(kind.to_string())
        });
        found
    }

    #[test]
    fn a_disk_that_fails_within_a_quarter_second_of_its_lu_is_still_reported() {
        let empty = summary(&[], &[]);
        let degraded = summary(
            &[
                (1, DiskState::DiskUsed, 1),
                (2, DiskState::DiskFailed, 1),
                (3, DiskState::DiskUsed, 1),
            ],
            &[(1, LuHealth::LuDegraded)],
        );
        assert_eq!(kinds(&empty, &degraded), ["disk.failed", "lu.degraded"]);
        // A new healthy LU is no event.
        let healthy = summary(&[(1, DiskState::DiskUsed, 1)], &[(1, LuHealth::LuOptimal)]);
        assert!(kinds(&empty, &healthy).is_empty());
    }

    #[test]
    fn a_replacement_names_the_failed_disk_and_the_one_that_took_its_place() {
        let failed = summary(
            &[(2, DiskState::DiskFailed, 1), (4, DiskState::DiskNotUsed, 0)],
            &[(1, LuHealth::LuDegraded)],
        );
        let replaced = summary(
            &[(2, DiskState::DiskFailed, 0), (4, DiskState::DiskUsed, 1)],
            &[(1, LuHealth::LuRebuilding)],
        );
        let mut found = Vec::new();
        failed.report(&replaced, &mut |kind: &str, _, _, fields: &[(&str, String)]| {
            let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            found.push((kind.to_string(), fields))
        });
        assert_eq!(found[0].0, "disk.replaced");
        assert!(found[0].1.contains(&("by".to_string(), "4".to_string())), "{found:?}");
        assert_eq!(found[1].0, "lu.rebuild_started");
        assert_eq!(kinds(&replaced, &replaced), Vec::<String>::new(), "no change, no event");
    }
}
