//! Prometheus metrics: the names this CHN exports with their
//! descriptions, and the process-wide recorder that collects them.
//!
//! A leaf: the code that counts calls the `metrics` macros with the
//! names defined here (the web port's `gauges` sets those read from the
//! tables). It must never block or fail a caller: without
//! `--metrics-listen` no recorder is installed and every macro is a no-op.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const RAFT_TERM: &str = "nas_raft_term";
pub const RAFT_LEADER: &str = "nas_raft_leader_id";
pub const RAFT_IS_LEADER: &str = "nas_raft_is_leader";
pub const RAFT_LAST_LOG_INDEX: &str = "nas_raft_last_log_index";
pub const RAFT_COMMIT_INDEX: &str = "nas_raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "nas_raft_applied_index";
pub const RAFT_QUORUM_ACK_AGE: &str = "nas_raft_quorum_ack_age_seconds";
pub const RAFT_LOG_APPEND: &str = "nas_raft_log_append_duration_seconds";
pub const RAFT_LOG_FSYNC: &str = "nas_raft_log_fsync_duration_seconds";
pub const RAFT_COMMANDS_PER_BATCH: &str = "nas_raft_commands_per_batch";
pub const ADMIN_REQUEST: &str = "nas_admin_request_duration_seconds";
pub const FILE_OPERATION: &str = "nas_file_operation_duration_seconds";
pub const FILE_READ_BYTES: &str = "nas_file_read_bytes_total";
pub const FILE_WRITTEN_BYTES: &str = "nas_file_written_bytes_total";
pub const SESSIONS_OPEN: &str = "nas_sessions_open";
pub const FILE_LOCKS_HELD: &str = "nas_file_locks_held";
pub const EXPORTS_SERVED: &str = "nas_exports_served";
pub const LU_STATE: &str = "nas_lu_state";
pub const LU_JOB_PROGRESS: &str = "nas_lu_job_progress_ratio";
pub const DISK_STATE: &str = "nas_disk_state";
pub const DISK_CHECKSUM_ERRORS: &str = "nas_disk_checksum_errors";
pub const CHN_HEARTBEAT_AGE: &str = "nas_chn_heartbeat_age_seconds";
pub const FAILOVERS: &str = "nas_failovers_total";
pub const FAILOVER_DETECTION: &str = "nas_failover_detection_seconds";
pub const FAILOVER_TAKEOVER: &str = "nas_failover_takeover_seconds";
pub const LU_LEASE_RENEWALS: &str = "nas_lu_lease_renewals_total";
pub const LU_FENCE_TRIPS: &str = "nas_lu_fence_trips_total";
pub const SCRAPE_DURATION: &str = "nas_metrics_scrape_duration_seconds";

/// Latency buckets, in seconds: from a fast fsync to a slow failover.
const SECONDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the metrics recorder: {0}")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    #[error("another metrics recorder is installed in this process")]
    Taken,
}

/// The process's metrics: installs the recorder on first use. One per
/// process, since the `metrics` macros write to a global recorder.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(SECONDS)?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(RAFT_COMMANDS_PER_BATCH.into()),
            BATCH,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::Taken)?;
    describe();
    start_at_zero();
    metrics_process::Collector::default().describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The Prometheus text of everything counted so far, with the gauges
/// `collect` sets read now.
pub fn render(handle: &PrometheusHandle, collect: impl FnOnce()) -> String {
    let started = std::time::Instant::now();
    metrics_process::Collector::default().collect();
    collect();
    // Histograms drain their pending samples here rather than on a timer
    // of their own.
    handle.run_upkeep();
    metrics::histogram!(SCRAPE_DURATION).record(started.elapsed().as_secs_f64());
    handle.render()
}

/// Records how many commands one Raft entry carried.
pub fn batch(commands: usize) {
    metrics::histogram!(RAFT_COMMANDS_PER_BATCH).record(commands as f64);
}

/// Counters that may stay at zero for a long time are exported from the
/// start, so that `increase()` sees their first step and dashboards show
/// 0 rather than no data.
fn start_at_zero() {
    metrics::counter!(FILE_READ_BYTES).absolute(0);
    metrics::counter!(FILE_WRITTEN_BYTES).absolute(0);
    for cause in ["probes", "heartbeat"] {
        metrics::counter!(FAILOVERS, "cause" => cause).absolute(0);
    }
    for cause in ["lease ended", "lock lost"] {
        metrics::counter!(LU_FENCE_TRIPS, "cause" => cause).absolute(0);
    }
    for result in ["ok", "refused", "failed"] {
        metrics::counter!(LU_LEASE_RENEWALS, "result" => result).absolute(0);
    }
}

fn describe() {
    describe_gauge!(RAFT_TERM, "Raft term this CHN has seen");
    describe_gauge!(RAFT_LEADER, "Raft node id of the leader this CHN knows, 0 when none");
    describe_gauge!(RAFT_IS_LEADER, "1 while this CHN is the Raft leader");
    describe_gauge!(RAFT_LAST_LOG_INDEX, "Index of the last entry in this CHN's Raft log");
    describe_gauge!(RAFT_COMMIT_INDEX, "Highest Raft log index this CHN knows committed");
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "Highest Raft log index applied to this CHN's tables"
    );
    describe_gauge!(
        RAFT_QUORUM_ACK_AGE,
        Unit::Seconds,
        "On the leader, time since a quorum last acknowledged it"
    );
    describe_histogram!(
        RAFT_LOG_APPEND,
        Unit::Seconds,
        "Time to write a group of Raft log records, fsync included"
    );
    describe_histogram!(RAFT_LOG_FSYNC, Unit::Seconds, "Time of one fsync of the Raft log");
    describe_histogram!(
        RAFT_COMMANDS_PER_BATCH,
        "Commands carried by one Raft entry proposed here"
    );
    describe_histogram!(
        ADMIN_REQUEST,
        Unit::Seconds,
        "Admin calls by RPC and gRPC code, until the reply's headers"
    );
    describe_histogram!(
        FILE_OPERATION,
        Unit::Seconds,
        "File service calls by operation and gRPC code, until the reply's headers"
    );
    describe_counter!(FILE_READ_BYTES, Unit::Bytes, "File bytes sent to clients");
    describe_counter!(FILE_WRITTEN_BYTES, Unit::Bytes, "File bytes written for clients");
    describe_gauge!(
        SESSIONS_OPEN,
        "Client sessions in the cluster by export (\"\": not mounted yet), as this CHN's tables hold them"
    );
    describe_gauge!(
        FILE_LOCKS_HELD,
        "File locks held in the cluster by export, as this CHN's tables hold them"
    );
    describe_gauge!(EXPORTS_SERVED, "Exports this CHN owns");
    describe_gauge!(
        LU_STATE,
        "1 for the state each LU is in (OPTIMAL, DEGRADED, REBUILDING, FAILED, NEW)"
    );
    describe_gauge!(LU_JOB_PROGRESS, "Share done of each LU's running rebuild or scrub");
    describe_gauge!(
        DISK_STATE,
        "1 for the state each physical disk is in (NOT_USED, USED, FAILED, SPARE)"
    );
    describe_gauge!(
        DISK_CHECKSUM_ERRORS,
        "Blocks read from each disk that failed their checksum"
    );
    describe_gauge!(
        CHN_HEARTBEAT_AGE,
        Unit::Seconds,
        "Age of each CHN's last heartbeat in this CHN's copy of the tables"
    );
    describe_counter!(FAILOVERS, "Exports this CHN took over, by cause (heartbeat, probes)");
    describe_histogram!(
        FAILOVER_DETECTION,
        Unit::Seconds,
        "From the first failed probe of the owner to the takeover's commit"
    );
    describe_histogram!(
        FAILOVER_TAKEOVER,
        Unit::Seconds,
        "From the takeover's commit until the export is mounted and served"
    );
    describe_counter!(LU_LEASE_RENEWALS, "LU lock renewals by result (ok, refused, failed)");
    describe_counter!(
        LU_FENCE_TRIPS,
        "Times an LU's write fence stopped writes (lock lost or lease out)"
    );
    describe_histogram!(
        SCRAPE_DURATION,
        Unit::Seconds,
        "Time to collect the metrics of one scrape"
    );
}
