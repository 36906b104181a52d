//! `array`, `disk` and `lu`: the disk array, its physical disks and LUs,
//! with rebuild and scrub jobs followed to the end.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use ::nas_client::proto::*;
use ::nas_client::{human_size, parse_size, Cluster};

use crate::output::{print_list, written, Table};
use crate::{status_err, ReadOpts};

#[derive(Subcommand)]
pub(crate) enum ArrayCmd {
    /// Define N physical disks of SIZE each (e.g. --size 64M).
    Init {
        #[arg(long)]
        disks: u32,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
}

#[derive(Subcommand)]
pub(crate) enum DiskCmd {
    /// The physical disk management table.
    List(ReadOpts),
    /// Take disk N out of service as if it had failed (a drill): its LU
    /// goes on DEGRADED from the other members.
    Fail {
        /// Disk number (see `nasctl disk list`).
        disk: u32,
    },
    /// Replace FAILED disk N in its LU with a NOT USED disk; then run
    /// `nasctl lu rebuild LU` to copy the data onto it.
    Replace {
        /// Number of the FAILED disk.
        disk: u32,
        /// The disk to put in its place [default: the lowest NOT USED disk].
        #[arg(long)]
        spare: Option<u32>,
    },
}

#[derive(Args, Clone, Copy)]
pub(crate) struct JobOpts {
    /// Start the job and return at once; follow it with `nasctl lu list`.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand)]
pub(crate) enum LuCmd {
    /// Create an LU: RAID 1 over 2 or more disks, RAID 5 over 3 or more.
    Create {
        /// RAID level: 1 or 5.
        #[arg(long)]
        raid: u32,
        /// Disk numbers, comma-separated (see `nasctl disk list`).
        #[arg(long, value_delimiter = ',', required = true)]
        disks: Vec<u32>,
        /// Stripe unit, a power of two from 4K to 1M [default: 64K].
        #[arg(long, value_parser = parse_size)]
        stripe_unit: Option<u64>,
    },
    /// The LU management table, with each LU's health and rebuild or scrub progress.
    List(ReadOpts),
    /// Rebuild LU N onto the disk that replaced its failed member, while it
    /// stays online; shows progress until done. A rebuild interrupted by a
    /// crash resumes by itself when the CHN comes back.
    Rebuild {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        #[command(flatten)]
        wait: JobOpts,
    },
    /// Check every block of LU N against its checksum, and its parity
    /// (RAID 5) or mirror copies (RAID 1) against the data; report damaged
    /// or inconsistent stripes. --repair rewrites whichever copy fails its
    /// checksum from the copies that pass it.
    Scrub {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        /// Rewrite damaged blocks (data, parity or mirror copies) from the
        /// members whose copies pass their checksums.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        wait: JobOpts,
    },
    /// Read raw bytes of LU N (diagnostics; bypasses any file system) to
    /// stdout or --out FILE.
    Read {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        /// Byte offset in the LU (sizes like 4K or 1M work).
        #[arg(long, default_value_t = 0, value_parser = parse_size)]
        offset: u64,
        /// Bytes to read (e.g. 3M).
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// Write them to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a local FILE as raw bytes into LU N at --offset and flush
    /// (diagnostics and drills; overwrites whatever the LU held there).
    Write {
        /// LU number (see `nasctl lu list`).
        lu: u32,
        /// Local file whose bytes are written.
        file: PathBuf,
        /// Byte offset in the LU (sizes like 4K or 1M work).
        #[arg(long, default_value_t = 0, value_parser = parse_size)]
        offset: u64,
    },
}

pub(crate) async fn run_array(c: &Cluster, cmd: ArrayCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ArrayCmd::Init { disks, size } => array_init(c, disks, size, json).await,
    }
}

pub(crate) async fn run_disk(c: &Cluster, cmd: DiskCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        DiskCmd::List(o) => disk_list(c, o, json).await,
        DiskCmd::Fail { disk } => disk_fail(c, disk, json).await,
        DiskCmd::Replace { disk, spare } => disk_replace(c, disk, spare, json).await,
    }
}

pub(crate) async fn run_lu(c: &Cluster, cmd: LuCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        LuCmd::Create {
            raid,
            disks,
            stripe_unit,
        } => lu_create(c, raid, disks, stripe_unit, json).await,
        LuCmd::List(o) => lu_list(c, o, json).await,
        LuCmd::Rebuild { lu, wait } => lu_rebuild(c, lu, wait, json).await,
        LuCmd::Scrub { lu, repair, wait } => lu_scrub(c, lu, repair, wait, json).await,
        LuCmd::Read {
            lu,
            offset,
            length,
            out,
        } => lu_read(c, lu, offset, length, out).await,
        LuCmd::Write { lu, file, offset } => lu_write(c, lu, file, offset, json).await,
    }
}

async fn array_init(c: &Cluster, disks: u32, size: u64, json: bool) -> anyhow::Result<()> {
    let r = c
        .init_array(InitArrayRequest {
            disks,
            disk_capacity_bytes: size,
        })
        .await
        .map_err(status_err)?;
    written(
        json,
        &format!("array initialized: {disks} disks of {}", human_size(size)),
        r,
    );
    Ok(())
}

async fn disk_list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_disks(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&[
        "disk",
        "capacity_bytes",
        "capacity",
        "raid_group",
        "state",
        "checksum_errors",
    ]);
    for d in &r.disks {
        let group = if d.raid_group == 0 {
            Value::Null
        } else {
            json!(d.raid_group)
        };
        t.row(vec![
            json!(d.number),
            json!(d.capacity_bytes),
            json!(human_size(d.capacity_bytes)),
            group,
            json!(nas_proto::labels::disk_state(d.state)),
            json!(d.checksum_errors),
        ]);
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}

async fn disk_fail(c: &Cluster, disk: u32, json: bool) -> anyhow::Result<()> {
    let r = c.fail_disk(DiskRequest { disk }).await.map_err(status_err)?;
    written(json, &format!("disk {disk} marked FAILED"), r);
    Ok(())
}

async fn disk_replace(c: &Cluster, disk: u32, spare: Option<u32>, json: bool) -> anyhow::Result<()> {
    let req = ReplaceDiskRequest {
        disk,
        spare: spare.unwrap_or(0),
    };
    let r = c.replace_disk(req).await.map_err(status_err)?;
    if json {
        outln!(
            "{}",
            json!({"disk": disk, "spare": r.assigned, "log_index": r.log_index})
        );
    } else {
        outln!(
            "disk {disk} replaced by disk {}; now run `nasctl lu rebuild LU` (see `nasctl disk list`)",
            r.assigned
        );
    }
    Ok(())
}

async fn lu_create(
    c: &Cluster,
    raid: u32,
    disks: Vec<u32>,
    stripe_unit: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let raid = raid_level(raid)?;
    let req = CreateLuRequest {
        raid: raid as i32,
        disks,
        stripe_unit_bytes: stripe_unit.unwrap_or(0),
    };
    let r = c.create_lu(req).await.map_err(status_err)?;
    if json {
        outln!("{}", json!({"lu": r.assigned, "log_index": r.log_index}));
    } else {
        outln!("LU {} created (log index {})", r.assigned, r.log_index);
    }
    Ok(())
}

async fn lu_list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_lus(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&[
        "lu",
        "raid",
        "disks",
        "capacity_bytes",
        "capacity",
        "stripe_unit_bytes",
        "health",
        "job",
        "lost",
    ]);
    for l in &r.lus {
        let job = match &l.job {
            Some(j) if json => serde_json::to_value(j).unwrap_or(Value::Null),
            Some(j) => json!(job_line(j)),
            None => Value::Null,
        };
        t.row(vec![
            json!(l.number),
            json!(l.raid),
            json!(l.disks),
            json!(l.capacity_bytes),
            json!(human_size(l.capacity_bytes)),
            json!(l.stripe_unit_bytes),
            json!(nas_proto::labels::lu_health(l.health)),
            job,
            if json { json!(l.lost) } else { json!(l.lost.len()) },
        ]);
    }
    print_list(&t, json, r.possibly_stale);
    if !json {
        for l in r.lus.iter().filter(|l| !l.lost.is_empty()) {
            eprintln!(
                "LU {}: an unclean stop with a member missing lost blocks of (restore these from a backup):",
                l.number
            );
            for what in &l.lost {
                eprintln!("  {what}");
            }
        }
    }
    Ok(())
}

async fn lu_rebuild(c: &Cluster, lu: u32, wait: JobOpts, json: bool) -> anyhow::Result<()> {
    let r = c.rebuild_lu(LuRequest { lu }).await.map_err(status_err)?;
    let since = r.job.map_or(0, |j| j.updated_ms);
    follow_job(c, lu, "rebuild", since, wait.no_wait, json).await
}

async fn lu_scrub(c: &Cluster, lu: u32, repair: bool, wait: JobOpts, json: bool) -> anyhow::Result<()> {
    let r = c.scrub_lu(ScrubLuRequest { lu, repair }).await.map_err(status_err)?;
    let since = r.job.map_or(0, |j| j.updated_ms);
    follow_job(c, lu, "scrub", since, wait.no_wait, json).await
}

async fn lu_read(c: &Cluster, lu: u32, offset: u64, length: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    let mut data = Vec::with_capacity(length as usize);
    let mut at = offset;
    let end = offset.checked_add(length).context("offset + length overflows")?;
    while at < end {
        let n = (end - at).min(RAW_CHUNK);
        let req = ReadLuRequest {
            lu,
            offset: at,
            length: n as u32,
        };
        let r = c.read_lu(req).await.map_err(status_err)?;
        data.extend_from_slice(&r.data);
        at += n;
    }
    match out {
        Some(path) => std::fs::write(&path, &data).with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&data).context("cannot write to stdout")?;
        }
    }
    Ok(())
}

async fn lu_write(c: &Cluster, lu: u32, file: PathBuf, offset: u64, json: bool) -> anyhow::Result<()> {
    let data = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    // An empty file still makes one (flushing) call.
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(RAW_CHUNK as usize).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let req = WriteLuRequest {
            lu,
            offset: offset + i as u64 * RAW_CHUNK,
            data: chunk.to_vec(),
            flush: i == last,
        };
        c.write_lu(req).await.map_err(status_err)?;
    }
    if json {
        outln!("{}", json!({"lu": lu, "offset": offset, "bytes": data.len()}));
    } else {
        outln!(
            "wrote {} to LU {lu} at offset {offset} (flushed)",
            human_size(data.len() as u64)
        );
    }
    Ok(())
}

/// The RAID level `--raid` names.
pub(crate) fn raid_level(raid: u32) -> anyhow::Result<RaidLevel> {
    match raid {
        1 => Ok(RaidLevel::Raid1),
        5 => Ok(RaidLevel::Raid5),
        other => bail!("RAID level {other} is not supported; use --raid 1 or --raid 5"),
    }
}

/// Bytes per raw LU read or write call.
const RAW_CHUNK: u64 = 1 << 20;

/// One line for a rebuild or scrub: progress while it runs, outcome after.
fn job_line(j: &LuJob) -> String {
    if j.finished {
        return format!("{} on {}: {}", j.kind, j.chn, j.result);
    }
    let pct = if j.total_bytes == 0 {
        0.0
    } else {
        j.done_bytes as f64 * 100.0 / j.total_bytes as f64
    };
    format!(
        "{} on {}: {pct:.1}% at {:.1} MB/s, ETA {}s",
        j.kind,
        j.chn,
        j.bytes_per_sec as f64 / 1e6,
        j.eta_secs
    )
}

/// Shows a rebuild or scrub's progress (from the LU table) until it ends.
/// `since` is the start time the CHN gave the job, so that an older job's
/// outcome in the table is never mistaken for this one's.
async fn follow_job(c: &Cluster, lu: u32, kind: &str, since: u64, no_wait: bool, json: bool) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let r = c.list_lus(false).await.map_err(status_err)?;
        let job = r.lus.iter().find(|l| l.number == lu).and_then(|l| l.job.clone());
        let current = job.filter(|j| j.kind == kind && j.updated_ms >= since);
        if let Some(j) = &current {
            let line = job_line(j);
            if j.finished || no_wait {
                if json {
                    outln!("{}", serde_json::to_value(j).unwrap_or(Value::Null));
                } else {
                    if !last.is_empty() {
                        eprintln!();
                    }
                    outln!("LU {lu}: {line}");
                }
                if j.finished && j.result.starts_with("failed") {
                    bail!("the {kind} of LU {lu} failed: {}", j.result);
                }
                return Ok(());
            }
            if !json && line != last {
                eprint!("\r\x1b[KLU {lu}: {line}");
                last = line;
            }
        } else if no_wait {
            if !json {
                outln!("LU {lu}: {kind} started; follow it with `nasctl lu list`");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
