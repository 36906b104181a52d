//! Data integrity through real `nasd` processes: a disk damaged while the
//! cluster is stopped (bytes flipped in its file, as a failing disk would),
//! and a disk gone after a clean stop. Files read back right, the damage is
//! repaired and counted in `disk list`, and nothing is lost.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use nas_tests::{ok, random_bytes, wait_until, TestCluster};

const DISK: u64 = 64 << 20;

/// One CHN, a RAID `raid` LU on disks 1-3 exported as `home` to alice,
/// holding `/big.bin`; returns the file's bytes and its local copy.
fn cluster_with_a_file(raid: &str) -> anyhow::Result<(TestCluster, Vec<u8>, std::path::PathBuf)> {
    let c = TestCluster::up(1, &[])?;
    for args in [
        &["array", "init", "--disks", "3", "--size", "64M"][..],
        &["lu", "create", "--raid", raid, "--disks", "1,2,3"],
        &["user", "add", "alice"],
        &[
            "export", "create", "home", "--lu", "1", "--chn", "CHN1", "--users", "alice",
        ],
    ] {
        ok(c.nasctl(args));
    }
    let data = random_bytes(24 << 20, 18);
    let local = c.dir().join("big.bin");
    std::fs::write(&local, &data)?;
    ok(c.nasctl_as(
        &["fs", "put", local.to_str().unwrap_or_default(), "home:/big.bin"],
        &[("NAS_USER", "alice")],
    ));
    Ok((c, data, local))
}

fn down(c: &TestCluster) {
    ok(c.nasctl(&["cluster", "down", "--dir", &c.dir().display().to_string()]));
}

fn disk_file(c: &TestCluster, n: u32) -> std::path::PathBuf {
    c.dir().join("array").join(format!("disk-{n:03}.img"))
}

/// Inverts 64 bytes every 128 KiB of disk `n`'s data area (its last
/// 64 MiB): file data and file-system metadata alike.
fn rot(c: &TestCluster, n: u32) -> anyhow::Result<u64> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk_file(c, n))?;
    let data_at = f.metadata()?.len() - DISK;
    let mut flipped = 0;
    for at in (data_at + 1000..data_at + DISK).step_by(128 << 10) {
        let mut b = [0u8; 64];
        f.read_exact_at(&mut b, at)?;
        b.iter_mut().for_each(|x| *x ^= 0xa5);
        f.write_all_at(&b, at)?;
        flipped += 1;
    }
    Ok(flipped)
}

fn get(c: &TestCluster) -> anyhow::Result<Vec<u8>> {
    let back = c.dir().join("back.bin");
    let _ = std::fs::remove_file(&back);
    ok(c.nasctl_as(
        &["fs", "get", "home:/big.bin", back.to_str().unwrap_or_default()],
        &[("NAS_USER", "alice")],
    ));
    Ok(std::fs::read(back)?)
}

fn checksum_errors(c: &TestCluster, disk: u32) -> anyhow::Result<u64> {
    let out = ok(c.nasctl(&["--json", "disk", "list"]));
    let v: serde_json::Value = serde_json::from_str(&out)?;
    // One object per disk.
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["disk"] == disk)
        .and_then(|r| r["checksum_errors"].as_u64())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotting_disk_is_read_right_repaired_and_counted() -> anyhow::Result<()> {
    for raid in ["5", "1"] {
        let (mut c, data, _) = cluster_with_a_file(raid)?;
        down(&c);
        let flipped = rot(&c, 2)?;
        c.cluster_up(None, &[])?;
        assert!(get(&c)? == data, "RAID {raid}: the file read back differs");
        wait_until(
            "disk 2's checksum errors in disk list",
            Duration::from_secs(10),
            || async { checksum_errors(&c, 2).ok().filter(|&n| n > 0) },
        )
        .await?;
        // Scrub finds whatever the reads did not touch, and repairs it.
        let repaired = ok(c.nasctl(&["lu", "scrub", "1", "--repair"]));
        assert!(repaired.contains(" 0 with a block lost"), "RAID {raid}: {repaired}");
        let clean = ok(c.nasctl(&["lu", "scrub", "1"]));
        assert!(clean.contains(" 0 with a damaged"), "RAID {raid}: {clean}");
        let counted = checksum_errors(&c, 2)?;
        assert!(
            counted <= flipped * 2,
            "RAID {raid}: {counted} errors for {flipped} damaged places"
        );
        assert!(get(&c)? == data, "RAID {raid}: the file differs after scrub");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_lost_after_a_clean_stop_leaves_every_byte() -> anyhow::Result<()> {
    let (mut c, data, _) = cluster_with_a_file("5")?;
    down(&c);
    let f = std::fs::OpenOptions::new().write(true).open(disk_file(&c, 3))?;
    f.set_len(1 << 20)?;
    c.cluster_up(None, &[])?;
    assert!(get(&c)? == data, "the file differs with disk 3 gone");
    let log = c.logs();
    assert!(
        !log.contains("marking them lost") && !log.contains("marking the region"),
        "a region was marked lost:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lu_created_through_one_chn_is_exported_by_another() -> anyhow::Result<()> {
    let c = TestCluster::up(2, &[])?;
    // The LU is made through CHN1, the export through CHN2.
    let on = |chn: &str, args: &[&str]| {
        let token = c.admin_token();
        ok(c.nasctl_as(args, &[("NAS_CLUSTER", &c.node(chn).addr), ("NAS_TOKEN", &token)]))
    };
    on("CHN1", &["array", "init", "--disks", "3", "--size", "64M"]);
    on("CHN1", &["lu", "create", "--raid", "5", "--disks", "1,2,3"]);
    on("CHN1", &["user", "add", "alice"]);
    on(
        "CHN2",
        &[
            "export", "create", "other", "--lu", "1", "--chn", "CHN2", "--users", "alice",
        ],
    );
    let local = c.dir().join("f.bin");
    let data = random_bytes(1 << 20, 3);
    std::fs::write(&local, &data)?;
    let put = c.nasctl_as(
        &["fs", "put", local.to_str().unwrap_or_default(), "other:/f.bin"],
        &[("NAS_USER", "alice")],
    );
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let owner = ok(c.nasctl(&["--json", "export", "list"]));
    assert!(owner.contains("CHN2"), "{owner}");
    let back = c.dir().join("back.bin");
    ok(c.nasctl_as(
        &["fs", "get", "other:/f.bin", back.to_str().unwrap_or_default()],
        &[("NAS_USER", "alice")],
    ));
    assert!(std::fs::read(back)? == data);
    // Served by CHN2 itself, not through a lock CHN1 kept from formatting.
    let log = std::fs::read_to_string(c.dir().join("chn2").join("nasd.log"))?;
    assert!(log.contains("LU open on this CHN"), "CHN2 never opened LU 1:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lu_with_two_disks_gone_is_listed_failed() -> anyhow::Result<()> {
    let (mut c, _, _) = cluster_with_a_file("5")?;
    down(&c);
    for n in [2, 3] {
        std::fs::remove_file(disk_file(&c, n))?;
    }
    c.cluster_up(None, &[])?;
    let back = c.dir().join("back.bin");
    let get = c.nasctl_as(
        &["fs", "get", "home:/big.bin", back.to_str().unwrap_or_default()],
        &[("NAS_USER", "alice")],
    );
    assert!(!get.status.success(), "a file was served from one disk of three");
    wait_until("LU 1 listed FAILED", Duration::from_secs(10), || async {
        let out = ok(c.nasctl(&["lu", "list"]));
        out.contains("FAILED").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_metadata_area_refuses_creates_while_deletes_go_on() -> anyhow::Result<()> {
    let c = TestCluster::up(1, &[])?;
    // The smallest metadata area (8 MiB), as on the quick start's LU.
    for args in [
        &["array", "init", "--disks", "3", "--size", "16M"][..],
        &["lu", "create", "--raid", "5", "--disks", "1,2,3"],
        &["user", "add", "alice"],
        &[
            "export", "create", "home", "--lu", "1", "--chn", "CHN1", "--users", "alice",
        ],
    ] {
        ok(c.nasctl(args));
    }
    let long = "m".repeat(200);
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(std::sync::Arc::new(c.nas("alice", "home").await?));
    }
    let fill = clients.iter().enumerate().map(|(k, nas)| {
        let (nas, long) = (nas.clone(), long.clone());
        tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0.. {
                let path = format!("/{k:02}-{i:05}-{long}");
                match nas.create(&path, 0o644, true, false).await {
                    Ok(_) => made.push(path),
                    Err(e) => return (made, e),
                }
            }
            unreachable!("the loop only ends by returning")
        })
    });
    let mut made = Vec::new();
    for done in futures::future::join_all(fill).await {
        let (paths, refused) = done?;
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{}", refused.message());
        assert!(
            refused.message().contains("metadata area is full"),
            "{}",
            refused.message()
        );
        made.extend(paths);
    }
    assert!(made.len() > 1000, "only {} files fit", made.len());
    let df = ok(c.nasctl_as(&["--json", "fs", "df", "home"], &[("NAS_USER", "alice")]));
    assert!(df.contains("meta_used_bytes"), "{df}");
    // Deletes work in the full area, from every client at once.
    let nas = clients[0].clone();
    let deletes = made
        .chunks(made.len().div_ceil(64))
        .zip(clients.iter())
        .map(|(paths, nas)| {
            let (paths, nas) = (paths.to_vec(), nas.clone());
            tokio::spawn(async move {
                for p in paths {
                    nas.unlink(&p).await.map_err(|e| anyhow::anyhow!("unlink {p}: {e}"))?;
                }
                anyhow::Ok(())
            })
        });
    for d in futures::future::join_all(deletes).await {
        if let Err(e) = d? {
            panic!("a delete in the full area failed: {e:#}");
        }
    }
    // And the room is used again, without a remount.
    for i in 0..50 {
        nas.create(&format!("/again-{i}"), 0o644, true, false).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_scrub_finds_and_repairs_damage_nobody_read() -> anyhow::Result<()> {
    use nas_client::proto::{ListRequest, WriteLuRequest};
    let c = TestCluster::up(1, &["--scrub-every-s=2"])?;
    ok(c.nasctl(&["array", "init", "--disks", "3", "--size", "8M"]));
    ok(c.nasctl(&["lu", "create", "--raid", "5", "--disks", "1,2,3"]));
    let req = WriteLuRequest {
        lu: 1,
        offset: 0,
        data: random_bytes(1 << 20, 8),
        flush: true,
    };
    c.admin("CHN1").write_lu(req).await?;
    // Damage a block of disk 1 behind the LU's back, while it runs.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk_file(&c, 1))?;
    let at = f.metadata()?.len() - (8 << 20) + 100;
    let mut good = [0u8; 64];
    f.read_exact_at(&mut good, at)?;
    f.write_all_at(&good.map(|b| !b), at)?;
    let result = wait_until("a scheduled scrub that repairs", Duration::from_secs(30), || async {
        let lus = c
            .admin("CHN1")
            .list_lus(ListRequest { local: false })
            .await
            .ok()?
            .into_inner()
            .lus;
        let job = lus.into_iter().find(|l| l.number == 1)?.job?;
        (job.kind == "scrub" && job.finished && job.result.contains(" 1 repaired")).then_some(job.result)
    })
    .await?;
    let mut now = [0u8; 64];
    f.read_exact_at(&mut now, at)?;
    assert_eq!(now, good, "the damaged copy is still there after: {result}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_on_every_copy_is_refused_naming_the_file() -> anyhow::Result<()> {
    let (mut c, _, _) = cluster_with_a_file("1")?;
    down(&c);
    // The same bytes on all three mirrors, inside the file's data (the
    // file data area of this LU starts at 9 MiB).
    for n in 1..=3 {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk_file(&c, n))?;
        let data_at = f.metadata()?.len() - DISK;
        for at in (data_at + (12 << 20)..data_at + (30 << 20)).step_by(1 << 20) {
            f.write_all_at(&[0x5a; 32], at)?;
        }
    }
    c.cluster_up(None, &[])?;
    let back = c.dir().join("back.bin");
    let get = c.nasctl_as(
        &["fs", "get", "home:/big.bin", back.to_str().unwrap_or_default()],
        &[("NAS_USER", "alice")],
    );
    let err = String::from_utf8_lossy(&get.stderr);
    assert!(!get.status.success(), "a file was served from three damaged copies");
    assert!(
        err.contains("DATA_LOSS") || err.contains("data loss") || err.contains("DataLoss"),
        "{err}"
    );
    assert!(err.contains("big.bin"), "the error does not name the file: {err}");
    Ok(())
}
