//! Failover: watching partners, taking over the exports of a failed CHN,
//! planned moves (takeover and giveback) and automatic giveback.
//!
//! Map: [`monitor`] probes partners and says who looks failed and who would
//! take over; this module acts on it. A takeover is one `TakeOverExport`
//! command, which the tables accept only once the failed owner's LU lease
//! has run out and which bumps the fencing epoch, so of several CHNs trying
//! at once exactly one wins. Everything a client needs (sessions, file
//! locks, exactly-once replies) is already in the shared LU or on the LU,
//! so the taker mounts and serves: nothing is restored by hand.
//!
//! Owns the decisions to move exports; must never open or write an LU
//! except through the LU host and the mounts of `exports`.

pub mod monitor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;
use tokio::time::Instant;

use crate::chn::events::{Events, Severity};
use crate::chn::exports::Exports;
use crate::chn::lu_host::LuHost;
use crate::chn::Error;
use crate::rt::{lock, now_ms};
use crate::shared_lu::SharedLu;

/// When a CHN considers a partner failed, and what it does about it.
#[derive(Debug, Clone)]
pub struct FailoverSettings {
    pub detect: Duration,
    pub probe_interval: Duration,
    /// Automatic giveback delay; `None` when off.
    pub giveback_after: Option<Duration>,
}
pub use monitor::Monitor;

/// The reason a giveback gives: its handover is reported as one.
const GIVEBACK: &str = "automatic giveback";

/// How long a planned move waits for the calls in progress.
const DRAIN: Duration = Duration::from_secs(10);

/// This CHN's failover engine; cheap to clone.
#[derive(Clone)]
pub struct Failover {
    shared: SharedLu,
    host: LuHost,
    exports: Exports,
    settings: FailoverSettings,
    monitor: Monitor,
    events: Events,
    /// Exports whose mount failed, and when to try again.
    retry_mount: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Failover {
    pub fn new(shared: SharedLu, host: LuHost, exports: Exports, settings: FailoverSettings, events: Events) -> Self {
        let monitor = Monitor::new(shared.clone(), settings.clone());
        Failover {
            shared,
            host,
            exports,
            settings,
            monitor,
            events,
            retry_mount: Arc::default(),
        }
    }

    /// Probes partners and acts on what it sees, until dropped.
    pub async fn run(self) {
        let probes = crate::rt::AbortOnDrop(tokio::spawn(self.monitor.clone().run()));
        let mut tick = tokio::time::interval(self.settings.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let exports = self.shared.exports();
            for e in exports {
                if e.owner_chn == self.shared.name {
                    self.serve(&e).await;
                    self.maybe_give_back(&e).await;
                } else {
                    self.maybe_take_over(&e).await;
                }
            }
            if probes.0.is_finished() {
                tracing::error!("partner monitor stopped");
                return;
            }
        }
    }

    /// Mounts an export this CHN owns and has not mounted (after a
    /// takeover, a handover to it, or a restart), so that the first client
    /// call finds it ready.
    async fn serve(&self, e: &Export) {
        if self.host.holds(e.lu) && self.exports.is_mounted(&e.name) {
            return;
        }
        if lock(&self.retry_mount)
            .get(&e.name)
            .is_some_and(|t| Instant::now() < *t)
        {
            return;
        }
        let started = Instant::now();
        match self.exports.volume(e).await {
            Ok(_) => {
                lock(&self.retry_mount).remove(&e.name);
                tracing::info!(export = %e.name, took_ms = started.elapsed().as_millis() as u64, "serving export");
            }
            Err(s) => {
                lock(&self.retry_mount).insert(e.name.clone(), Instant::now() + Duration::from_millis(250));
                tracing::debug!(export = %e.name, "not mounted yet: {}", s);
            }
        }
    }

    /// Takes `e` over if its owner looks failed, this CHN is the one to
    /// take it, and the owner's LU lease has run out.
    async fn maybe_take_over(&self, e: &Export) {
        let decision = self.shared.read(|t| {
            let owner = self.monitor.health(t, &e.owner_chn);
            if !owner.failed {
                return None;
            }
            // The chosen taker goes first; should it not act (it sees things
            // differently, or failed too), any survivor tries once the
            // lease has been over for the detection time. The tables let
            // exactly one of them win.
            let chosen = self.monitor.next_taker(t, &e.owner_chn, &e.partner_chn).as_deref() == Some(&self.shared.name);
            let overdue = t
                .lu_locks
                .get(&e.lu)
                .is_some_and(|l| l.lease_expiry_ms + self.settings.detect.as_millis() as u64 <= now_ms());
            if !chosen && !overdue {
                return None;
            }
            let (cause, reason) = if owner.probe_failures >= monitor::PROBE_FAILURES {
                (
                    "probes",
                    format!("{} failed {} health probes in a row", e.owner_chn, owner.probe_failures),
                )
            } else {
                (
                    "heartbeat",
                    format!("{}'s heartbeat is {} ms old", e.owner_chn, owner.heartbeat_age_ms),
                )
            };
            let lease_left = t
                .lu_locks
                .get(&e.lu)
                .filter(|l| l.chn != self.shared.name)
                .map_or(0, |l| l.lease_expiry_ms.saturating_sub(now_ms()));
            Some((cause, reason, owner.heartbeat_age_ms, lease_left))
        });
        let Some((cause, reason, heartbeat_age_ms, lease_left)) = decision else {
            return;
        };
        // The tables refuse a takeover before the lease ends; asking early
        // only costs a Raft round.
        if lease_left > 0 {
            return;
        }
        let cmd = Kind::TakeOverExport(TakeOverExport {
            export: e.name.clone(),
            chn: self.shared.name.clone(),
            lease_ms: self.host.lease().as_millis() as u64,
            now_ms: now_ms(),
            reason: reason.clone(),
        });
        let detected = self.monitor.failing_since(&e.owner_chn);
        let asked = Instant::now();
        match self.shared.write(Command { kind: Some(cmd) }).await {
            Ok(r) => {
                // Without a failed probe, the owner went silent when its
                // heartbeat stopped.
                let detection = detected.map_or(Duration::from_millis(heartbeat_age_ms) + asked.elapsed(), |d| {
                    d.elapsed()
                });
                metrics::counter!(crate::telemetry::FAILOVERS, "cause" => cause).increment(1);
                metrics::histogram!(crate::telemetry::FAILOVER_DETECTION).record(detection.as_secs_f64());
                tracing::warn!(
                    export = %e.name,
                    from = %e.owner_chn,
                    epoch = r.assigned,
                    since_probe_failed_ms = detected.map(|d| d.elapsed().as_millis() as u64),
                    "took the export over: {reason}"
                );
                lock(&self.retry_mount).remove(&e.name);
                let committed = Instant::now();
                if let Ok(row) = self.exports.export(&e.name).await {
                    self.serve(&row).await;
                }
                let takeover = committed.elapsed();
                if self.exports.is_mounted(&e.name) {
                    metrics::histogram!(crate::telemetry::FAILOVER_TAKEOVER).record(takeover.as_secs_f64());
                }
                self.events.record(
                    "export.taken_over",
                    Severity::Warning,
                    format!(
                        "{} took export {} over from {}: {reason} (detected in {} ms, served {} ms later)",
                        self.shared.name,
                        e.name,
                        e.owner_chn,
                        detection.as_millis(),
                        takeover.as_millis()
                    ),
                    &[
                        ("export", e.name.clone()),
                        ("from", e.owner_chn.clone()),
                        ("to", self.shared.name.clone()),
                        ("cause", cause.to_string()),
                        ("detection_ms", detection.as_millis().to_string()),
                        ("takeover_ms", takeover.as_millis().to_string()),
                        ("epoch", r.assigned.to_string()),
                    ],
                );
            }
            Err(s) => tracing::debug!(export = %e.name, "takeover not (yet) possible: {}", s),
        }
    }

    /// Gives `e` back to its home CHN once that has been healthy for the
    /// configured delay (when automatic giveback is on). Only after a
    /// failover: an export the operator moved stays where it was put.
    async fn maybe_give_back(&self, e: &Export) {
        let Some(after) = self.settings.giveback_after else {
            return;
        };
        if !e.failed_over || e.home_chn.is_empty() || e.home_chn == self.shared.name {
            return;
        }
        let healthy = self.shared.read(|t| !self.monitor.health(t, &e.home_chn).failed);
        if healthy && self.monitor.healthy_for(&e.home_chn) >= after {
            match self.move_here_to(e, &e.home_chn, GIVEBACK).await {
                Ok(_) => tracing::info!(export = %e.name, to = %e.home_chn, "gave the export back"),
                Err(s) => tracing::warn!(export = %e.name, "giveback failed: {}", s),
            }
        }
    }

    /// A planned move of an export this CHN serves to `to`: drain, unmount,
    /// hand the LU lock over. Clients see UNAVAILABLE (which they retry)
    /// for the moment it takes, never an error.
    pub async fn move_here_to(&self, e: &Export, to: &str, reason: &str) -> Result<Export, Error> {
        {
            let (h, installed) = self
                .shared
                .read(|t| (self.monitor.health(t, to), t.daemons.contains_key(to)));
            if !installed {
                return Err(Error::NotFound(format!(
                    "{to} is not an installed CHN; see `nasctl chn list`"
                )));
            }
            if h.failed {
                return Err(Error::FailedPrecondition(format!(
                    "{to} does not look healthy from {} (probe ok: {}, heartbeat {} ms old); see `nasctl failover status`",
                    self.shared.name, h.probe_ok, h.heartbeat_age_ms
                )));
            }
        }
        let (name, lu, from) = (e.name.clone(), e.lu, self.shared.name.clone());
        let (to_chn, why) = (to.to_string(), reason.to_string());
        let host = self.host.clone();
        let hand = host.hand_over(lu, move |epoch| Command {
            kind: Some(Kind::HandOverExport(HandOverExport {
                export: name,
                from,
                epoch,
                to: to_chn,
                now_ms: now_ms(),
                reason: why,
            })),
        });
        let started = Instant::now();
        self.exports.unmount_for(&e.name, DRAIN, hand).await?;
        let (kind, done) = if reason == GIVEBACK {
            ("export.given_back", "gave export")
        } else {
            ("export.moved", "moved export")
        };
        self.events.record(
            kind,
            Severity::Info,
            format!(
                "{} {done} {} to {to} in {} ms: {reason}",
                self.shared.name,
                e.name,
                started.elapsed().as_millis()
            ),
            &[
                ("export", e.name.clone()),
                ("from", self.shared.name.clone()),
                ("to", to.to_string()),
                ("reason", reason.to_string()),
            ],
        );
        // The handover was applied on the leader; this CHN may lag it.
        self.shared.ensure_current().await?;
        self.exports.export(&e.name).await
    }

    /// The monitor, for the status call.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    pub fn settings(&self) -> &FailoverSettings {
        &self.settings
    }
}
