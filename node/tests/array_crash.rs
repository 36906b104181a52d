//! The RAID 5 write hole, tested with real crashes: a child process writes
//! partial stripes and aborts between two member writes (fault injection),
//! then the parent reopens the LU, loses a member and checks that every
//! byte is either what was acknowledged or, inside the one torn write,
//! its old or new value. Without the intent bitmap (healthy crash) or the
//! journal (degraded crash) reconstruction returns garbage here.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use nasd::array::faults::Faults;
use nasd::array::{Array, BlockDevice, LuDevice, LuSpec, OpenOptions, Raid};
use rand::{Rng, SeedableRng};

const ID: u128 = 0xC0FFEE;
const UNIT: u64 = 4096;
const STRIPES: u64 = 32;
const CHILD_ENV: &str = "ARRAY_CRASH_CHILD";

fn spec() -> LuSpec {
    LuSpec {
        lu: 1,
        raid: Raid::Parity,
        disks: vec![1, 2, 3, 4],
        unit: UNIT,
        per_disk: UNIT * STRIPES,
        disk_capacity: UNIT * STRIPES,
    }
}

fn pattern(len: usize, seed: u64, at: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((at as usize + i) as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(seed * 97) as u8
        })
        .collect()
}

/// The writes the child will attempt, in order: (offset, len, seed).
fn plan(seed: u64, cap: u64) -> Vec<(u64, u64, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..40)
        .map(|i| {
            let len = rng.gen_range(1..3 * UNIT);
            (rng.gen_range(0..cap - len), len, 1000 + i)
        })
        .collect()
}

/// Child role: performs the plan, appending each acknowledged write's index
/// to `acked` (page cache survives the abort, so no fsync is needed).
#[test]
fn child_entry() {
    let Ok(args) = std::env::var(CHILD_ENV) else { return };
    let mut parts = args.split(',');
    let (Some(dir), Some(seed), Some(abort_at), Some(rebuild)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("bad {CHILD_ENV}")
    };
    let rebuild = rebuild == "rebuild";
    let dir = Path::new(dir);
    let faults = Faults::abort_at_write(abort_at.parse().expect("abort_at"));
    let array = Array::new(dir, ID).with_member_wrapper(faults.wrapper());
    let dev = LuDevice::open(&array, &spec(), OpenOptions::default()).expect("open");
    let mut acked = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("acked"))
        .expect("log");
    for (i, (at, len, s)) in plan(seed.parse().expect("seed"), dev.len()).into_iter().enumerate() {
        dev.write_at(at, &pattern(len as usize, s, at)).expect("write");
        writeln!(acked, "{i}").expect("log");
        if rebuild && i % 3 == 2 {
            dev.rebuild_step(3).expect("rebuild step");
        }
    }
    std::process::exit(0);
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Crash while healthy, then a member is lost.
    Healthy,
    /// A member failed before the writes.
    Degraded,
    /// A member failed and was replaced; the child rebuilds between writes.
    Rebuilding,
}

fn run_case(seed: u64, mode: Mode) {
    let degraded_before = mode != Mode::Healthy;
    let dir = tempfile::tempdir().unwrap();
    let array = Array::new(dir.path(), ID);
    array.create_disks(4, UNIT * STRIPES).unwrap();
    let dev = LuDevice::create(&array, &spec(), OpenOptions::default()).unwrap();
    let cap = dev.len();
    let mut model = pattern(cap as usize, 1, 0);
    dev.write_at(0, &model).unwrap();
    dev.flush().unwrap();
    // The member that is missing when the LU is read back.
    let lost = 2;
    if degraded_before {
        dev.fail_member(lost).unwrap();
    }
    if mode == Mode::Rebuilding {
        array.create_disks(5, UNIT * STRIPES).unwrap();
        dev.replace_member(lost, array.open_member(5, UNIT * STRIPES).unwrap())
            .unwrap();
    }
    drop(dev);

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let abort_at = rng.gen_range(1..120u64);
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!(
                "{},{seed},{abort_at},{}",
                dir.path().display(),
                if mode == Mode::Rebuilding { "rebuild" } else { "" }
            ),
        )
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let acked: Vec<usize> = std::fs::read_to_string(dir.path().join("acked"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let plan = plan(seed, cap);
    for &i in &acked {
        let (at, len, s) = plan[i];
        model[at as usize..(at + len) as usize].copy_from_slice(&pattern(len as usize, s, at));
    }
    let torn = if status.success() {
        None
    } else {
        plan.get(acked.len()).copied()
    };

    // Reopen (recovery runs), then lose the member if it was not lost yet.
    let members = if mode == Mode::Rebuilding {
        vec![1, 5, 3, 4]
    } else {
        spec().disks
    };
    let dev = LuDevice::open(
        &array,
        &LuSpec {
            disks: members,
            ..spec()
        },
        OpenOptions::default(),
    )
    .unwrap();
    if mode == Mode::Healthy {
        dev.fail_member(lost).unwrap();
    }
    let mut got = vec![0u8; cap as usize];
    dev.read_at(0, &mut got).unwrap();
    for (i, (&g, &m)) in got.iter().zip(&model).enumerate() {
        let i = i as u64;
        if g == m {
            continue;
        }
        if let Some((at, len, s)) = torn {
            if (at..at + len).contains(&i) && g == pattern(1, s, i)[0] {
                continue;
            }
        }
        panic!(
            "seed {seed} (abort at member write {abort_at}, {mode:?}): byte {i} is {g}, expected {m}; torn write {torn:?}"
        );
    }
}

#[test]
fn crash_while_healthy_then_member_lost() {
    for seed in 0..12 {
        run_case(seed, Mode::Healthy);
    }
}

#[test]
fn crash_while_degraded() {
    for seed in 100..112 {
        run_case(seed, Mode::Degraded);
    }
}

#[test]
fn crash_while_rebuilding_with_writes() {
    for seed in 200..216 {
        run_case(seed, Mode::Rebuilding);
    }
}
