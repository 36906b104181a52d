//! File-system snapshots through real `nasd` processes: taken and read
//! with nasctl, kept across a failover, and every block accounted for.

use std::time::Duration;

use nas_tests::{ok, random_bytes, wait_until, TestCluster};
use serde_json::Value;

fn json(out: std::process::Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn as_alice(c: &TestCluster, args: &[&str]) -> std::process::Output {
    c.nasctl_as(args, &[("NAS_USER", "alice")])
}

/// `export check` passes and reports what snapshots hold.
fn check_blocks(c: &TestCluster) -> Value {
    let r = json(c.nasctl(&["--json", "export", "check", "home"]));
    assert_eq!(r["problems"], Value::Array(vec![]), "{r}");
    assert_eq!(r["leaked_bytes"], 0, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_keeps_files_as_they_were_through_a_failover_and_frees_its_blocks_when_deleted() -> anyhow::Result<()>
{
    let c = TestCluster::up(3, &[])?;
    c.with_exports();
    let dir = c.dir().to_path_buf();
    let (old, new) = (random_bytes(2 << 20, 31), random_bytes(2 << 20, 32));
    let (old_file, new_file) = (dir.join("old.bin"), dir.join("new.bin"));
    std::fs::write(&old_file, &old)?;
    std::fs::write(&new_file, &new)?;
    let path = |p: &std::path::Path| p.to_str().unwrap_or_default().to_string();
    ok(as_alice(&c, &["fs", "put", &path(&old_file), "home:/data.bin"]));
    ok(as_alice(&c, &["fs", "put", &path(&old_file), "home:/gone.bin"]));

    let taken = json(c.nasctl(&["--json", "snapshot", "create", "home", "monday"]));
    assert_eq!(taken["files"], 2, "{taken}");
    let free_after_snapshot = json(as_alice(&c, &["--json", "fs", "df", "home:"]))[0]["free_bytes"].clone();
    ok(as_alice(&c, &["fs", "put", &path(&new_file), "home:/data.bin"]));
    ok(as_alice(&c, &["fs", "rm", "home:/gone.bin"]));

    // The owner dies; the partner takes the export over with its snapshots.
    c.kill9("CHN1");
    let got = dir.join("got.bin");
    let read_back = |from: &str| -> anyhow::Result<Vec<u8>> {
        ok(as_alice(&c, &["fs", "get", from, &path(&got)]));
        Ok(std::fs::read(&got)?)
    };
    assert!(read_back("home@monday:/data.bin")? == old, "the snapshot changed");
    assert!(
        read_back("home@monday:/gone.bin")? == old,
        "a file deleted after the snapshot is gone from it"
    );
    assert!(
        read_back("home:/data.bin")? == new,
        "the live file lost its new contents"
    );
    let exports = json(c.nasctl(&["--json", "export", "list"]));
    assert_eq!(exports[0]["owner_chn"], "CHN2", "{exports}");

    let listed = json(c.nasctl(&["--json", "snapshot", "list", "home"]));
    let unique = listed[0]["unique_bytes"].as_u64().unwrap_or(0);
    assert!(unique >= 4 << 20, "the snapshot holds both old files: {listed}");
    let held = check_blocks(&c)["held_bytes"].as_u64().unwrap_or(0);
    assert_eq!(held, unique);

    // Read-only, whatever the caller's rights on the live file.
    let out = as_alice(&c, &["fs", "put", &path(&new_file), "home@monday:/data.bin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    // A user of the file service cannot take snapshots.
    let out = c.nasctl_as(
        &["snapshot", "create", "home", "mine"],
        &[("NAS_ADMIN_USER", "alice"), ("NAS_ADMIN_PASSWORD", "correct-horse")],
    );
    assert!(!out.status.success(), "alice took a snapshot");

    let left = json(c.nasctl(&["--json", "snapshot", "delete", "home", "monday"]));
    assert_eq!(left["held_bytes"], 0, "{left}");
    assert_eq!(check_blocks(&c)["held_bytes"], 0);
    let free_now = json(as_alice(&c, &["--json", "fs", "df", "home:"]))[0]["free_bytes"].clone();
    // data.bin was rewritten and gone.bin removed: what is free now is
    // what was free right after the snapshot plus gone.bin.
    assert_eq!(
        free_now.as_u64().unwrap_or(0),
        free_after_snapshot.as_u64().unwrap_or(0) + (2 << 20)
    );
    let out = as_alice(&c, &["fs", "ls", "home@monday:/"]);
    assert!(!out.status.success(), "a deleted snapshot still lists");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_taken_while_clients_write_is_one_moment_of_the_tree() -> anyhow::Result<()> {
    let c = TestCluster::up(2, &[])?;
    c.with_exports();
    let nas = std::sync::Arc::new(c.nas("alice", "home").await?);
    // A writer appends numbered records; the snapshot must hold a prefix
    // of them, each whole.
    let handle = nas.create("/log", 0o644, false, true).await?.handle;
    let writer = {
        let nas = nas.clone();
        tokio::spawn(async move {
            for n in 0..400u64 {
                if nas.write(handle, n * 9, format!("{n:08}\n").as_bytes()).await.is_err() {
                    return n;
                }
            }
            400
        })
    };
    wait_until("the writer to start", Duration::from_secs(30), || async {
        nas.stat("/log").await.ok().filter(|a| a.size >= 90)
    })
    .await?;
    ok(c.nasctl(&["snapshot", "create", "home", "mid"]));
    let written = writer.await?;
    assert_eq!(written, 400);
    let in_snapshot = nas.open("/.snapshot/mid/log").await?;
    let snap = nas.read(in_snapshot.handle, 0, in_snapshot.size).await?;
    let text = String::from_utf8(snap)?;
    let records: Vec<&str> = text.lines().collect();
    assert!(!records.is_empty() && records.len() < 400, "{} records", records.len());
    for (i, r) in records.iter().enumerate() {
        assert_eq!(*r, format!("{i:08}"), "record {i} of the snapshot");
    }
    assert!(text.ends_with('\n'), "a record was cut in half");
    check_blocks(&c);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_serving_chn_killed_while_snapshots_are_taken_leaves_each_whole_or_absent() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    c.with_exports();
    let nas = c.nas("alice", "home").await?;
    for i in 0..40 {
        let f = nas.create(&format!("/f{i}"), 0o644, false, true).await?;
        nas.write(f.handle, 0, &random_bytes(3000, i)).await?;
    }
    let admin = c.client();
    let taking = tokio::spawn(async move {
        let mut taken = Vec::new();
        // Paced, so that the CHN dies while they are still being taken.
        for n in 0..120 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let req = nas_client::proto::SnapshotRequest {
                export: "home".into(),
                name: format!("s{n}"),
            };
            match admin.create_snapshot(req).await {
                Ok(_) => taken.push(n),
                Err(_) => break,
            }
        }
        taken
    });
    wait_until("a few snapshots", Duration::from_secs(30), || async {
        let listed = c.nasctl(&["--json", "snapshot", "list", "home"]);
        let v: Value = serde_json::from_slice(&listed.stdout).unwrap_or(Value::Null);
        v.as_array().filter(|a| a.len() >= 3).map(|_| ())
    })
    .await?;
    c.kill9("CHN1");
    let acknowledged = taking.await?;
    // The partner serves the export with every acknowledged snapshot, and
    // any other one it lists (taken as the CHN died) is whole.
    let listed = json(c.nasctl(&["--json", "snapshot", "list", "home"]));
    let names: Vec<String> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    for n in &acknowledged {
        assert!(
            names.contains(&format!("s{n}")),
            "acknowledged snapshot s{n} is gone: {names:?}"
        );
    }
    for name in &names {
        let files = json(as_alice(&c, &["--json", "fs", "ls", &format!("home@{name}:/")]));
        assert_eq!(files.as_array().map_or(0, |f| f.len()), 40, "snapshot {name}: {files}");
    }
    check_blocks(&c);
    ok(c.nasctl(&["snapshot", "create", "home", "after"]));
    Ok(())
}
