//! `nasctl`: the management terminal of the NAS cluster.
//!
//! `main.rs` parses the command line and hands each command group to its
//! module; every call goes through `nas_client::Cluster`, so any CHN can
//! be named in --cluster. Errors are
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

mod audit;
mod auth;
mod backups;
mod chn;
mod cluster;
mod drill;
mod events;
mod exports;
mod failover;
mod files;
mod local_cluster;
mod netns;
mod output;
mod probes;
mod setup;
mod shared_lu;
mod snapshots;
mod storage;
mod users;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand};

use ::nas_client::{Cluster, CLUSTER_ENV};

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
    /// The cluster CA certificate CHNs are verified with (`cluster up`
    /// writes its path to cluster.env).
    #[arg(long, global = true, env = ::nas_client::CA_ENV, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Talk plaintext, without TLS, to CHNs started with --insecure
    /// (debugging only: passwords and data cross the network readable).
    #[arg(long, global = true, env = "NAS_INSECURE")]
    insecure: bool,
    #[command(flatten)]
    login: files::Login,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone, Copy)]
pub(crate) struct ReadOpts {
    /// Answer from the contacted CHN's copy without asking the leader (may be stale).
    #[arg(long)]
    pub(crate) local: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start, stop and inspect a cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// The shared LU itself.
    #[command(subcommand, name = "shared-lu")]
    SharedLu(shared_lu::SharedLuCmd),
    /// Paths from CHNs to the shared LU, its backup and data LUs.
    #[command(subcommand)]
    Path(shared_lu::PathCmd),
    /// The disk array.
    #[command(subcommand)]
    Array(storage::ArrayCmd),
    /// Physical disks.
    #[command(subcommand)]
    Disk(storage::DiskCmd),
    /// Logical units (RAID groups).
    #[command(subcommand)]
    Lu(storage::LuCmd),
    /// CHNs (NAS heads): install, list, remove.
    #[command(subcommand)]
    Chn(chn::ChnCmd),
    /// Log in to the Admin service: a token for USER (default $NAS_ADMIN_USER,
    /// else admin) stored in ~/.config/nas/token (mode 0600). The password
    /// comes from --password-file, $NAS_ADMIN_PASSWORD, the terminal or
    /// standard input.
    Login {
        user: Option<String>,
        /// Read the password from this file (its first line).
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
        /// How long the token is valid, in hours (at most 24).
        #[arg(long, default_value_t = 8)]
        hours: u64,
    },
    /// Forget the stored Admin token.
    Logout,
    /// The audit log: every Admin change, every login and every refused
    /// call (who, from where, on which CHN, what, and the answer). Needs admin.
    Audit(audit::AuditArgs),
    /// The event log: failovers, failed and replaced disks, LU health,
    /// rebuilds and scrubs, CHNs joining, failing and leaving, leader and
    /// quorum changes. Needs viewer.
    Events(events::EventsArgs),
    /// Roles of users on the Admin service: viewer, operator, admin.
    #[command(subcommand)]
    Role(auth::RoleCmd),
    /// Users of the file service.
    #[command(subcommand)]
    User(users::UserCmd),
    /// Exports (the service table).
    #[command(subcommand)]
    Export(exports::ExportCmd),
    /// Client sessions recorded in the shared LU.
    #[command(subcommand)]
    Client(exports::ClientCmd),
    /// Snapshots of an export: create, list, delete; read one as EXPORT@NAME:/path.
    #[command(subcommand)]
    Snapshot(snapshots::SnapshotCmd),
    /// Backups of exports to a directory or an S3 object store: create,
    /// list, verify, restore, prune, schedule.
    #[command(subcommand)]
    Backup(backups::BackupCmd),
    /// Probes: keyed registers in the shared LU for end-to-end checks.
    #[command(subcommand)]
    Probe(probes::ProbeCmd),
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
    /// (exit 0) or not (exit 1). Plain `health` is liveness (the process
    /// runs: the container HEALTHCHECK); `--ready` is readiness: the CHN
    /// has a quorum (nas.v1.Admin) and every export it owns is open and
    /// unfenced (nas.v1.Nas).
    Health {
        /// The nasd [default: the local one at $NASD_LISTEN, else 127.0.0.1:7000].
        #[arg(long)]
        addr: Option<String>,
        /// The service to ask about ("" is the whole server; nas.v1.Nas the file service).
        #[arg(long, default_value = "", conflicts_with = "ready")]
        service: String,
        /// Ready for both services, not merely running.
        #[arg(long)]
        ready: bool,
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
    list: Option<exports::LockCmd>,
    #[command(flatten)]
    take: Option<files::TakeLock>,
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

fn transport(cli: &Cli) -> anyhow::Result<::nas_client::Transport> {
    Ok(::nas_client::client_transport(cli.ca.as_deref(), cli.insecure)?)
}

fn connect(cli: &Cli) -> anyhow::Result<Cluster> {
    let list = cli.cluster.as_deref().unwrap_or("");
    if list.trim().is_empty() {
        return Err(::nas_client::ConnectError::NoAddress.into());
    }
    Ok(Cluster::from_list(list, transport(cli)?)?
        .with_retry_for(std::time::Duration::from_secs(cli.retry_secs))
        .with_credential(auth::credential()))
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
    if s.message().contains("h2 protocol error") {
        return anyhow!(
            "the CHN did not speak plaintext HTTP/2 ({}): it serves TLS; drop --insecure / NAS_INSECURE and give --ca or NAS_CA",
            s.message()
        );
    }
    anyhow!("{} ({:?})", s.message(), s.code())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (json, retry) = (cli.json, Duration::from_secs(cli.retry_secs));
    // Only parses the addresses: commands that start CHNs need none.
    let conn = connect(&cli);
    let transport = transport(&cli);
    match cli.command {
        Cmd::Cluster(cmd) => cluster::run(cmd, conn, transport, json).await,
        Cmd::Health { addr, service, ready } => {
            let services = if ready {
                vec!["nas.v1.Admin".to_string(), "nas.v1.Nas".to_string()]
            } else {
                vec![service]
            };
            for s in &services {
                cluster::health(addr.as_deref(), s, cli.ca.as_deref(), cli.insecure, json).await?;
            }
            Ok(())
        }
        Cmd::SharedLu(cmd) => shared_lu::run_shared_lu(&conn?, cmd, json).await,
        Cmd::Path(cmd) => shared_lu::run_path(&conn?, cmd, json).await,
        Cmd::Array(cmd) => storage::run_array(&conn?, cmd, json).await,
        Cmd::Disk(cmd) => storage::run_disk(&conn?, cmd, json).await,
        Cmd::Lu(cmd) => storage::run_lu(&conn?, cmd, json).await,
        Cmd::Chn(cmd) => chn::run(&conn?, cmd, json, retry).await,
        Cmd::Login {
            user,
            password_file,
            hours,
        } => auth::login(&conn?, user, password_file, Duration::from_secs(hours * 3600), json).await,
        Cmd::Logout => auth::logout(json),
        Cmd::Audit(a) => audit::run(&conn?, a, json).await,
        Cmd::Events(a) => events::run(&conn?, a, json).await,
        Cmd::Role(cmd) => auth::run_role(&conn?, cmd, json).await,
        Cmd::User(cmd) => users::run(&conn?, cmd, json).await,
        Cmd::Export(cmd) => exports::run(&conn?, cmd, json).await,
        Cmd::Client(cmd) => exports::run_client(&conn?, cmd, json).await,
        Cmd::Snapshot(cmd) => snapshots::run(&conn?, cmd, json).await,
        Cmd::Backup(cmd) => backups::run(&conn?, cmd, json).await,
        Cmd::Probe(cmd) => probes::run(&conn?, cmd, json).await,
        Cmd::Fs(cmd) => files::run_fs(&conn?, &cli.login, cmd, json, retry).await,
        Cmd::Unlock { target, session } => files::break_lock(&conn?, &target, session, json).await,
        Cmd::Failover(cmd) => failover::run(&conn?, cmd, json).await,
        Cmd::Drill(args) => drill::run(&conn?, &cli.login, args, json).await,
        Cmd::Lock(LockArgs { take: Some(take), .. }) => files::take_lock(&conn?, &cli.login, take, json, retry).await,
        Cmd::Lock(LockArgs {
            list: Some(exports::LockCmd::List(o)),
            ..
        }) => exports::lock_list(&conn?, o, json).await,
        Cmd::Lock(LockArgs { list: None, take: None }) => {
            bail!("give EXPORT:/path to take a lock, or `lock list` to see the lock tables")
        }
    }
}
