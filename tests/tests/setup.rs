//! What the docker-compose deployment relies on, without Docker: `nasctl
//! cluster setup` on CHNs started by hand (as containers start them: names
//! CHN1, CHN2, CHN5, one shared array, settings from NASD_* variables), run
//! twice; `nasctl health` (the container HEALTHCHECK); and the handshake of
//! `nasctl drill --fault external` with an outside injector (what
//! deploy/drill.sh does with `docker kill`). Plus their bad inputs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nas_tests::{bin, ok, TestCluster};

/// nasd processes started like containers: by environment variables.
struct Chns(Vec<Child>);

impl Drop for Chns {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// Makes the certificates as the compose `certs` service does, then
/// starts the CHNs with them.
fn start_chns(dir: &Path, names: &[&str]) -> (Chns, Vec<String>) {
    let array = dir.join("array");
    std::fs::create_dir_all(&array).expect("array folder");
    let specs: Vec<String> = names
        .iter()
        .map(|name| format!("{name}=127.0.0.1:{}", free_port()))
        .collect();
    let tls = dir.join("tls");
    let tls_arg = tls.display().to_string();
    ok(nasctl(&[
        "cluster",
        "certs",
        "--dir",
        &tls_arg,
        "--chn",
        &specs.join(","),
    ]));
    let mut children = Vec::new();
    for (name, spec) in names.iter().zip(&specs) {
        let addr = spec.split_once('=').map_or("", |(_, a)| a);
        let data = dir.join(name.to_lowercase());
        std::fs::create_dir_all(&data).expect("data folder");
        let log = std::fs::File::create(data.join("nasd.log")).expect("log file");
        let lower = name.to_lowercase();
        let child = Command::new(bin("nasd"))
            .env("NASD_NAME", name)
            .env("NASD_LISTEN", addr)
            .env("NASD_DATA", &data)
            .env("NASD_ARRAY", &array)
            .env("NASD_TLS_CERT", tls.join(format!("{lower}.crt")))
            .env("NASD_TLS_KEY", tls.join(format!("{lower}.key")))
            .env("NASD_TLS_CA", tls.join("ca.crt"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nasd");
        children.push(child);
    }
    (Chns(children), specs)
}

fn nasctl_with(args: &[&str], admin_password: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(bin("nasctl"));
    cmd.args(args)
        .env_remove("NAS_CLUSTER")
        .env_remove("NASD_LISTEN")
        .env_remove("NAS_TOKEN")
        .env_remove("NAS_ADMIN_PASSWORD")
        .env("NAS_CONFIG_DIR", "/nonexistent/nas-test-config")
        .env("NAS_PASSWORD", "correct-horse")
        .stdin(Stdio::null());
    if let Some(p) = admin_password {
        cmd.env("NAS_ADMIN_PASSWORD", p);
    }
    cmd.output().expect("run nasctl")
}

fn nasctl(args: &[&str]) -> std::process::Output {
    nasctl_with(args, Some(nas_tests::ADMIN_PASSWORD))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cluster_setup_installs_running_chns_and_is_idempotent() {
    let dir = tempfile::Builder::new()
        .prefix("nas-setup-")
        .tempdir()
        .expect("temp dir");
    let (_chns, specs) = start_chns(dir.path(), &["CHN1", "CHN2", "CHN5"]);
    // Every call verifies the CHNs against the CA `cluster certs` made.
    let ca = dir.path().join("tls").join("ca.crt").display().to_string();
    let with_ca = |args: &[&str]| -> Vec<String> {
        ["--ca", ca.as_str()]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect()
    };
    let run = |args: &[&str]| {
        let args = with_ca(args);
        nasctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let chn_list = specs.join(",");
    let setup = [
        "cluster",
        "setup",
        "--chn",
        &chn_list,
        "--disks",
        "4",
        "--disk-size",
        "16M",
        "--lu-disks",
        "1,2,3",
        "--add-user",
        "alice",
        "--export",
        "home",
        "--export-partner",
        "CHN5",
        "--wait-s",
        "60",
    ];
    // No password, no default: setup refuses before it changes anything.
    let refused = nasctl_with(&with_ca(&setup).iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("NAS_ADMIN_PASSWORD"), "{}", stderr(&refused));
    let first = run(&setup);
    let first_err = stderr(&first);
    assert!(first.status.success(), "setup failed: {first_err}");
    assert!(first_err.contains("installing CHN1 (bootstrap)"), "{first_err}");
    assert!(first_err.contains("installing CHN5"), "{first_err}");

    let addrs: Vec<&str> = specs.iter().map(|s| s.split_once('=').map_or("", |(_, a)| a)).collect();
    let cluster = addrs.join(",");
    let status: serde_json::Value =
        serde_json::from_str(&ok(run(&["--cluster", &cluster, "--json", "cluster", "status"]))).expect("json");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["voter"] == true), "{status}");
    let exports: serde_json::Value =
        serde_json::from_str(&ok(run(&["--cluster", &cluster, "--json", "export", "list"]))).expect("json");
    let home = exports
        .as_array()
        .and_then(|l| l.iter().find(|e| e["export"] == "home"))
        .unwrap_or_else(|| panic!("no export home in {exports}"));
    assert_eq!(home["owner_chn"], "CHN1", "{home}");
    assert_eq!(home["partner_chn"], "CHN5", "{home}");

    // Again, as the compose setup service does on every `up`: nothing new.
    let again = run(&setup);
    let again_err = stderr(&again);
    assert!(again.status.success(), "second setup failed: {again_err}");
    assert!(!again_err.contains("installing"), "{again_err}");
    for line in [
        "4 disks already defined",
        "LU 1: already",
        "user alice: already",
        "export home: already",
    ] {
        assert!(again_err.contains(line), "`{line}` missing from: {again_err}");
    }
    let lus: serde_json::Value =
        serde_json::from_str(&ok(run(&["--cluster", &cluster, "--json", "lu", "list"]))).expect("json");
    assert_eq!(lus.as_array().map(Vec::len), Some(1), "{lus}");

    // The container HEALTHCHECK.
    let health = ok(run(&["health", "--addr", addrs[1]]));
    assert!(health.contains("SERVING"), "{health}");
    let file_service = ok(run(&[
        "--json",
        "health",
        "--addr",
        addrs[1],
        "--service",
        "nas.v1.Nas",
    ]));
    assert!(file_service.contains("\"SERVING\""), "{file_service}");
    // Its default is the local nasd at $NASD_LISTEN (0.0.0.0 in a container).
    let port = addrs[2].rsplit_once(':').map_or("", |(_, p)| p);
    let local = Command::new(bin("nasctl"))
        .arg("health")
        .env("NASD_LISTEN", format!("0.0.0.0:{port}"))
        .env("NASD_TLS_CA", &ca)
        .output()
        .expect("run nasctl");
    assert!(local.status.success(), "{}", stderr(&local));

    // Bad inputs, each a one-line answer and no change.
    let unknown = run(&["health", "--addr", addrs[0], "--service", "no.such.Service"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("NotFound"), "{}", stderr(&unknown));
    let nobody = run(&["health", "--addr", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(stderr(&nobody).contains("no nasd answers"), "{}", stderr(&nobody));
    let malformed = run(&["cluster", "setup", "--chn", "CHN1"]);
    assert_eq!(malformed.status.code(), Some(2), "{}", stderr(&malformed));
    assert!(stderr(&malformed).contains("NAME=HOST:PORT"), "{}", stderr(&malformed));
    let wrong_name = run(&[
        "cluster",
        "setup",
        "--chn",
        &format!("CHN9={}", addrs[0]),
        "--wait-s",
        "5",
    ]);
    assert!(!wrong_name.status.success());
    assert!(
        stderr(&wrong_name).contains("calls itself CHN1"),
        "{}",
        stderr(&wrong_name)
    );
    let bad_raid = run(&[
        "cluster",
        "setup",
        "--chn",
        &chn_list,
        "--lu-disks",
        "4",
        "--raid",
        "6",
        "--wait-s",
        "10",
    ]);
    assert!(!bad_raid.status.success());
    assert!(stderr(&bad_raid).contains("RAID level 6"), "{}", stderr(&bad_raid));
}

#[test]
fn external_fault_drill_follows_the_injectors_kill() {
    let c = TestCluster::up(3, &[]).expect("cluster");
    c.with_exports();
    let handshake = tempfile::Builder::new()
        .prefix("nas-handshake-")
        .tempdir()
        .expect("temp dir");
    let hs = handshake.path().display().to_string();
    let mut drill = Command::new(bin("nasctl"))
        .args([
            "--json",
            "--user",
            "alice",
            "drill",
            "--export",
            "home",
            "--fault",
            "external",
            "--handshake",
            &hs,
        ])
        .env("NAS_CLUSTER", c.cluster_env())
        .env("NAS_CA", c.ca_file())
        .env("NAS_PASSWORD", "correct-horse")
        .env("NAS_ADMIN_PASSWORD", nas_tests::ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the drill");

    // Play deploy/drill.sh: wait for the request, kill that CHN, say when.
    let request = handshake.path().join("fault.request");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&request).map_or(true, |s| !s.ends_with('\n')) {
        if Instant::now() >= deadline || drill.try_wait().ok().flatten().is_some() {
            let _ = drill.kill();
            let out = drill.wait_with_output().expect("drill output");
            panic!(
                "the drill never asked for the fault: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let chn = std::fs::read_to_string(&request).expect("request").trim().to_string();
    assert_eq!(chn, "CHN1", "the drill must ask for the CHN serving home");
    let at = nas_client::drill::now_ms();
    c.kill9(&chn);
    std::fs::write(handshake.path().join("fault.done"), format!("{at}\n")).expect("write fault.done");

    let out = drill.wait_with_output().expect("drill output");
    assert!(
        out.status.success(),
        "drill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["fault"], "external", "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let run = &report["runs"][0];
    assert_eq!(run["chn"], "CHN1", "{report}");
    assert_eq!(run["new_owner"], "CHN2", "the partner takes over: {report}");
    assert!(run["checked"].as_u64().unwrap_or(0) >= 20, "{report}");
    let detected = run["detected_ms"].as_u64().expect("detected");
    let resumed = run["resumed_ms"].as_u64().expect("resumed");
    assert!(detected <= resumed, "{report}");
    assert!(
        c.pid("CHN1").is_none(),
        "an external fault is the injector's to undo: the drill must not restart CHN1"
    );

    // Bad inputs.
    let no_handshake = c.nasctl(&["--user", "alice", "drill", "--export", "home", "--fault", "external"]);
    assert_eq!(no_handshake.status.code(), Some(2), "{}", stderr(&no_handshake));
    assert!(
        stderr(&no_handshake).contains("--handshake"),
        "{}",
        stderr(&no_handshake)
    );
    let no_dir = c.nasctl(&[
        "--user",
        "alice",
        "drill",
        "--export",
        "home",
        "--fault",
        "kill",
        "--handshake",
        &hs,
    ]);
    assert!(!no_dir.status.success());
    assert!(stderr(&no_dir).contains("give --dir"), "{}", stderr(&no_dir));
}
