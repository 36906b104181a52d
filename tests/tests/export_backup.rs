//! Export backups through real `nasd` processes: to a directory and to a
//! real S3 server, incremental, verified, restored whole and in part, and
//! refused by name when a chunk is damaged, a manifest truncated, a target
//! full, a store unreachable or refusing, or the backup another cluster's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nas_client::NasClient;
use nas_tests::s3::S3Server;
use nas_tests::{ok, random_bytes, wait_until, TestCluster};
use serde_json::Value;

fn json(out: std::process::Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn failed(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// LU 1 (RAID 5, disks 1-3) exported as `home` by CHN1 (with `partner`)
/// to alice; LUs 2 and 3 (RAID 1) free for restores.
fn setup_with(c: &TestCluster, partner: Option<&str>) {
    c.with_home("64M", &["5:1,2,3", "1:4,5", "1:6,7"], "CHN1", partner);
}

fn setup(c: &TestCluster) {
    setup_with(c, Some("CHN2"));
}

/// Writes `files` (path -> bytes) into the export, making directories.
async fn write_files(nas: &NasClient, files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    for (path, bytes) in files {
        let mut dir = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for d in &parts[..parts.len() - 1] {
            dir.push('/');
            dir.push_str(d);
            match nas.mkdir(&dir, 0o750).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => anyhow::bail!("mkdir {dir}: {s}"),
            }
        }
        let a = nas.create(path, 0o640, false, true).await?;
        if !bytes.is_empty() {
            nas.write(a.handle, 0, bytes).await?;
        }
        nas.fsync(a.handle).await?;
    }
    Ok(())
}

/// Every file's bytes, mode, uid and update time, by path.
async fn snapshot_of(nas: &NasClient, root: &str) -> anyhow::Result<Tree> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_string()];
    while let Some(d) = dirs.pop() {
        for a in nas.list(&d).await? {
            let path = if d == "/" {
                format!("/{}", a.name)
            } else {
                format!("{d}/{}", a.name)
            };
            let rel = path
                .strip_prefix(root.trim_end_matches('/'))
                .unwrap_or(&path)
                .to_string();
            if a.r#type == nas_client::proto::FileType::FileDirectory as i32 {
                out.insert(rel, (Vec::new(), a.mode, a.uid, a.mtime_ms));
                dirs.push(path);
            } else {
                let data = nas.read(a.handle, 0, a.size).await?;
                out.insert(rel, (data, a.mode, a.uid, a.mtime_ms));
            }
        }
    }
    Ok(out)
}

type Tree = BTreeMap<String, (Vec<u8>, u32, u32, u64)>;

/// Asserts two trees are alike, naming the first difference.
fn same_tree(got: &Tree, want: &Tree, what: &str) {
    let names = |t: &Tree| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: paths differ");
    for (path, (bytes, mode, uid, mtime)) in want {
        let (gb, gm, gu, gt) = &got[path];
        assert!(gb == bytes, "{what}: {path} has other bytes");
        assert_eq!((gm, gu, gt), (mode, uid, mtime), "{what}: {path} mode, uid, mtime");
    }
}

/// `nasctl [--json] backup restore ID --target TARGET --to-export EXPORT MORE...`.
fn restore(c: &TestCluster, json: bool, id: &str, target: &str, export: &str, more: &[&str]) -> std::process::Output {
    let mut args = if json { vec!["--json"] } else { vec![] };
    args.extend(["backup", "restore", id, "--target", target, "--to-export", export]);
    args.extend(more);
    c.nasctl(&args)
}

fn target_arg(dir: &Path) -> String {
    dir.display().to_string()
}

/// Runs `backup create` and returns its finished job.
fn backup(c: &TestCluster, export: &str, target: &str) -> Value {
    let job = json(c.nasctl(&["--json", "backup", "create", export, "--to", target]));
    assert_eq!(job["state"], "DONE", "{job}");
    job
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_incremental_verified_and_restored_whole_and_damage_is_named() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    setup(&c);
    let tape = c.dir().join("tape");
    let target = target_arg(&tape);
    let nas = c.nas("alice", "home").await?;
    let mut files = BTreeMap::new();
    files.insert("/docs/a.txt".to_string(), b"hello backup".to_vec());
    files.insert("/docs/sub/b.bin".to_string(), random_bytes(3 << 20, 1));
    files.insert("/big.bin".to_string(), random_bytes(5 << 20, 2));
    files.insert("/empty".to_string(), Vec::new());
    write_files(&nas, &files).await?;
    let before = snapshot_of(&nas, "/").await?;

    let first = backup(&c, "home", &target);
    let sent_first = first["sent_bytes"].as_u64().unwrap_or(0);
    assert!(sent_first >= 8 << 20, "random data does not compress: {first}");
    assert!(first["longest_pause_us"].as_u64().unwrap_or(0) > 0, "{first}");

    // 1 of 8 MiB changes: about that much is sent again.
    let changed = random_bytes(1 << 20, 3);
    let a = nas.open("/big.bin").await?;
    nas.write(a.handle, 2 << 20, &changed).await?;
    nas.fsync(a.handle).await?;
    let second = backup(&c, "home", &target);
    let sent_second = second["sent_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        sent_second < sent_first / 4,
        "the second backup sent {sent_second} bytes of {sent_first}"
    );
    let after = snapshot_of(&nas, "/").await?;

    let listed = json(c.nasctl(&["--json", "backup", "list", "--target", &target, "--export", "home"]));
    let ids: Vec<String> = listed["backups"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["id"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        [first["id"].as_str().unwrap_or(""), second["id"].as_str().unwrap_or("")]
    );
    let v = json(c.nasctl(&["--json", "backup", "verify", &ids[0], "--target", &target]));
    assert_eq!(v["files"], 7, "{v}");

    // The first backup, restored into a new export on LU 2, is the tree
    // as it was: bytes, modes, owners and update times.
    let r = json(restore(&c, true, &ids[0], &target, "home2", &["--lu", "2"]));
    assert_eq!(r["state"], "DONE", "{r}");
    let nas2 = c.nas("alice", "home2").await?;
    same_tree(&snapshot_of(&nas2, "/").await?, &before, "the restored first backup");
    // Onto an export that has files: refused without --force.
    let e = failed(restore(&c, false, &ids[1], &target, "home2", &[]));
    assert!(e.contains("holds files") && e.contains("--force"), "{e}");
    let r = json(restore(&c, true, &ids[1], &target, "home2", &["--force"]));
    assert_eq!(r["state"], "DONE", "{r}");
    same_tree(
        &snapshot_of(&nas2, "/").await?,
        &after,
        "the second backup restored with --force",
    );
    // One directory of it into an empty export.
    let r = json(restore(
        &c,
        true,
        &ids[1],
        &target,
        "docs",
        &["--lu", "3", "--path", "/docs"],
    ));
    assert_eq!(r["state"], "DONE", "{r}");
    let nas3 = c.nas("alice", "docs").await?;
    let docs = snapshot_of(&nas3, "/docs").await?;
    let want: BTreeMap<_, _> = after
        .iter()
        .filter_map(|(p, v)| {
            p.strip_prefix("/docs")
                .filter(|r| r.starts_with('/'))
                .map(|r| (r.to_string(), v.clone()))
        })
        .collect();
    same_tree(&docs, &want, "/docs restored alone");
    assert!(
        nas3.stat("/big.bin").await.is_err(),
        "a file outside --path was restored"
    );

    // Keeping one backup deletes the first and the chunks only it used.
    let p = json(c.nasctl(&[
        "--json", "backup", "prune", "--target", &target, "--export", "home", "--keep", "1",
    ]));
    assert_eq!(p["deleted"][0], ids[0], "{p}");
    assert!(p["chunks_deleted"].as_u64().unwrap_or(0) >= 1, "{p}");
    json(c.nasctl(&["--json", "backup", "verify", &ids[1], "--target", &target]));

    // A flipped bit in every chunk: verify and restore name the chunk and
    // refuse; the restore leaves its export marked incomplete.
    for chunk in files_under(&tape.join("chunks")) {
        let mut bytes = std::fs::read(&chunk)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        std::fs::write(&chunk, &bytes)?;
    }
    let chunks = tape.join("chunks").display().to_string();
    let e = failed(c.nasctl(&["backup", "verify", &ids[1], "--target", &target]));
    assert!(e.contains(&chunks) && e.contains("is damaged"), "{e}");
    let e = failed(restore(&c, false, &ids[1], &target, "docs", &["--force"]));
    assert!(e.contains(&chunks) && e.contains("docs is incomplete"), "{e}");

    // A truncated manifest: listed as damaged, refused by name.
    let manifest = tape.join("backups").join(format!("{}.nasbackup", ids[1]));
    let len = std::fs::metadata(&manifest)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&manifest)?
        .set_len(len / 2)?;
    let listed = json(c.nasctl(&["--json", "backup", "list", "--target", &target]));
    let note = listed["backups"][0]["note"].as_str().unwrap_or("").to_string();
    assert!(note.contains("DAMAGED") && note.contains("truncated"), "{listed}");
    let e = failed(c.nasctl(&["backup", "verify", &ids[1], "--target", &target]));
    assert!(e.contains("truncated") && e.contains(".nasbackup"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_target_fails_the_backup_by_name_and_lists_nothing_from_it() -> anyhow::Result<()> {
    let c = TestCluster::up(2, &[])?;
    setup(&c);
    let small = c.dir().join("small-tape");
    std::fs::create_dir_all(&small)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()?;
    anyhow::ensure!(mounted.success(), "mounting a 2 MiB tmpfs as a full target needs root");
    let _unmount = Unmount(small.clone());
    let nas = c.nas("alice", "home").await?;
    let mut files = BTreeMap::new();
    files.insert("/big.bin".to_string(), random_bytes(6 << 20, 9));
    write_files(&nas, &files).await?;
    let target = target_arg(&small);
    let e = failed(c.nasctl(&["backup", "create", "home", "--to", "relative/tape"]));
    assert!(e.contains("absolute path") && e.contains("InvalidArgument"), "{e}");
    let out = c.nasctl(&["--json", "backup", "create", "home", "--to", &target]);
    let e = failed(out);
    assert!(e.contains("is full"), "{e}");
    let listed = json(c.nasctl(&["--json", "backup", "list", "--target", &target]));
    assert_eq!(listed["backups"], Value::Array(vec![]), "{listed}");
    assert_eq!(listed["jobs"][0]["state"], "FAILED", "{listed}");
    Ok(())
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `count` files of 1 MiB of random bytes in `/data`.
async fn fill(nas: &NasClient, count: usize) -> anyhow::Result<()> {
    let files: BTreeMap<String, Vec<u8>> = (0..count)
        .map(|i| (format!("/data/f{i:03}"), random_bytes(1 << 20, 100 + i as u64)))
        .collect();
    write_files(nas, &files).await
}

/// The job `id` as `backup list` shows it.
fn job(c: &TestCluster, export: &str, id: &str) -> Value {
    let listed = json(c.nasctl(&["--json", "backup", "list", "--export", export]));
    listed["jobs"]
        .as_array()
        .and_then(|a| a.iter().find(|j| j["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until job `id` of `export` ended FAILED; its row.
async fn failed_job(c: &TestCluster, export: &str, id: &str) -> anyhow::Result<Value> {
    wait_until(
        &format!("job {id} to be marked failed"),
        Duration::from_secs(90),
        || async {
            let j = job(c, export, id);
            (j["state"] == "FAILED").then_some(j)
        },
    )
    .await
}

/// No job that did not finish is listed as a backup on the target.
fn no_failed_job_is_listed(c: &TestCluster, tape: &Path) {
    let listed = json(c.nasctl(&["--json", "backup", "list", "--target", &target_arg(tape)]));
    let backups: Vec<&str> = listed["backups"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["id"].as_str()).collect())
        .unwrap_or_default();
    for j in listed["jobs"].as_array().into_iter().flatten() {
        if j["kind"] == "backup" && j["state"] == "FAILED" {
            let id = j["id"].as_str().unwrap_or("");
            assert!(
                !backups.contains(&id),
                "failed job {id} is listed as a backup: {listed}"
            );
            assert!(!tape.join("backups").join(format!("{id}.nasbackup")).exists());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backup_or_restore_is_marked_failed_never_listed_and_a_rerun_completes() -> anyhow::Result<()> {
    let mut c = TestCluster::up(3, &[])?;
    setup(&c);
    let tape = c.dir().join("tape");
    let target = target_arg(&tape);
    fill(&c.nas("alice", "home").await?, 40).await?;

    // kill -9 of the CHN running a backup: the job ends FAILED and nothing
    // of it is listed; the taker's backup is whole.
    let started = json(c.nasctl(&["--json", "backup", "create", "home", "--to", &target, "--no-wait"]));
    assert_eq!(
        (&started["state"], &started["chn"]),
        (&Value::from("RUNNING"), &Value::from("CHN1"))
    );
    c.kill9("CHN1");
    let ended = failed_job(&c, "home", started["id"].as_str().unwrap_or("")).await?;
    assert!(
        ended["message"].as_str().unwrap_or("").contains("stopped running it"),
        "{ended}"
    );
    no_failed_job_is_listed(&c, &tape);
    let whole = backup(&c, "home", &target);
    assert_eq!(whole["chn"], "CHN2", "{whole}");
    let whole_id = whole["id"].as_str().unwrap_or("").to_string();
    json(c.nasctl(&["--json", "backup", "verify", &whole_id, "--target", &target]));
    let snapshots = json(c.nasctl(&["--json", "snapshot", "list", "home"]));
    assert_eq!(
        snapshots,
        Value::Array(vec![]),
        "the killed backup's snapshot is left: {snapshots}"
    );
    c.cluster_up(None, &[])?;

    // kill -9 of the CHN running a restore: the export is marked
    // incomplete; the same restore again completes it.
    let started = json(restore(
        &c,
        true,
        &whole_id,
        &target,
        "home2",
        &["--lu", "2", "--no-wait"],
    ));
    let runner = started["chn"].as_str().unwrap_or("").to_string();
    c.kill9(&runner);
    let ended = failed_job(&c, "home2", started["id"].as_str().unwrap_or("")).await?;
    assert!(
        ended["message"].as_str().unwrap_or("").contains("home2 is incomplete"),
        "{ended}"
    );
    let again = json(restore(&c, true, &whole_id, &target, "home2", &[]));
    assert_eq!(again["state"], "DONE", "{again}");
    let home = snapshot_of(&c.nas("alice", "home").await?, "/").await?;
    same_tree(
        &snapshot_of(&c.nas("alice", "home2").await?, "/").await?,
        &home,
        "the completed restore",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_runs_on_the_exports_owner_and_after_a_failover_on_the_taker() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    setup(&c);
    let tape = c.dir().join("tape");
    let target = target_arg(&tape);
    fill(&c.nas("alice", "home").await?, 16).await?;
    ok(c.nasctl(&[
        "backup", "schedule", "home", "--every", "1s", "--to", &target, "--keep", "2",
    ]));

    // The owner runs it; killed during a scheduled backup, its partner
    // takes the export over and runs the next ones.
    wait_until("CHN1 to run a scheduled backup", Duration::from_secs(60), || async {
        let listed = json(c.nasctl(&["--json", "backup", "list", "--export", "home"]));
        listed["jobs"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|j| j["scheduled"] == true && j["chn"] == "CHN1" && j["state"] == "RUNNING")
            })
            .then_some(())
    })
    .await?;
    c.kill9("CHN1");
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    wait_until("CHN2 to finish a scheduled backup", Duration::from_secs(90), || async {
        let listed = json(c.nasctl(&["--json", "backup", "list", "--export", "home"]));
        let s = &listed["schedules"][0];
        (s["last_done_ms"].as_u64().unwrap_or(0) > killed_at
            && listed["jobs"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|j| j["scheduled"] == true && j["chn"] == "CHN2" && j["state"] == "DONE")
            }))
        .then_some(())
    })
    .await?;
    ok(c.nasctl(&["backup", "schedule", "home", "--remove"]));
    no_failed_job_is_listed(&c, &tape);
    let listed = json(c.nasctl(&["--json", "backup", "list", "--target", &target]));
    let backups = listed["backups"].as_array().cloned().unwrap_or_default();
    assert!(
        !backups.is_empty() && backups.len() <= 3,
        "keep 2 (a third while pruning): {listed}"
    );
    for b in &backups {
        json(c.nasctl(&[
            "--json",
            "backup",
            "verify",
            b["id"].as_str().unwrap_or(""),
            "--target",
            &target,
        ]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_go_to_a_real_s3_server_and_another_clusters_backup_needs_force() -> anyhow::Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("tapes")?;
    let target = "s3://tapes/nas";
    let a = TestCluster::up_with_env(2, s3.env())?;
    setup(&a);
    let nas = a.nas("alice", "home").await?;
    let mut files = BTreeMap::new();
    files.insert("/docs/a.txt".to_string(), b"to the object store".to_vec());
    files.insert("/big.bin".to_string(), random_bytes(3 << 20, 7));
    write_files(&nas, &files).await?;
    let tree = snapshot_of(&nas, "/").await?;
    let taken = backup(&a, "home", target);
    let id = taken["id"].as_str().unwrap_or("").to_string();
    json(a.nasctl(&["--json", "backup", "verify", &id, "--target", target]));
    let pruned = json(a.nasctl(&["--json", "backup", "prune", "--target", target, "--keep", "1"]));
    assert_eq!(
        (&pruned["kept"][0], &pruned["deleted"]),
        (&Value::from(id.clone()), &Value::Array(vec![]))
    );

    // Another cluster sees it as foreign and restores it only when forced.
    let mut b = TestCluster::up_with_env(1, s3.env())?;
    setup_with(&b, None);
    let listed = json(b.nasctl(&["--json", "backup", "list", "--target", target]));
    assert_eq!(listed["backups"][0]["note"], "from another cluster", "{listed}");
    let e = failed(restore(&b, false, &id, target, "copy", &["--lu", "2"]));
    assert!(e.contains("another cluster") && e.contains("--force"), "{e}");
    let r = json(restore(&b, true, &id, target, "copy", &["--lu", "2", "--force"]));
    assert_eq!(r["state"], "DONE", "{r}");
    same_tree(
        &snapshot_of(&b.nas("alice", "copy").await?, "/").await?,
        &tree,
        "restored from S3",
    );

    // A store that refuses the credentials, and one that is gone: each
    // named by its endpoint, with the status that says which.
    let refusing = S3Server::start_refusing_every_credential()?;
    b.kill9("CHN1");
    b.set_nasd_env(refusing.env());
    b.cluster_up(None, &[])?;
    let e = failed(b.nasctl(&["--retry-secs", "2", "backup", "create", "home", "--to", target]));
    assert!(
        e.contains(&refusing.endpoint()) && e.contains("PermissionDenied"),
        "{e}"
    );
    let endpoint = s3.endpoint();
    drop(s3);
    let e = failed(a.nasctl(&["--retry-secs", "2", "backup", "create", "home", "--to", target]));
    assert!(e.contains(&endpoint) && e.contains("Unavailable"), "{e}");
    Ok(())
}
