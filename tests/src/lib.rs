//! Test harness: real `nasd` processes started by the real `nasctl`.
//!
//! Owns locating the built binaries, a temporary cluster folder per test,
//! fault injection on processes (kill -9, restart) and waiting on
//! conditions with deadlines. It must never sleep to hide a race: every
//! wait polls a condition and fails loudly at its deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ::nas_client::proto::transport::TlsFiles;
use ::nas_client::proto::{admin_client::AdminClient, ClusterStatusReply, ClusterStatusRequest};
use ::nas_client::{AdminConn, Authorization, Cluster, Credential, Transport};
use anyhow::{bail, Context};
use tonic::transport::Channel;

/// The first admin every test cluster is made with.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-correct-horse";

/// The first admin's password credential.
pub fn admin_credential() -> Credential {
    Credential::Password {
        user: ADMIN_USER.into(),
        password: ADMIN_PASSWORD.into(),
    }
}

pub mod bench;
pub mod browser;
pub mod linearizability;
pub mod nemesis;
pub mod s3;

/// Where the harness takes `nasd` and `nasctl` from instead of this
/// build's, so that a benchmark can run two builds in one sitting.
pub const BIN_DIR_ENV: &str = "NAS_BIN_DIR";

/// A built binary of this workspace (`nasd`, `nasctl`), next to the test
/// executable's profile directory (or in `$NAS_BIN_DIR`).
pub fn bin(name: &str) -> PathBuf {
    let profile_dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>/<name>
            exe.parent()
                .and_then(Path::parent)
                .expect("target profile directory")
                .to_path_buf()
        }
    };
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run the tests with `cargo nextest run --workspace` (or cargo test --workspace)",
        path.display()
    );
    path
}

/// The stdout of a nasctl run that must succeed.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "nasctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `len` reproducible pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// Polls `probe` until it returns `Some`, or fails after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One CHN of a test cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub addr: String,
    /// The status page's URL (metrics at `/metrics`).
    pub web: String,
}

/// A local cluster in a temporary folder; stopped (SIGKILL) when dropped.
pub struct TestCluster {
    dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// Each CHN in a network namespace of its own (`cluster up --netns`).
    netns: bool,
    /// Plaintext, no TLS (`cluster up --insecure`): benchmarks compare.
    insecure: bool,
    /// No web ports (`cluster up --no-web`): benchmarks compare.
    no_web: bool,
    /// The first admin's login token, made once: a password per call
    /// would cost the CHN an argon2 hash every time, and the many clusters
    /// of a test run share two cores.
    token: String,
    /// Environment the CHNs start with (an S3 endpoint and credentials).
    nasd_env: Vec<(&'static str, String)>,
}

impl TestCluster {
    fn start(nodes: usize, nasd_args: &[&str], netns: bool, insecure: bool) -> anyhow::Result<TestCluster> {
        Self::start_with(nodes, nasd_args, (netns, insecure, false), Vec::new())
    }

    fn start_with(
        nodes: usize,
        nasd_args: &[&str],
        (netns, insecure, no_web): (bool, bool, bool),
        nasd_env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("nas-test-").tempdir()?;
        let mut c = TestCluster {
            dir,
            nodes: vec![],
            netns,
            insecure,
            no_web,
            token: String::new(),
            nasd_env,
        };
        c.cluster_up(Some(nodes), nasd_args)?;
        Ok(c)
    }

    /// `nasctl cluster up --nodes N` with the CHNs started in environment
    /// `env` (added to the test's own).
    pub fn up_with_env(nodes: usize, env: Vec<(&'static str, String)>) -> anyhow::Result<TestCluster> {
        Self::start_with(nodes, &[], (false, false, false), env)
    }

    /// `nasctl cluster up --no-web`: CHNs without metrics or a status
    /// page, to measure what they cost.
    pub fn up_without_web(nodes: usize, nasd_args: &[&str]) -> anyhow::Result<TestCluster> {
        Self::start_with(nodes, nasd_args, (false, false, true), Vec::new())
    }

    /// The environment CHNs get when `cluster_up` next starts them.
    pub fn set_nasd_env(&mut self, env: Vec<(&'static str, String)>) {
        self.nasd_env = env;
    }

    /// `nasctl cluster up --nodes N` with extra nasd arguments.
    pub fn up(nodes: usize, nasd_args: &[&str]) -> anyhow::Result<TestCluster> {
        Self::start(nodes, nasd_args, false, false)
    }

    /// `nasctl cluster up --insecure`: the same without TLS, to measure
    /// what TLS costs.
    pub fn up_insecure(nodes: usize, nasd_args: &[&str]) -> anyhow::Result<TestCluster> {
        Self::start(nodes, nasd_args, false, true)
    }

    /// `nasctl cluster up --netns --nodes N`: each CHN in a network
    /// namespace of its own, so that a test can cut one off the network.
    pub fn up_netns(nodes: usize) -> anyhow::Result<TestCluster> {
        Self::start(nodes, &[], true, false)
    }

    /// Runs `cluster up` again: restarts stopped CHNs, or grows the cluster.
    pub fn cluster_up(&mut self, nodes: Option<usize>, nasd_args: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["--json".to_string(), "cluster".into(), "up".into(), "--dir".into()];
        args.push(self.dir.path().display().to_string());
        if let Some(n) = nodes {
            args.extend(["--nodes".into(), n.to_string()]);
        }
        for a in nasd_args {
            args.push(format!("--nasd-arg={a}"));
        }
        if self.netns {
            args.push("--netns".into());
        }
        if self.insecure {
            args.push("--insecure".into());
        }
        if self.no_web {
            args.push("--no-web".into());
        }
        let out = Command::new(bin("nasctl"))
            .args(&args)
            .envs(self.nasd_env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NASD_BIN", bin("nasd"))
            .env("NAS_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("NAS_ADMIN_USER")
            .env_remove("NAS_CLUSTER")
            .output()?;
        if !out.status.success() {
            bail!(
                "nasctl cluster up failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("cluster up --json printed {:?}", String::from_utf8_lossy(&out.stdout)))?;
        self.nodes = v["nodes"]
            .as_array()
            .context("nodes in cluster up output")?
            .iter()
            .map(|n| Node {
                name: n["name"].as_str().unwrap_or_default().into(),
                addr: n["address"].as_str().unwrap_or_default().into(),
                web: n["web"].as_str().unwrap_or_default().into(),
            })
            .collect();
        if self.token.is_empty() {
            self.token = self.log_in()?;
        }
        Ok(())
    }

    /// `nasctl login` as the first admin; the token it stored.
    fn log_in(&self) -> anyhow::Result<String> {
        let out = self.nasctl_as(
            &["--json", "login", ADMIN_USER, "--hours", "24"],
            &[("NAS_ADMIN_PASSWORD", ADMIN_PASSWORD)],
        );
        if !out.status.success() {
            bail!("nasctl login failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let file = v["token_file"].as_str().context("token_file in login output")?;
        Ok(std::fs::read_to_string(file)?.trim().to_string())
    }

    /// The cluster folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `NAS_CLUSTER` value for this cluster.
    pub fn cluster_env(&self) -> String {
        self.nodes.iter().map(|n| n.addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Runs nasctl against this cluster, as its first admin (and, for
    /// file commands, with password `correct-horse`).
    pub fn nasctl(&self, args: &[&str]) -> Output {
        // The token for calls; the password too, for drills that restart
        // CHNs with `cluster up`.
        self.nasctl_as(
            args,
            &[
                ("NAS_TOKEN", self.token.as_str()),
                ("NAS_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ],
        )
    }

    /// Runs nasctl against this cluster with only the Admin credential
    /// `env` gives (a token file lives in the cluster folder).
    pub fn nasctl_as(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin("nasctl"))
            .args(args)
            .env("NAS_CLUSTER", self.cluster_env())
            .envs(if self.insecure {
                vec![("NAS_INSECURE", "true".into())]
            } else {
                vec![("NAS_CA", self.ca_file().display().to_string())]
            })
            .env("NAS_CONFIG_DIR", self.dir().join("nasctl-config"))
            .env_remove("NAS_ADMIN_PASSWORD")
            .env_remove("NAS_ADMIN_USER")
            .env_remove("NAS_TOKEN")
            .envs(env.iter().copied())
            .env("NAS_PASSWORD", "correct-horse")
            // A drill restarts CHNs: with this binary, not one cargo builds.
            .env("NASD_BIN", bin("nasd"))
            .output()
            .expect("run nasctl")
    }

    /// `nasctl --json drill` on this cluster as alice on export `home`,
    /// with `fault` and further drill arguments; its JSON report.
    pub fn drill(&self, fault: &str, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
        let dir = self.dir().display().to_string();
        let mut args = vec![
            "--json", "--user", "alice", "drill", "--dir", &dir, "--export", "home", "--fault", fault,
        ];
        args.extend_from_slice(extra);
        let out = self.nasctl(&args);
        if !out.status.success() {
            bail!(
                "drill failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A file-service session of `user` (password `correct-horse`) on
    /// `export`, found through every CHN.
    pub async fn nas(&self, user: &str, export: &str) -> anyhow::Result<nas_client::NasClient> {
        let opts = nas_client::nas::Options {
            retry_for: Duration::from_secs(60),
            ..Default::default()
        };
        nas_client::NasClient::connect(self.client(), user, "correct-horse", export, opts)
            .await
            .map_err(|s| anyhow::anyhow!("connect {user} to {export}: {s}"))
    }

    /// Sets up file service: a 6-disk array, LU 1 (RAID 5 on disks 1-3)
    /// exported as `home` by CHN1 to alice and bob, LU 2 (RAID 1 on disks
    /// 4-5) exported as `small` by CHN1 to alice only.
    pub fn with_exports(&self) {
        for args in [
            &["array", "init", "--disks", "6", "--size", "64M"][..],
            &["lu", "create", "--raid", "5", "--disks", "1,2,3"],
            &["lu", "create", "--raid", "1", "--disks", "4,5"],
            &["user", "add", "alice"],
            &["user", "add", "bob"],
            &[
                "export",
                "create",
                "home",
                "--lu",
                "1",
                "--chn",
                "CHN1",
                "--partner",
                "CHN2",
                "--users",
                "alice,bob",
            ],
            &[
                "export", "create", "small", "--lu", "2", "--chn", "CHN1", "--users", "alice",
            ],
        ] {
            ok(self.nasctl(args));
        }
    }

    /// Sets up one export to alice: an array of disks of `size`, one LU
    /// per entry of `lus` (`RAID:DISKS`, e.g. `5:1,2,3` or `1:4,5`; as many
    /// disks as the highest named), user alice, and export `home` on LU 1
    /// served by `owner`, with `partner` when given.
    pub fn with_home(&self, size: &str, lus: &[&str], owner: &str, partner: Option<&str>) {
        self.with_home_and_spares(size, lus, 0, owner, partner);
    }

    /// [`TestCluster::with_home`] with `spares` more disks, left NOT USED
    /// (to replace a failed one).
    pub fn with_home_and_spares(&self, size: &str, lus: &[&str], spares: u32, owner: &str, partner: Option<&str>) {
        let disks = (lus
            .iter()
            .filter_map(|l| l.split_once(':'))
            .flat_map(|(_, d)| d.split(',').filter_map(|n| n.parse::<u32>().ok()))
            .max()
            .unwrap_or(0)
            + spares)
            .to_string();
        ok(self.nasctl(&["array", "init", "--disks", &disks, "--size", size]));
        for l in lus {
            let (raid, members) = l.split_once(':').expect("RAID:DISKS");
            ok(self.nasctl(&["lu", "create", "--raid", raid, "--disks", members]));
        }
        ok(self.nasctl(&["user", "add", "alice"]));
        let mut export = vec![
            "export", "create", "home", "--lu", "1", "--chn", owner, "--users", "alice",
        ];
        if let Some(p) = partner {
            export.extend(["--partner", p]);
        }
        ok(self.nasctl(&export));
    }

    /// An HTTPS client that trusts this cluster's CA (for the web ports).
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca_file())?)?;
        Ok(reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()?)
    }

    /// CHN `name`'s `/metrics`, as the first admin (a Bearer token).
    pub async fn metrics_text(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<String> {
        let url = format!("{}metrics", self.node(name).web);
        let resp = http.get(&url).bearer_auth(&self.token).send().await?;
        anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        Ok(resp.text().await?)
    }

    /// Scrapes every CHN's metrics every `every`, as Prometheus would,
    /// until the task is aborted.
    pub fn keep_scraping(&self, every: Duration) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let http = self.http()?;
        let targets: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| (format!("{}metrics", n.web), self.token.clone()))
            .collect();
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for (url, token) in &targets {
                    let _ = http.get(url).bearer_auth(token).send().await.map(|r| r.bytes());
                }
            }
        }))
    }

    /// The cluster CA certificate (`cluster up` makes it).
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("tls").join("ca.crt")
    }

    /// How clients reach this cluster: TLS against its CA.
    pub fn transport(&self) -> Transport {
        if self.insecure {
            return Transport::Insecure;
        }
        let ca = std::fs::read(self.ca_file()).expect("the cluster CA");
        Transport::Tls(TlsFiles { ca, identity: None })
    }

    /// A client handle over every CHN, as the first admin.
    pub fn client(&self) -> Cluster {
        Cluster::from_list(&self.cluster_env(), self.transport())
            .expect("cluster addresses")
            .with_retry_for(Duration::from_secs(20))
            .with_credential(Credential::Token(self.token.clone()))
    }

    /// A channel to the CHN at `addr`, as every client of the project
    /// makes them.
    pub fn channel_to(&self, addr: &str) -> Channel {
        // Room for a TLS handshake on a loaded machine; calls that must
        // not hang on a CHN that is away have deadlines of their own.
        self.transport()
            .endpoint(addr)
            .expect("address")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy()
    }

    /// A channel to CHN `to` that presents CHN `as_chn`'s certificate
    /// (mutual TLS): what another CHN's calls look like.
    pub fn channel_as_chn(&self, to: &str, as_chn: &str) -> Channel {
        let files = ::nas_client::pki::CertDir::new(self.dir().join("tls"))
            .chn_tls_files(as_chn)
            .expect("the CHN's certificate");
        Transport::Tls(files)
            .endpoint(&self.node(to).addr)
            .expect("address")
            .connect_lazy()
    }

    /// A channel to CHN `name`.
    pub fn channel(&self, name: &str) -> Channel {
        self.channel_to(&self.node(name).addr)
    }

    /// An Admin client on exactly one CHN (no retry, no failover), as the
    /// first admin.
    pub fn admin(&self, name: &str) -> AdminConn {
        AdminClient::with_interceptor(self.channel(name), Authorization::bearer(&self.token))
    }

    /// A login token of the first admin.
    pub fn admin_token(&self) -> String {
        self.token.clone()
    }

    /// An Admin client on `addr` that sends `token`.
    pub fn admin_with_token(&self, addr: &str, token: &str) -> AdminConn {
        AdminClient::with_interceptor(self.channel_to(addr), Authorization::bearer(token))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no CHN named {name}"))
    }

    /// The pid of a running CHN.
    pub fn pid(&self, name: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir().join(name.to_lowercase()).join("nasd.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// kill -9 one CHN and wait until the process is gone.
    pub fn kill9(&self, name: &str) {
        let pid = self.pid(name).unwrap_or_else(|| panic!("{name} is not running"));
        // SAFETY: kill(2) on a child process this harness started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
            assert!(Instant::now() < deadline, "{name} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(self.dir().join(name.to_lowercase()).join("nasd.pid"));
    }

    /// Starts the named stopped CHNs in that order without waiting for
    /// them (`nasctl cluster start`).
    pub fn start_only(&self, names: &[String]) -> anyhow::Result<()> {
        let dir = self.dir().display().to_string();
        let mut args = vec!["cluster", "start", "--dir", dir.as_str()];
        args.extend(names.iter().map(String::as_str));
        let out = self.nasctl(&args);
        if !out.status.success() {
            bail!("cluster start failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Cuts CHN `name` off the network (`cut`), or puts it back, on a
    /// `--netns` cluster (`nasctl cluster cut` / `heal`).
    pub fn cut(&self, name: &str, cut: bool) -> anyhow::Result<()> {
        let dir = self.dir().display().to_string();
        let out = self.nasctl(&["cluster", if cut { "cut" } else { "heal" }, "--dir", &dir, name]);
        if !out.status.success() {
            bail!("cluster cut/heal failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Drops every packet CHN `from` sends to `to`, or lets them pass
    /// again, on a `--netns` cluster (`nasctl cluster drop` / `undrop`).
    pub fn drop_packets(&self, from: &str, to: &str, drop: bool) -> anyhow::Result<()> {
        let dir = self.dir().display().to_string();
        let out = self.nasctl(&["cluster", if drop { "drop" } else { "undrop" }, "--dir", &dir, from, to]);
        if !out.status.success() {
            bail!("cluster drop/undrop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to one running CHN.
    pub fn signal(&self, name: &str, signal: i32) {
        let pid = self.pid(name).unwrap_or_else(|| panic!("{name} is not running"));
        // SAFETY: kill(2) on a child process this harness started.
        unsafe { libc::kill(pid, signal) };
    }

    /// A cluster handle on every CHN but `not`.
    pub fn client_without(&self, not: &str) -> Cluster {
        let addrs: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.name != not)
            .map(|n| n.addr.as_str())
            .collect();
        self.client().on(&addrs).expect("cluster addresses")
    }

    /// ClusterStatus as one CHN sees it, asked again for up to 3 s while
    /// the call fails (a connection still being made); None if it never
    /// answers.
    pub async fn status(&self, name: &str) -> Option<ClusterStatusReply> {
        wait_until(
            &format!("{name} to answer ClusterStatus"),
            Duration::from_secs(3),
            || async {
                self.admin(name)
                    .cluster_status(ClusterStatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            },
        )
        .await
        .ok()
    }

    /// Waits until `name` sees a leader, and returns the leader's name.
    pub async fn leader_seen_by(&self, name: &str, timeout: Duration) -> anyhow::Result<String> {
        wait_until(&format!("{name} to see a leader"), timeout, || async {
            self.status(name)
                .await
                .filter(|s| s.leader_id != 0)
                .map(|s| s.leader_name)
        })
        .await
    }

    /// Every CHN's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log =
                std::fs::read_to_string(self.dir().join(n.name.to_lowercase()).join("nasd.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            // A panic's message matters more than its backtrace.
            let start = match lines.iter().position(|l| l.contains("panicked at")) {
                Some(p) => p.saturating_sub(10),
                None => lines.len().saturating_sub(30),
            };
            let end = (start + 30).min(lines.len());
            out += &format!("--- {} ---\n{}\n", n.name, lines[start..end].join("\n"));
        }
        out
    }
}

impl Drop for TestCluster {
    /// Kills every CHN that has a pid file in the folder, including those
    /// of a `cluster up` that failed half-way.
    fn drop(&mut self) {
        // A failed test keeps its cluster folder (logs, data) to look at.
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("cluster folder kept for inspection: {}", self.dir().display());
        }
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("nasd.pid")) else {
                continue;
            };
            if let Ok(pid) = text.trim().parse::<i32>() {
                // SAFETY: kill(2) on a child process this harness started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if self.netns {
            // Removes the namespaces, links and bridge (the CHNs are gone).
            let _ = self.nasctl(&["cluster", "down", "--dir", &self.dir().display().to_string()]);
        }
    }
}

/// Client stubs for etcd v3 (Put and Status only), used as the benchmark's
/// reference system.
pub mod etcd {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("etcdserverpb");
}
