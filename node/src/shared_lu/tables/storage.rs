//! The disk array's tables: physical disks, LUs, paths, and the shared LU's own row.

use super::*;

impl Tables {
    pub(super) fn init_shared_lu(&mut self, c: &InitSharedLu) -> Result<Applied, Rejection> {
        if self.shared_lu.initialized && (self.shared_lu.backup_initialized || !c.with_backup) {
            return reject(
                RejectKind::AlreadyExists,
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

    pub(super) fn path_key(&self, path: Option<&Path>) -> Result<(String, i32, u32), Rejection> {
        let Some(p) = path else {
            return reject(RejectKind::InvalidArgument, "path is missing");
        };
        check_name("CHN", &p.chn)?;
        match PathTarget::try_from(p.target) {
            Ok(PathTarget::PathSharedLu | PathTarget::PathSharedLuBackup) if p.lu == 0 => {}
            Ok(PathTarget::PathSharedLu | PathTarget::PathSharedLuBackup) => {
                return reject(
                    RejectKind::InvalidArgument,
                    "a path to the shared LU or its backup takes no LU number",
                );
            }
            Ok(PathTarget::PathDataLu) => {
                if !self.lus.contains_key(&p.lu) {
                    return reject(
                        RejectKind::NotFound,
                        format!("LU {} does not exist; see `nasctl lu list`", p.lu),
                    );
                }
            }
            _ => {
                return reject(
                    RejectKind::InvalidArgument,
                    "path target must be shared, backup or a data LU",
                )
            }
        }
        Ok((p.chn.clone(), p.target, p.lu))
    }

    pub(super) fn add_path(&mut self, path: Option<&Path>) -> Result<Applied, Rejection> {
        let key = self.path_key(path)?;
        if self.paths.contains_key(&key) {
            return reject(
                RejectKind::AlreadyExists,
                format!("CHN {} already has this path", key.0),
            );
        }
        let row = Path {
            chn: key.0.clone(),
            target: key.1,
            lu: key.2,
        };
        self.paths.insert(key.clone(), row);
        Ok(Applied::rows(vec![RowKey::Path(key)]))
    }

    pub(super) fn remove_path(&mut self, path: Option<&Path>) -> Result<Applied, Rejection> {
        let Some(p) = path else {
            return reject(RejectKind::InvalidArgument, "path is missing");
        };
        let key = (p.chn.clone(), p.target, p.lu);
        if self.paths.remove(&key).is_none() {
            return reject(
                RejectKind::NotFound,
                format!("CHN {} has no such path; see `nasctl path list`", p.chn),
            );
        }
        Ok(Applied::rows(vec![RowKey::Path(key)]))
    }

    /// Whether `init_array` would accept `c`; lets a CHN refuse before it
    /// creates any disk file.
    pub fn check_init_array(&self, c: &InitArray) -> Result<(), Rejection> {
        if !self.disks.is_empty() {
            return reject(
                RejectKind::AlreadyExists,
                format!(
                    "the disk array is already initialized with {} disks; see `nasctl disk list`",
                    self.disks.len()
                ),
            );
        }
        if c.disks == 0 || c.disks > MAX_DISKS {
            return reject(
                RejectKind::InvalidArgument,
                format!("disk count {} is out of range; give 1 to {MAX_DISKS}", c.disks),
            );
        }
        if !(MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&c.disk_capacity_bytes) {
            return reject(
                RejectKind::InvalidArgument,
                format!(
                    "disk size {} bytes is out of range; give 1 MiB to 64 TiB (for example --size 64M)",
                    c.disk_capacity_bytes
                ),
            );
        }
        let id_ok = c.array_id.len() == 32 && c.array_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok {
            return reject(RejectKind::InvalidArgument, "array id must be 32 hexadecimal digits");
        }
        Ok(())
    }

    pub(super) fn init_array(&mut self, c: &InitArray) -> Result<Applied, Rejection> {
        self.check_init_array(c)?;
        self.shared_lu.array_id = c.array_id.to_ascii_lowercase();
        let mut touched = vec![RowKey::SharedLu];
        for number in 1..=c.disks {
            let disk = Disk {
                number,
                capacity_bytes: c.disk_capacity_bytes,
                raid_group: 0,
                state: DiskState::DiskNotUsed as i32,
                checksum_errors: 0,
            };
            self.disks.insert(number, disk);
            touched.push(RowKey::Disk(number));
        }
        Ok(Applied::rows(touched))
    }

    pub(super) fn create_lu(&mut self, c: &CreateLu) -> Result<Applied, Rejection> {
        let raid = RaidLevel::try_from(c.raid).unwrap_or(RaidLevel::Unspecified);
        let min_disks = match raid {
            RaidLevel::Raid1 => 2,
            RaidLevel::Raid5 => 3,
            RaidLevel::Unspecified => {
                return reject(
                    RejectKind::InvalidArgument,
                    format!("RAID level {} is not supported; use 1 or 5", c.raid),
                );
            }
        };
        if c.disks.len() < min_disks {
            return reject(
                RejectKind::InvalidArgument,
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
                    RejectKind::InvalidArgument,
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
                RejectKind::InvalidArgument,
                format!("stripe unit {stripe} bytes is invalid; give a power of two from 4 KiB to 1 MiB"),
            );
        }
        let mut min_capacity = u64::MAX;
        for d in &c.disks {
            let Some(disk) = self.disks.get(d) else {
                return reject(
                    RejectKind::NotFound,
                    format!("disk {d} does not exist; see `nasctl disk list`"),
                );
            };
            match DiskState::try_from(disk.state) {
                Ok(DiskState::DiskNotUsed) => {}
                Ok(DiskState::DiskUsed) => {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "disk {d} is already USED by LU {}; choose a NOT USED disk",
                            disk.raid_group
                        ),
                    );
                }
                _ => {
                    return reject(
                        RejectKind::FailedPrecondition,
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
            lost: Vec::new(),
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

    pub(super) fn set_disk_state(&mut self, c: &SetDiskState) -> Result<Applied, Rejection> {
        let Some(disk) = self.disks.get_mut(&c.disk) else {
            return reject(
                RejectKind::NotFound,
                format!("disk {} does not exist; see `nasctl disk list`", c.disk),
            );
        };
        match DiskState::try_from(c.state) {
            Ok(DiskState::DiskFailed) => disk.state = c.state,
            Ok(DiskState::DiskNotUsed | DiskState::DiskSpare) if disk.raid_group == 0 => disk.state = c.state,
            Ok(DiskState::DiskNotUsed | DiskState::DiskSpare) => {
                return reject(
                    RejectKind::FailedPrecondition,
                    format!(
                        "disk {} is a member of LU {}; replace it first",
                        c.disk, disk.raid_group
                    ),
                );
            }
            _ => {
                return reject(
                    RejectKind::InvalidArgument,
                    "a disk can only be set FAILED, NOT USED or SPARE",
                )
            }
        }
        Ok(Applied::rows(vec![RowKey::Disk(c.disk)]))
    }

    pub(super) fn replace_disk(&mut self, c: &ReplaceDisk) -> Result<Applied, Rejection> {
        let Some(failed) = self.disks.get(&c.failed) else {
            return reject(
                RejectKind::NotFound,
                format!("disk {} does not exist; see `nasctl disk list`", c.failed),
            );
        };
        if failed.state != DiskState::DiskFailed as i32 || failed.raid_group == 0 {
            return reject(
                RejectKind::FailedPrecondition,
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
            return reject(RejectKind::NotFound, format!("spare disk {} does not exist", c.spare));
        };
        let free = [DiskState::DiskNotUsed as i32, DiskState::DiskSpare as i32].contains(&spare.state);
        if !free || spare.raid_group != 0 {
            return reject(
                RejectKind::FailedPrecondition,
                format!(
                    "disk {} is {}; choose a NOT USED or SPARE disk",
                    c.spare,
                    nas_proto::labels::disk_state(spare.state)
                ),
            );
        }
        let Some(lu) = self.lus.get_mut(&lu_number) else {
            return reject(RejectKind::NotFound, format!("LU {lu_number} does not exist"));
        };
        if spare.capacity_bytes < lu.per_disk_bytes {
            return reject(
                RejectKind::FailedPrecondition,
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

    pub(super) fn report_lu(&mut self, c: &ReportLu) -> Result<Applied, Rejection> {
        let Some(lu) = self.lus.get_mut(&c.lu) else {
            return reject(RejectKind::NotFound, format!("LU {} does not exist", c.lu));
        };
        if LuHealth::try_from(c.health).is_err() {
            return reject(RejectKind::InvalidArgument, "unknown LU health");
        }
        lu.health = c.health;
        if c.job.is_some() {
            lu.job = c.job.clone();
        }
        if c.lost_known {
            lu.lost = c.lost.clone();
        }
        let mut touched = vec![RowKey::Lu(c.lu)];
        for (&disk, &count) in &c.checksum_errors {
            if let Some(d) = self.disks.get_mut(&disk) {
                d.checksum_errors = d.checksum_errors.saturating_add(count);
                touched.push(RowKey::Disk(disk));
            }
        }
        Ok(Applied::rows(touched))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn an_lu_report_sets_what_was_lost_only_when_it_knows() {
        let mut t = with_array(3);
        t.apply(&lu(RaidLevel::Raid5, &[1, 2, 3])).unwrap();
        let report = |lost: Vec<String>, lost_known: bool| {
            cmd(Kind::ReportLu(ReportLu {
                lu: 1,
                health: LuHealth::LuDegraded as i32,
                lost,
                lost_known,
                ..Default::default()
            }))
        };
        t.apply(&report(vec!["/a (bytes 0..4096)".into()], true)).unwrap();
        t.apply(&report(vec![], false)).unwrap();
        assert_eq!(t.lus[&1].lost, ["/a (bytes 0..4096)"]);
        t.apply(&report(vec![], true)).unwrap();
        assert!(t.lus[&1].lost.is_empty());
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
            RejectKind::InvalidArgument,
            "at least 3 disks",
        );
        rejected_with(
            &mut t,
            lu(RaidLevel::Raid5, &[2, 3, 4]),
            RejectKind::FailedPrecondition,
            "already USED by LU 1",
        );
        rejected_with(
            &mut t,
            lu(RaidLevel::Raid1, &[3, 3]),
            RejectKind::InvalidArgument,
            "listed twice",
        );
        rejected_with(&mut t, lu(RaidLevel::Raid1, &[3, 9]), RejectKind::NotFound, "disk 9");
        rejected_with(
            &mut t,
            lu(RaidLevel::Unspecified, &[3, 4]),
            RejectKind::InvalidArgument,
            "not supported",
        );
        rejected_with(
            &mut t,
            cmd(Kind::CreateLu(CreateLu {
                raid: 5,
                disks: vec![3, 4, 5],
                stripe_unit_bytes: 3000,
            })),
            RejectKind::InvalidArgument,
            "power of two",
        );
        rejected_with(
            &mut t,
            Command { kind: None },
            RejectKind::InvalidArgument,
            "empty command",
        );
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
            RejectKind::InvalidArgument,
            "out of range",
        );
        rejected_with(
            &mut t,
            cmd(Kind::InitArray(InitArray {
                disks: 2,
                disk_capacity_bytes: 10,
                array_id: ARRAY_ID.into(),
            })),
            RejectKind::InvalidArgument,
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
            RejectKind::AlreadyExists,
            "already initialized",
        );
    }

    #[test]
    fn a_failed_member_is_replaced_by_a_free_disk_only() {
        let mut t = with_array(5);
        t.apply(&lu(RaidLevel::Raid5, &[1, 2, 3])).unwrap();
        let replace = |failed, spare| cmd(Kind::ReplaceDisk(ReplaceDisk { failed, spare }));
        rejected_with(
            &mut t,
            replace(2, 4),
            RejectKind::FailedPrecondition,
            "only a FAILED member",
        );
        let fail = |disk| {
            cmd(Kind::SetDiskState(SetDiskState {
                disk,
                state: DiskState::DiskFailed as i32,
            }))
        };
        t.apply(&fail(2)).unwrap();
        rejected_with(
            &mut t,
            replace(2, 3),
            RejectKind::FailedPrecondition,
            "choose a NOT USED",
        );
        rejected_with(&mut t, replace(2, 9), RejectKind::NotFound, "spare disk 9");
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
        rejected_with(&mut t, unfail, RejectKind::FailedPrecondition, "member of LU 1");
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
        rejected_with(&mut t, bad, RejectKind::InvalidArgument, "32 hexadecimal digits");
    }
}
