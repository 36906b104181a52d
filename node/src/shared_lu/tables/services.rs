//! The service table: exports, their owners, and moving them between CHNs.

use super::*;

impl Tables {
    pub(super) fn create_export(&mut self, export: Option<&Export>) -> Result<Applied, Rejection> {
        let Some(e) = export else {
            return reject(RejectKind::InvalidArgument, "export is missing");
        };
        check_name("export", &e.name)?;
        if self.exports.contains_key(&e.name) {
            return reject(
                RejectKind::AlreadyExists,
                format!("export {} already exists; see `nasctl export list`", e.name),
            );
        }
        if !self.lus.contains_key(&e.lu) {
            return reject(
                RejectKind::NotFound,
                format!("LU {} does not exist; create it with `nasctl lu create`", e.lu),
            );
        }
        if let Some(other) = self.exports.values().find(|o| o.lu == e.lu) {
            return reject(
                RejectKind::FailedPrecondition,
                format!("LU {} is already exported as {}", e.lu, other.name),
            );
        }
        self.live_chn(&e.owner_chn, "owner")?;
        if !e.partner_chn.is_empty() {
            self.live_chn(&e.partner_chn, "partner")?;
            if e.partner_chn == e.owner_chn {
                return reject(
                    RejectKind::InvalidArgument,
                    "the partner CHN must differ from the owner CHN",
                );
            }
        }
        for u in &e.users {
            if !self.users.contains_key(u) {
                return reject(
                    RejectKind::NotFound,
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

    pub(super) fn export_mut(&mut self, name: &str) -> Result<&mut Export, Rejection> {
        match self.exports.get_mut(name) {
            Some(e) => Ok(e),
            None => reject(
                RejectKind::NotFound,
                format!("export {name} does not exist; see `nasctl export list`"),
            ),
        }
    }

    pub(super) fn take_over_export(&mut self, c: &TakeOverExport) -> Result<Applied, Rejection> {
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

    pub(super) fn hand_over_export(&mut self, c: &HandOverExport) -> Result<Applied, Rejection> {
        self.live_chn(&c.to, "receiving")?;
        let e = self.export_mut(&c.export)?;
        if e.owner_chn != c.from {
            return reject(
                RejectKind::FailedPrecondition,
                format!("export {} is served by {}, not by {}", c.export, e.owner_chn, c.from),
            );
        }
        if c.to == c.from {
            return reject(
                RejectKind::InvalidArgument,
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
                    RejectKind::LockHeld,
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

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
        rejected_with(&mut t, export("home", 7, "CHN1", "CHN5"), RejectKind::NotFound, "LU 7");
        rejected_with(&mut t, export("home", 1, "CHN9", "CHN5"), RejectKind::NotFound, "CHN9");
        rejected_with(
            &mut t,
            export("home", 1, "CHN1", "CHN1"),
            RejectKind::InvalidArgument,
            "partner",
        );
        t.apply(&export("home", 1, "CHN1", "CHN5")).unwrap();
        rejected_with(
            &mut t,
            export("home", 1, "CHN1", "CHN5"),
            RejectKind::AlreadyExists,
            "already exists",
        );
        rejected_with(
            &mut t,
            export("home2", 1, "CHN1", "CHN5"),
            RejectKind::FailedPrecondition,
            "already exported",
        );
        rejected_with(
            &mut t,
            cmd(Kind::RemoveChn(RemoveChn { chn: "CHN1".into() })),
            RejectKind::FailedPrecondition,
            "serves",
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
        rejected_with(&mut t, take("CHN2", 1500), RejectKind::LockHeld, "locked by");
        assert_eq!(t.exports["home"].owner_chn, "CHN1");
        assert_eq!(t.apply(&take("CHN2", 1700)).unwrap().assigned, 2);
        // A second taker at the same moment loses: the lease is CHN2's now.
        rejected_with(&mut t, take("CHN3", 1700), RejectKind::LockHeld, "locked by");
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
            RejectKind::FailedPrecondition,
            "served by CHN2",
        );
        rejected_with(&mut t, hand("CHN2", 1, "CHN1"), RejectKind::LockHeld, "epoch 2");
        rejected_with(&mut t, hand("CHN2", 2, "CHN9"), RejectKind::NotFound, "CHN9");
        t.apply(&hand("CHN2", 2, "CHN1")).unwrap();
        let e = &t.exports["home"];
        assert_eq!((e.owner_chn.as_str(), e.failed_over), ("CHN1", false));
        assert_eq!(t.lu_locks[&1].chn, "", "the lock is free");
        assert_eq!(t.apply(&take("CHN1", 1900)).unwrap().assigned, 3);
    }
}
