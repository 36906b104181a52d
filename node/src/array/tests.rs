//! The LU block device against a reference model: random writes, reads,
//! member failures, flushes, reopenings, replacements and partial
//! rebuilds, with every read compared byte for byte with a plain buffer.

use std::sync::atomic::AtomicBool;

use proptest::prelude::*;

use super::device::{BlockDevice, LuDevice, LuHealth, LuSpec, OpenOptions};
use super::layout::Raid;
use super::member::Member;
use super::{jobs, Array, ArrayError};

const ID: u128 = 0xA11A;
const DISKS: u32 = 8;

#[derive(Debug, Clone)]
enum Op {
    Write { at: u64, len: u64, seed: u8 },
    Read { at: u64, len: u64 },
    Fail { slot: usize },
    Flush,
    Reopen,
    Replace,
    Rebuild { stripes: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u64>(), 1u64..70_000, any::<u8>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        4 => (any::<u64>(), 1u64..70_000).prop_map(|(at, len)| Op::Read { at, len }),
        1 => (0usize..5).prop_map(|slot| Op::Fail { slot }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Replace),
        2 => (1u64..40).prop_map(|stripes| Op::Rebuild { stripes }),
    ]
}

pub(super) fn pattern(len: usize, seed: u8, at: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (at as usize + i).wrapping_mul(31) as u8 ^ seed)
        .collect()
}

/// Writes the pattern of a random write (its range brought inside the LU)
/// to `dev` and into `model`; returns where and what.
pub(super) fn write_both(dev: &LuDevice, model: &mut [u8], at: u64, len: u64, seed: u8) -> (u64, Vec<u8>) {
    let cap = model.len() as u64;
    let at = at % cap;
    let len = len.min(cap - at);
    let data = pattern(len as usize, seed, at);
    dev.write_at(at, &data).unwrap();
    model[at as usize..(at + len) as usize].copy_from_slice(&data);
    (at, data)
}

/// Reads a random range (brought inside the LU) and compares it with `model`.
pub(super) fn read_checked(dev: &LuDevice, model: &[u8], at: u64, len: u64) {
    let cap = model.len() as u64;
    let at = at % cap;
    let len = len.min(cap - at);
    let mut buf = vec![0u8; len as usize];
    dev.read_at(at, &mut buf).unwrap();
    assert!(
        buf[..] == model[at as usize..(at + len) as usize],
        "read at {at}+{len} differs"
    );
}

pub(super) struct Rig {
    _dir: tempfile::TempDir,
    pub array: Array,
    pub spec: LuSpec,
    pub dev: LuDevice,
    pub model: Vec<u8>,
    /// Disks taken out of the LU; a real operator never puts them back.
    retired: Vec<u32>,
}

impl Rig {
    pub fn new(raid: Raid, members: usize, unit: u64, stripes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let array = Array::new(dir.path(), ID);
        let per_disk = unit * stripes;
        array.create_disks(DISKS, per_disk + unit).unwrap();
        let spec = LuSpec {
            lu: 1,
            raid,
            disks: (1..=members as u32).collect(),
            unit,
            per_disk,
            disk_capacity: per_disk + unit,
        };
        let dev = LuDevice::create(&array, &spec, OpenOptions::default()).unwrap();
        let model = vec![0u8; dev.len() as usize];
        Self {
            _dir: dir,
            array,
            spec,
            dev,
            model,
            retired: Vec::new(),
        }
    }

    fn redundancy(&self) -> usize {
        match self.spec.raid {
            Raid::Mirror => self.spec.disks.len() - 1,
            Raid::Parity => 1,
        }
    }

    fn unavailable(&self) -> usize {
        self.dev
            .members()
            .iter()
            .filter(|m| m.state != super::superblock::MemberState::Active)
            .count()
    }

    fn check_all(&self) {
        let mut buf = vec![0u8; self.model.len()];
        self.dev.read_at(0, &mut buf).unwrap();
        assert!(buf == self.model, "LU content differs from the model");
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { at, len, seed } => {
                write_both(&self.dev, &mut self.model, at, len, seed);
            }
            Op::Read { at, len } => read_checked(&self.dev, &self.model, at, len),
            Op::Fail { slot } => {
                let members = self.dev.members();
                let slot = slot % members.len();
                if members[slot].state == super::superblock::MemberState::Active
                    && self.unavailable() < self.redundancy()
                {
                    self.dev.fail_member(members[slot].disk).unwrap();
                }
            }
            Op::Flush => self.dev.flush().unwrap(),
            Op::Reopen => {
                let spec = LuSpec {
                    disks: self.dev.members().iter().map(|m| m.disk).collect(),
                    ..self.spec.clone()
                };
                self.dev = LuDevice::open(&self.array, &spec, OpenOptions::default()).unwrap();
                self.spec = spec;
            }
            Op::Replace => {
                let members = self.dev.members();
                let Some(failed) = members
                    .iter()
                    .find(|m| m.state == super::superblock::MemberState::Failed)
                else {
                    return;
                };
                let Some(spare) = (1..=DISKS).find(|d| !members.iter().any(|m| m.disk == *d) && !self.used_before(*d))
                else {
                    return;
                };
                let disk = self.array.open_member(spare, self.spec.disk_capacity).unwrap();
                self.dev.replace_member(failed.disk, disk).unwrap();
                self.retired.push(failed.disk);
            }
            Op::Rebuild { stripes } => {
                let _ = self.dev.rebuild_step(stripes).unwrap();
            }
        }
    }
}

impl Rig {
    fn used_before(&self, d: u32) -> bool {
        self.retired.contains(&d)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn raid5_matches_the_model(members in 3usize..=5, ops in proptest::collection::vec(op(), 1..60)) {
        let mut rig = Rig::new(Raid::Parity, members, 4096, 24);
        for op in &ops {
            rig.apply(op);
        }
        rig.check_all();
        let spec = LuSpec { disks: rig.dev.members().iter().map(|m| m.disk).collect(), ..rig.spec.clone() };
        drop(std::mem::replace(&mut rig.dev, LuDevice::open(&rig.array, &spec, OpenOptions::default()).unwrap()));
        rig.check_all();
    }

    #[test]
    fn raid1_matches_the_model(members in 2usize..=3, ops in proptest::collection::vec(op(), 1..60)) {
        let mut rig = Rig::new(Raid::Mirror, members, 4096, 24);
        for op in &ops {
            rig.apply(op);
        }
        rig.check_all();
    }
}

#[test]
fn rebuild_restores_full_redundancy() {
    for raid in [Raid::Parity, Raid::Mirror] {
        let mut rig = Rig::new(raid, 3, 8192, 40);
        rig.apply(&Op::Write {
            at: 100,
            len: 200_000,
            seed: 7,
        });
        rig.dev.fail_member(2).unwrap();
        assert_eq!(rig.dev.health(), LuHealth::Degraded);
        rig.apply(&Op::Write {
            at: 50_000,
            len: 90_000,
            seed: 9,
        });
        rig.check_all();
        rig.apply(&Op::Replace);
        assert_eq!(rig.dev.health(), LuHealth::Rebuilding);
        let p = jobs::rebuild(&rig.dev, &AtomicBool::new(false), None, |_| {}).unwrap();
        assert_eq!(p.done_bytes, p.total_bytes);
        assert_eq!(rig.dev.health(), LuHealth::Optimal);
        // The rebuilt member alone must now be able to stand in for another.
        let other = rig.dev.members()[0].disk;
        rig.dev.fail_member(other).unwrap();
        rig.check_all();
    }
}

#[test]
fn a_second_failure_fails_the_lu_instead_of_returning_wrong_bytes() {
    let mut rig = Rig::new(Raid::Parity, 3, 4096, 8);
    rig.apply(&Op::Write {
        at: 0,
        len: 30_000,
        seed: 1,
    });
    rig.dev.fail_member(1).unwrap();
    let err = rig.dev.fail_member(2).unwrap_err();
    assert!(matches!(err, ArrayError::LuFailed { .. }), "{err}");
    assert_eq!(rig.dev.health(), LuHealth::Failed);
    let mut buf = vec![0u8; 4096];
    assert!(rig.dev.read_at(0, &mut buf).is_err());
    assert!(rig.dev.write_at(0, &buf).is_err());
}

#[test]
fn scrub_finds_and_repairs_damaged_redundancy() {
    for raid in [Raid::Parity, Raid::Mirror] {
        let rig = Rig::new(raid, 3, 4096, 8);
        rig.dev.write_at(0, &pattern(rig.model.len(), 3, 0)).unwrap();
        rig.dev.flush().unwrap();
        // Damage the first stripe's parity (RAID 5: slot 2 holds it) or one mirror.
        let damaged = rig.array.open_disk(3, rig.spec.disk_capacity).unwrap();
        damaged.write_data(10, b"rot").unwrap();
        let cancel = AtomicBool::new(false);
        let found = jobs::scrub(&rig.dev, true, &cancel, None, |_, _| {}).unwrap();
        assert_eq!((found.mismatches, found.repaired), (1, 1), "{raid:?}");
        let again = jobs::scrub(&rig.dev, false, &cancel, None, |_, _| {}).unwrap();
        assert_eq!(again.mismatches, 0);
        assert_eq!(again.stripes_checked, 8);
    }
}

#[test]
fn bad_ranges_are_refused_without_touching_data() {
    let rig = Rig::new(Raid::Parity, 3, 4096, 8);
    let cap = rig.dev.len();
    let mut buf = vec![0u8; 10];
    assert!(matches!(
        rig.dev.read_at(cap - 5, &mut buf),
        Err(ArrayError::OutOfRange { .. })
    ));
    assert!(matches!(
        rig.dev.write_at(u64::MAX - 2, &buf),
        Err(ArrayError::OutOfRange { .. })
    ));
    rig.check_all();
}

#[test]
fn bad_specs_are_refused() {
    let rig = Rig::new(Raid::Parity, 3, 4096, 8);
    let twice = LuSpec {
        lu: 2,
        disks: vec![4, 4, 5],
        ..rig.spec.clone()
    };
    assert!(matches!(
        LuDevice::create(&rig.array, &twice, OpenOptions::default()),
        Err(ArrayError::Refused { .. })
    ));
    let small = LuSpec {
        lu: 2,
        raid: Raid::Parity,
        disks: vec![4, 5],
        ..rig.spec.clone()
    };
    assert!(LuDevice::create(&rig.array, &small, OpenOptions::default()).is_err());
    let odd_unit = LuSpec {
        lu: 2,
        disks: vec![4, 5, 6],
        unit: 3000,
        ..rig.spec.clone()
    };
    assert!(LuDevice::create(&rig.array, &odd_unit, OpenOptions::default()).is_err());
    let wrong_size = LuSpec {
        lu: 2,
        disks: vec![4, 5, 6],
        disk_capacity: rig.spec.disk_capacity * 2,
        ..rig.spec.clone()
    };
    assert!(matches!(
        LuDevice::create(&rig.array, &wrong_size, OpenOptions::default()),
        Err(ArrayError::DiskWrongSize { .. })
    ));
}

#[test]
fn a_stale_member_that_comes_back_is_not_trusted() {
    let mut rig = Rig::new(Raid::Parity, 3, 4096, 8);
    rig.apply(&Op::Write {
        at: 0,
        len: 40_000,
        seed: 1,
    });
    rig.dev.fail_member(2).unwrap();
    rig.apply(&Op::Write {
        at: 0,
        len: 40_000,
        seed: 2,
    });
    rig.apply(&Op::Reopen);
    assert_eq!(rig.dev.health(), LuHealth::Degraded);
    rig.check_all();
}

#[test]
fn fencing_epoch_refuses_an_older_opener() {
    let rig = Rig::new(Raid::Mirror, 2, 4096, 8);
    drop(
        LuDevice::open(
            &rig.array,
            &rig.spec,
            OpenOptions {
                epoch: 5,
                ..OpenOptions::default()
            },
        )
        .unwrap(),
    );
    let err = LuDevice::open(
        &rig.array,
        &rig.spec,
        OpenOptions {
            epoch: 4,
            ..OpenOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, ArrayError::Fenced { found: 5, ours: 4, .. }), "{err}");
}

/// Found by the model: a degraded write journaled while a member was
/// missing must not be replayed over a later write once the member is
/// rebuilt (the rebuild's checkpoint lags behind).
#[test]
fn journal_entries_do_not_outlive_the_rebuild_of_their_stripe() {
    let mut rig = Rig::new(Raid::Parity, 3, 4096, 24);
    rig.apply(&Op::Fail { slot: 1 });
    rig.apply(&Op::Replace);
    rig.apply(&Op::Write {
        at: 13785,
        len: 53593,
        seed: 0,
    });
    rig.apply(&Op::Rebuild { stripes: 9 });
    rig.apply(&Op::Write {
        at: 56279,
        len: 814,
        seed: 158,
    });
    rig.check_all();
    rig.apply(&Op::Reopen);
    rig.check_all();
}

#[test]
fn a_rate_limited_rebuild_takes_at_least_its_budget() {
    let mut rig = Rig::new(Raid::Mirror, 2, 65536, 128);
    rig.apply(&Op::Write {
        at: 0,
        len: 1 << 20,
        seed: 5,
    });
    rig.dev.fail_member(1).unwrap();
    rig.apply(&Op::Replace);
    // 8 MiB of LU data in batches of 1 MiB at 40 MB/s: the pauses after
    // the first 7 batches alone take 7 MiB / 40 MB/s = 183 ms.
    let started = std::time::Instant::now();
    jobs::rebuild(&rig.dev, &AtomicBool::new(false), Some(40_000_000), |_| {}).unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(180),
        "{:?}",
        started.elapsed()
    );
    rig.check_all();
}

#[test]
fn a_replacement_member_carries_the_same_write_intent_bitmap() {
    use super::superblock::{BITMAP_AT, BITMAP_BYTES};
    let mut rig = Rig::new(Raid::Parity, 3, 4096, 24);
    rig.dev.fail_member(1).unwrap();
    // Degraded writes mark regions dirty on the surviving members.
    rig.apply(&Op::Write {
        at: 0,
        len: 30_000,
        seed: 4,
    });
    rig.apply(&Op::Replace);
    let copies: Vec<Vec<u8>> = rig
        .dev
        .members()
        .iter()
        .map(|m| {
            let disk = rig.array.open_disk(m.disk, rig.spec.disk_capacity).unwrap();
            let mut bits = vec![0u8; BITMAP_BYTES];
            disk.read_meta(BITMAP_AT, &mut bits).unwrap();
            bits
        })
        .collect();
    assert!(
        copies[0].iter().any(|&b| b != 0),
        "the degraded write left no dirty region"
    );
    assert!(
        copies.iter().all(|c| *c == copies[0]),
        "members disagree about dirty regions"
    );
}

#[test]
fn a_fenced_opener_writes_nothing_more() {
    let rig = Rig::new(Raid::Parity, 3, 4096, 8);
    let old = LuDevice::open(
        &rig.array,
        &rig.spec,
        OpenOptions {
            epoch: 1,
            fence: Some(std::sync::Arc::new(super::fence::Fence::until(
                std::time::Instant::now() + std::time::Duration::from_secs(60),
            ))),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    old.write_at(0, &[7u8; 8192]).unwrap();
    old.flush().unwrap();
    // Another CHN takes the LU with a higher epoch: the old opener's next
    // flush sees it on disk and shuts its fence for good.
    let new = LuDevice::open(
        &rig.array,
        &rig.spec,
        OpenOptions {
            epoch: 2,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    old.write_at(0, &[9u8; 8192]).unwrap();
    assert!(matches!(old.flush(), Err(ArrayError::Fenced { found: 2, ours: 1, .. })));
    assert!(matches!(
        old.write_at(0, &[9u8; 8192]),
        Err(ArrayError::LeaseLost { .. })
    ));
    // The stray write landed after the new opener read the checksums, so
    // it may read as damaged: refused, but never torn.
    let mut buf = vec![0u8; 8192];
    match new.read_at(0, &mut buf) {
        Ok(()) => assert!(buf.iter().all(|b| *b == 7 || *b == 9), "torn bytes"),
        Err(e) => assert!(matches!(e, ArrayError::Corrupted { .. }), "{e}"),
    }
    // A lease that ran out stops writes at once, without any flush.
    let late = LuDevice::open(
        &rig.array,
        &rig.spec,
        OpenOptions {
            epoch: 3,
            fence: Some(std::sync::Arc::new(super::fence::Fence::until(
                std::time::Instant::now(),
            ))),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(
        late.write_at(0, &[1u8; 4096]),
        Err(ArrayError::LeaseLost { .. })
    ));
    // Checked on the members themselves: the stray write above may make
    // the LU read as damaged there.
    for &d in &rig.spec.disks {
        let disk = rig.array.open_disk(d, rig.spec.disk_capacity).unwrap();
        disk.read_data(0, &mut buf).unwrap();
        assert!(buf[..4096].iter().any(|b| *b != 1), "a write past the lease landed");
    }
}

/// A RAID 5 LU over fault-injecting members, written with a pattern and
/// flushed: (dir, array with `faults` installed, spec, device, pattern).
fn faulty_raid5(faults: &std::sync::Arc<super::faults::Faults>) -> (tempfile::TempDir, LuSpec, LuDevice, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let unit = 4096;
    let per_disk = unit * 16;
    let plain = Array::new(dir.path(), ID);
    plain.create_disks(3, per_disk).unwrap();
    let spec = LuSpec {
        lu: 1,
        raid: Raid::Parity,
        disks: vec![1, 2, 3],
        unit,
        per_disk,
        disk_capacity: per_disk,
    };
    let array = plain.with_member_wrapper(faults.wrapper());
    let failed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = failed.clone();
    let opts = OpenOptions {
        on_member_failure: Some(std::sync::Arc::new(move |d| seen.lock().unwrap().push(d))),
        ..OpenOptions::default()
    };
    let dev = LuDevice::create(&array, &spec, opts).unwrap();
    let data = pattern(dev.len() as usize, 7, 0);
    dev.write_at(0, &data).unwrap();
    dev.flush().unwrap();
    (dir, spec, dev, data)
}

#[test]
fn a_member_returning_eio_is_failed_and_the_lu_serves_degraded() {
    let faults = super::faults::Faults::none();
    let (_dir, _spec, dev, mut model) = faulty_raid5(&faults);
    faults.break_disk(2);
    let update = pattern(3 * 4096 + 100, 9, 5000);
    dev.write_at(5000, &update).unwrap();
    model[5000..5000 + update.len()].copy_from_slice(&update);
    dev.flush().unwrap();
    assert_eq!(dev.health(), LuHealth::Degraded);
    assert!(dev
        .members()
        .iter()
        .any(|m| m.disk == 2 && m.state == super::superblock::MemberState::Failed));
    let mut back = vec![0u8; model.len()];
    dev.read_at(0, &mut back).unwrap();
    assert!(back == model, "a degraded read returned wrong bytes");
}

#[test]
fn a_torn_member_write_fails_that_member_and_loses_no_byte() {
    let faults = super::faults::Faults::none();
    let (_dir, _spec, dev, mut model) = faulty_raid5(&faults);
    // A full-stripe write: the member that gets the torn write holds half
    // new and half old bytes, which must never be read back.
    faults.tear_next_write();
    let update = pattern(2 * 4096, 3, 8192);
    dev.write_at(8192, &update).unwrap();
    model[8192..8192 + update.len()].copy_from_slice(&update);
    dev.flush().unwrap();
    assert_eq!(dev.health(), LuHealth::Degraded, "the torn member must be failed");
    let mut back = vec![0u8; model.len()];
    dev.read_at(0, &mut back).unwrap();
    assert!(back == model, "a read after a torn write returned wrong bytes");
}
