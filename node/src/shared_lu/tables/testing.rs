//! Helpers shared by the tables' tests.

use nas_proto::command::Kind;

use super::*;

pub const ARRAY_ID: &str = "0123456789abcdef0123456789abcdef";

pub fn cmd(kind: Kind) -> Command {
    Command { kind: Some(kind) }
}

pub fn hash() -> String {
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()
}

pub fn with_array(disks: u32) -> Tables {
    let mut t = Tables::default();
    t.apply(&cmd(Kind::InitArray(InitArray {
        disks,
        disk_capacity_bytes: 64 << 20,
        array_id: ARRAY_ID.into(),
    })))
    .unwrap();
    t
}

pub fn lu(raid: RaidLevel, disks: &[u32]) -> Command {
    cmd(Kind::CreateLu(CreateLu {
        raid: raid as i32,
        disks: disks.to_vec(),
        stripe_unit_bytes: 0,
    }))
}

pub fn register(t: &mut Tables, name: &str, id: u64) {
    t.apply(&cmd(Kind::RegisterChn(RegisterChn {
        chn: name.into(),
        node_id: id,
        address: "127.0.0.1:1".into(),
        state: ChnState::ChnInstalled as i32,
    })))
    .unwrap();
}

pub fn rejected_with(t: &mut Tables, c: Command, kind: RejectKind, needle: &str) {
    let before = t.clone();
    let r = t.apply(&c).expect_err("command must be rejected");
    assert_eq!(r.kind, kind, "{}", r.message);
    assert!(r.message.contains(needle), "{:?} lacks {needle:?}", r.message);
    assert_eq!(*t, before, "a rejected command changed the tables");
}

/// Every USED disk belongs to exactly the LU that lists it, and every
/// LU lists only USED disks of its own group.
pub fn check_invariants(t: &Tables) {
    for (n, d) in &t.disks {
        let member =
            d.state == DiskState::DiskUsed as i32 || (d.state == DiskState::DiskFailed as i32 && d.raid_group != 0);
        if member {
            assert!(
                t.lus.get(&d.raid_group).is_some_and(|l| l.disks.contains(n)),
                "disk {n} orphaned"
            );
        } else {
            assert_eq!(d.raid_group, 0);
        }
    }
    for (n, l) in &t.lus {
        for d in &l.disks {
            assert_eq!(t.disks[d].raid_group, *n);
        }
    }
    for e in t.exports.values() {
        assert!(t.lus.contains_key(&e.lu) && t.daemons.contains_key(&e.owner_chn));
    }
}
