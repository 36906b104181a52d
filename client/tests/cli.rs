//! nasctl as a user meets it: help, usage errors, and errors without a cluster.

use std::process::Command;

fn nasctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nasctl"))
        .args(args)
        .env_remove("NAS_CLUSTER")
        .env_remove("NAS_CA")
        .env_remove("NAS_INSECURE")
        .output()
        .expect("run nasctl")
}

#[test]
fn help_lists_the_command_groups() {
    let out = nasctl(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for group in [
        "cluster",
        "shared-lu",
        "array",
        "disk",
        "lu",
        "chn",
        "user",
        "export",
        "lock",
    ] {
        assert!(text.contains(group), "--help lacks {group}:\n{text}");
    }
}

#[test]
fn missing_cluster_address_says_how_to_give_one() {
    let out = nasctl(&["disk", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cluster") && err.contains("NAS_CLUSTER"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_bad_values_are_named() {
    let out = nasctl(&["lu", "create", "--raid", "5"]);
    assert_eq!(out.status.code(), Some(2), "missing --disks is a usage error");
    let out = nasctl(&[
        "--insecure",
        "--cluster",
        "127.0.0.1:1",
        "lu",
        "create",
        "--raid",
        "6",
        "--disks",
        "1,2,3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--raid 1 or --raid 5"));
    let out = nasctl(&["array", "init", "--disks", "3", "--size", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    let out = nasctl(&[
        "--insecure",
        "--cluster",
        "127.0.0.1:1",
        "path",
        "add",
        "CHN1",
        "--to",
        "lu:x",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shared, backup or lu:N"));
}

#[test]
fn without_a_ca_nothing_is_sent_in_plaintext() {
    let out = nasctl(&["--cluster", "127.0.0.1:1", "cluster", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NAS_CA") && err.contains("--insecure"), "{err}");
    let out = nasctl(&[
        "--insecure",
        "--cluster",
        "127.0.0.1:1",
        "--retry-secs",
        "0",
        "cluster",
        "status",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: --insecure"));
}

#[test]
fn unreachable_cluster_is_reported_not_hung() {
    let out = nasctl(&[
        "--insecure",
        "--cluster",
        "127.0.0.1:1",
        "--retry-secs",
        "1",
        "cluster",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unavailable"), "{err}");
    assert!(err.contains("check --cluster"), "the message says what to do: {err}");
}
