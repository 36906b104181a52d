//! The tables of the shared LU and the rules for changing them.
//!
//! Owns the in-memory copy of every table of DESIGN.md and the pure,
//! deterministic `apply` of one typed command. It must never do I/O, read
//! the clock or panic on any command: every replica applies the same log
//! and must reach the same tables, and an invalid command is answered with
//! a reason and changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use nas_proto::{command::Kind, *};
use tonic::Code;

/// Smallest and largest physical disk the array accepts.
pub const MIN_DISK_BYTES: u64 = 1 << 20;
/// 64 TiB: far above any test array, far below overflow in capacity sums.
pub const MAX_DISK_BYTES: u64 = 64 << 40;
/// Most physical disks one array may hold.
pub const MAX_DISKS: u32 = 256;
/// Largest stripe unit (a degraded-write journal entry holds one chunk).
pub const MAX_STRIPE_UNIT: u64 = 1 << 20;
/// RAID 5 stripe unit used when a command gives none.
pub const DEFAULT_STRIPE_UNIT: u64 = 64 << 10;
/// First uid handed out when a user is added without one.
pub const FIRST_UID: u32 = 1000;

/// A key of one table row, used to persist exactly the rows a command touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum RowKey {
    Disk(u32),
    Lu(u32),
    Path(String, i32, u32),
    LuLock(u32),
    FileLock(String, String),
    User(String),
    Client(String),
    Export(String),
    Daemon(String),
    SharedLu,
}

/// Every table of the shared LU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    pub disks: BTreeMap<u32, Disk>,
    pub lus: BTreeMap<u32, Lu>,
    pub paths: BTreeMap<(String, i32, u32), Path>,
    pub lu_locks: BTreeMap<u32, LuLock>,
    pub file_locks: BTreeMap<(String, String), FileLock>,
    pub users: BTreeMap<String, User>,
    pub clients: BTreeMap<String, Client>,
    pub exports: BTreeMap<String, Export>,
    pub daemons: BTreeMap<String, Daemon>,
    pub shared_lu: SharedLuInfo,
}

/// Why a command was refused; becomes a gRPC status for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
}

fn reject<T>(code: Code, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        code,
        message: message.into(),
    })
}

/// The successful outcome of one command.
#[derive(Debug, Default)]
pub struct Applied {
    /// Number assigned by the command (LU number, uid, lock epoch), or 0.
    pub assigned: u64,
    /// Rows that changed and must be persisted.
    pub touched: Vec<RowKey>,
}

impl Applied {
    fn rows(touched: Vec<RowKey>) -> Self {
        Applied { assigned: 0, touched }
    }
}

/// Checks a CHN, user or export name: 1 to 64 of `[A-Za-z0-9._-]`,
/// starting with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<(), Rejection> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        return reject(
            Code::InvalidArgument,
            format!("{what} name is empty; give 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        );
    }
    if name.len() > 64 {
        return reject(
            Code::InvalidArgument,
            format!("{what} name is {} characters long; the limit is 64", name.len()),
        );
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return reject(
            Code::InvalidArgument,
            format!("{what} name {name:?} is not allowed; use A-Z a-z 0-9 . _ - and start with a letter or digit"),
        );
    }
    Ok(())
}

/// Whether a session is past its expiry or its lease at `now`.
fn client_lapsed(c: &Client, now: u64) -> bool {
    (c.expires_ms != 0 && c.expires_ms <= now) || (c.lease_ms != 0 && c.last_seen_ms.saturating_add(c.lease_ms) <= now)
}

impl Tables {
    /// Applies one command, or explains why it cannot be applied. A
    /// rejected command leaves every table as it was.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, Rejection> {
        let Some(kind) = &cmd.kind else {
            return reject(Code::InvalidArgument, "empty command: no operation was set");
        };
        match kind {
            Kind::InitSharedLu(c) => self.init_shared_lu(c),
            Kind::AddPath(c) => self.add_path(c.path.as_ref()),
            Kind::RemovePath(c) => self.remove_path(c.path.as_ref()),
            Kind::InitArray(c) => self.init_array(c),
            Kind::CreateLu(c) => self.create_lu(c),
            Kind::AddUser(c) => self.add_user(c.user.as_ref()),
            Kind::CreateExport(c) => self.create_export(c.export.as_ref()),
            Kind::RegisterChn(c) => self.register_chn(c),
            Kind::RemoveChn(c) => self.remove_chn(&c.chn),
            Kind::ReportDaemon(c) => self.report_daemon(c),
            Kind::UpsertClient(c) => self.upsert_client(c.client.as_ref()),
            Kind::RemoveClient(c) => self.remove_client(&c.client_id),
            Kind::AcquireLuLock(c) => self.acquire_lu_lock(c),
            Kind::ReleaseLuLock(c) => self.release_lu_lock(c),
            Kind::AcquireFileLock(c) => self.acquire_file_lock(c),
            Kind::ReleaseFileLock(c) => self.release_file_lock(c),
            Kind::SetDiskState(c) => self.set_disk_state(c),
            Kind::ReplaceDisk(c) => self.replace_disk(c),
            Kind::ReportLu(c) => self.report_lu(c),
            Kind::TouchClients(c) => self.touch_clients(c),
            Kind::ExpireClients(c) => self.expire_clients(c.now_ms),
            Kind::TakeOverExport(c) => self.take_over_export(c),
            Kind::HandOverExport(c) => self.hand_over_export(c),
        }
    }

    fn init_shared_lu(&mut self, c: &InitSharedLu) -> Result<Applied, Rejection> {
        if self.shared_lu.initialized && (self.shared_lu.backup_initialized || !c.with_backup) {
            return reject(
                Code::AlreadyExists,
                "the shared LU is already initialized; nothing to do",
            );
        }
        if !self.shared_lu.initialized {
            self.shared_lu.initialized = true;
            self.shared_lu.initialized_ms = c.now_ms;
        }
        self.shared_lu.backup_initialized |= c.with_backup;
        Ok(Applied::rows(vec![RowKey::SharedLu]))
    }

    fn path_key(&self, path: Option<&Path>) -> Result<(String, i32, u32), Rejection> {
        let Some(p) = path else {
            return reject(Code::InvalidArgument, "path is missing");
        };
        check_name("CHN", &p.chn)?;
        match PathTarget::try_from(p.target) {
            Ok(PathTarget::PathSharedLu | PathTarget::PathSharedLuBackup) if p.lu == 0 => {}
            Ok(PathTarget::PathSharedLu | PathTarget::PathSharedLuBackup) => {
                return reject(
                    Code::InvalidArgument,
                    "a path to the shared LU or its backup takes no LU number",
                );
            }
            Ok(PathTarget::PathDataLu) => {
                if !self.lus.contains_key(&p.lu) {
                    return reject(
                        Code::NotFound,
                        format!("LU {} does not exist; see `nasctl lu list`", p.lu),
                    );
                }
            }
            _ => return reject(Code::InvalidArgument, "path target must be shared, backup or a data LU"),
        }
        Ok((p.chn.clone(), p.target, p.lu))
    }

    fn add_path(&mut self, path: Option<&Path>) -> Result<Applied, Rejection> {
        let key = self.path_key(path)?;
        if self.paths.contains_key(&key) {
            return reject(Code::AlreadyExists, format!("CHN {} already has this path", key.0));
        }
        let row = Path {
            chn: key.0.clone(),
            target: key.1,
            lu: key.2,
        };
        self.paths.insert(key.clone(), row);
        Ok(Applied::rows(vec![RowKey::Path(key.0, key.1, key.2)]))
    }

    fn remove_path(&mut self, path: Option<&Path>) -> Result<Applied, Rejection> {
        let Some(p) = path else {
            return reject(Code::InvalidArgument, "path is missing");
        };
        let key = (p.chn.clone(), p.target, p.lu);
        if self.paths.remove(&key).is_none() {
            return reject(
                Code::NotFound,
                format!("CHN {} has no such path; see `nasctl path list`", p.chn),
            );
        }
        Ok(Applied::rows(vec![RowKey::Path(key.0, key.1, key.2)]))
    }

    /// Whether `init_array` would accept `c`; lets a CHN refuse before it
    /// creates any disk file.
    pub fn check_init_array(&self, c: &InitArray) -> Result<(), Rejection> {
        if !self.disks.is_empty() {
            return reject(
                Code::AlreadyExists,
                format!(
                    "the disk array is already initialized with {} disks; see `nasctl disk list`",
                    self.disks.len()
                ),
            );
        }
        if c.disks == 0 || c.disks > MAX_DISKS {
            return reject(
                Code::InvalidArgument,
                format!("disk count {} is out of range; give 1 to {MAX_DISKS}", c.disks),
            );
        }
        if !(MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&c.disk_capacity_bytes) {
            return reject(
                Code::InvalidArgument,
                format!(
                    "disk size {} bytes is out of range; give 1 MiB to 64 TiB (for example --size 64M)",
                    c.disk_capacity_bytes
                ),
            );
        }
        let id_ok = c.array_id.len() == 32 && c.array_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok {
            return reject(Code::InvalidArgument, "array id must be 32 hexadecimal digits");
        }
        Ok(())
    }

    fn init_array(&mut self, c: &InitArray) -> Result<Applied, Rejection> {
        self.check_init_array(c)?;
        self.shared_lu.array_id = c.array_id.to_ascii_lowercase();
        let mut touched = vec![RowKey::SharedLu];
        for number in 1..=c.disks {
            let disk = Disk {
                number,
                capacity_bytes: c.disk_capacity_bytes,
                raid_group: 0,
                state: DiskState::DiskNotUsed as i32,
            };
            self.disks.insert(number, disk);
            touched.push(RowKey::Disk(number));
        }
        Ok(Applied::rows(touched))
    }

    fn create_lu(&mut self, c: &CreateLu) -> Result<Applied, Rejection> {
        let raid = RaidLevel::try_from(c.raid).unwrap_or(RaidLevel::Unspecified);
        let min_disks = match raid {
            RaidLevel::Raid1 => 2,
            RaidLevel::Raid5 => 3,
            RaidLevel::Unspecified => {
                return reject(
                    Code::InvalidArgument,
                    format!("RAID level {} is not supported; use 1 or 5", c.raid),
                );
            }
        };
        if c.disks.len() < min_disks {
            return reject(
                Code::InvalidArgument,
                format!(
                    "RAID {} needs at least {min_disks} disks, {} given",
                    c.raid,
                    c.disks.len()
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for d in &c.disks {
            if !seen.insert(*d) {
                return reject(
                    Code::InvalidArgument,
                    format!("disk {d} is listed twice; each disk can be used once"),
                );
            }
        }
        let stripe = if c.stripe_unit_bytes == 0 {
            DEFAULT_STRIPE_UNIT
        } else {
            c.stripe_unit_bytes
        };
        if !stripe.is_power_of_two() || !(4096..=MAX_STRIPE_UNIT).contains(&stripe) {
            return reject(
                Code::InvalidArgument,
                format!("stripe unit {stripe} bytes is invalid; give a power of two from 4 KiB to 1 MiB"),
            );
        }
        let mut min_capacity = u64::MAX;
        for d in &c.disks {
            let Some(disk) = self.disks.get(d) else {
                return reject(
                    Code::NotFound,
                    format!("disk {d} does not exist; see `nasctl disk list`"),
                );
            };
            match DiskState::try_from(disk.state) {
                Ok(DiskState::DiskNotUsed) => {}
                Ok(DiskState::DiskUsed) => {
                    return reject(
                        Code::FailedPrecondition,
                        format!(
                            "disk {d} is already USED by LU {}; choose a NOT USED disk",
                            disk.raid_group
                        ),
                    );
                }
                _ => {
                    return reject(
                        Code::FailedPrecondition,
                        format!(
                            "disk {d} is {}; choose a NOT USED disk",
                            nas_proto::labels::disk_state(disk.state)
                        ),
                    );
                }
            }
            min_capacity = min_capacity.min(disk.capacity_bytes);
        }
        let data_disks = if raid == RaidLevel::Raid1 {
            1
        } else {
            c.disks.len() as u64 - 1
        };
        let per_disk = min_capacity - min_capacity % stripe;
        let number = self.lus.keys().next_back().map_or(1, |n| n + 1);
        let lu = Lu {
            number,
            disks: c.disks.clone(),
            capacity_bytes: per_disk * data_disks,
            raid: raid as i32,
            stripe_unit_bytes: stripe,
            health: LuHealth::Unspecified as i32,
            job: None,
            per_disk_bytes: per_disk,
        };
        let mut touched = vec![RowKey::Lu(number)];
        for d in &c.disks {
            if let Some(disk) = self.disks.get_mut(d) {
                disk.state = DiskState::DiskUsed as i32;
                disk.raid_group = number;
                touched.push(RowKey::Disk(*d));
            }
        }
        self.lus.insert(number, lu);
        Ok(Applied {
            assigned: number as u64,
            touched,
        })
    }

    fn set_disk_state(&mut self, c: &SetDiskState) -> Result<Applied, Rejection> {
        let Some(disk) = self.disks.get_mut(&c.disk) else {
            return reject(
                Code::NotFound,
                format!("disk {} does not exist; see `nasctl disk list`", c.disk),
            );
        };
        match DiskState::try_from(c.state) {
            Ok(DiskState::DiskFailed) => disk.state = c.state,
            Ok(DiskState::DiskNotUsed | DiskState::DiskSpare) if disk.raid_group == 0 => disk.state = c.state,
            Ok(DiskState::DiskNotUsed | DiskState::DiskSpare) => {
                return reject(
                    Code::FailedPrecondition,
                    format!(
                        "disk {} is a member of LU {}; replace it first",
                        c.disk, disk.raid_group
                    ),
                );
            }
            _ => {
                return reject(
                    Code::InvalidArgument,
                    "a disk can only be set FAILED, NOT USED or SPARE",
                )
            }
        }
        Ok(Applied::rows(vec![RowKey::Disk(c.disk)]))
    }

    fn replace_disk(&mut self, c: &ReplaceDisk) -> Result<Applied, Rejection> {
        let Some(failed) = self.disks.get(&c.failed) else {
            return reject(
                Code::NotFound,
                format!("disk {} does not exist; see `nasctl disk list`", c.failed),
            );
        };
        if failed.state != DiskState::DiskFailed as i32 || failed.raid_group == 0 {
            return reject(
                Code::FailedPrecondition,
                format!(
                    "disk {} is {}{}; only a FAILED member of an LU can be replaced",
                    c.failed,
                    nas_proto::labels::disk_state(failed.state),
                    if failed.raid_group == 0 { " and in no LU" } else { "" }
                ),
            );
        }
        let lu_number = failed.raid_group;
        let Some(spare) = self.disks.get(&c.spare) else {
            return reject(Code::NotFound, format!("spare disk {} does not exist", c.spare));
        };
        let free = [DiskState::DiskNotUsed as i32, DiskState::DiskSpare as i32].contains(&spare.state);
        if !free || spare.raid_group != 0 {
            return reject(
                Code::FailedPrecondition,
                format!(
                    "disk {} is {}; choose a NOT USED or SPARE disk",
                    c.spare,
                    nas_proto::labels::disk_state(spare.state)
                ),
            );
        }
        let Some(lu) = self.lus.get_mut(&lu_number) else {
            return reject(Code::NotFound, format!("LU {lu_number} does not exist"));
        };
        if spare.capacity_bytes < lu.per_disk_bytes {
            return reject(
                Code::FailedPrecondition,
                format!(
                    "disk {} holds {} bytes, LU {lu_number} needs {} per member",
                    c.spare, spare.capacity_bytes, lu.per_disk_bytes
                ),
            );
        }
        for d in lu.disks.iter_mut().filter(|d| **d == c.failed) {
            *d = c.spare;
        }
        if let Some(d) = self.disks.get_mut(&c.failed) {
            d.raid_group = 0;
        }
        if let Some(d) = self.disks.get_mut(&c.spare) {
            d.raid_group = lu_number;
            d.state = DiskState::DiskUsed as i32;
        }
        Ok(Applied {
            assigned: lu_number as u64,
            touched: vec![RowKey::Lu(lu_number), RowKey::Disk(c.failed), RowKey::Disk(c.spare)],
        })
    }

    fn report_lu(&mut self, c: &ReportLu) -> Result<Applied, Rejection> {
        let Some(lu) = self.lus.get_mut(&c.lu) else {
            return reject(Code::NotFound, format!("LU {} does not exist", c.lu));
        };
        if LuHealth::try_from(c.health).is_err() {
            return reject(Code::InvalidArgument, "unknown LU health");
        }
        lu.health = c.health;
        if c.job.is_some() {
            lu.job = c.job.clone();
        }
        Ok(Applied::rows(vec![RowKey::Lu(c.lu)]))
    }

    fn add_user(&mut self, user: Option<&User>) -> Result<Applied, Rejection> {
        let Some(u) = user else {
            return reject(Code::InvalidArgument, "user is missing");
        };
        check_name("user", &u.name)?;
        if !u.password_hash.starts_with("$argon2") {
            return reject(Code::InvalidArgument, "password hash is not an argon2 PHC string");
        }
        if self.users.contains_key(&u.name) {
            return reject(
                Code::AlreadyExists,
                format!("user {} already exists; see `nasctl user list`", u.name),
            );
        }
        let mut row = u.clone();
        if row.uid == 0 {
            let highest = self.users.values().map(|u| u.uid).max().unwrap_or(FIRST_UID - 1);
            row.uid = highest.max(FIRST_UID - 1).saturating_add(1);
        } else if let Some(other) = self.users.values().find(|o| o.uid == row.uid) {
            return reject(
                Code::AlreadyExists,
                format!("uid {} already belongs to user {}", row.uid, other.name),
            );
        }
        for g in &row.groups {
            check_name("group", g)?;
        }
        let uid = row.uid;
        self.users.insert(row.name.clone(), row);
        Ok(Applied {
            assigned: uid as u64,
            touched: vec![RowKey::User(u.name.clone())],
        })
    }

    fn live_chn(&self, name: &str, role: &str) -> Result<(), Rejection> {
        check_name("CHN", name)?;
        if !self.daemons.contains_key(name) {
            return reject(
                Code::NotFound,
                format!("{role} CHN {name} is not installed; see `nasctl chn list`"),
            );
        }
        Ok(())
    }

    fn create_export(&mut self, export: Option<&Export>) -> Result<Applied, Rejection> {
        let Some(e) = export else {
            return reject(Code::InvalidArgument, "export is missing");
        };
        check_name("export", &e.name)?;
        if self.exports.contains_key(&e.name) {
            return reject(
                Code::AlreadyExists,
                format!("export {} already exists; see `nasctl export list`", e.name),
            );
        }
        if !self.lus.contains_key(&e.lu) {
            return reject(
                Code::NotFound,
                format!("LU {} does not exist; create it with `nasctl lu create`", e.lu),
            );
        }
        if let Some(other) = self.exports.values().find(|o| o.lu == e.lu) {
            return reject(
                Code::FailedPrecondition,
                format!("LU {} is already exported as {}", e.lu, other.name),
            );
        }
        self.live_chn(&e.owner_chn, "owner")?;
        if !e.partner_chn.is_empty() {
            self.live_chn(&e.partner_chn, "partner")?;
            if e.partner_chn == e.owner_chn {
                return reject(Code::InvalidArgument, "the partner CHN must differ from the owner CHN");
            }
        }
        for u in &e.users {
            if !self.users.contains_key(u) {
                return reject(
                    Code::NotFound,
                    format!("user {u} does not exist; add it with `nasctl user add`"),
                );
            }
        }
        let mut row = e.clone();
        row.state = ServiceState::ServiceServing as i32;
        row.home_chn = e.owner_chn.clone();
        self.exports.insert(row.name.clone(), row);
        Ok(Applied::rows(vec![RowKey::Export(e.name.clone())]))
    }

    fn register_chn(&mut self, c: &RegisterChn) -> Result<Applied, Rejection> {
        check_name("CHN", &c.chn)?;
        if c.node_id == 0 {
            return reject(Code::InvalidArgument, "node id 0 is reserved");
        }
        if let Some(other) = self.daemons.values().find(|d| d.node_id == c.node_id && d.chn != c.chn) {
            return reject(
                Code::AlreadyExists,
                format!("node id {} already belongs to CHN {}", c.node_id, other.chn),
            );
        }
        let row = self.daemons.entry(c.chn.clone()).or_default();
        if row.node_id != 0 && row.node_id != c.node_id {
            return reject(
                Code::AlreadyExists,
                format!(
                    "CHN {} is already installed with node id {}; remove it first",
                    c.chn, row.node_id
                ),
            );
        }
        row.chn = c.chn.clone();
        row.node_id = c.node_id;
        row.address = c.address.clone();
        row.state = c.state;
        Ok(Applied::rows(vec![RowKey::Daemon(c.chn.clone())]))
    }

    fn remove_chn(&mut self, chn: &str) -> Result<Applied, Rejection> {
        if !self.daemons.contains_key(chn) {
            return reject(
                Code::NotFound,
                format!("CHN {chn} is not installed; see `nasctl chn list`"),
            );
        }
        if let Some(e) = self.exports.values().find(|e| e.owner_chn == chn) {
            return reject(
                Code::FailedPrecondition,
                format!(
                    "CHN {chn} serves export {}; move the export to another CHN first",
                    e.name
                ),
            );
        }
        self.daemons.remove(chn);
        let mut touched = vec![RowKey::Daemon(chn.to_string())];
        let paths: Vec<_> = self.paths.keys().filter(|k| k.0 == chn).cloned().collect();
        for k in paths {
            self.paths.remove(&k);
            touched.push(RowKey::Path(k.0, k.1, k.2));
        }
        Ok(Applied::rows(touched))
    }

    fn report_daemon(&mut self, c: &ReportDaemon) -> Result<Applied, Rejection> {
        let Some(row) = self.daemons.get_mut(&c.chn) else {
            return reject(
                Code::NotFound,
                format!("CHN {} is not installed; install it with `nasctl chn install`", c.chn),
            );
        };
        row.heartbeat_ms = c.heartbeat_ms;
        row.daemon_states = c.daemon_states.clone();
        row.version = c.version.clone();
        row.load = c.load;
        Ok(Applied::rows(vec![RowKey::Daemon(c.chn.clone())]))
    }

    fn upsert_client(&mut self, client: Option<&Client>) -> Result<Applied, Rejection> {
        let Some(c) = client else {
            return reject(Code::InvalidArgument, "client is missing");
        };
        if c.client_id.is_empty() || c.client_id.len() > 128 {
            return reject(Code::InvalidArgument, "client id must be 1 to 128 bytes");
        }
        if c.state.len() > 64 << 10 {
            return reject(Code::InvalidArgument, "client state is larger than 64 KiB");
        }
        self.clients.insert(c.client_id.clone(), c.clone());
        Ok(Applied::rows(vec![RowKey::Client(c.client_id.clone())]))
    }

    fn remove_client(&mut self, id: &str) -> Result<Applied, Rejection> {
        if self.clients.remove(id).is_none() {
            return reject(Code::NotFound, format!("client {id} is not known"));
        }
        let mut touched = vec![RowKey::Client(id.to_string())];
        touched.extend(self.drop_holders(|h| h.session == id));
        Ok(Applied::rows(touched))
    }

    /// Removes the file-lock holds `gone` picks; returns the rows touched.
    fn drop_holders(&mut self, gone: impl Fn(&FileLockHolder) -> bool) -> Vec<RowKey> {
        let mut touched = Vec::new();
        self.file_locks.retain(|(export, path), row| {
            let before = row.holders.len();
            row.holders.retain(|h| !gone(h));
            if row.holders.len() != before {
                touched.push(RowKey::FileLock(export.clone(), path.clone()));
            }
            !row.holders.is_empty()
        });
        touched
    }

    fn touch_clients(&mut self, c: &TouchClients) -> Result<Applied, Rejection> {
        let mut touched = Vec::new();
        for id in &c.client_ids {
            // A client that expired meanwhile stays gone: it must open a
            // new session.
            let Some(client) = self.clients.get_mut(id) else {
                continue;
            };
            client.last_seen_ms = client.last_seen_ms.max(c.now_ms);
            let expiry = c.now_ms.saturating_add(client.lease_ms);
            touched.push(RowKey::Client(id.clone()));
            for ((export, path), row) in self.file_locks.iter_mut() {
                let mut renewed = false;
                for h in row.holders.iter_mut().filter(|h| &h.session == id) {
                    h.lease_expiry_ms = h.lease_expiry_ms.max(expiry);
                    renewed = true;
                }
                if renewed {
                    touched.push(RowKey::FileLock(export.clone(), path.clone()));
                }
            }
        }
        Ok(Applied::rows(touched))
    }

    /// Whether any session or file-lock hold has lapsed at `now`, so that
    /// an ExpireClients command would change something.
    pub fn anything_lapsed(&self, now: u64) -> bool {
        self.clients.values().any(|c| client_lapsed(c, now))
            || self
                .file_locks
                .values()
                .any(|l| l.holders.iter().any(|h| h.lease_expiry_ms <= now))
    }

    fn expire_clients(&mut self, now: u64) -> Result<Applied, Rejection> {
        let ended: Vec<String> = self
            .clients
            .values()
            .filter(|c| client_lapsed(c, now))
            .map(|c| c.client_id.clone())
            .collect();
        let mut touched = Vec::new();
        for id in &ended {
            self.clients.remove(id);
            touched.push(RowKey::Client(id.clone()));
        }
        touched.extend(self.drop_holders(|h| ended.contains(&h.session) || h.lease_expiry_ms <= now));
        Ok(Applied {
            assigned: ended.len() as u64,
            touched,
        })
    }

    /// The address CHN `chn` serves on, or "" when it is not installed.
    pub fn address_of(&self, chn: &str) -> String {
        self.daemons.get(chn).map(|d| d.address.clone()).unwrap_or_default()
    }

    fn export_mut(&mut self, name: &str) -> Result<&mut Export, Rejection> {
        match self.exports.get_mut(name) {
            Some(e) => Ok(e),
            None => reject(
                Code::NotFound,
                format!("export {name} does not exist; see `nasctl export list`"),
            ),
        }
    }

    fn take_over_export(&mut self, c: &TakeOverExport) -> Result<Applied, Rejection> {
        self.live_chn(&c.chn, "taking")?;
        let (lu, from) = {
            let e = self.export_mut(&c.export)?;
            (e.lu, e.owner_chn.clone())
        };
        let mut applied = self.acquire_lu_lock(&AcquireLuLock {
            lu,
            chn: c.chn.clone(),
            lease_ms: c.lease_ms,
            now_ms: c.now_ms,
        })?;
        let e = self.export_mut(&c.export)?;
        if from != c.chn {
            e.owner_chn = c.chn.clone();
            e.moved_ms = c.now_ms;
            e.moved_from = from;
            e.move_reason = c.reason.clone();
            e.failed_over = true;
        }
        e.state = ServiceState::ServiceServing as i32;
        applied.touched.push(RowKey::Export(c.export.clone()));
        Ok(applied)
    }

    fn hand_over_export(&mut self, c: &HandOverExport) -> Result<Applied, Rejection> {
        self.live_chn(&c.to, "receiving")?;
        let e = self.export_mut(&c.export)?;
        if e.owner_chn != c.from {
            return reject(
                Code::FailedPrecondition,
                format!("export {} is served by {}, not by {}", c.export, e.owner_chn, c.from),
            );
        }
        if c.to == c.from {
            return reject(
                Code::InvalidArgument,
                format!("export {} is already served by CHN {}", c.export, c.to),
            );
        }
        let lu = e.lu;
        let mut touched = vec![RowKey::Export(c.export.clone())];
        match self.lu_locks.get(&lu) {
            Some(l) if l.chn == c.from && l.epoch == c.epoch => {
                self.release(lu);
                touched.push(RowKey::LuLock(lu));
            }
            Some(l) if l.lease_expiry_ms > c.now_ms => {
                return reject(
                    Code::FailedPrecondition,
                    format!(
                        "LU {lu} of export {} is held by CHN {} at epoch {}, not by {} at {}; retry",
                        c.export, l.chn, l.epoch, c.from, c.epoch
                    ),
                )
            }
            _ => {}
        }
        let e = self.export_mut(&c.export)?;
        e.owner_chn = c.to.clone();
        e.moved_ms = c.now_ms;
        e.moved_from = c.from.clone();
        e.move_reason = c.reason.clone();
        e.failed_over = false;
        e.state = ServiceState::ServiceServing as i32;
        Ok(Applied::rows(touched))
    }

    /// Frees an LU lock but keeps its epoch: the LU superblock carries the
    /// highest epoch it was opened with, and the next holder must exceed it.
    fn release(&mut self, lu: u32) {
        if let Some(l) = self.lu_locks.get_mut(&lu) {
            l.chn.clear();
            l.lease_expiry_ms = 0;
        }
    }

    fn acquire_lu_lock(&mut self, c: &AcquireLuLock) -> Result<Applied, Rejection> {
        if c.lu != 0 && !self.lus.contains_key(&c.lu) {
            return reject(Code::NotFound, format!("LU {} does not exist", c.lu));
        }
        self.live_chn(&c.chn, "locking")?;
        if c.lease_ms == 0 {
            return reject(Code::InvalidArgument, "lease must be longer than 0 ms");
        }
        let epoch = match self.lu_locks.get(&c.lu) {
            Some(l) if l.chn == c.chn => l.epoch,
            Some(l) if l.lease_expiry_ms > c.now_ms => {
                return reject(
                    Code::FailedPrecondition,
                    format!(
                        "LU {} is locked by CHN {} for {} ms more",
                        c.lu,
                        l.chn,
                        l.lease_expiry_ms - c.now_ms
                    ),
                );
            }
            Some(l) => l.epoch + 1,
            None => 1,
        };
        let lock = LuLock {
            lu: c.lu,
            chn: c.chn.clone(),
            epoch,
            lease_expiry_ms: c.now_ms.saturating_add(c.lease_ms),
        };
        self.lu_locks.insert(c.lu, lock);
        Ok(Applied {
            assigned: epoch,
            touched: vec![RowKey::LuLock(c.lu)],
        })
    }

    fn release_lu_lock(&mut self, c: &ReleaseLuLock) -> Result<Applied, Rejection> {
        match self.lu_locks.get(&c.lu) {
            Some(l) if l.chn == c.chn && l.epoch == c.epoch => {
                self.release(c.lu);
                Ok(Applied::rows(vec![RowKey::LuLock(c.lu)]))
            }
            Some(l) => reject(
                Code::FailedPrecondition,
                format!(
                    "LU {} is held by CHN {} at epoch {}, not by {} at {}",
                    c.lu, l.chn, l.epoch, c.chn, c.epoch
                ),
            ),
            None => reject(Code::NotFound, format!("LU {} is not locked", c.lu)),
        }
    }

    fn acquire_file_lock(&mut self, c: &AcquireFileLock) -> Result<Applied, Rejection> {
        if !self.exports.contains_key(&c.export) {
            return reject(Code::NotFound, format!("export {} does not exist", c.export));
        }
        if c.path.is_empty() || c.session.is_empty() {
            return reject(Code::InvalidArgument, "file lock needs a path and a session");
        }
        if !self.clients.contains_key(&c.session) {
            return reject(
                Code::Unauthenticated,
                format!("session {} has ended; open a new session", c.session),
            );
        }
        let mode = LockMode::try_from(c.mode).unwrap_or(LockMode::Unspecified);
        if mode == LockMode::Unspecified {
            return reject(Code::InvalidArgument, "lock mode must be shared or exclusive");
        }
        let key = (c.export.clone(), c.path.clone());
        // Work on a copy so that a refused lock leaves the table untouched.
        let mut row = self.file_locks.get(&key).cloned().unwrap_or_else(|| FileLock {
            export: c.export.clone(),
            path: c.path.clone(),
            holders: vec![],
        });
        row.holders
            .retain(|h| h.lease_expiry_ms > c.now_ms || h.session == c.session);
        let conflict = row.holders.iter().find(|h| {
            h.session != c.session && (mode == LockMode::LockExclusive || h.mode == LockMode::LockExclusive as i32)
        });
        if let Some(h) = conflict {
            return reject(
                Code::FailedPrecondition,
                format!("{}:{} is locked by session {}", c.export, c.path, h.session),
            );
        }
        let expiry = c.now_ms.saturating_add(c.lease_ms);
        match row.holders.iter_mut().find(|h| h.session == c.session) {
            Some(h) => {
                h.mode = mode as i32;
                h.lease_expiry_ms = expiry;
            }
            None => row.holders.push(FileLockHolder {
                session: c.session.clone(),
                mode: mode as i32,
                lease_expiry_ms: expiry,
            }),
        }
        self.file_locks.insert(key.clone(), row);
        Ok(Applied::rows(vec![RowKey::FileLock(key.0, key.1)]))
    }

    fn release_file_lock(&mut self, c: &ReleaseFileLock) -> Result<Applied, Rejection> {
        let key = (c.export.clone(), c.path.clone());
        let Some(row) = self.file_locks.get_mut(&key) else {
            return reject(Code::NotFound, format!("{}:{} is not locked", c.export, c.path));
        };
        let before = row.holders.len();
        row.holders.retain(|h| !c.all_holders && h.session != c.session);
        if row.holders.len() == before {
            return reject(
                Code::NotFound,
                format!("session {} holds no lock on {}:{}", c.session, c.export, c.path),
            );
        }
        if row.holders.is_empty() {
            self.file_locks.remove(&key);
        }
        Ok(Applied::rows(vec![RowKey::FileLock(key.0, key.1)]))
    }
}

impl Tables {
    /// The whole state as one message, for snapshots.
    pub fn to_proto(&self) -> nas_proto::Tables {
        nas_proto::Tables {
            disks: self.disks.values().cloned().collect(),
            lus: self.lus.values().cloned().collect(),
            paths: self.paths.values().cloned().collect(),
            lu_locks: self.lu_locks.values().cloned().collect(),
            file_locks: self.file_locks.values().cloned().collect(),
            users: self.users.values().cloned().collect(),
            clients: self.clients.values().cloned().collect(),
            exports: self.exports.values().cloned().collect(),
            daemons: self.daemons.values().cloned().collect(),
            shared_lu: Some(self.shared_lu.clone()),
        }
    }

    /// Rebuilds the tables from a snapshot message.
    pub fn from_proto(t: nas_proto::Tables) -> Tables {
        let mut out = Tables::default();
        for row in rows_of(t) {
            out.put_row(row);
        }
        out
    }

    /// Every row of every table.
    pub fn all_rows(&self) -> Vec<Row> {
        rows_of(self.to_proto())
    }

    /// The current value of one row, or `None` when it was deleted.
    pub fn get_row(&self, key: &RowKey) -> Option<Row> {
        match key {
            RowKey::Disk(n) => self.disks.get(n).cloned().map(Row::Disk),
            RowKey::Lu(n) => self.lus.get(n).cloned().map(Row::Lu),
            RowKey::Path(c, t, l) => self.paths.get(&(c.clone(), *t, *l)).cloned().map(Row::Path),
            RowKey::LuLock(n) => self.lu_locks.get(n).cloned().map(Row::LuLock),
            RowKey::FileLock(e, p) => self.file_locks.get(&(e.clone(), p.clone())).cloned().map(Row::FileLock),
            RowKey::User(n) => self.users.get(n).cloned().map(Row::User),
            RowKey::Client(n) => self.clients.get(n).cloned().map(Row::Client),
            RowKey::Export(n) => self.exports.get(n).cloned().map(Row::Export),
            RowKey::Daemon(n) => self.daemons.get(n).cloned().map(Row::Daemon),
            RowKey::SharedLu => Some(Row::SharedLu(self.shared_lu.clone())),
        }
    }

    /// Inserts or replaces one row (used when loading from disk).
    pub fn put_row(&mut self, row: Row) {
        match row {
            Row::Disk(r) => {
                self.disks.insert(r.number, r);
            }
            Row::Lu(r) => {
                self.lus.insert(r.number, r);
            }
            Row::Path(r) => {
                self.paths.insert((r.chn.clone(), r.target, r.lu), r);
            }
            Row::LuLock(r) => {
                self.lu_locks.insert(r.lu, r);
            }
            Row::FileLock(r) => {
                self.file_locks.insert((r.export.clone(), r.path.clone()), r);
            }
            Row::User(r) => {
                self.users.insert(r.name.clone(), r);
            }
            Row::Client(r) => {
                self.clients.insert(r.client_id.clone(), r);
            }
            Row::Export(r) => {
                self.exports.insert(r.name.clone(), r);
            }
            Row::Daemon(r) => {
                self.daemons.insert(r.chn.clone(), r);
            }
            Row::SharedLu(r) => self.shared_lu = r,
        }
    }
}

fn rows_of(t: nas_proto::Tables) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    rows.extend(t.disks.into_iter().map(Row::Disk));
    rows.extend(t.lus.into_iter().map(Row::Lu));
    rows.extend(t.paths.into_iter().map(Row::Path));
    rows.extend(t.lu_locks.into_iter().map(Row::LuLock));
    rows.extend(t.file_locks.into_iter().map(Row::FileLock));
    rows.extend(t.users.into_iter().map(Row::User));
    rows.extend(t.clients.into_iter().map(Row::Client));
    rows.extend(t.exports.into_iter().map(Row::Export));
    rows.extend(t.daemons.into_iter().map(Row::Daemon));
    rows.push(Row::SharedLu(t.shared_lu.unwrap_or_default()));
    rows
}

/// One row of any table, as persisted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Row {
    Disk(Disk),
    Lu(Lu),
    Path(Path),
    LuLock(LuLock),
    FileLock(FileLock),
    User(User),
    Client(Client),
    Export(Export),
    Daemon(Daemon),
    SharedLu(SharedLuInfo),
}

impl Row {
    /// The key under which this row is stored.
    pub fn key(&self) -> RowKey {
        match self {
            Row::Disk(r) => RowKey::Disk(r.number),
            Row::Lu(r) => RowKey::Lu(r.number),
            Row::Path(r) => RowKey::Path(r.chn.clone(), r.target, r.lu),
            Row::LuLock(r) => RowKey::LuLock(r.lu),
            Row::FileLock(r) => RowKey::FileLock(r.export.clone(), r.path.clone()),
            Row::User(r) => RowKey::User(r.name.clone()),
            Row::Client(r) => RowKey::Client(r.client_id.clone()),
            Row::Export(r) => RowKey::Export(r.name.clone()),
            Row::Daemon(r) => RowKey::Daemon(r.chn.clone()),
            Row::SharedLu(_) => RowKey::SharedLu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmd(kind: Kind) -> Command {
        Command { kind: Some(kind) }
    }

    const ARRAY_ID: &str = "0123456789abcdef0123456789abcdef";

    fn hash() -> String {
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()
    }

    fn with_array(disks: u32) -> Tables {
        let mut t = Tables::default();
        t.apply(&cmd(Kind::InitArray(InitArray {
            disks,
            disk_capacity_bytes: 64 << 20,
            array_id: ARRAY_ID.into(),
        })))
        .unwrap();
        t
    }

    fn lu(raid: RaidLevel, disks: &[u32]) -> Command {
        cmd(Kind::CreateLu(CreateLu {
            raid: raid as i32,
            disks: disks.to_vec(),
            stripe_unit_bytes: 0,
        }))
    }

    fn register(t: &mut Tables, name: &str, id: u64) {
        t.apply(&cmd(Kind::RegisterChn(RegisterChn {
            chn: name.into(),
            node_id: id,
            address: "127.0.0.1:1".into(),
            state: ChnState::ChnInstalled as i32,
        })))
        .unwrap();
    }

    fn rejected_with(t: &mut Tables, c: Command, code: Code, needle: &str) {
        let before = t.clone();
        let r = t.apply(&c).expect_err("command must be rejected");
        assert_eq!(r.code, code, "{}", r.message);
        assert!(r.message.contains(needle), "{:?} lacks {needle:?}", r.message);
        assert_eq!(*t, before, "a rejected command changed the tables");
    }

    #[test]
    fn raid5_lu_marks_its_disks_used_and_sizes_itself() {
        let mut t = with_array(4);
        let a = t.apply(&lu(RaidLevel::Raid5, &[1, 2, 3])).unwrap();
        assert_eq!(a.assigned, 1);
        assert_eq!(t.lus[&1].capacity_bytes, 2 * (64 << 20));
        for d in 1..=3 {
            assert_eq!(t.disks[&d].state, DiskState::DiskUsed as i32);
            assert_eq!(t.disks[&d].raid_group, 1);
        }
        assert_eq!(t.disks[&4].state, DiskState::DiskNotUsed as i32);
    }

    #[test]
    fn invalid_lus_are_rejected_with_reasons() {
        let mut t = with_array(5);
        t.apply(&lu(RaidLevel::Raid1, &[1, 2])).unwrap();
        rejected_with(
            &mut t,
            lu(RaidLevel::Raid5, &[3, 4]),
            Code::InvalidArgument,
            "at least 3 disks",
        );
        rejected_with(
            &mut t,
            lu(RaidLevel::Raid5, &[2, 3, 4]),
            Code::FailedPrecondition,
            "already USED by LU 1",
        );
        rejected_with(
            &mut t,
            lu(RaidLevel::Raid1, &[3, 3]),
            Code::InvalidArgument,
            "listed twice",
        );
        rejected_with(&mut t, lu(RaidLevel::Raid1, &[3, 9]), Code::NotFound, "disk 9");
        rejected_with(
            &mut t,
            lu(RaidLevel::Unspecified, &[3, 4]),
            Code::InvalidArgument,
            "not supported",
        );
        rejected_with(
            &mut t,
            cmd(Kind::CreateLu(CreateLu {
                raid: 5,
                disks: vec![3, 4, 5],
                stripe_unit_bytes: 3000,
            })),
            Code::InvalidArgument,
            "power of two",
        );
        rejected_with(&mut t, Command { kind: None }, Code::InvalidArgument, "empty command");
    }

    #[test]
    fn array_is_initialized_once_and_within_limits() {
        let mut t = Tables::default();
        rejected_with(
            &mut t,
            cmd(Kind::InitArray(InitArray {
                disks: 0,
                disk_capacity_bytes: 1 << 20,
                array_id: ARRAY_ID.into(),
            })),
            Code::InvalidArgument,
            "out of range",
        );
        rejected_with(
            &mut t,
            cmd(Kind::InitArray(InitArray {
                disks: 2,
                disk_capacity_bytes: 10,
                array_id: ARRAY_ID.into(),
            })),
            Code::InvalidArgument,
            "1 MiB",
        );
        let mut t = with_array(2);
        rejected_with(
            &mut t,
            cmd(Kind::InitArray(InitArray {
                disks: 2,
                disk_capacity_bytes: 1 << 20,
                array_id: ARRAY_ID.into(),
            })),
            Code::AlreadyExists,
            "already initialized",
        );
    }

    #[test]
    fn users_get_unique_names_and_uids() {
        let mut t = Tables::default();
        let add = |name: &str, uid: u32| {
            cmd(Kind::AddUser(AddUser {
                user: Some(User {
                    name: name.into(),
                    password_hash: hash(),
                    uid,
                    groups: vec![],
                    enabled: true,
                }),
            }))
        };
        assert_eq!(t.apply(&add("alice", 0)).unwrap().assigned, 1000);
        assert_eq!(t.apply(&add("bob", 0)).unwrap().assigned, 1001);
        rejected_with(&mut t, add("alice", 0), Code::AlreadyExists, "already exists");
        rejected_with(&mut t, add("carol", 1001), Code::AlreadyExists, "uid 1001");
        rejected_with(&mut t, add("", 0), Code::InvalidArgument, "empty");
        rejected_with(&mut t, add("../etc", 0), Code::InvalidArgument, "not allowed");
        rejected_with(&mut t, add(&"x".repeat(65), 0), Code::InvalidArgument, "limit is 64");
        let plain = cmd(Kind::AddUser(AddUser {
            user: Some(User {
                name: "dave".into(),
                password_hash: "secret".into(),
                ..Default::default()
            }),
        }));
        rejected_with(&mut t, plain, Code::InvalidArgument, "argon2");
    }

    #[test]
    fn exports_need_an_lu_and_installed_chns() {
        let mut t = with_array(3);
        t.apply(&lu(RaidLevel::Raid1, &[1, 2])).unwrap();
        register(&mut t, "CHN1", 1);
        register(&mut t, "CHN5", 5);
        let export = |name: &str, lu: u32, owner: &str, partner: &str| {
            cmd(Kind::CreateExport(CreateExport {
                export: Some(Export {
                    name: name.into(),
                    lu,
                    owner_chn: owner.into(),
                    partner_chn: partner.into(),
                    ..Default::default()
                }),
            }))
        };
        rejected_with(&mut t, export("home", 7, "CHN1", "CHN5"), Code::NotFound, "LU 7");
        rejected_with(&mut t, export("home", 1, "CHN9", "CHN5"), Code::NotFound, "CHN9");
        rejected_with(
            &mut t,
            export("home", 1, "CHN1", "CHN1"),
            Code::InvalidArgument,
            "partner",
        );
        t.apply(&export("home", 1, "CHN1", "CHN5")).unwrap();
        rejected_with(
            &mut t,
            export("home", 1, "CHN1", "CHN5"),
            Code::AlreadyExists,
            "already exists",
        );
        rejected_with(
            &mut t,
            export("home2", 1, "CHN1", "CHN5"),
            Code::FailedPrecondition,
            "already exported",
        );
        rejected_with(
            &mut t,
            cmd(Kind::RemoveChn(RemoveChn { chn: "CHN1".into() })),
            Code::FailedPrecondition,
            "serves",
        );
    }

    #[test]
    fn lu_locks_fence_with_rising_epochs() {
        let mut t = with_array(2);
        t.apply(&lu(RaidLevel::Raid1, &[1, 2])).unwrap();
        register(&mut t, "CHN1", 1);
        register(&mut t, "CHN5", 5);
        let acquire = |chn: &str, now: u64| {
            cmd(Kind::AcquireLuLock(AcquireLuLock {
                lu: 1,
                chn: chn.into(),
                lease_ms: 1000,
                now_ms: now,
            }))
        };
        assert_eq!(t.apply(&acquire("CHN1", 10_000)).unwrap().assigned, 1);
        rejected_with(
            &mut t,
            acquire("CHN5", 10_500),
            Code::FailedPrecondition,
            "locked by CHN CHN1",
        );
        assert_eq!(
            t.apply(&acquire("CHN5", 11_001)).unwrap().assigned,
            2,
            "taker after expiry bumps the epoch"
        );
        let release = |chn: &str, epoch: u64| {
            cmd(Kind::ReleaseLuLock(ReleaseLuLock {
                lu: 1,
                chn: chn.into(),
                epoch,
            }))
        };
        rejected_with(&mut t, release("CHN1", 1), Code::FailedPrecondition, "held by CHN CHN5");
        t.apply(&release("CHN5", 2)).unwrap();
        assert_eq!(
            t.apply(&acquire("CHN1", 12_000)).unwrap().assigned,
            3,
            "a released lock keeps its epoch: the LU superblock says 2"
        );
    }

    #[test]
    fn exports_move_with_the_lu_lock() {
        let mut t = with_array(2);
        t.apply(&lu(RaidLevel::Raid1, &[1, 2])).unwrap();
        for (name, id) in [("CHN1", 1), ("CHN2", 2), ("CHN3", 3)] {
            register(&mut t, name, id);
        }
        t.apply(&cmd(Kind::CreateExport(CreateExport {
            export: Some(Export {
                name: "home".into(),
                lu: 1,
                owner_chn: "CHN1".into(),
                partner_chn: "CHN2".into(),
                ..Default::default()
            }),
        })))
        .unwrap();
        assert_eq!(t.exports["home"].home_chn, "CHN1");
        let lock = cmd(Kind::AcquireLuLock(AcquireLuLock {
            lu: 1,
            chn: "CHN1".into(),
            lease_ms: 700,
            now_ms: 1000,
        }));
        assert_eq!(t.apply(&lock).unwrap().assigned, 1);
        let take = |chn: &str, now: u64| {
            cmd(Kind::TakeOverExport(TakeOverExport {
                export: "home".into(),
                chn: chn.into(),
                lease_ms: 700,
                now_ms: now,
                reason: "test".into(),
            }))
        };
        // Not while the owner's lease runs; the refusal changes nothing.
        rejected_with(&mut t, take("CHN2", 1500), Code::FailedPrecondition, "locked by");
        assert_eq!(t.exports["home"].owner_chn, "CHN1");
        assert_eq!(t.apply(&take("CHN2", 1700)).unwrap().assigned, 2);
        // A second taker at the same moment loses: the lease is CHN2's now.
        rejected_with(&mut t, take("CHN3", 1700), Code::FailedPrecondition, "locked by");
        let e = &t.exports["home"];
        assert_eq!(
            (e.owner_chn.as_str(), e.moved_from.as_str(), e.failed_over),
            ("CHN2", "CHN1", true)
        );
        let hand = |from: &str, epoch: u64, to: &str| {
            cmd(Kind::HandOverExport(HandOverExport {
                export: "home".into(),
                from: from.into(),
                epoch,
                to: to.into(),
                now_ms: 1800,
                reason: "giveback".into(),
            }))
        };
        rejected_with(
            &mut t,
            hand("CHN1", 1, "CHN1"),
            Code::FailedPrecondition,
            "served by CHN2",
        );
        rejected_with(&mut t, hand("CHN2", 1, "CHN1"), Code::FailedPrecondition, "epoch 2");
        rejected_with(&mut t, hand("CHN2", 2, "CHN9"), Code::NotFound, "CHN9");
        t.apply(&hand("CHN2", 2, "CHN1")).unwrap();
        let e = &t.exports["home"];
        assert_eq!((e.owner_chn.as_str(), e.failed_over), ("CHN1", false));
        assert_eq!(t.lu_locks[&1].chn, "", "the lock is free");
        assert_eq!(t.apply(&take("CHN1", 1900)).unwrap().assigned, 3);
    }

    #[test]
    fn file_locks_conflict_and_expire() {
        let mut t = with_array(2);
        t.apply(&lu(RaidLevel::Raid1, &[1, 2])).unwrap();
        register(&mut t, "CHN1", 1);
        t.apply(&cmd(Kind::CreateExport(CreateExport {
            export: Some(Export {
                name: "home".into(),
                lu: 1,
                owner_chn: "CHN1".into(),
                ..Default::default()
            }),
        })))
        .unwrap();
        let lock = |session: &str, mode: LockMode, now: u64| {
            cmd(Kind::AcquireFileLock(AcquireFileLock {
                export: "home".into(),
                path: "/a".into(),
                session: session.into(),
                mode: mode as i32,
                lease_ms: 100,
                now_ms: now,
            }))
        };
        rejected_with(
            &mut t,
            lock("s1", LockMode::LockShared, 0),
            Code::Unauthenticated,
            "open a new session",
        );
        for s in ["s1", "s2", "s3"] {
            t.apply(&cmd(Kind::UpsertClient(UpsertClient {
                client: Some(Client {
                    client_id: s.into(),
                    lease_ms: 100,
                    ..Default::default()
                }),
            })))
            .unwrap();
        }
        t.apply(&lock("s1", LockMode::LockShared, 0)).unwrap();
        t.apply(&lock("s2", LockMode::LockShared, 0)).unwrap();
        rejected_with(
            &mut t,
            lock("s3", LockMode::LockExclusive, 50),
            Code::FailedPrecondition,
            "locked by session",
        );
        // s1 is heard of again: its hold lives on, s2's runs out.
        t.apply(&cmd(Kind::TouchClients(TouchClients {
            client_ids: vec!["s1".into(), "gone".into()],
            now_ms: 90,
        })))
        .unwrap();
        rejected_with(
            &mut t,
            lock("s3", LockMode::LockExclusive, 150),
            Code::FailedPrecondition,
            "locked by session s1",
        );
        let ended = t
            .apply(&cmd(Kind::ExpireClients(ExpireClients { now_ms: 150 })))
            .unwrap();
        assert_eq!(ended.assigned, 2, "s2 and s3 were last seen at 0");
        assert!(!t.clients.contains_key("s2"));
        let key = ("home".to_string(), "/a".to_string());
        assert_eq!(t.file_locks[&key].holders.len(), 1);
        // Closing s1's session releases its lock.
        t.apply(&cmd(Kind::RemoveClient(RemoveClient { client_id: "s1".into() })))
            .unwrap();
        assert!(!t.file_locks.contains_key(&key));
    }

    #[test]
    fn snapshot_round_trip_keeps_every_table() {
        let mut t = with_array(3);
        t.apply(&lu(RaidLevel::Raid5, &[1, 2, 3])).unwrap();
        register(&mut t, "CHN1", 1);
        t.apply(&cmd(Kind::InitSharedLu(InitSharedLu {
            with_backup: true,
            now_ms: 5,
        })))
        .unwrap();
        assert_eq!(Tables::from_proto(t.to_proto()), t);
    }

    fn any_command() -> impl Strategy<Value = Command> {
        let name = prop::sample::select(vec!["CHN1", "CHN2", "alice", "", "home", "bad/name"]);
        let disks = prop::collection::vec(0u32..8, 0..5);
        prop_oneof![
            (0u32..8, prop::sample::select(vec![0u64, 10, 1 << 20, 64 << 20])).prop_map(|(disks, cap)| cmd(
                Kind::InitArray(InitArray {
                    disks,
                    disk_capacity_bytes: cap,
                    array_id: ARRAY_ID.into()
                })
            )),
            (prop::sample::select(vec![0i32, 1, 3, 5]), disks.clone()).prop_map(|(raid, disks)| {
                cmd(Kind::CreateLu(CreateLu {
                    raid,
                    disks,
                    stripe_unit_bytes: 0,
                }))
            }),
            (name.clone(), 0u64..4).prop_map(|(n, id)| cmd(Kind::RegisterChn(RegisterChn {
                chn: n.into(),
                node_id: id,
                address: "a:1".into(),
                state: 2
            }))),
            name.clone()
                .prop_map(|n| cmd(Kind::RemoveChn(RemoveChn { chn: n.into() }))),
            (name.clone(), 0u32..4, name.clone(), name.clone()).prop_map(|(n, lu, o, p)| cmd(Kind::CreateExport(
                CreateExport {
                    export: Some(Export {
                        name: n.into(),
                        lu,
                        owner_chn: o.into(),
                        partner_chn: p.into(),
                        ..Default::default()
                    })
                }
            ))),
            (name.clone(), 0u32..1002).prop_map(|(n, uid)| cmd(Kind::AddUser(AddUser {
                user: Some(User {
                    name: n.into(),
                    password_hash: hash(),
                    uid,
                    groups: vec![],
                    enabled: true
                })
            }))),
            (0u32..3, name, 0u64..3000).prop_map(|(lu, chn, now)| cmd(Kind::AcquireLuLock(AcquireLuLock {
                lu,
                chn: chn.into(),
                lease_ms: 1000,
                now_ms: now
            }))),
            (0u32..8, prop::sample::select(vec![0i32, 1, 2, 3, 4, 9]))
                .prop_map(|(disk, state)| cmd(Kind::SetDiskState(SetDiskState { disk, state }))),
            (0u32..8, 0u32..8).prop_map(|(failed, spare)| cmd(Kind::ReplaceDisk(ReplaceDisk { failed, spare }))),
            (0u32..3, 0i32..6).prop_map(|(lu, health)| cmd(Kind::ReportLu(ReportLu { lu, health, job: None }))),
            Just(Command { kind: None }),
        ]
    }

    #[test]
    fn a_failed_member_is_replaced_by_a_free_disk_only() {
        let mut t = with_array(5);
        t.apply(&lu(RaidLevel::Raid5, &[1, 2, 3])).unwrap();
        let replace = |failed, spare| cmd(Kind::ReplaceDisk(ReplaceDisk { failed, spare }));
        rejected_with(&mut t, replace(2, 4), Code::FailedPrecondition, "only a FAILED member");
        let fail = |disk| {
            cmd(Kind::SetDiskState(SetDiskState {
                disk,
                state: DiskState::DiskFailed as i32,
            }))
        };
        t.apply(&fail(2)).unwrap();
        rejected_with(&mut t, replace(2, 3), Code::FailedPrecondition, "choose a NOT USED");
        rejected_with(&mut t, replace(2, 9), Code::NotFound, "spare disk 9");
        t.apply(&replace(2, 4)).unwrap();
        assert_eq!(t.lus[&1].disks, vec![1, 4, 3]);
        assert_eq!(
            (t.disks[&4].state, t.disks[&4].raid_group),
            (DiskState::DiskUsed as i32, 1)
        );
        assert_eq!(
            (t.disks[&2].state, t.disks[&2].raid_group),
            (DiskState::DiskFailed as i32, 0)
        );
        let unfail = cmd(Kind::SetDiskState(SetDiskState {
            disk: 4,
            state: DiskState::DiskNotUsed as i32,
        }));
        rejected_with(&mut t, unfail, Code::FailedPrecondition, "member of LU 1");
        check_invariants(&t);
    }

    #[test]
    fn array_id_must_be_hex() {
        let mut t = Tables::default();
        let bad = cmd(Kind::InitArray(InitArray {
            disks: 2,
            disk_capacity_bytes: 1 << 20,
            array_id: "xyz".into(),
        }));
        rejected_with(&mut t, bad, Code::InvalidArgument, "32 hexadecimal digits");
    }

    /// Every USED disk belongs to exactly the LU that lists it, and every
    /// LU lists only USED disks of its own group.
    fn check_invariants(t: &Tables) {
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

    proptest! {
        /// Random command sequences: no panic, rejections change nothing,
        /// invariants always hold, and the snapshot form round-trips.
        #[test]
        fn random_commands_keep_the_tables_consistent(cmds in prop::collection::vec(any_command(), 1..60)) {
            let mut t = Tables::default();
            for c in &cmds {
                let before = t.clone();
                if t.apply(c).is_err() {
                    prop_assert_eq!(&t, &before);
                }
                check_invariants(&t);
            }
            prop_assert_eq!(Tables::from_proto(t.to_proto()), t);
        }
    }
}
