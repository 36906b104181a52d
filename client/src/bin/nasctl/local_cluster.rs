//! `nasctl cluster up/down`: a cluster of local `nasd` processes on
//! loopback, one folder per CHN under DIR.
//!
//! Owns the folder layout (DIR/cluster.json, DIR/cluster.env,
//! DIR/array, DIR/<chn>/{data,nasd.log,nasd.pid}), starting and stopping
//! the processes, and driving the setup sequence (docs/ARCHITECTURE.md). It must
//! never touch a process it did not start (pid files are checked against
//! /proc) and never wipe existing data: running `up` again restarts the
//! same cluster with its state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use ::nas_client::pki::{host_of, CertDir};
use ::nas_client::Cluster;

use crate::setup::{self, NodeSpec};

/// What `cluster up` remembers in DIR/cluster.json.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Layout {
    pub nodes: Vec<NodeSpec>,
    /// Extra arguments passed to every nasd.
    #[serde(default)]
    pub nasd_args: Vec<String>,
    /// Each CHN in a network namespace of its own (`--netns`).
    #[serde(default)]
    pub netns: bool,
    /// Plaintext, no TLS (`--insecure`): for debugging and for measuring
    /// what TLS costs.
    #[serde(default)]
    pub insecure: bool,
    /// Each CHN's web port (metrics and status page), by CHN name.
    #[serde(default)]
    pub web: std::collections::BTreeMap<String, String>,
    /// No web ports (`--no-web`).
    #[serde(default)]
    pub no_web: bool,
}

/// Options of `cluster up`.
pub struct UpOptions {
    pub nodes: Option<usize>,
    pub dir: PathBuf,
    pub nasd: Option<PathBuf>,
    pub nasd_args: Option<Vec<String>>,
    pub netns: bool,
    pub insecure: bool,
    /// No web port for the CHNs of a new cluster.
    pub no_web: bool,
    pub json: bool,
    /// Print nothing (a drill restarting a CHN).
    pub quiet: bool,
    /// Start the shared LU from a backup instead of bootstrapping an empty
    /// one (`cluster restore --dir`).
    pub restore: Option<setup::Restore>,
}

fn layout_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

fn node_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(name.to_lowercase())
}

/// Loads DIR/cluster.json, or an empty layout when there is none.
pub fn load_layout(dir: &Path) -> anyhow::Result<Layout> {
    let path = layout_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Layout::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A free loopback port *below* the kernel's ephemeral range. A port from
/// that range can be taken, while its CHN is down, as the source port of
/// some outgoing connection (even of a client retrying that very port,
/// which then connects to itself), and the restarted CHN could not listen.
fn free_port() -> anyhow::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let start = low + (rand::random::<u16>() % (high - low));
    for i in 0..(high - low) {
        let port = low + (start - low + i) % (high - low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The pid in DIR/<chn>/nasd.pid when that process is alive and is a nasd.
pub fn running_pid(dir: &Path, name: &str) -> Option<i32> {
    let text = std::fs::read_to_string(node_dir(dir, name).join("nasd.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_nasd = cmdline
        .split(|b| *b == 0)
        .next()
        .is_some_and(|arg0| arg0.ends_with(b"nasd"));
    // A zombie still has a /proc entry; its state letter is Z.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (is_nasd && !zombie).then_some(pid)
}

/// Finds the nasd binary: --nasd, $NASD_BIN, beside nasctl, then PATH.
/// Under `cargo run` it first builds nasd so that it is never stale.
fn find_nasd(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("NASD_BIN").map(PathBuf::from)) {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot locate nasctl itself")?;
    let dir = exe.parent().context("nasctl has no parent directory")?;
    let beside = dir.join("nasd");
    if let (Some(cargo), Some(manifest)) = (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR")) {
        let release = dir.file_name().is_some_and(|n| n == "release");
        eprintln!("building nasd (cargo run) ...");
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "nasd", "--bin", "nasd"])
            .current_dir(manifest);
        if release {
            build.arg("--release");
        }
        let status = build.status().context("cannot run cargo to build nasd")?;
        if !status.success() {
            bail!("building nasd failed; run `cargo build --release -p nasd` to see why");
        }
    }
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("nasd").is_file() {
                return Ok(d.join("nasd"));
            }
        }
    }
    bail!(
        "cannot find nasd beside {} or on PATH; build it (cargo build --release) or pass --nasd PATH",
        exe.display()
    )
}

/// The URL of a CHN's status page, if it serves one.
fn web_url(layout: &Layout, name: &str) -> Option<String> {
    let scheme = if layout.insecure { "http" } else { "https" };
    layout.web.get(name).map(|w| format!("{scheme}://{w}/"))
}

/// The cluster's certificates: DIR/tls.
fn cert_dir(dir: &Path) -> CertDir {
    CertDir::new(dir.join("tls"))
}

fn spawn_nasd(nasd: &Path, dir: &Path, node: &NodeSpec, layout: &Layout, ns: Option<&str>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let ndir = node_dir(dir, &node.name);
    std::fs::create_dir_all(&ndir).with_context(|| format!("cannot create {}", ndir.display()))?;
    let log_path = ndir.join("nasd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // `ip netns exec` enters the namespace and execs nasd in place, so the
    // pid is nasd's.
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(nasd);
            c
        }
        None => Command::new(nasd),
    };
    if layout.insecure {
        cmd.arg("--insecure");
    } else {
        let certs = cert_dir(dir);
        let (cert, key) = certs.chn_files(&node.name);
        cmd.arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--tls-ca")
            .arg(certs.ca_cert());
    }
    let child = cmd
        .arg("--name")
        .arg(&node.name)
        .arg("--listen")
        .arg(&node.addr)
        .arg("--data")
        .arg(ndir.join("data"))
        .arg("--array")
        .arg(dir.join("array"))
        .args(layout.web.get(&node.name).map(|w| format!("--metrics-listen={w}")))
        .args(&layout.nasd_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal must not stop the cluster.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", nasd.display()))?;
    std::fs::write(ndir.join("nasd.pid"), format!("{}\n", child.id()))?;
    Ok(())
}

/// `cluster up`: start (or restart, or grow) the local cluster and run the
/// setup sequence.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = &dir.canonicalize()?;
    let mut layout = load_layout(dir)?;
    let new_cluster = layout.nodes.is_empty();
    let wanted = opts.nodes.unwrap_or(layout.nodes.len().max(3));
    if wanted == 0 || wanted > 9 {
        bail!("--nodes must be 1 to 9");
    }
    if wanted < layout.nodes.len() {
        bail!(
            "{} already holds {} CHNs; `cluster up` never removes CHNs (use `nasctl chn remove NAME`, or `cluster down` and a new --dir)",
            dir.display(),
            layout.nodes.len()
        );
    }
    if layout.nodes.is_empty() {
        layout.netns = opts.netns;
        layout.insecure = opts.insecure;
        layout.no_web = opts.no_web;
    } else if opts.netns && !layout.netns {
        bail!(
            "{} holds a cluster on loopback; --netns applies only to a new cluster folder",
            dir.display()
        );
    }
    let net = crate::netns::Net::for_dir(dir);
    for i in layout.nodes.len()..wanted {
        let addr = if layout.netns {
            net.addr(i)
        } else {
            format!("127.0.0.1:{}", free_port()?)
        };
        layout.nodes.push(NodeSpec {
            name: format!("CHN{}", i + 1),
            addr,
        });
    }
    for (i, node) in layout.nodes.iter().enumerate() {
        if !layout.no_web && !layout.web.contains_key(&node.name) {
            let web = if layout.netns {
                format!("{}:9100", net.addr(i).trim_end_matches(":7000"))
            } else {
                format!("127.0.0.1:{}", free_port()?)
            };
            layout.web.insert(node.name.clone(), web);
        }
    }
    if let Some(args) = opts.nasd_args {
        layout.nasd_args = args;
    }
    std::fs::create_dir_all(dir.join("array"))?;
    std::fs::write(layout_path(dir), serde_json::to_string_pretty(&layout)?)?;

    let certs = cert_dir(dir);
    certs.ensure_ca()?;
    for node in &layout.nodes {
        certs.ensure_chn(&node.name, &[host_of(&node.addr)])?;
    }
    let nasd = find_nasd(opts.nasd)?;
    for (i, node) in layout.nodes.iter().enumerate() {
        if running_pid(dir, &node.name).is_none() {
            let ns = if layout.netns {
                net.ensure(i)?;
                Some(net.ns(i))
            } else {
                None
            };
            spawn_nasd(&nasd, dir, node, &layout, ns.as_deref())?;
        }
    }
    let addrs: Vec<String> = layout.nodes.iter().map(|n| n.addr.clone()).collect();
    let (admin, password, password_file) = admin_password(dir, new_cluster && opts.restore.is_none())?;
    let credential = ::nas_client::Credential::Password {
        user: admin.clone(),
        password: password.clone(),
    };
    let transport = if layout.insecure {
        ::nas_client::Transport::Insecure
    } else {
        ::nas_client::Transport::Tls(certs.client_files()?)
    };
    let cluster = Cluster::new(&addrs, transport)?.with_credential(credential);
    let initialized = setup::wait_answering(&cluster, &layout.nodes, Duration::from_secs(30), |node| {
        format!("log: {}", node_dir(dir, &node.name).join("nasd.log").display())
    })
    .await?;
    let initialized = match &opts.restore {
        Some(r) => {
            setup::restore(&cluster, &layout.nodes, &initialized, r, opts.quiet).await?;
            let mut now = vec![false; initialized.len()];
            now[0] = true;
            now
        }
        None => initialized,
    };
    setup::install(&cluster, &layout.nodes, &initialized, (&admin, &password), opts.quiet).await?;
    let n = layout.nodes.len();
    let status = setup::wait_healthy(&cluster, n, Duration::from_secs(30)).await?;

    let env_line = format!("NAS_CLUSTER={}", addrs.join(","));
    let ca_line = if layout.insecure {
        "NAS_INSECURE=true".to_string()
    } else {
        format!("{}={}", ::nas_client::CA_ENV, certs.ca_cert().display())
    };
    std::fs::write(dir.join("cluster.env"), format!("{env_line}\n{ca_line}\n"))?;
    if opts.quiet {
        return Ok(());
    }
    if opts.json {
        let nodes: Vec<_> = layout
            .nodes
            .iter()
            .map(|n| serde_json::json!({"name": n.name, "address": n.addr, "web": web_url(&layout, &n.name), "pid": running_pid(dir, &n.name), "dir": node_dir(dir, &n.name)}))
            .collect();
        outln!(
            "{}",
            serde_json::json!({"cluster": addrs.join(","), "leader": status.leader_name, "nodes": nodes, "env_file": dir.join("cluster.env"), "ca": certs.ca_cert(), "admin": admin, "admin_password_file": password_file})
        );
        return Ok(());
    }
    outln!(
        "\nCluster of {n} CHNs is up (leader {}, term {}):",
        status.leader_name,
        status.term
    );
    for node in &layout.nodes {
        let pid = running_pid(dir, &node.name).map_or("-".into(), |p| p.to_string());
        outln!(
            "  {:<5} {:<16} pid {:<8} {}",
            node.name,
            node.addr,
            pid,
            node_dir(dir, &node.name).display()
        );
    }
    if let Some(url) = layout.nodes.first().and_then(|n| web_url(&layout, &n.name)) {
        outln!(
            "\nStatus page and Prometheus metrics (/metrics) of each CHN, e.g. {url} (log in as {admin}; {}):",
            if layout.insecure {
                "plain HTTP"
            } else {
                "TLS, signed by the cluster CA in DIR/tls"
            }
        );
        for node in &layout.nodes {
            outln!(
                "  {:<5} {}",
                node.name,
                web_url(&layout, &node.name).unwrap_or_default()
            );
        }
    }
    outln!("\nNext:");
    outln!("  export $(cat {})", dir.join("cluster.env").display());
    if opts.restore.is_some() {
        outln!("  nasctl cluster status && nasctl export list && nasctl lu list");
        return Ok(());
    }
    if let Ok(me) = std::env::current_exe() {
        let on_path =
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nasctl") == me));
        if !on_path {
            outln!("  alias nasctl={}", me.display());
        }
    }
    match &password_file {
        Some(f) => outln!("  nasctl login {admin} --password-file {}", f.display()),
        None => outln!("  nasctl login {admin}    # the password in $NAS_ADMIN_PASSWORD"),
    }
    outln!("  nasctl cluster status");
    outln!("  nasctl array init --disks 6 --size 64M && nasctl lu create --raid 5 --disks 1,2,3");
    outln!("  nasctl user add alice && nasctl export create home --lu 1 --chn CHN1 --partner CHN2 --users alice");
    outln!("  export NAS_USER=alice   # and NAS_PASSWORD, or type it when asked");
    outln!("  nasctl fs put ./README.md home:/README.md && nasctl fs ls home:/ && nasctl fs stat home:/README.md");
    outln!("  nasctl cluster down --dir {}", dir.display());
    Ok(())
}

/// The first admin's name and password for a local cluster: from
/// $NAS_ADMIN_PASSWORD, else the file DIR/admin.password, which a new
/// cluster gets with a random password (mode 0600). The file's path is
/// returned when it was used.
fn admin_password(dir: &Path, new_cluster: bool) -> anyhow::Result<(String, String, Option<PathBuf>)> {
    let user = crate::auth::env(crate::auth::ADMIN_USER_ENV).unwrap_or_else(|| crate::auth::DEFAULT_ADMIN.into());
    if let Some(p) = crate::auth::env(crate::auth::ADMIN_PASSWORD_ENV) {
        return Ok((user, p, None));
    }
    let file = dir.join("admin.password");
    let password = match std::fs::read_to_string(&file) {
        Ok(p) => p.trim_end_matches(['\n', '\r']).to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && new_cluster => {
            let p = crate::auth::generate_password();
            crate::auth::write_private(&file, &format!("{p}\n"))?;
            p
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read {}; set {} to the first admin's password",
                    file.display(),
                    crate::auth::ADMIN_PASSWORD_ENV
                )
            })
        }
    };
    Ok((user, password, Some(file)))
}

/// `cluster start`: starts the named CHNs of DIR that are not running, in
/// the order given, and returns without waiting for them (drills restart
/// CHNs in a chosen order; `cluster up` waits for all of them).
pub fn start(dir: &Path, names: &[String], nasd: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("{} does not exist", dir.display()))?;
    let layout = load_layout(dir)?;
    let nasd = find_nasd(nasd)?;
    let net = crate::netns::Net::for_dir(dir);
    let mut started = Vec::new();
    for name in names {
        let i = index_of(&layout, dir, name)?;
        if running_pid(dir, name).is_some() {
            continue;
        }
        let ns = layout.netns.then(|| net.ns(i));
        spawn_nasd(&nasd, dir, &layout.nodes[i], &layout, ns.as_deref())?;
        started.push(name.clone());
    }
    if json {
        outln!("{}", serde_json::json!({ "started": started }));
    } else {
        outln!(
            "started {}",
            if started.is_empty() {
                "nothing (all running)".into()
            } else {
                started.join(", ")
            }
        );
    }
    Ok(())
}

/// The cluster in `dir` (canonical) and its layout, which must be a
/// `--netns` one for `what`.
fn netns_cluster(dir: &Path, what: &str) -> anyhow::Result<(PathBuf, Layout)> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} does not exist", dir.display()))?;
    let layout = load_layout(&dir)?;
    if !layout.netns {
        bail!(
            "{} is a loopback cluster; {what} needs one made with `cluster up --netns`",
            dir.display()
        );
    }
    Ok((dir, layout))
}

/// The position of CHN `name` in the cluster of `dir`.
fn index_of(layout: &Layout, dir: &Path, name: &str) -> anyhow::Result<usize> {
    layout.nodes.iter().position(|n| n.name == name).with_context(|| {
        format!(
            "{} holds no CHN named {name}; see {}",
            dir.display(),
            layout_path(dir).display()
        )
    })
}

/// `cluster cut` / `cluster heal`: takes CHN `name`'s link to the bridge
/// down or up (a `--netns` cluster only).
pub fn cut(dir: &Path, name: &str, cut: bool, json: bool) -> anyhow::Result<()> {
    let (dir, layout) = netns_cluster(dir, "cutting a CHN off")?;
    crate::netns::Net::for_dir(&dir).cut(index_of(&layout, &dir, name)?, cut)?;
    let what = if cut {
        "cut off the network"
    } else {
        "back on the network"
    };
    if json {
        outln!("{}", serde_json::json!({ "chn": name, "cut": cut }));
    } else {
        outln!("{name} is {what}");
    }
    Ok(())
}

/// `cluster drop` / `cluster undrop`: drops every packet CHN `from`
/// sends to CHN `to`, or stops (a `--netns` cluster only).
pub fn drop_to(dir: &Path, from: &str, to: &str, drop: bool, json: bool) -> anyhow::Result<()> {
    let (dir, layout) = netns_cluster(dir, "dropping packets")?;
    let (from_i, to_i) = (index_of(&layout, &dir, from)?, index_of(&layout, &dir, to)?);
    crate::netns::Net::for_dir(&dir).drop_to(from_i, to_i, drop)?;
    if json {
        outln!("{}", serde_json::json!({ "from": from, "to": to, "dropped": drop }));
    } else if drop {
        outln!("packets from {from} to {to} are dropped");
    } else {
        outln!("packets from {from} to {to} pass again");
    }
    Ok(())
}

/// `cluster down`: SIGTERM every CHN of DIR, then SIGKILL what is left
/// after the grace period.
pub async fn down(dir: &Path, json: bool) -> anyhow::Result<()> {
    let layout = load_layout(dir)?;
    if layout.nodes.is_empty() {
        bail!("{} holds no cluster (no cluster.json)", dir.display());
    }
    let mut stopped = Vec::new();
    for node in &layout.nodes {
        if let Some(pid) = running_pid(dir, &node.name) {
            // SAFETY: plain kill(2) on a pid we started and just checked.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            stopped.push((node.name.clone(), pid));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (name, pid) in &stopped {
        while running_pid(dir, name).is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if running_pid(dir, name).is_some() {
            eprintln!("{name} (pid {pid}) ignored SIGTERM for 10 s; killing it");
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(node_dir(dir, name).join("nasd.pid"));
    }
    if layout.netns {
        crate::netns::Net::for_dir(&dir.canonicalize()?).remove(layout.nodes.len());
    }
    if json {
        let names: Vec<_> = stopped.iter().map(|(n, _)| n.clone()).collect();
        outln!("{}", serde_json::json!({"stopped": names}));
    } else if stopped.is_empty() {
        outln!("no CHN of {} was running", dir.display());
    } else {
        outln!("stopped {} CHN(s); data kept in {}", stopped.len(), dir.display());
    }
    Ok(())
}
