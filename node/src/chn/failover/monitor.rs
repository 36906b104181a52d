//! Partner monitoring: a direct gRPC health probe of every other installed
//! CHN, and the age of its heartbeat in the shared LU.
//!
//! Owns the probe tasks and what they learned. It decides only whether a
//! CHN *looks* failed from here; it must never act on that (taking an
//! export over is the failover loop's job, and the LU lock lease, not this
//! view, is what makes a takeover safe).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::{ChnState, PartnerHealth};
use tokio::time::Instant;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use super::FailoverSettings;
use crate::rt::AbortOnDrop;
use crate::rt::{lock, now_ms};
use crate::shared_lu::tables::Tables;
use crate::shared_lu::SharedLu;

/// Probes that must fail in a row before a CHN counts as failed.
pub const PROBE_FAILURES: u32 = 3;

#[derive(Debug, Clone)]
struct Probe {
    ok: bool,
    failures: u32,
    /// Since when the probes have answered without a break.
    healthy_since: Option<Instant>,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
}

/// What this CHN knows of its partners; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    shared: SharedLu,
    settings: FailoverSettings,
    probes: Arc<Mutex<HashMap<String, Probe>>>,
}

impl Monitor {
    pub fn new(shared: SharedLu, settings: FailoverSettings) -> Self {
        Monitor {
            shared,
            settings,
            probes: Arc::default(),
        }
    }

    /// Keeps one probe task per installed partner until dropped.
    pub async fn run(self) {
        // Dropping a task's guard (the CHN left, or this loop stopped) stops it.
        let mut tasks: HashMap<String, (String, AbortOnDrop)> = HashMap::new();
        let mut tick = tokio::time::interval(self.settings.probe_interval);
        loop {
            tick.tick().await;
            let partners: HashMap<String, String> = {
                self.shared.read(|t| {
                    t.daemons
                        .values()
                        .filter(|d| d.chn != self.shared.name && d.state == ChnState::ChnInstalled as i32)
                        .map(|d| (d.chn.clone(), d.address.clone()))
                        .collect()
                })
            };
            tasks.retain(|chn, (addr, _)| {
                let keep = partners.get(chn) == Some(addr);
                if !keep {
                    lock(&self.probes).remove(chn);
                }
                keep
            });
            for (chn, addr) in partners {
                if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(chn.clone()) {
                    let task = tokio::spawn(self.clone().probe_loop(chn, addr.clone()));
                    slot.insert((addr, AbortOnDrop(task)));
                }
            }
        }
    }

    async fn probe_loop(self, chn: String, addr: String) {
        let every = self.settings.probe_interval;
        // A stopped process accepts connections and never answers: the
        // timeout, not an error, is what tells.
        let timeout = (every * 2).max(Duration::from_millis(100));
        let Ok(ep) = self.shared.peers.endpoint(&addr) else {
            tracing::warn!(%chn, %addr, "cannot probe: bad address");
            return;
        };
        let mut client = HealthClient::new(ep.connect_timeout(timeout).connect_lazy());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let asked = client.check(HealthCheckRequest { service: String::new() });
            let ok = matches!(
                tokio::time::timeout(timeout, asked).await,
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
            );
            let now = Instant::now();
            let mut probes = lock(&self.probes);
            let p = probes.entry(chn.clone()).or_insert_with(|| Probe {
                ok,
                failures: 0,
                healthy_since: None,
                failing_since: None,
            });
            p.ok = ok;
            if ok {
                p.failures = 0;
                p.failing_since = None;
                p.healthy_since.get_or_insert(now);
            } else {
                p.failures = p.failures.saturating_add(1);
                p.failing_since.get_or_insert(now);
                p.healthy_since = None;
            }
        }
    }

    /// How `chn` looks from here, given the tables.
    pub fn health(&self, t: &Tables, chn: &str) -> PartnerHealth {
        let now = now_ms();
        let d = t.daemons.get(chn);
        let age = d.map_or(u64::MAX, |d| now.saturating_sub(d.heartbeat_ms));
        let mut h = PartnerHealth {
            chn: chn.to_string(),
            address: d.map(|d| d.address.clone()).unwrap_or_default(),
            heartbeat_age_ms: age,
            load: d.map_or(0, |d| d.load),
            probe_ok: true,
            ..PartnerHealth::default()
        };
        if chn == self.shared.name {
            return h;
        }
        match lock(&self.probes).get(chn) {
            Some(p) => {
                h.probe_ok = p.ok;
                h.probe_failures = p.failures;
            }
            None => h.probe_ok = false,
        }
        h.failed = d.is_none_or(|d| d.state != ChnState::ChnInstalled as i32)
            || h.probe_failures >= PROBE_FAILURES
            || age > self.settings.detect.as_millis() as u64;
        h
    }

    /// When the current run of failed probes of `chn` began.
    pub fn failing_since(&self, chn: &str) -> Option<Instant> {
        lock(&self.probes).get(chn).and_then(|p| p.failing_since)
    }

    /// How long `chn`'s probes have answered without a break.
    pub fn healthy_for(&self, chn: &str) -> Duration {
        lock(&self.probes)
            .get(chn)
            .and_then(|p| p.healthy_since)
            .map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Every installed CHN, as it looks from here.
    pub fn all(&self, t: &Tables) -> Vec<PartnerHealth> {
        t.daemons.keys().map(|c| self.health(t, c)).collect()
    }

    /// The CHN that takes `owner`'s exports over if it fails: the partner
    /// when healthy, otherwise the least loaded healthy survivor (ties by
    /// name, so that every CHN picks the same one from the same view).
    pub fn next_taker(&self, t: &Tables, owner: &str, partner: &str) -> Option<String> {
        // Probes only: while the owner's failure stalls the shared LU (it
        // led Raft, say) every heartbeat ages alike, and judging by them
        // would pass over a partner that is fine.
        let healthy = |chn: &str| {
            chn != owner
                && t.daemons
                    .get(chn)
                    .is_some_and(|d| d.state == ChnState::ChnInstalled as i32)
                && (chn == self.shared.name || lock(&self.probes).get(chn).is_some_and(|p| p.failures < PROBE_FAILURES))
        };
        if !partner.is_empty() && t.daemons.contains_key(partner) && healthy(partner) {
            return Some(partner.to_string());
        }
        t.daemons
            .values()
            .filter(|d| healthy(&d.chn))
            // Whole load units: finer figures change with every heartbeat,
            // and CHNs reading them at different moments would disagree.
            .min_by_key(|d| (d.load / 100, d.chn.clone()))
            .map(|d| d.chn.clone())
    }
}
