//! Reads of this CHN's copy of the tables, by what the caller wants to
//! know rather than by how the tables are laid out.
//!
//! Owns every read of the applied state from outside `shared_lu`. Each
//! read is of this CHN's copy as applied so far: a caller that needs a
//! linearizable answer calls [`SharedLu::ensure_current`] first. It must
//! never hold the state's lock beyond the call.

use nas_proto::{Client, Daemon, Disk, Export, InitArray, Lu, User};

use super::tables::{RejectKind, Rejection, Tables};
use super::SharedLu;

impl SharedLu {
    /// Runs `f` on the tables, for answers that span several tables.
    pub fn read<T>(&self, f: impl FnOnce(&Tables) -> T) -> T {
        f(&self.state.read().tables)
    }

    /// Every table with the log entry they reflect (index, term), taken
    /// under one lock: a consistent copy, as of this CHN's applied state.
    pub fn copy_with_position(&self) -> (nas_proto::Tables, u64, u64) {
        let state = self.state.read();
        let (index, term) = state.last_applied.map_or((0, 0), |l| (l.index, l.leader_id.term));
        (state.tables.to_proto(), index, term)
    }

    /// The export named `name`.
    pub fn export(&self, name: &str) -> Option<Export> {
        self.read(|t| t.exports.get(name).cloned())
    }

    /// Every export.
    pub fn exports(&self) -> Vec<Export> {
        self.read(|t| t.exports.values().cloned().collect())
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<User> {
        self.read(|t| t.users.get(name).cloned())
    }

    /// The client session with id `id`.
    pub fn client(&self, id: &str) -> Option<Client> {
        self.read(|t| t.clients.get(id).cloned())
    }

    /// The daemon row (heartbeat, address) of CHN `chn`, if installed.
    pub fn daemon(&self, chn: &str) -> Option<Daemon> {
        self.read(|t| t.daemons.get(chn).cloned())
    }

    /// The address of CHN `chn`, or "" when it is not installed.
    pub fn address_of(&self, chn: &str) -> String {
        self.read(|t| t.address_of(chn))
    }

    /// The disk array's id as hex, "" before `array init`.
    pub fn array_id(&self) -> String {
        self.read(|t| t.shared_lu.array_id.clone())
    }

    /// LU `lu`, with the capacity of its member disks (0 if unknown).
    pub fn lu_with_disk_capacity(&self, lu: u32) -> Option<(Lu, u64)> {
        self.read(|t| {
            let row = t.lus.get(&lu)?.clone();
            let capacity = row
                .disks
                .first()
                .and_then(|d| t.disks.get(d))
                .map_or(0, |d: &Disk| d.capacity_bytes);
            Some((row, capacity))
        })
    }

    /// The CHN that may serve LU `lu` at `now_ms`: the holder of its lock
    /// while the lease runs, else the owner of the export on it. `None`
    /// when neither exists.
    pub fn lu_server(&self, lu: u32, now_ms: u64) -> Result<Option<String>, Rejection> {
        self.read(|t| {
            if !t.lus.contains_key(&lu) {
                return Err(Rejection {
                    kind: RejectKind::NotFound,
                    message: format!("LU {lu} does not exist; see `nasctl lu list`"),
                });
            }
            let held = t
                .lu_locks
                .get(&lu)
                .filter(|l| l.lease_expiry_ms > now_ms)
                .map(|l| l.chn.clone());
            let owner = || t.exports.values().find(|e| e.lu == lu).map(|e| e.owner_chn.clone());
            Ok(held.or_else(owner))
        })
    }

    /// The LUs whose lock CHN `chn` holds (leases expired or not).
    pub fn locks_held_by(&self, chn: &str) -> Vec<u32> {
        self.read(|t| t.lu_locks.values().filter(|l| l.chn == chn).map(|l| l.lu).collect())
    }

    /// Whether any session or file lock is past its lease at `now_ms`.
    pub fn anything_lapsed(&self, now_ms: u64) -> bool {
        self.read(|t| t.anything_lapsed(now_ms))
    }

    /// Checks an `array init` against the tables before its disks are made.
    pub fn check_init_array(&self, cmd: &InitArray) -> Result<(), Rejection> {
        self.read(|t| t.check_init_array(cmd))
    }
}
