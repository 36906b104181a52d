//! nasd's command line: clear refusals before anything starts.

use std::process::Command;

fn nasd(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nasd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("NASD_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).output().expect("run nasd")
}

#[test]
fn help_explains_the_settings() {
    let out = nasd(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--name",
        "--listen",
        "--data",
        "--array",
        "--config",
        "NASD_SNAPSHOT_THRESHOLD",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn missing_or_bad_settings_are_refused_with_the_fix() {
    let out = nasd(&["--data", "/tmp/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name is required"));
    let out = nasd(&["--name", "head", "--data", "/tmp/x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"));
    let out = nasd(&["--name", "CHN1", "--data", "/tmp/x", "--listen", "0.0.0.0:7001"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise"));
}

#[test]
fn a_busy_port_is_an_error_not_a_hang() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = nasd(&[
        "--insecure",
        "--name",
        "CHN1",
        "--listen",
        &addr,
        "--data",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_their_fields() {
    use std::io::BufRead;
    let out = nasd(&["--log-format", "yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("text") && err.contains("json"),
        "{err}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nasd"))
        .args(["--insecure", "--name", "CHN7", "--log-format", "json", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nasd");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let serving = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("nasd wrote no `CHN serving` line within 60 s");
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        if v["fields"]["message"] == "CHN serving" {
            break v;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert_eq!(
        serving["fields"]["name"], "CHN7",
        "the CHN is a field of its own: {serving}"
    );
    assert!(serving["timestamp"].is_string(), "{serving}");
}

#[test]
fn a_busy_metrics_port_is_refused_at_start_naming_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics = taken.local_addr().expect("addr");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = nasd(&[
        "--insecure",
        "--name",
        "CHN1",
        "--listen",
        &listen.to_string(),
        "--metrics-listen",
        &metrics.to_string(),
        "--data",
        dir.path().to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--metrics-listen") && err.contains(&format!("port {}", metrics.port())),
        "{err}"
    );
    let out = nasd(&[
        "--insecure",
        "--name",
        "CHN1",
        "--data",
        "/tmp/x",
        "--metrics-listen",
        "9100",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an address with a port"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_event_hook_or_webhook_that_cannot_work_is_refused_at_start() {
    let base = ["--insecure", "--name", "CHN1", "--data", "/tmp/x"];
    let out = nasd(&[&base[..], &["--event-hook", "/nonexistent/notify.sh"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/notify.sh") && err.contains("no such program"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let not_executable = dir.path().join("notify.sh");
    std::fs::write(&not_executable, "#!/bin/sh\n").expect("write");
    let out = nasd(&[&base[..], &["--event-hook", not_executable.to_str().expect("utf-8")]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod +x"), "{err}");
    let out = nasd(&[&base[..], &["--event-webhook", "ftp://example/hook"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("http://"), "{err}");
}
