//! `cluster` and `health`: starting, stopping, setting up and inspecting a
//! cluster, and the container health check.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use ::nas_client::{parse_size, Cluster, CLUSTER_ENV};

use crate::output::Table;
use crate::users::read_password;
use crate::{local_cluster, setup, status_err};

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
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
        /// Plaintext, without TLS (debugging, and measuring what TLS
        /// costs): anyone who reaches a port can read the traffic and call
        /// the Raft service. Only for a new DIR.
        #[arg(long)]
        insecure: bool,
        /// Give the CHNs no web port: no status page and no metrics (to
        /// measure what metrics cost). Only for a new DIR.
        #[arg(long)]
        no_web: bool,
    },
    /// Stop every CHN started under DIR (SIGTERM, then SIGKILL after 10 s). Data is kept.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Members, leader, term, applied index and each CHN's heartbeat age.
    Status,
    /// Start the named stopped CHNs of DIR in the order given and return at
    /// once (drills: restart CHNs in a chosen order).
    Start {
        #[arg(long)]
        dir: PathBuf,
        /// CHN names, e.g. CHN2 CHN3.
        #[arg(required = true)]
        chns: Vec<String>,
        /// The nasd binary [default: beside nasctl, then PATH].
        #[arg(long, env = "NASD_BIN")]
        nasd: Option<PathBuf>,
    },
    /// Cut CHN off the network of a `cluster up --netns` cluster (its link
    /// to the bridge goes down); `cluster heal` puts it back.
    Cut {
        #[arg(long)]
        dir: PathBuf,
        chn: String,
    },
    /// Put a CHN cut off with `cluster cut` back on the network.
    Heal {
        #[arg(long)]
        dir: PathBuf,
        chn: String,
    },
    /// Drop every packet CHN FROM sends to CHN TO (a one-way partition on a
    /// `cluster up --netns` cluster); `cluster undrop` lets them pass.
    Drop {
        #[arg(long)]
        dir: PathBuf,
        from: String,
        to: String,
    },
    /// Let packets dropped by `cluster drop` pass again.
    Undrop {
        #[arg(long)]
        dir: PathBuf,
        from: String,
        to: String,
    },
    /// Make the cluster CA and a certificate for each CHN in DIR, keeping
    /// any that exist (the compose `certs` service runs it before the
    /// CHNs start). Give each nasd --tls-cert DIR/NAME.crt, --tls-key
    /// DIR/NAME.key and --tls-ca DIR/ca.crt (NAME in lower case), and
    /// clients --ca DIR/ca.crt. Keys are written mode 0600; keep ca.key
    /// away from the CHNs if you can (only this command needs it).
    Certs {
        #[arg(long, env = "NAS_CERTS_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        chns: ChnList,
    },
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
    /// Start a new cluster from a shared LU backup, after every CHN's data
    /// directory was lost (or the Raft group lost its majority for good).
    ///
    /// Stop every nasd and move its data directory away first: the CHNs
    /// must start with empty data directories. The first CHN starts a new
    /// shared LU from the copy and the others are installed into it. Disks,
    /// LUs, users, exports and paths come back, and the exports are served
    /// again from their LUs; client sessions and file locks do not (clients
    /// log in again), and changes made after the copy's log index are not
    /// in it. Passwords are the ones the copy holds.
    Restore(RestoreArgs),
}

#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// A local cluster folder from `cluster up`: its stopped CHNs are
    /// started (their data directories must be empty) and the cluster is
    /// restored into them.
    #[arg(long, required_unless_present = "chns", conflicts_with = "chns")]
    dir: Option<PathBuf>,
    /// Or CHNs already running elsewhere (containers, other hosts), as
    /// NAME=HOST:PORT in install order, as `cluster setup --chn` takes them;
    /// the first restores, the others join.
    #[arg(long = "chn", value_delimiter = ',', value_name = "NAME=HOST:PORT")]
    chns: Vec<setup::NodeSpec>,
    /// Take the newest good copy in the backup location on the disk array
    /// (ARRAY/shared-lu-backup, as the first CHN sees it).
    #[arg(long, required_unless_present = "from", conflicts_with = "from")]
    from_array: bool,
    /// Take a copy saved with `shared-lu backup --to`: the file, or the
    /// target (a directory, or s3://BUCKET/PREFIX with the endpoint and
    /// credentials in AWS_* variables) whose newest good copy is taken.
    #[arg(long, value_name = "FILE|TARGET")]
    from: Option<String>,
    /// Restore a copy made for another disk array than the CHNs see.
    #[arg(long)]
    force: bool,
    /// The nasd binary, with --dir [default: beside nasctl, then PATH].
    #[arg(long, env = "NASD_BIN")]
    nasd: Option<PathBuf>,
    /// Seconds to wait for every CHN to answer and for the cluster to be healthy.
    #[arg(long, default_value_t = 120)]
    wait_s: u64,
}

/// The CHNs of a cluster, as `cluster certs` and `cluster setup` take them.
#[derive(Args)]
pub(crate) struct ChnList {
    /// A CHN as NAME=HOST:PORT, in install order (the first bootstraps);
    /// repeat it or separate with commas. nasd must run with that name,
    /// and the host goes into its certificate.
    #[arg(
        long = "chn",
        env = "NAS_SETUP_CHNS",
        value_delimiter = ',',
        required = true,
        value_name = "NAME=HOST:PORT"
    )]
    chns: Vec<setup::NodeSpec>,
}

#[derive(Args)]
pub(crate) struct SetupArgs {
    #[command(flatten)]
    chns: ChnList,
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

/// `cluster certs`: the CA and every CHN's certificate in `dir`.
fn certs(dir: &std::path::Path, chns: &[setup::NodeSpec], json: bool) -> anyhow::Result<()> {
    let certs = ::nas_client::pki::CertDir::new(dir);
    let ca_made = certs.ensure_ca()?;
    let mut made = Vec::new();
    for c in chns {
        if certs.ensure_chn(&c.name, &[::nas_client::pki::host_of(&c.addr)])? {
            made.push(c.name.clone());
        }
    }
    if json {
        outln!(
            "{}",
            json!({"dir": dir, "ca": certs.ca_cert(), "ca_made": ca_made, "chn_certificates_made": made})
        );
    } else {
        outln!(
            "certificates in {}: CA {}, CHN certificates made for [{}] (existing ones kept)",
            dir.display(),
            if ca_made { "made" } else { "kept" },
            made.join(", ")
        );
    }
    Ok(())
}

/// CHNs that already run (containers, other hosts), with the first
/// admin's credential (name, password) from the environment, once every
/// one answers; and whether each already belongs to a cluster.
async fn running(
    chns: &[setup::NodeSpec],
    transport: ::nas_client::Transport,
    wait: Duration,
) -> anyhow::Result<(Cluster, (String, String), Vec<bool>)> {
    let addrs: Vec<&str> = chns.iter().map(|n| n.addr.as_str()).collect();
    let (admin, password) = crate::auth::first_admin()?;
    let credential = ::nas_client::Credential::Password {
        user: admin.clone(),
        password: password.clone(),
    };
    let cluster = Cluster::new(&addrs, transport)?
        .with_retry_for(wait)
        .with_credential(credential);
    let initialized =
        setup::wait_answering(&cluster, chns, wait, |_| "is its nasd running and reachable?".into()).await?;
    Ok((cluster, (admin, password), initialized))
}

/// `cluster setup`: the setup sequence on running CHNs, then provisioning.
async fn cluster_setup(a: &SetupArgs, transport: ::nas_client::Transport, json: bool) -> anyhow::Result<()> {
    let chns = &a.chns.chns;
    let addrs: Vec<&str> = chns.iter().map(|n| n.addr.as_str()).collect();
    let wait = Duration::from_secs(a.wait_s);
    let (cluster, (admin, password), initialized) = running(chns, transport, wait).await?;
    setup::install(&cluster, chns, &initialized, (&admin, &password), false).await?;
    let status = setup::wait_healthy(&cluster, chns.len(), wait).await?;
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
                let owner = a.export_chn.clone().unwrap_or_else(|| chns[0].name.clone());
                let partner = a
                    .export_partner
                    .clone()
                    .or_else(|| chns.iter().map(|n| n.name.clone()).find(|n| *n != owner))
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
            json!({"cluster": list, "leader": status.leader_name, "term": status.term, "chns": chns.len()})
        );
    } else {
        outln!(
            "cluster of {} CHNs set up (leader {}, term {}); talk to it with {CLUSTER_ENV}={list}",
            chns.len(),
            status.leader_name,
            status.term
        );
    }
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
                "possibly_stale": s.possibly_stale,
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
    if s.possibly_stale {
        eprintln!("(no quorum confirmed this answer: the shared LU line is this CHN's own copy, maybe stale)");
    }
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

/// `health`: one standard gRPC health check, for container HEALTHCHECKs.
pub(crate) async fn health(
    addr: Option<&str>,
    service: &str,
    ca: Option<&std::path::Path>,
    insecure: bool,
    json: bool,
) -> anyhow::Result<()> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let addr = match addr {
        Some(a) => a.to_string(),
        // nasd listens on all addresses in a container; ask it over loopback.
        None => std::env::var("NASD_LISTEN")
            .ok()
            .and_then(|l| l.rsplit_once(':').map(|(_, port)| format!("127.0.0.1:{port}")))
            .unwrap_or_else(|| "127.0.0.1:7000".into()),
    };
    // In a CHN's container the CHN's own settings say how to reach it.
    let ca = ca
        .map(std::path::PathBuf::from)
        .or_else(|| crate::auth::env("NASD_TLS_CA").map(Into::into));
    let insecure = insecure || crate::auth::env("NASD_INSECURE").is_some_and(|v| v != "false" && v != "0");
    let transport = if insecure {
        ::nas_client::Transport::Insecure
    } else {
        ::nas_client::client_transport(ca.as_deref(), false)?
    };
    let endpoint = transport
        .endpoint(&addr)?
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
    } else if service.is_empty() {
        outln!("{addr}: {}", status.as_str_name());
    } else {
        outln!("{addr} {service}: {}", status.as_str_name());
    }
    if status != ServingStatus::Serving {
        let what = if service.is_empty() {
            String::new()
        } else {
            format!(" {service}")
        };
        bail!(
            "{addr}{what} is not serving ({}); its log says why (\"readiness changed\")",
            status.as_str_name()
        );
    }
    Ok(())
}

pub(crate) async fn run(
    cmd: ClusterCmd,
    conn: anyhow::Result<Cluster>,
    transport: anyhow::Result<::nas_client::Transport>,
    json: bool,
) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Up {
            nodes,
            dir,
            nasd,
            nasd_args,
            netns,
            insecure,
            no_web,
        } => up(nodes, dir, nasd, nasd_args, (netns, insecure, no_web), json).await,
        ClusterCmd::Down { dir } => local_cluster::down(&dir, json).await,
        ClusterCmd::Setup(a) => cluster_setup(&a, transport?, json).await,
        ClusterCmd::Restore(a) => cluster_restore(a, transport, json).await,
        ClusterCmd::Certs { dir, chns } => certs(&dir, &chns.chns, json),
        ClusterCmd::Status => cluster_status(&conn?, json).await,
        ClusterCmd::Start { dir, chns, nasd } => local_cluster::start(&dir, &chns, nasd, json),
        ClusterCmd::Cut { dir, chn } => local_cluster::cut(&dir, &chn, true, json),
        ClusterCmd::Heal { dir, chn } => local_cluster::cut(&dir, &chn, false, json),
        ClusterCmd::Drop { dir, from, to } => local_cluster::drop_to(&dir, &from, &to, true, json),
        ClusterCmd::Undrop { dir, from, to } => local_cluster::drop_to(&dir, &from, &to, false, json),
    }
}

async fn up(
    nodes: Option<usize>,
    dir: PathBuf,
    nasd: Option<PathBuf>,
    nasd_args: Vec<String>,
    (netns, insecure, no_web): (bool, bool, bool),
    json: bool,
) -> anyhow::Result<()> {
    local_cluster::up(local_cluster::UpOptions {
        nodes,
        dir,
        nasd,
        nasd_args: (!nasd_args.is_empty()).then_some(nasd_args),
        netns,
        insecure,
        no_web,
        json,
        quiet: false,
        restore: None,
    })
    .await
}

/// `cluster restore`: a new shared LU from a backup, on a local cluster
/// folder or on CHNs running elsewhere.
async fn cluster_restore(
    a: RestoreArgs,
    transport: anyhow::Result<::nas_client::Transport>,
    json: bool,
) -> anyhow::Result<()> {
    let restore = setup::Restore {
        from: match a.from {
            Some(path) => setup::RestoreFrom::Saved(path),
            None => setup::RestoreFrom::Array,
        },
        force: a.force,
    };
    if let Some(dir) = a.dir {
        if local_cluster::load_layout(&dir)?.nodes.is_empty() {
            bail!(
                "{} holds no cluster made by `cluster up` (no cluster.json); restore into the folder the cluster ran in",
                dir.display()
            );
        }
        return local_cluster::up(local_cluster::UpOptions {
            nodes: None,
            dir,
            nasd: a.nasd,
            nasd_args: None,
            netns: false,
            insecure: false,
            no_web: false,
            json,
            quiet: false,
            restore: Some(restore),
        })
        .await;
    }
    let chns = &a.chns;
    let addrs: Vec<&str> = chns.iter().map(|n| n.addr.as_str()).collect();
    let wait = Duration::from_secs(a.wait_s);
    let (cluster, (admin, password), initialized) = running(chns, transport?, wait).await?;
    let reply = setup::restore(&cluster, chns, &initialized, &restore, json).await?;
    let mut initialized = vec![false; chns.len()];
    initialized[0] = true;
    setup::install(&cluster, chns, &initialized, (&admin, &password), json).await?;
    let status = setup::wait_healthy(&cluster, chns.len(), wait).await?;
    let from = reply.restored_from.unwrap_or_default();
    if json {
        outln!(
            "{}",
            json!({"cluster": addrs.join(","), "leader": status.leader_name, "log_index": from.log_index,
                   "taken_ms": from.taken_ms, "file": from.file})
        );
    } else {
        outln!(
            "cluster of {} CHNs restored to log index {} (leader {}); talk to it with {CLUSTER_ENV}={}",
            chns.len(),
            from.log_index,
            status.leader_name,
            addrs.join(",")
        );
    }
    Ok(())
}
