//! The disk array through real `nasd` processes: RAID LUs created, written
//! and read through any CHN (calls reach the CHN holding the LU lock), a
//! member failed, replaced and rebuilt online, a rebuild resumed after
//! kill -9, and the bad inputs an operator can give.

use std::time::Duration;

use ::nas_client::proto::*;
use nas_tests::{ok, random_bytes, wait_until, TestCluster};
use tonic::Code;

/// Runs nasctl against one CHN only (so that calls must be forwarded).
fn on(c: &TestCluster, chn: &str, args: &[&str]) -> String {
    let mut all = vec!["--cluster", &c.node(chn).addr];
    all.extend_from_slice(args);
    ok(c.nasctl(&all))
}

async fn write_lu(c: &TestCluster, chn: &str, lu: u32, offset: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let req = WriteLuRequest {
            lu,
            offset: offset + (i << 20) as u64,
            data: chunk.to_vec(),
            flush: true,
        };
        c.admin(chn).write_lu(req).await.expect("write LU");
    }
}

async fn read_lu(c: &TestCluster, chn: &str, lu: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let n = (len - out.len()).min(1 << 20);
        let req = ReadLuRequest {
            lu,
            offset: offset + out.len() as u64,
            length: n as u32,
        };
        out.extend(c.admin(chn).read_lu(req).await.expect("read LU").into_inner().data);
    }
    out
}

/// A RAID 1 LU over `disks` with the default stripe unit.
fn mirror(disks: &[u32]) -> CreateLuRequest {
    CreateLuRequest {
        raid: RaidLevel::Raid1 as i32,
        disks: disks.to_vec(),
        stripe_unit_bytes: 0,
    }
}

async fn lu_row(c: &TestCluster, lu: u32) -> Lu {
    let r = c
        .admin("CHN1")
        .list_lus(ListRequest { local: false })
        .await
        .expect("list LUs");
    r.into_inner().lus.into_iter().find(|l| l.number == lu).expect("LU row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raid_lus_survive_a_failed_disk_and_rebuild_online() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    on(&c, "CHN2", &["array", "init", "--disks", "7", "--size", "16M"]);
    on(&c, "CHN2", &["lu", "create", "--raid", "5", "--disks", "1,2,3"]);
    on(&c, "CHN3", &["lu", "create", "--raid", "1", "--disks", "4,5"]);
    let five = random_bytes(3 << 20, 1);
    let one = random_bytes(2 << 20, 2);
    // CHN1 holds neither LU: its calls are forwarded to the lock holders.
    write_lu(&c, "CHN1", 1, 777, &five).await;
    write_lu(&c, "CHN1", 2, 4096, &one).await;

    ok(c.nasctl(&["disk", "fail", "2"]));
    ok(c.nasctl(&["disk", "fail", "4"]));
    assert!(
        read_lu(&c, "CHN3", 1, 777, five.len()).await == five,
        "RAID 5 degraded read differs"
    );
    assert!(
        read_lu(&c, "CHN1", 2, 4096, one.len()).await == one,
        "RAID 1 degraded read differs"
    );
    assert_eq!(lu_row(&c, 1).await.health, LuHealth::LuDegraded as i32);
    let disks = ok(c.nasctl(&["--json", "disk", "list"]));
    assert!(disks.contains("\"FAILED\""), "{disks}");

    // Writes go on while degraded.
    let more = random_bytes(1 << 20, 3);
    write_lu(&c, "CHN2", 1, 5 << 20, &more).await;

    ok(c.nasctl(&["disk", "replace", "2"]));
    let rebuilt = ok(c.nasctl(&["lu", "rebuild", "1"]));
    assert!(rebuilt.contains("rebuilt"), "{rebuilt}");
    ok(c.nasctl(&["disk", "replace", "4", "--spare", "7"]));
    ok(c.nasctl(&["lu", "rebuild", "2"]));
    assert_eq!(lu_row(&c, 1).await.health, LuHealth::LuOptimal as i32);
    assert_eq!(lu_row(&c, 1).await.disks, vec![1, 6, 3]);
    assert_eq!(lu_row(&c, 2).await.disks, vec![7, 5]);

    // The rebuilt members carry the data: fail the other members and read.
    ok(c.nasctl(&["disk", "fail", "1"]));
    ok(c.nasctl(&["disk", "fail", "5"]));
    assert!(
        read_lu(&c, "CHN1", 1, 777, five.len()).await == five,
        "RAID 5 data after rebuild differs"
    );
    assert!(
        read_lu(&c, "CHN1", 1, 5 << 20, more.len()).await == more,
        "write made while degraded lost"
    );
    assert!(
        read_lu(&c, "CHN1", 2, 4096, one.len()).await == one,
        "RAID 1 data after rebuild differs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_reports_and_repairs_damaged_parity() -> anyhow::Result<()> {
    let c = TestCluster::up(1, &[])?;
    ok(c.nasctl(&["array", "init", "--disks", "3", "--size", "8M"]));
    ok(c.nasctl(&[
        "lu",
        "create",
        "--raid",
        "5",
        "--disks",
        "1,2,3",
        "--stripe-unit",
        "16K",
    ]));
    write_lu(&c, "CHN1", 1, 0, &random_bytes(1 << 20, 4)).await;
    // Flip bytes behind the LU's back on one member: stripe 0's parity
    // (the data area is the last 8 MiB of the disk file).
    let disk = c.dir().join("array").join("disk-003.img");
    let f = std::fs::OpenOptions::new().write(true).open(&disk)?;
    let data_at = f.metadata()?.len() - (8 << 20);
    std::os::unix::fs::FileExt::write_all_at(&f, b"bit rot", data_at + 100)?;
    let found = ok(c.nasctl(&["lu", "scrub", "1"]));
    assert!(
        found.contains(" 1 with a damaged or inconsistent block, 0 repaired"),
        "{found}"
    );
    let repaired = ok(c.nasctl(&["lu", "scrub", "1", "--repair"]));
    assert!(
        repaired.contains(" 1 with a damaged or inconsistent block, 1 repaired"),
        "{repaired}"
    );
    let clean = ok(c.nasctl(&["lu", "scrub", "1"]));
    assert!(clean.contains(" 0 with a damaged"), "{clean}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_interrupted_by_kill9_resumes_where_it_was() -> anyhow::Result<()> {
    // Rate-limited, so that the rebuild is still running when CHN1 dies.
    let mut c = TestCluster::up(3, &["--rebuild-max-mb-s=20"])?;
    on(&c, "CHN1", &["array", "init", "--disks", "4", "--size", "64M"]);
    on(&c, "CHN1", &["lu", "create", "--raid", "5", "--disks", "1,2,3"]);
    let data = random_bytes(2 << 20, 5);
    for at in [0u64, 50 << 20, 120 << 20] {
        write_lu(&c, "CHN1", 1, at, &data).await;
    }
    ok(c.nasctl(&["disk", "fail", "3"]));
    ok(c.nasctl(&["disk", "replace", "3"]));
    ok(c.nasctl(&["lu", "rebuild", "1", "--no-wait"]));
    wait_until("the rebuild to pass 40%", Duration::from_secs(60), || async {
        let job = lu_row(&c, 1).await.job?;
        (job.done_bytes * 100 >= job.total_bytes * 40 && !job.finished).then_some(())
    })
    .await?;
    c.kill9("CHN1");
    c.cluster_up(None, &[])?;
    wait_until("the resumed rebuild to finish", Duration::from_secs(90), || async {
        let row = lu_row(&c, 1).await;
        (row.health == LuHealth::LuOptimal as i32 && row.job.is_some_and(|j| j.finished)).then_some(())
    })
    .await?;
    let log = std::fs::read_to_string(c.dir().join("chn1").join("nasd.log"))?;
    let resumed = log
        .lines()
        .find_map(|l| l.split("resuming the interrupted rebuild at stripe ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
    assert!(
        resumed.is_some_and(|s| s > 0),
        "rebuild did not resume from a checkpoint:\n{}",
        c.logs()
    );
    ok(c.nasctl(&["disk", "fail", "1"]));
    for at in [0u64, 50 << 20, 120 << 20] {
        assert!(
            read_lu(&c, "CHN2", 1, at, data.len()).await == data,
            "data at {at} differs after the resumed rebuild"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_array_inputs_get_precise_statuses() -> anyhow::Result<()> {
    let c = TestCluster::up(1, &[])?;
    let mut a = c.admin("CHN1");
    let no_array = a
        .read_lu(ReadLuRequest {
            lu: 1,
            offset: 0,
            length: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(no_array.code(), Code::NotFound, "{no_array:?}");
    a.init_array(InitArrayRequest {
        disks: 5,
        disk_capacity_bytes: 4 << 20,
    })
    .await?;
    let again = a
        .init_array(InitArrayRequest {
            disks: 5,
            disk_capacity_bytes: 4 << 20,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let twice = a
        .create_lu(CreateLuRequest {
            raid: RaidLevel::Raid5 as i32,
            disks: vec![1, 1, 2],
            stripe_unit_bytes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::InvalidArgument, "{twice:?}");
    a.create_lu(mirror(&[1, 2])).await?;
    let used = a.create_lu(mirror(&[2, 3])).await.unwrap_err();
    assert_eq!(used.code(), Code::FailedPrecondition);
    assert!(used.message().contains("USED"), "{used:?}");

    let cap = 4u64 << 20;
    for (offset, length) in [(cap - 10, 20u32), (u64::MAX - 5, 10)] {
        let e = a.read_lu(ReadLuRequest { lu: 1, offset, length }).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        let w = a
            .write_lu(WriteLuRequest {
                lu: 1,
                offset,
                data: vec![1; length as usize],
                flush: false,
            })
            .await
            .unwrap_err();
        assert_eq!(w.code(), Code::OutOfRange, "{w:?}");
    }
    let huge = a
        .read_lu(ReadLuRequest {
            lu: 1,
            offset: 0,
            length: 64 << 20,
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::InvalidArgument);
    let nothing = a.rebuild_lu(LuRequest { lu: 1 }).await.unwrap_err();
    assert_eq!(nothing.code(), Code::FailedPrecondition, "{nothing:?}");
    let healthy = a
        .replace_disk(ReplaceDiskRequest { disk: 1, spare: 0 })
        .await
        .unwrap_err();
    assert_eq!(healthy.code(), Code::FailedPrecondition, "{healthy:?}");
    let unknown = a.fail_disk(DiskRequest { disk: 99 }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // A disk file of the wrong size is named when an LU is built on it.
    let disk = c.dir().join("array").join("disk-004.img");
    std::fs::OpenOptions::new().write(true).open(&disk)?.set_len(1 << 20)?;
    let wrong = a.create_lu(mirror(&[4, 5])).await.unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");
    assert!(wrong.message().contains("disk 4"), "{wrong:?}");

    // None of this disturbed the LU that exists.
    a.write_lu(WriteLuRequest {
        lu: 1,
        offset: 0,
        data: b"still fine".to_vec(),
        flush: true,
    })
    .await?;
    let back = a
        .read_lu(ReadLuRequest {
            lu: 1,
            offset: 0,
            length: 10,
        })
        .await?
        .into_inner()
        .data;
    assert_eq!(back, b"still fine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_fails_the_member_and_is_recorded_in_the_disk_table() -> anyhow::Result<()> {
    let c = TestCluster::up(1, &[])?;
    ok(c.nasctl(&["array", "init", "--disks", "3", "--size", "8M"]));
    ok(c.nasctl(&["lu", "create", "--raid", "5", "--disks", "1,2,3"]));
    let data = random_bytes(6 << 20, 6);
    write_lu(&c, "CHN1", 1, 0, &data).await;
    // The disk loses its data area under the open LU: the next read of it fails.
    let disk = c.dir().join("array").join("disk-002.img");
    std::fs::OpenOptions::new().write(true).open(&disk)?.set_len(4 << 20)?;
    assert!(
        read_lu(&c, "CHN1", 1, 0, data.len()).await == data,
        "read around the failed disk differs"
    );
    wait_until("disk 2 recorded FAILED", Duration::from_secs(10), || async {
        let disks = c
            .admin("CHN1")
            .list_disks(ListRequest { local: false })
            .await
            .ok()?
            .into_inner()
            .disks;
        disks
            .iter()
            .any(|d| d.number == 2 && d.state == DiskState::DiskFailed as i32)
            .then_some(())
    })
    .await?;
    wait_until("LU 1 reported DEGRADED", Duration::from_secs(10), || async {
        (lu_row(&c, 1).await.health == LuHealth::LuDegraded as i32).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_serving_chn_during_writes_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut c = TestCluster::up(3, &[])?;
    on(&c, "CHN2", &["array", "init", "--disks", "3", "--size", "16M"]);
    on(&c, "CHN2", &["lu", "create", "--raid", "5", "--disks", "1,2,3"]);
    // A writer on CHN2 (the LU's holder) records every acknowledged write.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let mut admin = c.admin("CHN2");
        let count = count.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000u64 {
                let offset = (i * 37_000) % (30 << 20);
                let data = random_bytes(20_000, i);
                let req = WriteLuRequest {
                    lu: 1,
                    offset,
                    data,
                    flush: true,
                };
                if admin.write_lu(req).await.is_err() {
                    break;
                }
                acked.push(i);
                count.store(acked.len(), std::sync::atomic::Ordering::Relaxed);
            }
            acked
        })
    };
    wait_until("20 acknowledged writes", Duration::from_secs(30), || async {
        (count.load(std::sync::atomic::Ordering::Relaxed) >= 20).then_some(())
    })
    .await?;
    c.kill9("CHN2");
    let acked = writer.await?;
    assert!(
        acked.len() >= 20,
        "the writer made too little progress ({})",
        acked.len()
    );
    c.cluster_up(None, &[])?;
    // Later writes overwrite earlier ones where they overlap: check each
    // acknowledged write's bytes that no later acknowledged write covered.
    let mut expect = vec![None; 30 << 20];
    for &i in &acked {
        let offset = ((i * 37_000) % (30 << 20)) as usize;
        for (j, b) in random_bytes(20_000, i).into_iter().enumerate() {
            if let Some(slot) = expect.get_mut(offset + j) {
                *slot = Some(b);
            }
        }
    }
    let got = read_lu(&c, "CHN2", 1, 0, 30 << 20).await;
    let lost = expect
        .iter()
        .zip(&got)
        .filter(|(e, g)| e.is_some_and(|e| e != **g))
        .count();
    assert_eq!(
        lost,
        0,
        "{lost} acknowledged bytes lost after kill -9 ({} writes acknowledged)",
        acked.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chn_that_cannot_renew_its_lu_lease_stops_serving_the_lu() -> anyhow::Result<()> {
    let mut c = TestCluster::up(3, &["--lu-lease-ms=1500", "--quorum-timeout-ms=1000"])?;
    on(&c, "CHN1", &["array", "init", "--disks", "3", "--size", "8M"]);
    on(&c, "CHN1", &["lu", "create", "--raid", "1", "--disks", "1,2"]);
    write_lu(&c, "CHN1", 1, 0, b"before the partition").await;
    c.kill9("CHN2");
    c.kill9("CHN3");
    // Without a majority CHN1 cannot renew the lease, so it closes the LU
    // before another CHN could take it, and refuses LU calls meanwhile.
    wait_until("CHN1 to close LU 1", Duration::from_secs(20), || async {
        let log = std::fs::read_to_string(c.dir().join("chn1").join("nasd.log")).ok()?;
        log.contains("LU lease lost").then_some(())
    })
    .await?;
    let err = c
        .admin("CHN1")
        .write_lu(WriteLuRequest {
            lu: 1,
            offset: 0,
            data: b"during".to_vec(),
            flush: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    c.cluster_up(None, &[])?;
    let back = wait_until("LU 1 served again", Duration::from_secs(20), || async {
        let req = ReadLuRequest {
            lu: 1,
            offset: 0,
            length: 20,
        };
        c.admin("CHN1").read_lu(req).await.ok().map(|r| r.into_inner().data)
    })
    .await?;
    assert_eq!(back, b"before the partition");
    Ok(())
}
