//! The shared LU's backup and disaster restore through real `nasd`
//! processes: copies written by the leader and on demand, every CHN's
//! data directory lost, and the cluster brought back from a copy with its
//! tables and files.

use std::time::Duration;

use nas_client::proto::backup_file;
use nas_tests::{ok, random_bytes, wait_until, TestCluster};
use serde_json::Value;

fn json(out: std::process::Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The tables a restore must bring back, without what changes by itself
/// (health, jobs, who serves an export right now).
fn tables(c: &TestCluster) -> Value {
    let list = |what: &str, drop: &[&str]| {
        let mut rows = json(c.nasctl(&["--json", what, "list"]));
        for row in rows.as_array_mut().into_iter().flatten() {
            for field in drop {
                row.as_object_mut().map(|o| o.remove(*field));
            }
        }
        rows
    };
    serde_json::json!({
        "disks": list("disk", &["checksum_errors"]),
        "lus": list("lu", &["health", "job"]),
        "users": list("user", &[]),
        "exports": list("export", &["owner_chn", "state"]),
        "paths": list("path", &[]),
    })
}

fn dir(c: &TestCluster) -> String {
    c.dir().display().to_string()
}

/// Stops every CHN and deletes every CHN's data directory: the whole Raft
/// group is gone; the disk array is left.
fn lose_every_data_directory(c: &TestCluster) -> anyhow::Result<()> {
    ok(c.nasctl(&["cluster", "down", "--dir", &dir(c)]));
    for n in &c.nodes {
        std::fs::remove_dir_all(c.dir().join(n.name.to_lowercase()).join("data"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_whose_every_data_directory_is_lost_comes_back_from_the_array_backup() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    for args in [
        &["array", "init", "--disks", "4", "--size", "64M"][..],
        &["lu", "create", "--raid", "5", "--disks", "1,2,3"],
        &["user", "add", "alice"],
        &[
            "export",
            "create",
            "home",
            "--lu",
            "1",
            "--chn",
            "CHN2",
            "--partner",
            "CHN1",
            "--users",
            "alice",
        ],
    ] {
        ok(c.nasctl(args));
    }
    let data = random_bytes(3 << 20, 19);
    let local = c.dir().join("data.bin");
    std::fs::write(&local, &data)?;
    ok(c.nasctl_as(
        &["fs", "put", local.to_str().unwrap_or_default(), "home:/data.bin"],
        &[("NAS_USER", "alice")],
    ));
    // A live session: the copy holds it, the restore must drop it.
    let session = c.nas("alice", "home").await?;
    let copy = json(c.nasctl(&["--json", "shared-lu", "backup"]));
    let index = copy["copy"]["log_index"].as_u64().unwrap_or(0);
    assert!(index > 0, "{copy}");
    let before = tables(&c);
    // After the copy: not in it, and a restore says so.
    ok(c.nasctl(&["user", "add", "late"]));
    drop(session);

    lose_every_data_directory(&c)?;
    let out = c.nasctl(&["cluster", "restore", "--dir", &dir(&c), "--from-array"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "restore failed: {said}\n{}", c.logs());
    assert!(said.contains(&format!("log index {index}")), "{said}");
    assert!(said.contains("Changes made after log index"), "{said}");
    assert!(
        said.contains("dropped: ") && !said.contains("dropped: 0 client"),
        "{said}"
    );

    assert_eq!(tables(&c), before, "the tables as of the copy");
    let users = ok(c.nasctl(&["user", "list"]));
    assert!(
        !users.contains("late"),
        "a user added after the copy came back: {users}"
    );
    let status = json(c.nasctl(&["--json", "cluster", "status"]));
    let voters = status["members"].as_array().map_or(0, |m| m.len());
    assert_eq!(voters, 3, "{status}");
    let clients = json(c.nasctl(&["--json", "client", "list"]));
    assert_eq!(clients, Value::Array(vec![]), "sessions from the copy: {clients}");
    let back = c.dir().join("back.bin");
    ok(c.nasctl_as(
        &["fs", "get", "home:/data.bin", back.to_str().unwrap_or_default()],
        &[("NAS_USER", "alice")],
    ));
    assert!(std::fs::read(&back)? == data, "the file read back differs");
    // The restored cluster writes and keeps copies of its own.
    ok(c.nasctl_as(&["fs", "mkdir", "home:/after"], &[("NAS_USER", "alice")]));
    ok(c.nasctl(&["shared-lu", "backup"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_copy_restores_and_damaged_or_foreign_copies_and_a_bootstrap_over_a_backup_are_refused(
) -> anyhow::Result<()> {
    let mut c = TestCluster::up(1, &[])?;
    ok(c.nasctl(&["array", "init", "--disks", "3", "--size", "64M"]));
    ok(c.nasctl(&["user", "add", "alice"]));
    let saved = c.dir().join("saved");
    let copy = json(c.nasctl(&[
        "--json",
        "shared-lu",
        "backup",
        "--to",
        saved.to_str().unwrap_or_default(),
    ]));
    let file = std::path::PathBuf::from(copy["saved_to"].as_str().unwrap_or_default());
    let good = std::fs::read(&file)?;
    lose_every_data_directory(&c)?;

    // The array holds copies: an empty new cluster over it is refused.
    let e = c.cluster_up(None, &[]).expect_err("bootstrap over a backup");
    assert!(e.to_string().contains("cluster restore"), "{e}");

    let restore = |from: &str| c.nasctl(&["cluster", "restore", "--dir", &dir(&c), "--from", from]);
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    std::fs::write(&file, &damaged)?;
    let out = restore(saved.to_str().unwrap_or_default());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a damaged copy was restored");
    assert!(
        said.contains("no good shared LU backup") && said.contains("SHA-256"),
        "{said}"
    );

    let mut foreign = backup_file::decode(&file, &good)?.backup;
    foreign.array_id = "0123456789abcdef0123456789abcdef".into();
    let foreign_file = c.dir().join("foreign.nasbak");
    std::fs::write(&foreign_file, backup_file::encode(&foreign))?;
    let out = restore(foreign_file.to_str().unwrap_or_default());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "another array's copy was restored");
    assert!(
        said.contains("another cluster's backup") && said.contains("--force"),
        "{said}"
    );

    // Refused restores left the CHN empty: the right copy still goes in.
    std::fs::write(&file, &good)?;
    let out = restore(file.to_str().unwrap_or_default());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ok(c.nasctl(&["user", "list"])).contains("alice"));
    let disks = json(c.nasctl(&["--json", "disk", "list"]));
    assert_eq!(disks.as_array().map_or(0, |d| d.len()), 3, "{disks}");

    // Once restored, a second restore is refused.
    let out = restore(file.to_str().unwrap_or_default());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && said.contains("still belongs to a shared LU"),
        "{said}"
    );
    c.cluster_up(None, &[])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_keeps_fresh_copies_and_says_why_it_cannot() -> anyhow::Result<()> {
    let c = TestCluster::up(1, &["--shared-lu-backup-every-s=1"])?;
    let location = c.dir().join("array").join(backup_file::ARRAY_FOLDER);
    let newest = || {
        backup_file::newest_good(&location)
            .map(|copy| copy.backup.log_index)
            .unwrap_or(0)
    };
    let first = wait_until("a first copy", Duration::from_secs(15), || async {
        Some(newest()).filter(|i| *i > 0)
    })
    .await?;
    ok(c.nasctl(&["user", "add", "carol"]));
    let later = wait_until("a newer copy", Duration::from_secs(15), || async {
        Some(newest()).filter(|i| *i > first)
    })
    .await?;
    let copy = backup_file::newest_good(&location)?;
    let users = copy.backup.tables.map(|t| t.users).unwrap_or_default();
    assert!(users.iter().any(|u| u.name == "carol"), "copy {later} lacks carol");
    let status = json(c.nasctl(&["--json", "shared-lu", "backup", "status"]));
    let copies = status["copies"].as_array().cloned().unwrap_or_default();
    assert!(
        (1..=backup_file::KEEP).contains(&copies.len()) && copies.iter().all(|c| c["damage"].is_null()),
        "{status}"
    );

    ok(c.nasctl(&["path", "remove", "CHN1", "--to", "backup"]));
    let out = c.nasctl(&["shared-lu", "backup"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && said.contains("no path to the shared LU backup"),
        "{said}"
    );
    let reason = wait_until(
        "the leader to report why it wrote no copy",
        Duration::from_secs(90),
        || async {
            let s = json(c.nasctl(&["--json", "shared-lu", "backup", "status"]));
            s["last_error"].as_str().map(str::to_string)
        },
    )
    .await?;
    assert!(reason.contains("no path"), "{reason}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_saved_to_an_s3_store_brings_the_cluster_back_and_a_dead_or_refusing_store_is_named(
) -> anyhow::Result<()> {
    let s3 = nas_tests::s3::S3Server::start()?;
    s3.create_bucket("nas-backups")?;
    let s3_env = s3.env();
    let mut env: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("NAS_ADMIN_PASSWORD", nas_tests::ADMIN_PASSWORD));
    let c = TestCluster::up(1, &[])?;
    ok(c.nasctl(&["user", "add", "alice"]));
    let saved = json(c.nasctl_as(
        &["--json", "shared-lu", "backup", "--to", "s3://nas-backups/cluster-a"],
        &env,
    ));
    let at = saved["saved_to"].as_str().unwrap_or_default().to_string();
    assert!(at.starts_with("s3://nas-backups/cluster-a/shared-lu-"), "{saved}");

    // A store that does not answer is named, and nothing is claimed saved.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dead_endpoint = format!("http://127.0.0.1:{closed}");
    let mut dead_env = env.clone();
    dead_env[0] = ("AWS_ENDPOINT_URL", &dead_endpoint);
    let out = c.nasctl_as(
        &["shared-lu", "backup", "--to", "s3://nas-backups/cluster-a"],
        &dead_env,
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a save to a dead store succeeded");
    assert!(
        said.contains(&format!("127.0.0.1:{closed}")) && said.contains("cannot be reached"),
        "{said}"
    );
    // A store that refuses the credentials is named, and says so.
    let strict = nas_tests::s3::S3Server::start_refusing_every_credential()?;
    let strict_endpoint = strict.endpoint();
    let mut strict_env = env.clone();
    strict_env[0] = ("AWS_ENDPOINT_URL", &strict_endpoint);
    let out = c.nasctl_as(
        &["shared-lu", "backup", "--to", "s3://nas-backups/cluster-a"],
        &strict_env,
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a save with refused credentials succeeded");
    assert!(
        said.contains(&strict_endpoint) && said.contains("refused the credentials"),
        "{said}"
    );

    // Every data directory and every copy on the array gone: only the
    // store holds the cluster now.
    lose_every_data_directory(&c)?;
    std::fs::remove_dir_all(c.dir().join("array").join(backup_file::ARRAY_FOLDER))?;
    let out = c.nasctl_as(
        &[
            "cluster",
            "restore",
            "--dir",
            &dir(&c),
            "--from",
            "s3://nas-backups/cluster-a",
        ],
        &env,
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "restore from S3 failed: {said}\n{}", c.logs());
    assert!(said.contains("s3://nas-backups/cluster-a/shared-lu-"), "{said}");
    assert!(ok(c.nasctl(&["user", "list"])).contains("alice"));
    Ok(())
}
