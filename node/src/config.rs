//! Configuration of one `nasd`: command-line flags, `NASD_*` environment
//! variables and an optional TOML file, in that order of precedence.
//!
//! Owns parsing and validation only; it must never start anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

use crate::chn::failover::FailoverSettings;
use crate::shared_lu::RaftSettings;

/// Every setting; flags and environment variables override the file.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "nasd",
    version,
    about = "NAS head (CHN) daemon of the replicated NAS cluster",
    long_about = "Runs one CHN: the Admin and Raft gRPC services and the standard gRPC health service on one \
                  port, and this CHN's replica of the shared LU (Raft log and tables in DATA).\n\n\
                  A new nasd starts empty; `nasctl chn install NAME --addr ADDR` bootstraps the first CHN \
                  and joins the others. Settings come from flags, then NASD_* environment variables, then \
                  the TOML file given with --config (same names with underscores, e.g. snapshot_threshold = 5000).",
    after_help = "Example:\n  nasd --name CHN1 --listen 127.0.0.1:7001 --data /var/lib/nas/chn1 --array /srv/nas/array"
)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML file with any of the settings below.
    #[arg(long, env = "NASD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Name of this CHN, e.g. CHN1. Must match the name given to `nasctl chn install`.
    #[arg(long, env = "NASD_NAME")]
    pub name: Option<String>,
    /// Raft node id; defaults to the number at the end of the name (CHN5 -> 5).
    #[arg(long, env = "NASD_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address to listen on for gRPC (Admin, Raft, health).
    #[arg(long, env = "NASD_LISTEN")]
    pub listen: Option<String>,
    /// Address other CHNs and clients use to reach this one; defaults to --listen.
    #[arg(long, env = "NASD_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory for this CHN's replica of the shared LU (Raft log, tables, snapshots).
    #[arg(long, env = "NASD_DATA")]
    pub data: Option<PathBuf>,
    /// The disk-array directory shared by every CHN (physical disk files).
    #[arg(long, env = "NASD_ARRAY")]
    pub array: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "NASD_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Lower bound of the Raft election timeout in milliseconds [default: 150].
    #[arg(long, env = "NASD_ELECTION_MIN_MS")]
    pub election_min_ms: Option<u64>,
    /// Upper bound of the Raft election timeout in milliseconds [default: 300].
    #[arg(long, env = "NASD_ELECTION_MAX_MS")]
    pub election_max_ms: Option<u64>,
    /// Log entries after which a snapshot is built and the log compacted [default: 5000].
    #[arg(long, env = "NASD_SNAPSHOT_THRESHOLD")]
    pub snapshot_threshold: Option<u64>,
    /// Log entries kept behind a snapshot for slightly lagging CHNs [default: 500].
    #[arg(long, env = "NASD_KEEP_LOGS")]
    pub keep_logs: Option<u64>,
    /// How long a write or linearizable read waits for a quorum, in milliseconds [default: 5000].
    #[arg(long, env = "NASD_QUORUM_TIMEOUT_MS")]
    pub quorum_timeout_ms: Option<u64>,
    /// Interval of this CHN's daemon information (heartbeat) writes, in milliseconds [default: 250].
    #[arg(long, env = "NASD_DAEMON_INTERVAL_MS")]
    pub daemon_interval_ms: Option<u64>,
    /// Lease of the LU locks this CHN holds, in milliseconds. It is renewed
    /// every seventh of it; the holder stops writing a fifth of it before it
    /// ends, and a taker waits it out, so it bounds failover time from
    /// below [default: 500].
    #[arg(long, env = "NASD_LU_LEASE_MS")]
    pub lu_lease_ms: Option<u64>,
    /// Most LU data a rebuild reconstructs per second, in MB/s, to leave
    /// bandwidth to clients; 0 means as fast as the disks go [default: 0].
    #[arg(long, env = "NASD_REBUILD_MAX_MB_S")]
    pub rebuild_max_mb_s: Option<u64>,
    /// Scrub every LU this CHN holds this often, in seconds: every block
    /// checked against its checksum and damaged copies rewritten from good
    /// ones; 0 turns scheduled scrubs off [default: 604800, a week].
    #[arg(long, env = "NASD_SCRUB_EVERY_S")]
    pub scrub_every_s: Option<u64>,
    /// Most LU data a scrub (scheduled or `nasctl lu scrub`) checks per
    /// second, in MB/s; 0 means as fast as the disks go [default: 0].
    #[arg(long, env = "NASD_SCRUB_MAX_MB_S")]
    pub scrub_max_mb_s: Option<u64>,
    /// A partner CHN counts as failed once its heartbeat in the shared LU is
    /// this old, in milliseconds (or its direct health probe failed three
    /// times in a row) [default: 1000].
    #[arg(long, env = "NASD_FAILOVER_DETECT_MS")]
    pub failover_detect_ms: Option<u64>,
    /// Interval of the direct health probes of partner CHNs, in
    /// milliseconds [default: 100].
    #[arg(long, env = "NASD_PROBE_INTERVAL_MS")]
    pub probe_interval_ms: Option<u64>,
    /// Give an export back to its home CHN automatically once the home CHN
    /// has been healthy this many seconds; 0 turns automatic giveback off
    /// [default: 0].
    #[arg(long, env = "NASD_GIVEBACK_AFTER_S")]
    pub giveback_after_s: Option<u64>,
    /// A client session, and the file locks it holds, end this long after
    /// the client was last heard of, in milliseconds [default: 30000].
    #[arg(long, env = "NASD_SESSION_LEASE_MS")]
    pub session_lease_ms: Option<u64>,
    /// A client session ends this many seconds after it was opened, however
    /// active [default: 86400].
    #[arg(long, env = "NASD_SESSION_TTL_S")]
    pub session_ttl_s: Option<u64>,
    /// Threads that run the gRPC services and Raft [default: half the CPU
    /// cores, at least 1]. File system and disk work runs on a separate
    /// pool that this does not limit. Raft's commit path is a chain of
    /// short tasks, and every extra thread adds cross-thread wake-ups to
    /// it, so on few cores fewer threads commit more.
    #[arg(long, env = "NASD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line, fields included) for log shippers [default: text].
    #[arg(long, env = "NASD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Audit records the shared LU keeps (the oldest go first) [default: 10000].
    #[arg(long, env = "NASD_AUDIT_KEEP")]
    pub audit_keep: Option<u64>,
    /// Days an audit record is kept at most [default: 90].
    #[arg(long, env = "NASD_AUDIT_MAX_AGE_DAYS")]
    pub audit_max_age_days: Option<u64>,
    /// The leader writes a copy of the shared LU to the backup location on
    /// the disk array (ARRAY/shared-lu-backup) after every snapshot and,
    /// when anything changed, at least this often, in seconds; 0 leaves
    /// only the copies after snapshots and `nasctl shared-lu backup`
    /// [default: 60].
    #[arg(long, env = "NASD_SHARED_LU_BACKUP_EVERY_S")]
    pub shared_lu_backup_every_s: Option<u64>,
    /// This CHN's certificate (PEM), signed by the cluster CA and naming
    /// `nas-chn` and `NAME.nas-chn` (lowercase); `nasctl cluster certs`
    /// makes one. TLS is on unless --insecure is given.
    #[arg(long, env = "NASD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; keep it mode 0600).
    #[arg(long, env = "NASD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): other CHNs must present a certificate it
    /// signed to use the Raft service.
    #[arg(long, env = "NASD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Serve plaintext HTTP/2 without TLS: passwords, tokens and data
    /// cross the network readable, and any caller can reach the Raft
    /// service. For debugging only.
    #[arg(long, env = "NASD_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// Address of this CHN's web port: Prometheus metrics at /metrics and
    /// the status page at /, over HTTPS with the CHN's certificate (HTTP
    /// with --insecure), for users with the viewer role or above. Off
    /// unless given, e.g. 127.0.0.1:9101.
    #[arg(long, env = "NASD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Events the shared LU keeps (the oldest go first) [default: 5000].
    #[arg(long, env = "NASD_EVENT_KEEP")]
    pub event_keep: Option<u64>,
    /// Days an event is kept at most [default: 30].
    #[arg(long, env = "NASD_EVENT_MAX_AGE_DAYS")]
    pub event_max_age_days: Option<u64>,
    /// Program run for every event this CHN records, with the event as one
    /// JSON object on its stdin (like CTDB's notify script). It runs
    /// after the change, never delays it, and is killed after
    /// --event-hook-timeout-ms.
    #[arg(long, env = "NASD_EVENT_HOOK")]
    pub event_hook: Option<PathBuf>,
    /// How long the event hook may run, in milliseconds [default: 5000].
    #[arg(long, env = "NASD_EVENT_HOOK_TIMEOUT_MS")]
    pub event_hook_timeout_ms: Option<u64>,
    /// URL to POST every event this CHN records to, as JSON (http:// or
    /// https://); retried with backoff from a bounded queue.
    #[arg(long, env = "NASD_EVENT_WEBHOOK")]
    pub event_webhook: Option<String>,
}

/// How this CHN secures its port.
#[derive(Debug, Clone)]
pub enum Tls {
    /// Plaintext, by explicit choice.
    Insecure,
    /// PEM files: this CHN's certificate and key, and the cluster CA.
    Files { cert: PathBuf, key: PathBuf, ca: PathBuf },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub node_id: u64,
    pub listen: String,
    pub advertise: String,
    pub data: PathBuf,
    pub array: Option<PathBuf>,
    pub raft: RaftSettings,
    pub daemon_interval: Duration,
    pub lu_lease: Duration,
    /// Rebuild and scrub settings.
    pub maintenance: crate::chn::lu_host::Maintenance,
    pub session_lease: Duration,
    pub session_ttl: Duration,
    pub failover: FailoverSettings,
    /// Threads of the async runtime.
    pub worker_threads: usize,
    pub log_format: LogFormat,
    pub tls: Tls,
    pub audit: crate::chn::audit::Retention,
    /// How often the leader copies a changed shared LU to its backup.
    pub shared_lu_backup_every: Option<Duration>,
    /// Where metrics and the status page are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub events: crate::chn::events::EventSettings,
}

fn events_settings(s: &Settings) -> anyhow::Result<crate::chn::events::EventSettings> {
    let keep = s.event_keep.unwrap_or(5000);
    if !(10..=1_000_000).contains(&keep) {
        bail!("--event-keep must be between 10 and 1000000 events");
    }
    let days = s.event_max_age_days.unwrap_or(30);
    if days == 0 {
        bail!("--event-max-age-days must be above 0");
    }
    if let Some(hook) = &s.event_hook {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(hook).with_context(|| format!("--event-hook {}: no such program", hook.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            bail!(
                "--event-hook {} is not an executable file (chmod +x it)",
                hook.display()
            );
        }
    }
    if let Some(url) = &s.event_webhook {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--event-webhook {url} must be an http:// or https:// URL");
        }
    }
    Ok(crate::chn::events::EventSettings {
        keep,
        max_age: Duration::from_secs(days * 86_400),
        hook: s.event_hook.clone(),
        hook_timeout: Duration::from_millis(s.event_hook_timeout_ms.unwrap_or(5000).max(1)),
        webhook: s.event_webhook.clone(),
    })
}

/// A rate in MB/s as bytes per second; 0 or none: no limit.
fn mb_per_s(mb: Option<u64>) -> Option<u64> {
    mb.filter(|&m| m > 0).map(|m| m.saturating_mul(1_000_000))
}

/// The node id a CHN name implies: its trailing digits.
pub fn node_id_from_name(name: &str) -> Option<u64> {
    let digits: String = name.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    let digits: String = digits.chars().rev().collect();
    digits.parse().ok().filter(|n| *n > 0)
}

impl Settings {
    fn merge(self, file: Settings) -> Settings {
        Settings {
            config: self.config,
            name: self.name.or(file.name),
            node_id: self.node_id.or(file.node_id),
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            data: self.data.or(file.data),
            array: self.array.or(file.array),
            raft_heartbeat_ms: self.raft_heartbeat_ms.or(file.raft_heartbeat_ms),
            election_min_ms: self.election_min_ms.or(file.election_min_ms),
            election_max_ms: self.election_max_ms.or(file.election_max_ms),
            snapshot_threshold: self.snapshot_threshold.or(file.snapshot_threshold),
            keep_logs: self.keep_logs.or(file.keep_logs),
            quorum_timeout_ms: self.quorum_timeout_ms.or(file.quorum_timeout_ms),
            daemon_interval_ms: self.daemon_interval_ms.or(file.daemon_interval_ms),
            lu_lease_ms: self.lu_lease_ms.or(file.lu_lease_ms),
            rebuild_max_mb_s: self.rebuild_max_mb_s.or(file.rebuild_max_mb_s),
            scrub_every_s: self.scrub_every_s.or(file.scrub_every_s),
            scrub_max_mb_s: self.scrub_max_mb_s.or(file.scrub_max_mb_s),
            session_lease_ms: self.session_lease_ms.or(file.session_lease_ms),
            failover_detect_ms: self.failover_detect_ms.or(file.failover_detect_ms),
            probe_interval_ms: self.probe_interval_ms.or(file.probe_interval_ms),
            giveback_after_s: self.giveback_after_s.or(file.giveback_after_s),
            session_ttl_s: self.session_ttl_s.or(file.session_ttl_s),
            worker_threads: self.worker_threads.or(file.worker_threads),
            log_format: self.log_format.or(file.log_format),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_ca: self.tls_ca.or(file.tls_ca),
            insecure: self.insecure.or(file.insecure),
            audit_keep: self.audit_keep.or(file.audit_keep),
            audit_max_age_days: self.audit_max_age_days.or(file.audit_max_age_days),
            shared_lu_backup_every_s: self.shared_lu_backup_every_s.or(file.shared_lu_backup_every_s),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            event_keep: self.event_keep.or(file.event_keep),
            event_max_age_days: self.event_max_age_days.or(file.event_max_age_days),
            event_hook: self.event_hook.or(file.event_hook),
            event_hook_timeout_ms: self.event_hook_timeout_ms.or(file.event_hook_timeout_ms),
            event_webhook: self.event_webhook.or(file.event_webhook),
        }
    }

    /// Reads the file named by `--config`, if any, and validates the result.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let merged = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let file: Settings =
                    toml::from_str(&text).with_context(|| format!("invalid TOML in {}", path.display()))?;
                self.merge(file)
            }
            None => self,
        };
        let events = events_settings(&merged)?;
        let Some(name) = merged.name else {
            bail!("--name is required (for example --name CHN1)")
        };
        let node_id = match merged.node_id.or_else(|| node_id_from_name(&name)) {
            Some(id) if id > 0 => id,
            _ => bail!("cannot derive a node id from the name {name:?}; give --node-id N (N > 0)"),
        };
        let listen = merged.listen.unwrap_or_else(|| "127.0.0.1:7001".into());
        let advertise = merged.advertise.unwrap_or_else(|| listen.clone());
        if advertise.ends_with(":0") {
            bail!("--advertise {advertise} has port 0; other CHNs need a fixed port (for example --listen 127.0.0.1:7001)");
        }
        if advertise.starts_with("0.0.0.0:") || advertise.starts_with("[::]:") {
            bail!("--listen {listen} is a wildcard address; give --advertise HOST:PORT that other CHNs can reach");
        }
        let Some(data) = merged.data else {
            bail!("--data DIR is required (this CHN's shared-LU replica)")
        };
        let election_min_ms = merged.election_min_ms.unwrap_or(150);
        let election_max_ms = merged.election_max_ms.unwrap_or(300);
        let heartbeat_ms = merged.raft_heartbeat_ms.unwrap_or(50);
        if heartbeat_ms == 0 || heartbeat_ms >= election_min_ms || election_min_ms >= election_max_ms {
            bail!("need 0 < raft heartbeat ({heartbeat_ms} ms) < election min ({election_min_ms}) < election max ({election_max_ms})");
        }
        let daemon_interval_ms = merged.daemon_interval_ms.unwrap_or(250);
        if daemon_interval_ms == 0 {
            bail!("--daemon-interval-ms must be above 0");
        }
        let lu_lease_ms = merged.lu_lease_ms.unwrap_or(500);
        if lu_lease_ms < 300 {
            bail!("--lu-lease-ms must be at least 300 (it is renewed every seventh of it)");
        }
        let detect_ms = merged.failover_detect_ms.unwrap_or(1000);
        let probe_ms = merged.probe_interval_ms.unwrap_or(100);
        if probe_ms == 0 || detect_ms < probe_ms {
            bail!("need 0 < --probe-interval-ms ({probe_ms}) <= --failover-detect-ms ({detect_ms})");
        }
        let session_lease_ms = merged.session_lease_ms.unwrap_or(30_000);
        if session_lease_ms < 1000 {
            bail!("--session-lease-ms must be at least 1000 (clients renew every third of it)");
        }
        let session_ttl_s = merged.session_ttl_s.unwrap_or(86_400);
        if session_ttl_s == 0 {
            bail!("--session-ttl-s must be above 0");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let worker_threads = merged.worker_threads.unwrap_or((cores / 2).max(1));
        if !(1..=1024).contains(&worker_threads) {
            bail!("--worker-threads must be between 1 and 1024 (this machine has {cores} cores)");
        }
        let tls = match (
            merged.insecure.unwrap_or(false),
            merged.tls_cert,
            merged.tls_key,
            merged.tls_ca,
        ) {
            (true, None, None, None) => Tls::Insecure,
            (true, ..) => bail!("--insecure and --tls-* contradict each other; give one or the other"),
            (false, Some(cert), Some(key), Some(ca)) => Tls::Files { cert, key, ca },
            (false, None, None, None) => bail!(
                "TLS is on by default: give --tls-cert, --tls-key and --tls-ca (or NASD_TLS_*; \
                 `nasctl cluster certs` makes them), or --insecure to serve plaintext for debugging"
            ),
            (false, cert, key, ca) => {
                let missing: Vec<&str> = [
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                    ("--tls-ca", ca.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect();
                bail!("TLS needs all three files; missing {}", missing.join(", "))
            }
        };
        let audit_keep = merged.audit_keep.unwrap_or(10_000);
        if !(100..=1_000_000).contains(&audit_keep) {
            bail!("--audit-keep must be between 100 and 1000000 records");
        }
        let audit_days = merged.audit_max_age_days.unwrap_or(90);
        if audit_days == 0 {
            bail!("--audit-max-age-days must be above 0");
        }
        let metrics_listen = match &merged.metrics_listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().with_context(|| {
                format!("--metrics-listen {a} is not an address with a port, such as 127.0.0.1:9101")
            })?),
        };
        Ok(Config {
            metrics_listen,
            events,
            audit: crate::chn::audit::Retention {
                keep: audit_keep,
                max_age: Duration::from_secs(audit_days * 86_400),
            },
            tls,
            shared_lu_backup_every: Some(Duration::from_secs(merged.shared_lu_backup_every_s.unwrap_or(60)))
                .filter(|d| !d.is_zero()),
            name,
            node_id,
            listen,
            advertise,
            data,
            array: merged.array,
            raft: RaftSettings {
                heartbeat_ms,
                election_min_ms,
                election_max_ms,
                snapshot_threshold: merged.snapshot_threshold.unwrap_or(5000).max(1),
                keep_logs: merged.keep_logs.unwrap_or(500),
                quorum_timeout: Duration::from_millis(merged.quorum_timeout_ms.unwrap_or(5000).max(100)),
            },
            daemon_interval: Duration::from_millis(daemon_interval_ms),
            lu_lease: Duration::from_millis(lu_lease_ms),
            maintenance: crate::chn::lu_host::Maintenance {
                rebuild_limit: mb_per_s(merged.rebuild_max_mb_s),
                scrub_limit: mb_per_s(merged.scrub_max_mb_s),
                scrub_every: Some(Duration::from_secs(merged.scrub_every_s.unwrap_or(7 * 24 * 3600)))
                    .filter(|d| !d.is_zero()),
            },
            session_lease: Duration::from_millis(session_lease_ms),
            session_ttl: Duration::from_secs(session_ttl_s),
            failover: FailoverSettings {
                detect: Duration::from_millis(detect_ms),
                probe_interval: Duration::from_millis(probe_ms),
                giveback_after: merged.giveback_after_s.filter(|&s| s > 0).map(Duration::from_secs),
            },
            worker_threads,
            log_format: merged.log_format.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_comes_from_trailing_digits() {
        assert_eq!(node_id_from_name("CHN5"), Some(5));
        assert_eq!(node_id_from_name("chn-12"), Some(12));
        assert_eq!(node_id_from_name("CHN"), None);
        assert_eq!(node_id_from_name("CHN0"), None);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nasd.toml");
        std::fs::write(
            &path,
            "name = \"CHN2\"\nlisten = \"127.0.0.1:9\"\ndata = \"/x\"\nsnapshot_threshold = 7\n",
        )
        .unwrap();
        let cfg = Settings::parse_from([
            "nasd",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:8",
            "--insecure",
        ])
        .resolve()
        .unwrap();
        assert_eq!(cfg.name, "CHN2");
        assert_eq!(cfg.node_id, 2);
        assert_eq!(cfg.listen, "127.0.0.1:8");
        assert_eq!(cfg.raft.snapshot_threshold, 7);
    }

    #[test]
    fn the_example_file_is_valid() {
        let example: Settings = toml::from_str(include_str!("../../deploy/nasd.example.toml")).unwrap();
        assert_eq!(example.session_lease_ms, Some(30_000));
        let cfg = Settings::parse_from(["nasd", "--name", "CHN1", "--data", "/x"])
            .merge(example)
            .resolve()
            .unwrap();
        assert_eq!(cfg.session_lease, Duration::from_secs(30));
        assert!(matches!(cfg.tls, Tls::Files { .. }));
        assert_eq!(cfg.metrics_listen, "127.0.0.1:9101".parse().ok());
        assert_eq!(cfg.events.keep, 5000);
    }

    #[test]
    fn unknown_file_keys_and_bad_timings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nasd.toml");
        std::fs::write(&path, "nmae = \"CHN2\"\n").unwrap();
        let err = Settings::parse_from(["nasd", "--config", path.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(format!("{err:#}").contains("nmae"), "{err:#}");
        let err = Settings::parse_from(["nasd", "--name", "CHN1", "--data", "/x", "--election-min-ms", "50"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
        let err = Settings::parse_from(["nasd", "--name", "CHN1", "--data", "/x", "--worker-threads", "0"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("between 1 and 1024"), "{err}");
        let cfg = Settings::parse_from(["nasd", "--name", "CHN1", "--data", "/x", "--insecure"])
            .resolve()
            .unwrap();
        assert!(cfg.worker_threads >= 1);
        let err = Settings::parse_from(["nasd", "--name", "CHN1", "--data", "/x"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("TLS is on by default"), "{err}");
        let err = Settings::parse_from(["nasd", "--name", "CHN1", "--data", "/x", "--tls-cert", "/c"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("missing --tls-key, --tls-ca"), "{err}");
    }
}
