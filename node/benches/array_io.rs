//! Benchmark (not a test): LU throughput for RAID 1 and RAID 5, healthy and
//! degraded, beside the same I/O pattern on one plain file on the same file
//! system in the same run, as a ratio; plus rebuild and scrub speed.
//!
//! Run: `cargo bench -p nasd --bench array_io`; options after `--`
//! (`-- --help` lists them).
//!
//! Every device gets the same seeded sequence of operations. Write patterns
//! end with a flush (fdatasync of every member, or of the plain file), so
//! writes are measured to stable storage; before each read pattern the
//! page cache is dropped when the bench runs as root, so reads come from
//! the disk (the header line says which).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nas_tests::bench::{self, median};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use nasd::array::{jobs, Array, ArrayError, BlockDevice, LuDevice, LuSpec, OpenOptions, Raid};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const UNIT: u64 = 64 << 10;

/// A plain file, the reference every LU figure is divided by.
struct Plain(File);

impl BlockDevice for Plain {
    fn len(&self) -> u64 {
        self.0.metadata().map_or(0, |m| m.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        self.0
            .read_exact_at(buf, offset)
            .map_err(|e| ArrayError::io("plain read", e))
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.0
            .write_all_at(data, offset)
            .map_err(|e| ArrayError::io("plain write", e))
    }
    fn flush(&self) -> Result<(), ArrayError> {
        self.0.sync_data().map_err(|e| ArrayError::io("plain flush", e))
    }
}

#[derive(Clone, Copy, Debug)]
enum Pattern {
    SeqWrite,
    /// Right after the write, from the page cache: the software path alone.
    SeqReadCached,
    SeqRead,
    RandWrite(usize),
    RandRead(usize),
}

impl Pattern {
    fn name(self) -> String {
        match self {
            Pattern::SeqWrite => "seq write 1 MiB".into(),
            Pattern::SeqReadCached => "seq read 1 MiB, cached".into(),
            Pattern::SeqRead => "seq read 1 MiB".into(),
            Pattern::RandWrite(b) => format!("rand write {} KiB", b >> 10),
            Pattern::RandRead(b) => format!("rand read {} KiB", b >> 10),
        }
    }
}

/// Drops the page cache (root only); true when it was dropped.
fn drop_caches() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// MB/s of one pattern on one device.
fn run(dev: &dyn BlockDevice, p: Pattern, ops: u64, seed: u64) -> anyhow::Result<f64> {
    let len = dev.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if matches!(p, Pattern::SeqRead | Pattern::RandRead(_)) {
        drop_caches();
    }
    let t0 = Instant::now();
    let mut bytes = 0u64;
    match p {
        Pattern::SeqWrite | Pattern::SeqRead | Pattern::SeqReadCached => {
            let mut buf = vec![0u8; MIB as usize];
            rng.fill(&mut buf[..]);
            let mut at = 0;
            while at + MIB <= len {
                match p {
                    Pattern::SeqWrite => dev.write_at(at, &buf)?,
                    _ => dev.read_at(at, &mut buf)?,
                }
                at += MIB;
                bytes += MIB;
            }
        }
        Pattern::RandWrite(block) | Pattern::RandRead(block) => {
            let mut buf = vec![0u8; block];
            rng.fill(&mut buf[..]);
            let blocks = len / block as u64;
            for _ in 0..ops {
                let at = rng.gen_range(0..blocks) * block as u64;
                match p {
                    Pattern::RandWrite(_) => dev.write_at(at, &buf)?,
                    _ => dev.read_at(at, &mut buf)?,
                }
                bytes += block as u64;
            }
        }
    }
    if matches!(p, Pattern::SeqWrite | Pattern::RandWrite(_)) {
        dev.flush()?;
    }
    Ok(bytes as f64 / t0.elapsed().as_secs_f64() / 1e6)
}

struct Setup {
    name: &'static str,
    raid: Option<Raid>,
    members: usize,
    degraded: bool,
}

/// Creates the device for one setup in a fresh folder under `root`.
fn build(root: &Path, s: &Setup, size: u64, round: usize) -> anyhow::Result<Box<dyn BlockDevice>> {
    let dir = root.join(format!("{}-{round}", s.name.replace(' ', "-")));
    std::fs::create_dir_all(&dir)?;
    let Some(raid) = s.raid else {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("plain"))?;
        f.set_len(size)?;
        return Ok(Box::new(Plain(f)));
    };
    let data = match raid {
        Raid::Mirror => 1,
        Raid::Parity => s.members as u64 - 1,
    };
    let per_disk = size / data;
    let array = Array::new(&dir, 7);
    array.create_disks(s.members as u32, per_disk)?;
    let spec = LuSpec {
        lu: 1,
        raid,
        disks: (1..=s.members as u32).collect(),
        unit: UNIT,
        per_disk,
        disk_capacity: per_disk,
    };
    let dev = LuDevice::create(&array, &spec, OpenOptions::default())?;
    if s.degraded {
        dev.fail_member(2)?;
    }
    Ok(Box::new(dev))
}

/// Rebuild, then scrub (every block verified, page cache dropped first
/// when allowed), in MB/s of LU data.
fn maintenance_speed(root: &Path, raid: Raid, members: usize, size: u64) -> anyhow::Result<(f64, f64)> {
    let dir = root.join(format!("rebuild-{raid:?}"));
    std::fs::create_dir_all(&dir)?;
    let data = if raid == Raid::Mirror { 1 } else { members as u64 - 1 };
    let per_disk = size / data;
    let array = Array::new(&dir, 9);
    array.create_disks(members as u32 + 1, per_disk)?;
    let spec = LuSpec {
        lu: 1,
        raid,
        disks: (1..=members as u32).collect(),
        unit: UNIT,
        per_disk,
        disk_capacity: per_disk,
    };
    let dev = LuDevice::create(&array, &spec, OpenOptions::default())?;
    run(&dev, Pattern::SeqWrite, 0, 1)?;
    dev.fail_member(2)?;
    dev.replace_member(2, array.open_member(members as u32 + 1, per_disk)?)?;
    let p = jobs::rebuild(&dev, &AtomicBool::new(false), None, |_| {})?;
    drop_caches();
    let started = std::time::Instant::now();
    let found = jobs::scrub(&dev, false, &AtomicBool::new(false), None, |_, _| {})?;
    let scrub = dev.len() as f64 / started.elapsed().as_secs_f64() / 1e6;
    anyhow::ensure!(found.mismatches == 0, "scrub found damage on a fresh LU: {found:?}");
    drop(dev);
    std::fs::remove_dir_all(&dir)?;
    Ok((p.bytes_per_sec as f64 / 1e6, scrub))
}

/// LU throughput beside a plain file.
#[derive(clap::Parser)]
#[command(
    about = "LU throughput for RAID 1 and RAID 5, healthy and degraded, beside a plain file; rebuild and scrub speed"
)]
struct Args {
    /// LU size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Operations per random pattern.
    #[arg(long, default_value_t = 8192)]
    ops: u64,
    /// Interleaved runs per point; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// Where the disk files go [default: the system temp directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only the patterns whose name contains this text (e.g. "seq read").
    #[arg(long)]
    only: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let a: Args = bench::args();
    let (size, ops, repeat) = (a.size_mib * MIB, a.ops, a.repeat);
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new().prefix("array-bench-").tempdir_in(&base)?;
    let setups = [
        Setup {
            name: "plain file",
            raid: None,
            members: 0,
            degraded: false,
        },
        Setup {
            name: "RAID 1 x2",
            raid: Some(Raid::Mirror),
            members: 2,
            degraded: false,
        },
        Setup {
            name: "RAID 1 x2 degraded",
            raid: Some(Raid::Mirror),
            members: 2,
            degraded: true,
        },
        Setup {
            name: "RAID 5 x3",
            raid: Some(Raid::Parity),
            members: 3,
            degraded: false,
        },
        Setup {
            name: "RAID 5 x3 degraded",
            raid: Some(Raid::Parity),
            members: 3,
            degraded: true,
        },
        // Parity is a quarter of the bytes written instead of half.
        Setup {
            name: "RAID 5 x5",
            raid: Some(Raid::Parity),
            members: 5,
            degraded: false,
        },
    ];
    let only = a.only;
    let patterns = [
        Pattern::SeqWrite,
        Pattern::SeqReadCached,
        Pattern::SeqRead,
        Pattern::RandWrite(4096),
        Pattern::RandRead(4096),
        Pattern::RandWrite(65536),
        Pattern::RandRead(65536),
    ];
    let cold = if drop_caches() {
        "reads from disk (page cache dropped)"
    } else {
        "reads may hit the page cache (not root)"
    };
    let patterns: Vec<Pattern> = patterns
        .into_iter()
        .filter(|p| only.as_ref().is_none_or(|o| p.name().contains(o.as_str())))
        .collect();
    println!(
        "LU {} MiB, stripe unit 64 KiB, {ops} ops per random pattern, {repeat} interleaved runs, median MB/s (ratio to the plain file), {cold}, in {}",
        size / MIB,
        base.display()
    );
    // results[pattern][setup] = samples
    let mut results = vec![vec![Vec::new(); setups.len()]; patterns.len()];
    for round in 0..repeat as usize {
        for (si, s) in setups.iter().enumerate() {
            let dev = build(root.path(), s, size, round)?;
            for (pi, p) in patterns.iter().enumerate() {
                results[pi][si].push(run(dev.as_ref(), *p, ops, round as u64)?);
            }
            drop(dev);
            std::fs::remove_dir_all(root.path().join(format!("{}-{round}", s.name.replace(' ', "-"))))?;
        }
    }
    print!("{:<24}", "pattern");
    for s in &setups {
        print!(" | {:>22}", s.name);
    }
    println!();
    for (p, row) in patterns.iter().zip(&results) {
        let plain = median(row[0].clone());
        print!("{:<24}", p.name());
        for (si, samples) in row.iter().enumerate() {
            let m = median(samples.clone());
            if si == 0 {
                print!(" | {:>15.1} MB/s", m);
            } else {
                print!(" | {:>9.1} MB/s ({:.2})", m, m / plain);
            }
        }
        println!();
    }
    for (raid, members) in [(Raid::Mirror, 2), (Raid::Parity, 3)] {
        let speeds = (0..repeat)
            .map(|_| maintenance_speed(root.path(), raid, members, size))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (rebuild, scrub): (Vec<f64>, Vec<f64>) = speeds.into_iter().unzip();
        eprintln!("rebuild {raid:?} x{members} runs: {rebuild:.1?} MB/s; scrub runs: {scrub:.1?} MB/s");
        println!(
            "rebuild {raid:?} x{members}: {:.1} MB/s of LU data, scrub {:.1} MB/s (medians)",
            median(rebuild),
            median(scrub)
        );
    }
    Ok(())
}
