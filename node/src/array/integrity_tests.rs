//! Silent damage on the members: bytes flipped in the disk files behind
//! the array's back (as a failing disk or a stray write would), and disks
//! gone after a clean or an unclean stop. The LU must read right or refuse,
//! never return wrong bytes, and scrub must repair the copy that is wrong.

use std::sync::atomic::AtomicBool;

use super::device::{BlockDevice, LuDevice, OpenOptions};
use super::disk::disk_path;
use super::layout::Raid;
use super::member::Member;
use super::tests::{pattern, Rig};
use super::{jobs, ArrayError};

/// Inverts `len` bytes at `at` of disk `disk`'s data area, behind the LU's back.
fn flip(rig: &Rig, disk: u32, at: u64, len: usize) -> Vec<u8> {
    let d = rig.array.open_disk(disk, rig.spec.disk_capacity).unwrap();
    let mut b = vec![0u8; len];
    d.read_data(at, &mut b).unwrap();
    let before = b.clone();
    b.iter_mut().for_each(|x| *x ^= 0xff);
    d.write_data(at, &b).unwrap();
    before
}

fn raw(rig: &Rig, disk: u32, at: u64, len: usize) -> Vec<u8> {
    let d = rig.array.open_disk(disk, rig.spec.disk_capacity).unwrap();
    let mut b = vec![0u8; len];
    d.read_data(at, &mut b).unwrap();
    b
}

fn open(rig: &Rig) -> LuDevice {
    LuDevice::open(&rig.array, &rig.spec, OpenOptions::default()).unwrap()
}

/// A written LU, stopped cleanly.
fn written(raid: Raid) -> Rig {
    let mut rig = Rig::new(raid, 3, 4096, 8);
    let data = pattern(rig.model.len(), 5, 0);
    rig.dev.write_at(0, &data).unwrap();
    rig.model = data;
    rig.dev.close().unwrap();
    rig
}

/// Drops the device without closing it: a crash, as far as the disks know.
fn crash(rig: &mut Rig) {
    let placeholder = Rig::new(Raid::Mirror, 2, 4096, 2);
    drop(std::mem::replace(&mut rig.dev, placeholder.dev));
}

fn read_all(dev: &LuDevice) -> Result<Vec<u8>, ArrayError> {
    let mut buf = vec![0u8; dev.len() as usize];
    dev.read_at(0, &mut buf).map(|()| buf)
}

fn errors(dev: &LuDevice) -> u64 {
    dev.checksum_errors().iter().map(|(_, n)| n).sum()
}

fn scrub(dev: &LuDevice, repair: bool) -> jobs::ScrubReport {
    jobs::scrub(dev, repair, &AtomicBool::new(false), None, |_, _| {}).unwrap()
}

#[test]
fn a_flipped_data_block_reads_right_is_repaired_in_place_and_counted() {
    for raid in [Raid::Parity, Raid::Mirror] {
        let mut rig = written(raid);
        let g = rig.dev.geometry();
        // Stripe 0's first data chunk (RAID 1: the first mirror).
        let slot = g.data_slot(0, 0);
        let disk = rig.spec.disks[slot];
        let good = flip(&rig, disk, 100, 64);
        rig.dev = open(&rig);
        // Twice: each mirror serves some reads.
        for _ in 0..2 {
            assert!(read_all(&rig.dev).unwrap() == rig.model, "{raid:?}: wrong bytes served");
        }
        assert!(errors(&rig.dev) >= 1, "{raid:?}: the damage was not counted");
        assert_eq!(
            raw(&rig, disk, 100, 64),
            good,
            "{raid:?}: the damaged copy was not rewritten"
        );
        let again = scrub(&rig.dev, false);
        assert_eq!((again.mismatches, again.lost), (0, 0), "{raid:?}");
    }
}

#[test]
fn scrub_repair_rewrites_the_copy_that_fails_its_checksum() {
    // Damaged data in stripe 0 and damaged parity in stripe 1: repairing
    // parity from the data (what a checksum-blind scrub does) would make
    // the first permanent.
    let mut rig = written(Raid::Parity);
    let g = rig.dev.geometry();
    let data_disk = rig.spec.disks[g.data_slot(0, 0)];
    let parity_disk = rig.spec.disks[g.parity_slot(1)];
    let data = flip(&rig, data_disk, g.disk_offset(0) + 10, 64);
    let parity = flip(&rig, parity_disk, g.disk_offset(1) + 10, 64);
    rig.dev = open(&rig);

    let found = scrub(&rig.dev, false);
    assert_eq!((found.mismatches, found.repaired, found.lost), (2, 0, 0));
    assert_eq!(errors(&rig.dev), 2);
    let fixed = scrub(&rig.dev, true);
    assert_eq!((fixed.mismatches, fixed.repaired, fixed.lost), (2, 2, 0));
    assert_eq!(raw(&rig, data_disk, g.disk_offset(0) + 10, 64), data);
    assert_eq!(raw(&rig, parity_disk, g.disk_offset(1) + 10, 64), parity);
    assert_eq!(scrub(&rig.dev, false).mismatches, 0);
    assert!(read_all(&rig.dev).unwrap() == rig.model);
}

#[test]
fn scrub_repair_of_a_mirror_copies_the_good_side() {
    let mut rig = written(Raid::Mirror);
    let good = flip(&rig, rig.spec.disks[1], 4096 * 3, 64);
    rig.dev = open(&rig);
    let fixed = scrub(&rig.dev, true);
    assert_eq!((fixed.mismatches, fixed.repaired, fixed.lost), (1, 1, 0));
    assert_eq!(raw(&rig, rig.spec.disks[1], 4096 * 3, 64), good);
    assert!(read_all(&rig.dev).unwrap() == rig.model);
}

#[test]
fn damage_with_no_redundancy_left_is_refused_never_served() {
    let mut rig = written(Raid::Parity);
    let g = rig.dev.geometry();
    // Degraded: the member holding stripe 0's parity is gone, and a data
    // chunk of stripe 0 is damaged.
    rig.dev.fail_member(rig.spec.disks[g.parity_slot(0)]).unwrap();
    rig.dev.close().unwrap();
    flip(&rig, rig.spec.disks[g.data_slot(0, 0)], 0, 64);
    rig.dev = open(&rig);
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        rig.dev.read_at(0, &mut buf),
        Err(ArrayError::Corrupted { offset: 0, .. })
    ));
    // A two-member stripe elsewhere still reads.
    let sb = g.stripe_bytes() as usize;
    let mut other = vec![0u8; sb];
    rig.dev.read_at(sb as u64 * 2, &mut other).unwrap();
    assert!(other == rig.model[sb * 2..sb * 3]);
    // Scrub reports the block lost rather than inventing it.
    let mut rig2 = written(Raid::Mirror);
    flip(&rig2, rig2.spec.disks[0], 0, 64);
    flip(&rig2, rig2.spec.disks[1], 0, 64);
    flip(&rig2, rig2.spec.disks[2], 0, 64);
    rig2.dev = open(&rig2);
    assert!(matches!(
        rig2.dev.read_at(0, &mut buf),
        Err(ArrayError::Corrupted { .. })
    ));
    assert_eq!(scrub(&rig2.dev, true).lost, 1);
}

#[test]
fn recovery_of_a_dirty_region_never_trusts_a_damaged_block() {
    let mut rig = Rig::new(Raid::Parity, 3, 4096, 8);
    let data = pattern(rig.model.len(), 9, 0);
    rig.dev.write_at(0, &data).unwrap();
    rig.dev.flush().unwrap();
    // Stopped uncleanly below: the write-intent bits are still set.
    let g = rig.dev.geometry();
    let disk = rig.spec.disks[g.data_slot(0, 1)];
    crash(&mut rig);
    let good = flip(&rig, disk, 0, 64);
    rig.dev = open(&rig);
    assert_eq!(raw(&rig, disk, 0, 64), good, "recovery kept the damaged block");
    assert!(read_all(&rig.dev).unwrap() == data);
}

#[test]
fn a_disk_gone_after_a_clean_stop_costs_nothing() {
    for unclean in [false, true] {
        let mut rig = Rig::new(Raid::Parity, 3, 4096, 8);
        let data = pattern(rig.model.len(), 2, 0);
        rig.dev.write_at(0, &data).unwrap();
        if unclean {
            // Flushed, but its bits still set: every block verifies anyway.
            rig.dev.flush().unwrap();
        } else {
            rig.dev.close().unwrap();
        }
        crash(&mut rig);
        std::fs::remove_file(disk_path(&rig.array.dir, rig.spec.disks[1])).unwrap();
        rig.dev = open(&rig);
        assert!(
            read_all(&rig.dev).unwrap() == data,
            "unclean: {unclean}: bytes lost with one member missing"
        );
    }
}

#[test]
fn an_unclean_stop_with_a_member_missing_names_only_the_ranges_it_lost() {
    let mut rig = Rig::new(Raid::Parity, 3, 4096, 8);
    let data = pattern(rig.model.len(), 5, 0);
    rig.dev.write_at(0, &data).unwrap();
    rig.dev.flush().unwrap();
    assert!(rig.dev.lost_ranges().is_empty());
    // Stopped uncleanly: stripe 0 is in a dirty region. One of its data
    // blocks is damaged and the member with the other one is gone, so that
    // one cannot be verified.
    let g = rig.dev.geometry();
    crash(&mut rig);
    flip(&rig, rig.spec.disks[g.data_slot(0, 0)], 0, 64);
    let missing = g.data_slot(0, 1);
    std::fs::remove_file(disk_path(&rig.array.dir, rig.spec.disks[missing])).unwrap();
    rig.dev = open(&rig);
    let lost = rig.dev.lost_ranges();
    let unit = g.unit;
    assert!(
        lost.iter().any(|&(at, len)| at <= unit && 2 * unit <= at + len),
        "stripe 0's chunk on the missing member is not named: {lost:?}"
    );
    // Only that member's data chunks: never more than a third of the LU,
    // and every range named reads DATA_LOSS rather than wrong bytes.
    let named: u64 = lost.iter().map(|(_, len)| len).sum();
    assert!(named <= rig.model.len() as u64 / 2, "{named} bytes named lost");
    for &(at, len) in &lost {
        let mut buf = vec![0u8; len as usize];
        assert!(
            matches!(rig.dev.read_at(at, &mut buf), Err(ArrayError::DataLoss { .. })),
            "{at}+{len}"
        );
    }
}

#[test]
fn a_damaged_superblock_copy_is_outvoted() {
    let mut rig = written(Raid::Parity);
    let d = rig.array.open_disk(rig.spec.disks[0], rig.spec.disk_capacity).unwrap();
    d.write_meta_durable(super::superblock::SUPERBLOCK_AT + 20, &[0xff; 16])
        .unwrap();
    rig.dev = open(&rig);
    assert!(read_all(&rig.dev).unwrap() == rig.model);
}

mod under_faults {
    //! The LU against a model under power cuts that lose every unsynced
    //! write, bit flips on single members and scrubs: a read returns the
    //! model's bytes, and after a power cut every byte is one that was
    //! durable or written since.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::device::{BlockDevice, LuDevice, LuSpec, OpenOptions};
    use super::super::faults::Faults;
    use super::super::layout::Raid;
    use super::super::member::Member;
    use super::super::tests::{read_checked, write_both};
    use super::super::Array;
    use super::scrub;

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            at: u64,
            len: u64,
            seed: u8,
        },
        Read {
            at: u64,
            len: u64,
        },
        Flush,
        PowerCut,
        Close,
        Flip {
            slot: usize,
            at: u64,
        },
        Scrub {
            repair: bool,
        },
        /// Fails a member and puts a spare in its place.
        Replace {
            slot: usize,
        },
        Rebuild {
            stripes: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u64>(), 1u64..40_000, any::<u8>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
            3 => (any::<u64>(), 1u64..40_000).prop_map(|(at, len)| Op::Read { at, len }),
            2 => Just(Op::Flush),
            2 => Just(Op::PowerCut),
            1 => Just(Op::Close),
            3 => (0usize..4, any::<u64>()).prop_map(|(slot, at)| Op::Flip { slot, at }),
            1 => any::<bool>().prop_map(|repair| Op::Scrub { repair }),
            1 => (0usize..4).prop_map(|slot| Op::Replace { slot }),
            2 => (1u64..8).prop_map(|stripes| Op::Rebuild { stripes }),
        ]
    }

    struct Sim {
        _dir: tempfile::TempDir,
        faults: std::sync::Arc<Faults>,
        plain: Array,
        array: Array,
        spec: LuSpec,
        dev: LuDevice,
        /// What the LU holds now, as far as the model knows.
        now: Vec<u8>,
        /// Writes since the last flush: after a power cut, each byte they
        /// covered may hold any of their values or the one before.
        unflushed: Vec<(u64, Vec<u8>)>,
        before_unflushed: Vec<u8>,
        /// Stripes with a flipped block, and on which member.
        flipped: BTreeMap<u64, usize>,
    }

    impl Sim {
        fn new(raid: Raid, members: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (unit, stripes) = (4096, 12);
            let plain = Array::new(dir.path(), 0xF00);
            // The members, then spares.
            plain.create_disks(members as u32 + 4, unit * stripes).unwrap();
            let faults = Faults::volatile();
            let array = plain.clone().with_member_wrapper(faults.wrapper());
            let spec = LuSpec {
                lu: 1,
                raid,
                disks: (1..=members as u32).collect(),
                unit,
                per_disk: unit * stripes,
                disk_capacity: unit * stripes,
            };
            let dev = LuDevice::create(&array, &spec, OpenOptions::default()).unwrap();
            let now = vec![0u8; dev.len() as usize];
            Sim {
                _dir: dir,
                faults,
                plain,
                array,
                spec,
                dev,
                before_unflushed: now.clone(),
                now,
                unflushed: Vec::new(),
                flipped: BTreeMap::new(),
            }
        }

        fn reopen(&mut self) {
            self.dev = LuDevice::open(&self.array, &self.spec, OpenOptions::default()).unwrap();
        }

        fn stripes_of(&self, at: u64, len: u64) -> std::ops::RangeInclusive<u64> {
            let sb = self.dev.geometry().stripe_bytes();
            at / sb..=(at + len - 1) / sb
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Write { at, len, seed } => {
                    let written = write_both(&self.dev, &mut self.now, at, len, seed);
                    self.unflushed.push(written);
                }
                Op::Read { at, len } => read_checked(&self.dev, &self.now, at, len),
                Op::Flush => {
                    self.dev.flush().unwrap();
                    self.settle();
                }
                Op::Close => {
                    self.dev.close().unwrap();
                    self.settle();
                    self.reopen();
                }
                Op::PowerCut => {
                    self.faults.power_cut();
                    self.reopen();
                    let mut back = vec![0u8; self.now.len()];
                    self.dev.read_at(0, &mut back).unwrap();
                    for (i, b) in back.iter().enumerate() {
                        let i64 = i as u64;
                        let allowed = *b == self.before_unflushed[i]
                            || self
                                .unflushed
                                .iter()
                                .any(|(at, d)| i64 >= *at && i64 < at + d.len() as u64 && d[(i64 - at) as usize] == *b);
                        assert!(allowed, "byte {i} after a power cut is {b}, never written there");
                    }
                    self.now = back;
                    self.settle();
                }
                Op::Replace { slot } => {
                    // A member lost while another holds a damaged block is
                    // two faults in one stripe: refused, not modelled here.
                    if self.dev.health() != super::super::LuHealth::Optimal || !self.flipped.is_empty() {
                        return;
                    }
                    let members = self.dev.members();
                    let old = members[slot % members.len()].disk;
                    let used = members.iter().map(|m| m.disk).max().unwrap_or(0);
                    let spare = used + 1;
                    if spare > self.spec.disks.len() as u32 + 4 {
                        return;
                    }
                    self.dev.fail_member(old).unwrap();
                    let disk = self.array.open_member(spare, self.spec.disk_capacity).unwrap();
                    self.dev.replace_member(old, disk).unwrap();
                    self.spec.disks = self.dev.members().iter().map(|m| m.disk).collect();
                }
                Op::Rebuild { stripes } => {
                    self.dev.rebuild_step(stripes).unwrap();
                }
                Op::Flip { slot, at } => {
                    // Only with full redundancy: a degraded LU has no copy
                    // to repair from.
                    if self.dev.health() != super::super::LuHealth::Optimal {
                        return;
                    }
                    let g = self.dev.geometry();
                    let slot = slot % g.members;
                    // 16 bytes inside one block, so inside one stripe.
                    let at = (at % g.per_disk) / 16 * 16;
                    let stripe = at / g.unit;
                    // One damaged copy per stripe at a time, and none where
                    // a write is not yet durable: a crash there would make
                    // two copies of a block unverifiable at once.
                    let busy = self.unflushed.iter().any(|(w, d)| {
                        let lu_stripes = self.stripes_of(*w, d.len() as u64);
                        lu_stripes.contains(&stripe)
                    });
                    if busy || self.flipped.contains_key(&stripe) {
                        return;
                    }
                    let disk = self
                        .plain
                        .open_disk(self.spec.disks[slot], self.spec.disk_capacity)
                        .unwrap();
                    let mut b = [0u8; 16];
                    disk.read_data(at, &mut b).unwrap();
                    b.iter_mut().for_each(|x| *x ^= 0x5a);
                    disk.write_data(at, &b).unwrap();
                    disk.sync().unwrap();
                    self.flipped.insert(stripe, slot);
                }
                Op::Scrub { repair } => {
                    let r = scrub(&self.dev, repair);
                    assert_eq!(r.lost, 0, "{r:?}");
                    if repair {
                        self.flipped.clear();
                    }
                }
            }
        }

        /// The model's state is durable now.
        fn settle(&mut self) {
            self.unflushed.clear();
            self.before_unflushed = self.now.clone();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

        #[test]
        fn power_cuts_and_bit_flips_never_return_wrong_bytes(
            raid in prop_oneof![Just(Raid::Parity), Just(Raid::Mirror)],
            members in 3usize..=4,
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let mut sim = Sim::new(raid, members);
            for op in &ops {
                sim.apply(op);
            }
            let mut back = vec![0u8; sim.now.len()];
            sim.dev.read_at(0, &mut back).unwrap();
            prop_assert!(back == sim.now, "final content differs");
        }
    }
}
