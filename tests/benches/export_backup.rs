//! Benchmark (not a test): export backups and restores beside `tar`.
//!
//! A 3-CHN cluster on loopback (TLS); export `home` on a RAID 5 LU of
//! 3 x 1 GiB disks holds a mixed tree of `--mib` MiB (by bytes: 70% in
//! 4 MiB files, 25% in 64 KiB files, 5% in 4 KiB files; random, so
//! incompressible), and the same tree sits in a local folder. Per run, to
//! a fresh directory on the same file system: `tar -cf` of the local tree
//! then an fsync of the archive (a backup is durable when it ends), beside
//! `backup create --full` of the export. Then, to the last run's
//! directory: an incremental backup after 1% of the bytes changed, beside
//! that run's full backup; a restore into a new export beside `tar -xf`
//! into a fresh folder and a sync; and, when `moto_server` is installed, a
//! full backup to a local S3 server.
//!
//! Run: `cargo build --release && cargo bench -p nas-tests --bench export_backup`;
//! options after `--` (`-- --help` lists them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ::nas_client::proto::{BackupJob, BackupJobState, CreateBackupRequest, ListBackupsRequest, RestoreBackupRequest};
use ::nas_client::{Cluster, NasClient};
use nas_tests::bench::{self, mb_s, median};
use nas_tests::s3::S3Server;
use nas_tests::{random_bytes, TestCluster};

#[derive(clap::Parser, Debug)]
#[command(about = "Export backup and restore throughput beside tar")]
struct Args {
    /// MiB of file data in the export.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Full backups (and tar runs) measured.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// The tree: (path, size) with 70% of bytes in 4 MiB files, 25% in
/// 64 KiB files and 5% in 4 KiB files, in folders of at most 1000.
fn tree(mib: u64) -> Vec<(String, usize)> {
    let total = mib << 20;
    let mut out = Vec::new();
    for (share, size, dir) in [(70, 4 << 20, "big"), (25, 64 << 10, "mid"), (5, 4 << 10, "small")] {
        let count = (total * share / 100) / size as u64;
        for i in 0..count {
            out.push((format!("/{dir}/{:03}/f{i}", i / 1000), size));
        }
    }
    out
}

fn content(i: usize, size: usize) -> Vec<u8> {
    random_bytes(size, 1000 + i as u64)
}

async fn fill(nas: &[NasClient], local: &Path, files: &[(String, usize)]) -> anyhow::Result<()> {
    let mut dirs: Vec<String> = files
        .iter()
        .filter_map(|(p, _)| p.rsplit_once('/').map(|(d, _)| d.to_string()))
        .collect();
    dirs.dedup();
    for d in &dirs {
        let mut cur = String::new();
        for part in d.trim_start_matches('/').split('/') {
            cur.push('/');
            cur.push_str(part);
            let _ = nas[0].mkdir(&cur, 0o755).await;
        }
        std::fs::create_dir_all(local.join(d.trim_start_matches('/')))?;
    }
    let per = files.len().div_ceil(nas.len());
    let writers = nas.iter().enumerate().map(|(k, n)| {
        let mine: Vec<(usize, &(String, usize))> = files.iter().enumerate().skip(k * per).take(per).collect();
        async move {
            for (i, (path, size)) in mine {
                let data = content(i, *size);
                std::fs::write(local.join(path.trim_start_matches('/')), &data)?;
                let f = n.create(path, 0o644, false, true).await?;
                n.write(f.handle, 0, &data).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    for r in futures::future::join_all(writers).await {
        r?;
    }
    Ok(())
}

/// Runs `cmd` and returns how long it took with the fsync or sync after it.
fn timed(mut cmd: Command, then_sync: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed");
    std::fs::File::open(then_sync)?.sync_all()?;
    if then_sync.is_dir() {
        ok_status(Command::new("sync").arg("-f").arg(then_sync))?;
    }
    Ok(t.elapsed())
}

fn ok_status(cmd: &mut Command) -> anyhow::Result<()> {
    anyhow::ensure!(cmd.status()?.success(), "{cmd:?} failed");
    Ok(())
}

/// Waits for job `id` of `export` to end; how long it ran (as its row
/// says) and its final row.
async fn finish(admin: &Cluster, export: &str, mut job: BackupJob) -> anyhow::Result<(Duration, BackupJob)> {
    while job.state == BackupJobState::BackupRunning as i32 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let list = admin
            .list_backups(ListBackupsRequest {
                target: String::new(),
                export: export.into(),
            })
            .await?;
        if let Some(j) = list.jobs.into_iter().find(|j| j.id == job.id) {
            job = j;
        }
    }
    anyhow::ensure!(
        job.state == BackupJobState::BackupDone as i32,
        "job {} failed: {}",
        job.id,
        job.message
    );
    Ok((Duration::from_millis(job.finished_ms - job.started_ms), job))
}

async fn backup(admin: &Cluster, target: &str, full: bool) -> anyhow::Result<(Duration, BackupJob)> {
    let req = CreateBackupRequest {
        export: "home".into(),
        target: target.into(),
        snapshot: String::new(),
        full,
    };
    let job = admin.create_backup(req).await?.job.unwrap_or_default();
    finish(admin, "home", job).await
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Args = bench::args();
    let c = TestCluster::up(3, &[])?;
    c.with_home("1G", &["5:1,2,3", "5:4,5,6"], "CHN1", Some("CHN2"));
    let admin = c.client();
    let work = c.dir().join("bench");
    let local = work.join("src");
    std::fs::create_dir_all(&local)?;
    let files = tree(a.mib);
    let bytes: u64 = files.iter().map(|(_, s)| *s as u64).sum();
    eprintln!(
        "writing {} files, {} MiB, into the export and {} ...",
        files.len(),
        bytes >> 20,
        local.display()
    );
    let mut nas = Vec::new();
    for _ in 0..8 {
        nas.push(c.nas("alice", "home").await?);
    }
    fill(&nas, &local, &files).await?;

    let (mut tar_runs, mut backup_runs) = (Vec::new(), Vec::new());
    let mut last = PathBuf::new();
    let mut last_full = None;
    for run in 0..a.repeat {
        // Each measurement starts with nothing dirty, and they take turns
        // going first, so that neither pays for the other's writeback.
        let tar_dir = work.join(format!("tar-{run}"));
        std::fs::create_dir_all(&tar_dir)?;
        let archive = tar_dir.join("src.tar");
        let tape = work.join(format!("tape-{run}"));
        let tar_run = || -> anyhow::Result<Duration> {
            ok_status(&mut Command::new("sync"))?;
            let mut tar = Command::new("tar");
            tar.arg("-cf").arg(&archive).arg("-C").arg(&local).arg(".");
            timed(tar, &archive)
        };
        let tar_first = run % 2 == 0;
        let tar_took = if tar_first { Some(tar_run()?) } else { None };
        ok_status(&mut Command::new("sync"))?;
        let (took, job) = backup(&admin, &tape.display().to_string(), true).await?;
        let tar_took = match tar_took {
            Some(t) => t,
            None => tar_run()?,
        };
        eprintln!(
            "run {run} ({} first): tar -cf + fsync {:.2} s ({:.0} MB/s); backup create --full {:.2} s ({:.0} MB/s), {} MiB on the target",
            if tar_first { "tar" } else { "backup" },
            tar_took.as_secs_f64(),
            mb_s(bytes, tar_took),
            took.as_secs_f64(),
            mb_s(bytes, took),
            dir_bytes(&tape) >> 20
        );
        tar_runs.push(mb_s(bytes, tar_took));
        backup_runs.push(mb_s(bytes, took));
        last = tape;
        last_full = Some((took, job));
    }
    let (tar_mb, backup_mb) = (median(tar_runs), median(backup_runs));
    println!(
        "full backup of {} MiB in {} files, median of {}:",
        bytes >> 20,
        files.len(),
        a.repeat
    );
    println!(
        "  tar -cf + fsync {tar_mb:.0} MB/s; backup create {backup_mb:.0} MB/s; ratio {:.2} (goal: at least 0.5)",
        backup_mb / tar_mb
    );

    // 1% of the bytes change: whole 4 MiB files rewritten.
    let big: Vec<&(String, usize)> = files.iter().filter(|(_, s)| *s == 4 << 20).collect();
    let change = ((bytes / 100) >> 22).max(1) as usize;
    for (i, (path, size)) in big.iter().take(change).enumerate() {
        let f = nas[0].create(path, 0o644, false, true).await?;
        nas[0].write(f.handle, 0, &content(90_000 + i, *size)).await?;
    }
    let (full_took, full_job) = last_full.ok_or_else(|| anyhow::anyhow!("no full backup ran"))?;
    let (inc_took, inc_job) = backup(&admin, &last.display().to_string(), false).await?;
    println!(
        "incremental after {} MiB ({:.1}%) changed: {:.2} s and {} MiB sent, beside the full backup's {:.2} s and {} MiB: {:.1}% of the time, {:.1}% of the bytes (goal: at most 5%)",
        (change << 22) >> 20,
        (change << 22) as f64 * 100.0 / bytes as f64,
        inc_took.as_secs_f64(),
        inc_job.sent_bytes >> 20,
        full_took.as_secs_f64(),
        full_job.sent_bytes >> 20,
        inc_took.as_secs_f64() * 100.0 / full_took.as_secs_f64(),
        inc_job.sent_bytes as f64 * 100.0 / full_job.sent_bytes as f64
    );

    // Restore the full backup into a new export, beside tar -xf.
    let extract = work.join("extract");
    std::fs::create_dir_all(&extract)?;
    ok_status(&mut Command::new("sync"))?;
    let mut tar = Command::new("tar");
    tar.arg("-xf")
        .arg(work.join("tar-0").join("src.tar"))
        .arg("-C")
        .arg(&extract);
    let tar_x = timed(tar, &extract)?;
    let req = RestoreBackupRequest {
        target: last.display().to_string(),
        backup: full_job.id.clone(),
        export: "restored".into(),
        lu: 2,
        path: String::new(),
        force: false,
    };
    ok_status(&mut Command::new("sync"))?;
    let job = admin.restore_backup(req).await?.job.unwrap_or_default();
    let (restore_took, _) = finish(&admin, "restored", job).await?;
    println!(
        "restore: tar -xf + sync {:.0} MB/s; backup restore {:.0} MB/s; ratio {:.2}",
        mb_s(bytes, tar_x),
        mb_s(bytes, restore_took),
        mb_s(bytes, restore_took) / mb_s(bytes, tar_x)
    );

    if let Ok(s3) = S3Server::start() {
        drop(c);
        s3.create_bucket("bench")?;
        let c = TestCluster::up_with_env(3, s3.env())?;
        c.with_home("1G", &["5:1,2,3"], "CHN1", None);
        let nas = vec![c.nas("alice", "home").await?];
        fill(&nas, &c.dir().join("src"), &files).await?;
        let (took, job) = backup(&c.client(), "s3://bench/nas", true).await?;
        println!(
            "full backup to a local S3 server (moto): {:.2} s, {:.0} MB/s, {} MiB sent",
            took.as_secs_f64(),
            mb_s(bytes, took),
            job.sent_bytes >> 20
        );
    } else {
        println!("S3: moto_server is not installed (pip install 'moto[server]'); not measured");
    }
    Ok(())
}
