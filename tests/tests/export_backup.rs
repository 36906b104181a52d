//! Export backups through real `nasd` processes: to a directory and to a
//! real S3 server, incremental, verified, restored whole and in part, and
//! refused by name when a chunk is damaged, a manifest truncated, a target
//! full, a store unreachable or refusing, or the backup another cluster's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// An 8-disk array: LU 1 (RAID 5, disks 1-3) exported as `home` by CHN1
/// (partner CHN2) to alice; LUs 2 and 3 (RAID 1) free for restores.
fn setup(c: &TestCluster) {
    for args in [
        &["array", "init", "--disks", "8", "--size", "64M"][..],
        &["lu", "create", "--raid", "5", "--disks", "1,2,3"],
        &["lu", "create", "--raid", "1", "--disks", "4,5"],
        &["lu", "create", "--raid", "1", "--disks", "6,7"],
        &["user", "add", "alice"],
        &[
            "export", "create", "home", "--lu", "1", "--chn", "CHN1", "--partner", "CHN2", "--users", "alice",
        ],
    ] {
        ok(c.nasctl(args));
    }
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
            let path = if d == "/" { format!("/{}", a.name) } else { format!("{d}/{}", a.name) };
            let rel = path.strip_prefix(root.trim_end_matches('/')).unwrap_or(&path).to_string();
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
    assert_eq!(ids, [first["id"].as_str().unwrap_or(""), second["id"].as_str().unwrap_or("")]);
    let v = json(c.nasctl(&["--json", "backup", "verify", &ids[0], "--target", &target]));
    assert_eq!(v["files"], 7, "{v}");

    // The first backup, restored into a new export on LU 2, is the tree
    // as it was: bytes, modes, owners and update times.
    let r = json(c.nasctl(&[
        "--json", "backup", "restore", &ids[0], "--target", &target, "--to-export", "home2", "--lu", "2",
    ]));
    assert_eq!(r["state"], "DONE", "{r}");
    let nas2 = c.nas("alice", "home2").await?;
    same_tree(&snapshot_of(&nas2, "/").await?, &before, "the restored first backup");
    // Onto an export that has files: refused without --force.
    let e = failed(c.nasctl(&[
        "backup", "restore", &ids[1], "--target", &target, "--to-export", "home2",
    ]));
    assert!(e.contains("holds files") && e.contains("--force"), "{e}");
    let r = json(c.nasctl(&[
        "--json", "backup", "restore", &ids[1], "--target", &target, "--to-export", "home2", "--force",
    ]));
    assert_eq!(r["state"], "DONE", "{r}");
    same_tree(&snapshot_of(&nas2, "/").await?, &after, "the second backup restored with --force");
    // One directory of it into an empty export.
    let r = json(c.nasctl(&[
        "--json", "backup", "restore", &ids[1], "--target", &target, "--to-export", "docs", "--lu", "3", "--path",
        "/docs",
    ]));
    assert_eq!(r["state"], "DONE", "{r}");
    let nas3 = c.nas("alice", "docs").await?;
    let docs = snapshot_of(&nas3, "/docs").await?;
    let want: BTreeMap<_, _> = after
        .iter()
        .filter_map(|(p, v)| p.strip_prefix("/docs").filter(|r| r.starts_with('/')).map(|r| (r.to_string(), v.clone())))
        .collect();
    same_tree(&docs, &want, "/docs restored alone");
    assert!(nas3.stat("/big.bin").await.is_err(), "a file outside --path was restored");

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
    let e = failed(c.nasctl(&[
        "backup", "restore", &ids[1], "--target", &target, "--to-export", "docs", "--force",
    ]));
    assert!(e.contains(&chunks) && e.contains("docs is incomplete"), "{e}");

    // A truncated manifest: listed as damaged, refused by name.
    let manifest = tape.join("backups").join(format!("{}.nasbackup", ids[1]));
    let len = std::fs::metadata(&manifest)?.len();
    std::fs::OpenOptions::new().write(true).open(&manifest)?.set_len(len / 2)?;
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
