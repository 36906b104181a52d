//! `nasctl`: the management terminal of the NAS cluster.
//!
//! Parses the command line and prints results; every call goes through
//! `nas_client::Cluster`, so any CHN can be named in --cluster. Errors are
//! printed as one line that says what to do, with exit code 1 (2 for a
//! usage error).

/// `println!` that ends nasctl quietly when stdout is closed (`nasctl ... | head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod drill;
mod failover;
mod files;
mod local_cluster;
mod netns;
mod output;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use ::nas_client::proto::{self, *};
use ::nas_client::{human_size, parse_size, Cluster, CLUSTER_ENV};
use output::Table;

#[derive(Parser)]
#[command(
    name = "nasctl",
    version,
    about = "Management terminal of the replicated NAS cluster",
    long_about = "Management terminal of the replicated NAS cluster.\n\n\
                  Talks gRPC to any CHN (nasd) named in --cluster or $NAS_CLUSTER; writes are forwarded \
                  to the Raft leader and lists are linearizable unless --local is given.\n\n\
                  Quick start:\n  nasctl cluster up --nodes 3 --dir ./nas-cluster\n  export $(cat ./nas-cluster/cluster.env)\n  nasctl cluster status"
)]
struct Cli {
    /// CHN addresses, comma-separated (HOST:PORT,...).
    #[arg(long, global = true, env = CLUSTER_ENV, value_name = "ADDR,...")]
    cluster: Option<String>,
    /// Print JSON instead of tables (stable field names, for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to keep retrying while no CHN answers or no leader is elected.
    #[arg(long, global = true, default_value_t = 15)]
    retry_secs: u64,
    #[command(flatten)]
    login: files::Login,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone, Copy)]
struct ReadOpts {
    /// Answer from the contacted CHN's copy without asking the leader (may be stale).
    #[arg(long)]
    local: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start, stop and inspect a cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The shared LU itself.
    #[command(subcommand, name = "shared-lu")]
    SharedLu(SharedLuCmd),
    /// Paths from CHNs to the shared LU, its backup and data LUs.
    #[command(subcommand)]
    Path(PathCmd),
    /// The disk array.
    #[command(subcommand)]
    Array(ArrayCmd),
    /// Physical disks.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Logical units (RAID groups).
    #[command(subcommand)]
    Lu(LuCmd),
    /// CHNs (NAS heads): install, list, remove.
    #[command(subcommand)]
    Chn(ChnCmd),
    /// Users of the file service.
    #[command(subcommand)]
    User(UserCmd),
    /// Exports (the service table).
    #[command(subcommand)]
    Export(ExportCmd),
    /// Client sessions recorded in the shared LU.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Files in an export: put, get, ls, stat, rm, mkdir, mv, df (as --user).
    #[command(subcommand)]
    Fs(files::FsCmd),
    /// Take a file lock (`lock EXPORT:/path [--shared]`), or list LU and file locks (`lock list`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Lock(LockArgs),
    /// Failover drill on a local cluster: writers, a fault (kill, pause,
    /// partition) on a CHN, then every acknowledged write read back.
    Drill(drill::DrillArgs),
    /// Move exports between CHNs (planned takeover, giveback) and see the failover state.
    #[command(subcommand)]
    Failover(failover::FailoverCmd),
    /// Ask one nasd's standard gRPC health service whether it serves
    /// (exit 0) or not (exit 1): the container HEALTHCHECK.
    Health {
        /// The nasd [default: the local one at $NASD_LISTEN, else 127.0.0.1:7000].
        #[arg(long)]
        addr: Option<String>,
        /// The service to ask about ("" is the whole server; nas.v1.Nas the file service).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Break a file lock as operator: every holder's, or one session's.
    Unlock {
        /// The locked file, as EXPORT:/path.
        target: String,
        /// Release only this session's hold (see `nasctl lock list`).
        #[arg(long)]
        session: Option<String>,
    },
}

#[derive(Args)]
struct LockArgs {
    #[command(subcommand)]
    list: Option<LockCmd>,
    #[command(flatten)]
    take: Option<files::TakeLock>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start N local CHNs on loopback under DIR and run the setup sequence.
    ///
    /// Run it again on the same DIR to restart stopped CHNs with their state,
    /// or with a larger --nodes to install more CHNs.
    Up {
        /// Number of CHNs [default: 3, or as many as DIR already holds].
        #[arg(long)]
        nodes: Option<usize>,
        /// Folder for the cluster: one sub-folder per CHN, the disk array, cluster.env.
        #[arg(long)]
        dir: PathBuf,
        /// The nasd binary [default: beside nasctl, then PATH].
        #[arg(long, env = "NASD_BIN")]
        nasd: Option<PathBuf>,
        /// Extra argument for every nasd, e.g. --nasd-arg=--snapshot-threshold=1000 (repeatable; replaces the saved ones).
        #[arg(long = "nasd-arg", allow_hyphen_values = true)]
        nasd_args: Vec<String>,
        /// Run each CHN in a network namespace of its own on a bridge
        /// (10.x.y.0/24, port 7000), so that `drill --fault partition` can
        /// cut one off the network. Needs root and iproute2; only for a new DIR.
        #[arg(long)]
        netns: bool,
    },
    /// Stop every CHN started under DIR (SIGTERM, then SIGKILL after 10 s). Data is kept.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Members, leader, term, applied index and each CHN's heartbeat age.
    Status,
    /// Run the setup sequence on CHNs that are already running (containers,
    /// other hosts), then make the disks, LU, user and export asked for.
    ///
    /// Installs the first --chn (bootstrap), initializes the shared LU and
    /// its backup, adds every CHN's paths to them, installs the other CHNs,
    /// and waits until all are healthy voters. Every step is skipped when
    /// its result exists, so it is safe to run again (the compose `setup`
    /// service runs it on every start). Each flag can come from the
    /// environment variable named beside it; the user's password comes
    /// from $NAS_PASSWORD.
    Setup(SetupArgs),
}

#[derive(Args)]
struct SetupArgs {
    /// A CHN as NAME=HOST:PORT, in install order (the first bootstraps);
    /// repeat it or separate with commas. nasd must run with that name.
    #[arg(
        long = "chn",
        env = "NAS_SETUP_CHNS",
        value_delimiter = ',',
        required = true,
        value_name = "NAME=HOST:PORT"
    )]
    chns: Vec<setup::NodeSpec>,
    /// Define this many disks when the array holds none.
    #[arg(long, env = "NAS_SETUP_DISKS")]
    disks: Option<u32>,
    /// Size of each disk (e.g. 64M, 1G).
    #[arg(long, env = "NAS_SETUP_DISK_SIZE", default_value = "64M", value_parser = parse_size)]
    disk_size: u64,
    /// Create an LU on these disks (e.g. 1,2,3) unless one uses exactly them.
    #[arg(long, env = "NAS_SETUP_LU_DISKS", value_delimiter = ',')]
    lu_disks: Vec<u32>,
    /// RAID level of that LU: 1 or 5.
    #[arg(long, env = "NAS_SETUP_RAID", default_value_t = 5)]
    raid: u32,
    /// Add this user (password from $NAS_PASSWORD) unless it exists.
    #[arg(long = "add-user", env = "NAS_SETUP_USER")]
    add_user: Option<String>,
    /// Create this export of the LU, for that user, unless it exists.
    #[arg(long, env = "NAS_SETUP_EXPORT")]
    export: Option<String>,
    /// The CHN serving the export [default: the first --chn].
    #[arg(long, env = "NAS_SETUP_EXPORT_CHN")]
    export_chn: Option<String>,
    /// The partner that takes the export over [default: the second --chn].
    #[arg(long, env = "NAS_SETUP_EXPORT_PARTNER")]
    export_partner: Option<String>,
    /// Seconds to wait for every CHN to answer and for the cluster to be healthy.
    #[arg(long, env = "NAS_SETUP_WAIT_S", default_value_t = 120)]
    wait_s: u64,
}

#[derive(Subcommand)]
enum SharedLuCmd {
    /// Initialize the shared LU (and its backup) on the logical level.
    Init {
        /// Do not initialize the backup.
        #[arg(long)]
        no_backup: bool,
    },
}

#[derive(Subcommand)]
enum PathCmd {
    /// Let CHN reach a target: `shared`, `backup` or `lu:N`.
    Add {
        chn: String,
        #[arg(long)]
        to: String,
    },
    /// Take a path away: `shared`, `backup` or `lu:N`.
    Remove {
        chn: String,
        #[arg(long)]
        to: String,
    },
    /// List the path table.
    List(ReadOpts),
}

#[derive(Subcommand)]
enum ArrayCmd {
    /// Define N physical disks of SIZE each (e.g. --size 64M).
    Init {
        #[arg(long)]
        disks: u32,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
}

#[derive(Subcommand)]
enum DiskCmd {
    /// The physical disk management table.
    List(ReadOpts),
    /// Take disk N out of service as if it had failed (a drill): its LU
    /// goes on DEGRADED from the other members.
    Fail {
        /// Disk number (see `nasctl disk list`).
        disk: u32,
    },
    /// Replace FAILED disk N in its LU with a NOT USED disk; then run
    /// `nasctl lu rebuild LU` to copy the data onto it.
    Replace {
        /// Number of the FAILED disk.
        disk: u32,
        /// The disk to put in its place [default: the lowest NOT USED disk].
        #[arg(long)]
        spare: Option<u32>,
    },
}

#[derive(Args, Clone, Copy)]
struct JobOpts {
    /// Start the job and return at once; follow it with `nasctl lu list`.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand)]
enum LuCmd {
    /// Create an LU: RAID 1 over 2 or more disks, RAID 5 over 3 or more.
    Create {
        /// RAID level: 1 or 5.
        #[arg(long)]
        raid: u32,
        /// Disk numbers, comma-separated (see `nasctl disk list`).
        #[arg(long, value_delimiter = ',', required = true)]
        disks: Vec<u32>,
        /// Stripe unit, a power of two from 4K to 1M [default: 64K].
        #[arg(long, value_parser = parse_size)]
        stripe_unit: Option<u64>,
    },
    /// The LU management table, with each LU's health and rebuild or scrub progress.
    List(ReadOpts),
    /// Rebuild LU N onto the disk that replaced its failed member, while it
    /// stays online; shows progress until done. A rebuild interrupted by a
    /// crash resumes by itself when the CHN comes back.
    Rebuild {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        #[command(flatten)]
        wait: JobOpts,
    },
    /// Check LU N's parity (RAID 5) or mirror copies (RAID 1) and report
    /// inconsistent stripes; --repair rewrites them from the data.
    Scrub {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        /// Rewrite inconsistent parity (RAID 5) or mirror copies (RAID 1) from the data.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        wait: JobOpts,
    },
    /// Read raw bytes of LU N (diagnostics; bypasses any file system) to
    /// stdout or --out FILE.
    Read {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        /// Byte offset in the LU (sizes like 4K or 1M work).
        #[arg(long, default_value_t = 0, value_parser = parse_size)]
        offset: u64,
        /// Bytes to read (e.g. 3M).
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// Write them to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a local FILE as raw bytes into LU N at --offset and flush
    /// (diagnostics and drills; overwrites whatever the LU held there).
    Write {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        /// Local file whose bytes are written.
        file: PathBuf,
        /// Byte offset in the LU (sizes like 4K or 1M work).
        #[arg(long, default_value_t = 0, value_parser = parse_size)]
        offset: u64,
    },
}

#[derive(Subcommand)]
enum ChnCmd {
    /// Install a CHN: bootstrap the shared LU on the first one, join the
    /// others (learner, then voter). The nasd at ADDR must be running.
    Install {
        name: String,
        #[arg(long)]
        addr: String,
        /// Bootstrap a new shared LU on this CHN (first CHN only).
        #[arg(long)]
        bootstrap: bool,
    },
    /// Installed CHNs and their daemon information.
    List(ReadOpts),
    /// Take a CHN out of the membership and the daemon table.
    Remove { name: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user. The password is read from $NAS_PASSWORD or asked for without echo.
    Add {
        name: String,
        /// Numeric uid [default: next free from 1000].
        #[arg(long)]
        uid: Option<u32>,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// The user table (hashes are never shown).
    List(ReadOpts),
}

#[derive(Subcommand)]
enum ExportCmd {
    /// Export LU N as NAME, served by --chn with --partner taking over.
    Create {
        name: String,
        #[arg(long)]
        lu: u32,
        #[arg(long)]
        chn: String,
        #[arg(long)]
        partner: Option<String>,
        /// Users allowed to mount it, comma-separated.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
    },
    /// The service table.
    List(ReadOpts),
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Client sessions recorded in the shared LU.
    List(ReadOpts),
}

#[derive(Subcommand)]
enum LockCmd {
    /// The LU lock and file lock tables.
    List(ReadOpts),
}

fn main() -> ExitCode {
    ::nas_client::keep_message_buffers();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nasctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nasctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn connect(cli: &Cli) -> anyhow::Result<Cluster> {
    let list = cli.cluster.as_deref().unwrap_or("");
    Ok(Cluster::from_list(list)?.with_retry_for(std::time::Duration::from_secs(cli.retry_secs)))
}

/// Turns a gRPC status into an error line: the server's message already
/// says what to do; the code name helps scripts and bug reports.
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable && s.message().starts_with("tcp connect error") {
        return anyhow!(
            "no CHN answered ({}); check --cluster / $NAS_CLUSTER and that the cluster is up (`nasctl cluster up --dir DIR`) ({:?})",
            s.message(),
            s.code()
        );
    }
    anyhow!("{} ({:?})", s.message(), s.code())
}

/// `cluster setup`: the setup sequence on running CHNs, then provisioning.
async fn cluster_setup(a: &SetupArgs, json: bool) -> anyhow::Result<()> {
    let addrs: Vec<&str> = a.chns.iter().map(|n| n.addr.as_str()).collect();
    let wait = Duration::from_secs(a.wait_s);
    let cluster = Cluster::new(&addrs)?.with_retry_for(wait);
    let initialized =
        setup::wait_answering(&cluster, &a.chns, wait, |_| "is its nasd running and reachable?".into()).await?;
    setup::install(&cluster, &a.chns, &initialized, false).await?;
    let status = setup::wait_healthy(&cluster, a.chns.len(), wait).await?;
    let user = match &a.add_user {
        Some(name) => Some((name.clone(), read_password(name)?)),
        None => None,
    };
    let provision = setup::Provision {
        disks: a.disks.map(|n| (n, a.disk_size)),
        lu: (!a.lu_disks.is_empty()).then(|| (a.raid, a.lu_disks.clone())),
        user,
        export: match &a.export {
            Some(name) => {
                let owner = a.export_chn.clone().unwrap_or_else(|| a.chns[0].name.clone());
                let partner = a
                    .export_partner
                    .clone()
                    .or_else(|| a.chns.iter().map(|n| n.name.clone()).find(|n| *n != owner))
                    .context("an export needs a partner CHN: give --export-partner or a second --chn")?;
                Some((name.clone(), owner, partner))
            }
            None => None,
        },
    };
    setup::provision(&cluster, &provision).await?;
    let list = addrs.join(",");
    if json {
        outln!(
            "{}",
            json!({"cluster": list, "leader": status.leader_name, "term": status.term, "chns": a.chns.len()})
        );
    } else {
        outln!(
            "cluster of {} CHNs set up (leader {}, term {}); talk to it with {CLUSTER_ENV}={list}",
            a.chns.len(),
            status.leader_name,
            status.term
        );
    }
    Ok(())
}

/// `health`: one standard gRPC health check, for container HEALTHCHECKs.
async fn health(addr: Option<&str>, service: &str, json: bool) -> anyhow::Result<()> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let addr = match addr {
        Some(a) => a.to_string(),
        // nasd listens on all addresses in a container; ask it over loopback.
        None => std::env::var("NASD_LISTEN")
            .ok()
            .and_then(|l| l.rsplit_once(':').map(|(_, port)| format!("127.0.0.1:{port}")))
            .unwrap_or_else(|| "127.0.0.1:7000".into()),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("`{addr}` is not HOST:PORT"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("no nasd answers at {addr}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| anyhow!("the health check of {addr} failed: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    let status = ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown);
    if json {
        outln!(
            "{}",
            json!({"address": addr, "service": service, "status": status.as_str_name()})
        );
    } else {
        outln!("{addr}: {}", status.as_str_name());
    }
    if status != ServingStatus::Serving {
        bail!("{addr} is not serving ({})", status.as_str_name());
    }
    Ok(())
}

/// The RAID level `--raid` names.
pub(crate) fn raid_level(raid: u32) -> anyhow::Result<RaidLevel> {
    match raid {
        1 => Ok(RaidLevel::Raid1),
        5 => Ok(RaidLevel::Raid5),
        other => bail!("RAID level {other} is not supported; use --raid 1 or --raid 5"),
    }
}

fn list_req(o: ReadOpts) -> ListRequest {
    ListRequest { local: o.local }
}

pub(crate) fn written(json: bool, what: &str, r: WriteReply) {
    if json {
        outln!("{}", json!({"log_index": r.log_index, "assigned": r.assigned}));
    } else {
        outln!("{what} (log index {})", r.log_index);
    }
}

/// Bytes per raw LU read or write call.
const RAW_CHUNK: u64 = 1 << 20;

/// One line for a rebuild or scrub: progress while it runs, outcome after.
fn job_line(j: &LuJob) -> String {
    if j.finished {
        return format!("{} on {}: {}", j.kind, j.chn, j.result);
    }
    let pct = if j.total_bytes == 0 {
        0.0
    } else {
        j.done_bytes as f64 * 100.0 / j.total_bytes as f64
    };
    format!(
        "{} on {}: {pct:.1}% at {:.1} MB/s, ETA {}s",
        j.kind,
        j.chn,
        j.bytes_per_sec as f64 / 1e6,
        j.eta_secs
    )
}

/// Shows a rebuild or scrub's progress (from the LU table) until it ends.
/// `since` is the start time the CHN gave the job, so that an older job's
/// outcome in the table is never mistaken for this one's.
async fn follow_job(c: &Cluster, lu: u32, kind: &str, since: u64, no_wait: bool, json: bool) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let r = c
            .admin(|mut a| async move { a.list_lus(ListRequest { local: false }).await })
            .await
            .map_err(status_err)?;
        let job = r.lus.iter().find(|l| l.number == lu).and_then(|l| l.job.clone());
        let current = job.filter(|j| j.kind == kind && j.updated_ms >= since);
        if let Some(j) = &current {
            let line = job_line(j);
            if j.finished || no_wait {
                if json {
                    outln!("{}", serde_json::to_value(j).unwrap_or(Value::Null));
                } else {
                    if !last.is_empty() {
                        eprintln!();
                    }
                    outln!("LU {lu}: {line}");
                }
                if j.finished && j.result.starts_with("failed") {
                    bail!("the {kind} of LU {lu} failed: {}", j.result);
                }
                return Ok(());
            }
            if !json && line != last {
                eprint!("\r\x1b[KLU {lu}: {line}");
                last = line;
            }
        } else if no_wait {
            if !json {
                outln!("LU {lu}: {kind} started; follow it with `nasctl lu list`");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Prints a list, noting on stderr when it came from a possibly stale copy.
fn print_list(t: &Table, json: bool, stale: bool) {
    t.print(json);
    if stale && !json {
        eprintln!("(answered from the contacted CHN's copy; may be stale)");
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match &cli.command {
        Cmd::Cluster(ClusterCmd::Up {
            nodes,
            dir,
            nasd,
            nasd_args,
            netns,
        }) => {
            let nasd_args = (!nasd_args.is_empty()).then(|| nasd_args.clone());
            return local_cluster::up(local_cluster::UpOptions {
                nodes: *nodes,
                dir: dir.clone(),
                nasd: nasd.clone(),
                nasd_args,
                netns: *netns,
                json,
                quiet: false,
            })
            .await;
        }
        Cmd::Cluster(ClusterCmd::Down { dir }) => return local_cluster::down(dir, json).await,
        Cmd::Cluster(ClusterCmd::Setup(a)) => return cluster_setup(a, json).await,
        Cmd::Health { addr, service } => return health(addr.as_deref(), service, json).await,
        _ => {}
    }
    let c = connect(&cli)?;
    match cli.command {
        Cmd::Cluster(ClusterCmd::Status) => cluster_status(&c, json).await,
        Cmd::Cluster(_) | Cmd::Health { .. } => unreachable!("handled above"),
        Cmd::SharedLu(SharedLuCmd::Init { no_backup }) => {
            let r = c
                .admin(|mut a| async move {
                    a.init_shared_lu(InitSharedLuRequest {
                        with_backup: !no_backup,
                    })
                    .await
                })
                .await
                .map_err(status_err)?;
            written(json, "shared LU initialized", r);
            Ok(())
        }
        Cmd::Path(PathCmd::Add { chn, to }) => change_path(&c, chn, &to, true, json).await,
        Cmd::Path(PathCmd::Remove { chn, to }) => change_path(&c, chn, &to, false, json).await,
        Cmd::Path(PathCmd::List(o)) => {
            let r = c
                .admin(|mut a| async move { a.list_paths(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let mut t = Table::new(&["chn", "target"]);
            for p in &r.paths {
                t.row(vec![json!(p.chn), json!(target_name(p))]);
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
        Cmd::Array(ArrayCmd::Init { disks, size }) => {
            let r = c
                .admin(|mut a| async move {
                    a.init_array(InitArrayRequest {
                        disks,
                        disk_capacity_bytes: size,
                    })
                    .await
                })
                .await
                .map_err(status_err)?;
            written(
                json,
                &format!("array initialized: {disks} disks of {}", human_size(size)),
                r,
            );
            Ok(())
        }
        Cmd::Disk(DiskCmd::List(o)) => {
            let r = c
                .admin(|mut a| async move { a.list_disks(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let mut t = Table::new(&["disk", "capacity_bytes", "capacity", "raid_group", "state"]);
            for d in &r.disks {
                let group = if d.raid_group == 0 {
                    Value::Null
                } else {
                    json!(d.raid_group)
                };
                t.row(vec![
                    json!(d.number),
                    json!(d.capacity_bytes),
                    json!(human_size(d.capacity_bytes)),
                    group,
                    json!(nas_proto::labels::disk_state(d.state)),
                ]);
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
        Cmd::Lu(LuCmd::Create {
            raid,
            disks,
            stripe_unit,
        }) => {
            let raid = raid_level(raid)?;
            let req = CreateLuRequest {
                raid: raid as i32,
                disks,
                stripe_unit_bytes: stripe_unit.unwrap_or(0),
            };
            let r = c
                .admin(|mut a| {
                    let req = req.clone();
                    async move { a.create_lu(req).await }
                })
                .await
                .map_err(status_err)?;
            if json {
                outln!("{}", json!({"lu": r.assigned, "log_index": r.log_index}));
            } else {
                outln!("LU {} created (log index {})", r.assigned, r.log_index);
            }
            Ok(())
        }
        Cmd::Lu(LuCmd::List(o)) => {
            let r = c
                .admin(|mut a| async move { a.list_lus(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let mut t = Table::new(&[
                "lu",
                "raid",
                "disks",
                "capacity_bytes",
                "capacity",
                "stripe_unit_bytes",
                "health",
                "job",
            ]);
            for l in &r.lus {
                let job = match &l.job {
                    Some(j) if json => serde_json::to_value(j).unwrap_or(Value::Null),
                    Some(j) => json!(job_line(j)),
                    None => Value::Null,
                };
                t.row(vec![
                    json!(l.number),
                    json!(l.raid),
                    json!(l.disks),
                    json!(l.capacity_bytes),
                    json!(human_size(l.capacity_bytes)),
                    json!(l.stripe_unit_bytes),
                    json!(nas_proto::labels::lu_health(l.health)),
                    job,
                ]);
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
        Cmd::Disk(DiskCmd::Fail { disk }) => {
            let r = c
                .admin(|mut a| async move { a.fail_disk(DiskRequest { disk }).await })
                .await
                .map_err(status_err)?;
            written(json, &format!("disk {disk} marked FAILED"), r);
            Ok(())
        }
        Cmd::Disk(DiskCmd::Replace { disk, spare }) => {
            let req = ReplaceDiskRequest {
                disk,
                spare: spare.unwrap_or(0),
            };
            let r = c
                .admin(|mut a| async move { a.replace_disk(req).await })
                .await
                .map_err(status_err)?;
            if json {
                outln!(
                    "{}",
                    json!({"disk": disk, "spare": r.assigned, "log_index": r.log_index})
                );
            } else {
                outln!(
                    "disk {disk} replaced by disk {}; now run `nasctl lu rebuild LU` (see `nasctl disk list`)",
                    r.assigned
                );
            }
            Ok(())
        }
        Cmd::Lu(LuCmd::Rebuild { lu, wait }) => {
            let r = c
                .admin(|mut a| async move { a.rebuild_lu(LuRequest { lu }).await })
                .await
                .map_err(status_err)?;
            let since = r.job.map_or(0, |j| j.updated_ms);
            follow_job(&c, lu, "rebuild", since, wait.no_wait, json).await
        }
        Cmd::Lu(LuCmd::Scrub { lu, repair, wait }) => {
            let r = c
                .admin(|mut a| async move { a.scrub_lu(ScrubLuRequest { lu, repair }).await })
                .await
                .map_err(status_err)?;
            let since = r.job.map_or(0, |j| j.updated_ms);
            follow_job(&c, lu, "scrub", since, wait.no_wait, json).await
        }
        Cmd::Lu(LuCmd::Read {
            lu,
            offset,
            length,
            out,
        }) => {
            let mut data = Vec::with_capacity(length as usize);
            let mut at = offset;
            let end = offset.checked_add(length).context("offset + length overflows")?;
            while at < end {
                let n = (end - at).min(RAW_CHUNK);
                let req = ReadLuRequest {
                    lu,
                    offset: at,
                    length: n as u32,
                };
                let r = c
                    .admin(|mut a| async move { a.read_lu(req).await })
                    .await
                    .map_err(status_err)?;
                data.extend_from_slice(&r.data);
                at += n;
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, &data).with_context(|| format!("cannot write {}", path.display()))?
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&data).context("cannot write to stdout")?;
                }
            }
            Ok(())
        }
        Cmd::Lu(LuCmd::Write { lu, file, offset }) => {
            let data = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // An empty file still makes one (flushing) call.
            let chunks: Vec<&[u8]> = if data.is_empty() {
                vec![&[]]
            } else {
                data.chunks(RAW_CHUNK as usize).collect()
            };
            let last = chunks.len() - 1;
            for (i, chunk) in chunks.into_iter().enumerate() {
                let req = WriteLuRequest {
                    lu,
                    offset: offset + i as u64 * RAW_CHUNK,
                    data: chunk.to_vec(),
                    flush: i == last,
                };
                c.admin(|mut a| {
                    let req = req.clone();
                    async move { a.write_lu(req).await }
                })
                .await
                .map_err(status_err)?;
            }
            if json {
                outln!("{}", json!({"lu": lu, "offset": offset, "bytes": data.len()}));
            } else {
                outln!(
                    "wrote {} to LU {lu} at offset {offset} (flushed)",
                    human_size(data.len() as u64)
                );
            }
            Ok(())
        }
        Cmd::Chn(ChnCmd::Install { name, addr, bootstrap }) => {
            let reply = if bootstrap {
                // Bootstrap must reach exactly that CHN, not any member.
                let one =
                    Cluster::new(&[addr.as_str()])?.with_retry_for(std::time::Duration::from_secs(cli.retry_secs));
                let info = one
                    .admin(|mut a| async move { a.node_info(NodeInfoRequest {}).await })
                    .await
                    .map_err(status_err)?;
                if info.name != name {
                    bail!(
                        "the nasd at {addr} is named {}, not {name}; check the name and address",
                        info.name
                    );
                }
                one.admin(|mut a| async move { a.bootstrap(BootstrapRequest {}).await })
                    .await
                    .map_err(status_err)?
            } else {
                let req = InstallChnRequest {
                    name: name.clone(),
                    address: addr,
                };
                c.admin(|mut a| {
                    let req = req.clone();
                    async move { a.install_chn(req).await }
                })
                .await
                .map_err(status_err)?
            };
            let chn = reply.chn.unwrap_or_default();
            if json {
                outln!("{}", chn_json(&chn));
            } else {
                outln!(
                    "{} installed as node {} ({})",
                    chn.chn,
                    chn.node_id,
                    chn_state(chn.state)
                );
            }
            Ok(())
        }
        Cmd::Chn(ChnCmd::List(o)) => {
            let r = c
                .admin(|mut a| async move { a.list_chns(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let status = c.leader_status().await.map_err(status_err)?;
            let mut t = Table::new(&[
                "chn",
                "node_id",
                "address",
                "state",
                "raft_role",
                "voter",
                "heartbeat_age_ms",
                "load",
            ]);
            for d in &r.chns {
                let member = status.members.iter().find(|m| m.node_id == d.node_id);
                let age = member.map_or(Value::Null, |m| {
                    if m.heartbeat_age_ms < 0 {
                        Value::Null
                    } else {
                        json!(m.heartbeat_age_ms)
                    }
                });
                t.row(vec![
                    json!(d.chn),
                    json!(d.node_id),
                    json!(d.address),
                    json!(chn_state(d.state)),
                    json!(d.daemon_states.get("raft").cloned().unwrap_or_default()),
                    json!(member.is_some_and(|m| m.voter)),
                    age,
                    json!(f64::from(d.load) / 100.0),
                ]);
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
        Cmd::Chn(ChnCmd::Remove { name }) => {
            let r = c
                .admin(|mut a| {
                    let name = name.clone();
                    async move { a.remove_chn(RemoveChnRequest { name }).await }
                })
                .await
                .map_err(status_err)?;
            written(json, &format!("{name} removed"), r);
            Ok(())
        }
        Cmd::User(UserCmd::Add { name, uid, groups }) => {
            let password = read_password(&name)?;
            let req = AddUserRequest {
                name: name.clone(),
                password,
                uid: uid.unwrap_or(0),
                groups,
            };
            let r = c
                .admin(|mut a| {
                    let req = req.clone();
                    async move { a.add_user(req).await }
                })
                .await
                .map_err(status_err)?;
            if json {
                outln!("{}", json!({"user": name, "uid": r.assigned, "log_index": r.log_index}));
            } else {
                outln!("user {name} added with uid {} (log index {})", r.assigned, r.log_index);
            }
            Ok(())
        }
        Cmd::User(UserCmd::List(o)) => {
            let r = c
                .admin(|mut a| async move { a.list_users(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let mut t = Table::new(&["user", "uid", "groups", "enabled"]);
            for u in &r.users {
                t.row(vec![json!(u.name), json!(u.uid), json!(u.groups), json!(u.enabled)]);
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
        Cmd::Export(ExportCmd::Create {
            name,
            lu,
            chn,
            partner,
            users,
        }) => {
            let req = CreateExportRequest {
                name: name.clone(),
                lu,
                owner_chn: chn,
                partner_chn: partner.unwrap_or_default(),
                users,
            };
            let r = c
                .admin(|mut a| {
                    let req = req.clone();
                    async move { a.create_export(req).await }
                })
                .await
                .map_err(status_err)?;
            written(json, &format!("export {name} created"), r);
            Ok(())
        }
        Cmd::Export(ExportCmd::List(o)) => {
            let r = c
                .admin(|mut a| async move { a.list_exports(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let mut t = Table::new(&["export", "lu", "owner_chn", "partner_chn", "state", "users"]);
            for e in &r.exports {
                let partner = if e.partner_chn.is_empty() {
                    Value::Null
                } else {
                    json!(e.partner_chn)
                };
                t.row(vec![
                    json!(e.name),
                    json!(e.lu),
                    json!(e.owner_chn),
                    partner,
                    json!(service_state(e.state)),
                    json!(e.users),
                ]);
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
        Cmd::Client(ClientCmd::List(o)) => {
            let r = c
                .admin(|mut a| async move { a.list_clients(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let mut t = Table::new(&["client_id", "session", "user", "export", "last_seen_ms"]);
            for cl in &r.clients {
                t.row(vec![
                    json!(cl.client_id),
                    json!(cl.session),
                    json!(cl.user),
                    json!(cl.export),
                    json!(cl.last_seen_ms),
                ]);
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
        Cmd::Fs(cmd) => files::run_fs(&c, &cli.login, cmd, json, Duration::from_secs(cli.retry_secs)).await,
        Cmd::Unlock { target, session } => files::break_lock(&c, &target, session, json).await,
        Cmd::Failover(cmd) => failover::run(&c, cmd, json).await,
        Cmd::Drill(args) => drill::run(&c, &cli.login, args, json).await,
        Cmd::Lock(LockArgs {
            take: Some(take),
            list: None,
        }) => files::take_lock(&c, &cli.login, take, json, Duration::from_secs(cli.retry_secs)).await,
        Cmd::Lock(LockArgs { list: None, take: None }) => {
            bail!("give EXPORT:/path to take a lock, or `lock list` to see the lock tables")
        }
        Cmd::Lock(LockArgs {
            list: Some(LockCmd::List(o)),
            ..
        }) => {
            let r = c
                .admin(|mut a| async move { a.list_locks(list_req(o)).await })
                .await
                .map_err(status_err)?;
            let mut t = Table::new(&["kind", "target", "holder", "mode", "epoch", "lease_expiry_ms"]);
            for l in &r.lu_locks {
                let target = if l.lu == 0 {
                    "SHARED".to_string()
                } else {
                    format!("LU {}", l.lu)
                };
                t.row(vec![
                    json!("lu"),
                    json!(target),
                    json!(l.chn),
                    json!("exclusive"),
                    json!(l.epoch),
                    json!(l.lease_expiry_ms),
                ]);
            }
            for f in &r.file_locks {
                for h in &f.holders {
                    let mode = if h.mode == LockMode::LockShared as i32 {
                        "shared"
                    } else {
                        "exclusive"
                    };
                    t.row(vec![
                        json!("file"),
                        json!(format!("{}:{}", f.export, f.path)),
                        json!(h.session),
                        json!(mode),
                        Value::Null,
                        json!(h.lease_expiry_ms),
                    ]);
                }
            }
            print_list(&t, json, r.possibly_stale);
            Ok(())
        }
    }
}

/// `path add` and `path remove`.
async fn change_path(c: &Cluster, chn: String, to: &str, add: bool, json: bool) -> anyhow::Result<()> {
    let (target, lu) = parse_target(to)?;
    let req = PathRequest {
        path: Some(proto::Path {
            chn,
            target: target as i32,
            lu,
        }),
    };
    let r = c
        .admin(|mut a| {
            let req = req.clone();
            async move {
                if add {
                    a.add_path(req).await
                } else {
                    a.remove_path(req).await
                }
            }
        })
        .await
        .map_err(status_err)?;
    written(json, if add { "path added" } else { "path removed" }, r);
    Ok(())
}

async fn cluster_status(c: &Cluster, json: bool) -> anyhow::Result<()> {
    let s = c.leader_status().await.map_err(status_err)?;
    let shared = s.shared_lu.unwrap_or_default();
    if json {
        let members: Vec<Value> = s
            .members
            .iter()
            .map(|m| {
                json!({"chn": m.name, "node_id": m.node_id, "address": m.address, "voter": m.voter,
                       "leader": m.node_id == s.leader_id,
                       "heartbeat_age_ms": (m.heartbeat_age_ms >= 0).then_some(m.heartbeat_age_ms),
                       "matched_index": (m.matched_index >= 0).then_some(m.matched_index)})
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "answered_by": s.answered_by, "leader": s.leader_name, "leader_id": s.leader_id, "term": s.term,
                "last_applied": s.last_applied, "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
                "shared_lu_initialized": shared.initialized, "shared_lu_backup_initialized": shared.backup_initialized,
                "members": members,
            }))?
        );
        return Ok(());
    }
    let leader = if s.leader_id == 0 {
        "none (no quorum?)".to_string()
    } else {
        format!("{} (node {})", s.leader_name, s.leader_id)
    };
    outln!("leader:        {leader}");
    outln!("term:          {}", s.term);
    outln!(
        "last applied:  {} (log {}, snapshot {})",
        s.last_applied,
        s.last_log_index,
        s.snapshot_index
    );
    outln!(
        "shared LU:     {}{}",
        if shared.initialized {
            "initialized"
        } else {
            "NOT initialized (run `nasctl shared-lu init`)"
        },
        if shared.backup_initialized {
            ", backup initialized"
        } else {
            ""
        }
    );
    outln!("answered by:   {}\n", s.answered_by);
    let mut t = Table::new(&["chn", "node_id", "address", "role", "heartbeat_age_ms", "matched_index"]);
    for m in &s.members {
        let role = if m.node_id == s.leader_id {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        let age = if m.heartbeat_age_ms < 0 {
            Value::Null
        } else {
            json!(m.heartbeat_age_ms)
        };
        let matched = if m.matched_index < 0 {
            Value::Null
        } else {
            json!(m.matched_index)
        };
        t.row(vec![
            json!(m.name),
            json!(m.node_id),
            json!(m.address),
            json!(role),
            age,
            matched,
        ]);
    }
    t.print(false);
    Ok(())
}

fn read_password(user: &str) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("NAS_PASSWORD") {
        return Ok(p);
    }
    let first = rpassword::prompt_password(format!("password for {user}: "))
        .context("cannot read a password from the terminal; set NAS_PASSWORD instead")?;
    let second = rpassword::prompt_password("again: ").context("cannot read the password")?;
    if first != second {
        bail!("the passwords differ; nothing was changed");
    }
    Ok(first)
}

fn parse_target(s: &str) -> anyhow::Result<(PathTarget, u32)> {
    match s {
        "shared" => Ok((PathTarget::PathSharedLu, 0)),
        "backup" => Ok((PathTarget::PathSharedLuBackup, 0)),
        _ => match s.strip_prefix("lu:").map(str::parse::<u32>) {
            Some(Ok(n)) if n > 0 => Ok((PathTarget::PathDataLu, n)),
            _ => bail!("--to {s:?} is not a target; use shared, backup or lu:N"),
        },
    }
}

fn target_name(p: &proto::Path) -> String {
    match PathTarget::try_from(p.target) {
        Ok(PathTarget::PathSharedLu) => "shared".into(),
        Ok(PathTarget::PathSharedLuBackup) => "backup".into(),
        Ok(PathTarget::PathDataLu) => format!("lu:{}", p.lu),
        _ => "unknown".into(),
    }
}

fn chn_state(s: i32) -> &'static str {
    match ChnState::try_from(s) {
        Ok(ChnState::ChnInstalling) => "INSTALLING",
        Ok(ChnState::ChnInstalled) => "INSTALLED",
        Ok(ChnState::ChnRemoved) => "REMOVED",
        _ => "UNKNOWN",
    }
}

fn service_state(s: i32) -> &'static str {
    match ServiceState::try_from(s) {
        Ok(ServiceState::ServiceServing) => "serving",
        Ok(ServiceState::ServiceFailingOver) => "failing over",
        Ok(ServiceState::ServiceStopped) => "stopped",
        _ => "unknown",
    }
}

fn chn_json(d: &Daemon) -> Value {
    json!({"chn": d.chn, "node_id": d.node_id, "address": d.address, "state": chn_state(d.state)})
}
