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
