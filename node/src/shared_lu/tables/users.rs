//! The user table: names, uids, roles and password hashes (never a clear
//! password), and the key that signs Admin login tokens.

use super::*;

impl Tables {
    pub(super) fn add_user(&mut self, user: Option<&User>) -> Result<Applied, Rejection> {
        let Some(u) = user else {
            return reject(RejectKind::InvalidArgument, "user is missing");
        };
        check_name("user", &u.name)?;
        if !u.password_hash.starts_with("$argon2") {
            return reject(RejectKind::InvalidArgument, "password hash is not an argon2 PHC string");
        }
        if self.users.contains_key(&u.name) {
            return reject(
                RejectKind::AlreadyExists,
                format!("user {} already exists; see `nasctl user list`", u.name),
            );
        }
        let mut row = u.clone();
        if row.uid == 0 {
            let highest = self.users.values().map(|u| u.uid).max().unwrap_or(FIRST_UID - 1);
            row.uid = highest.max(FIRST_UID - 1).saturating_add(1);
        } else if let Some(other) = self.users.values().find(|o| o.uid == row.uid) {
            return reject(
                RejectKind::AlreadyExists,
                format!("uid {} already belongs to user {}", row.uid, other.name),
            );
        }
        for g in &row.groups {
            check_name("group", g)?;
        }
        if Role::try_from(row.role).is_err() {
            return reject(RejectKind::InvalidArgument, format!("role {} does not exist", row.role));
        }
        let uid = row.uid;
        self.users.insert(row.name.clone(), row);
        Ok(Applied {
            assigned: uid as u64,
            touched: vec![RowKey::User(u.name.clone())],
        })
    }

    pub(super) fn set_role(&mut self, c: &SetRole) -> Result<Applied, Rejection> {
        let Ok(role) = Role::try_from(c.role) else {
            return reject(
                RejectKind::InvalidArgument,
                format!("role {} does not exist; use viewer, operator or admin", c.role),
            );
        };
        let admins = self
            .users
            .values()
            .filter(|u| u.role == Role::Admin as i32 && u.enabled);
        let last_admin = admins.map(|u| u.name.as_str()).collect::<Vec<_>>() == [c.user.as_str()];
        let Some(user) = self.users.get_mut(&c.user) else {
            return reject(
                RejectKind::NotFound,
                format!("user {} does not exist; see `nasctl user list`", c.user),
            );
        };
        if last_admin && role != Role::Admin {
            return reject(
                RejectKind::FailedPrecondition,
                format!("{} is the last admin; grant admin to another user first", c.user),
            );
        }
        user.role = role as i32;
        Ok(Applied::rows(vec![RowKey::User(c.user.clone())]))
    }

    pub(super) fn set_password(&mut self, c: &SetPassword) -> Result<Applied, Rejection> {
        if !c.password_hash.starts_with("$argon2") {
            return reject(RejectKind::InvalidArgument, "password hash is not an argon2 PHC string");
        }
        let Some(user) = self.users.get_mut(&c.user) else {
            return reject(
                RejectKind::NotFound,
                format!("user {} does not exist; see `nasctl user list`", c.user),
            );
        };
        user.password_hash = c.password_hash.clone();
        Ok(Applied::rows(vec![RowKey::User(c.user.clone())]))
    }

    pub(super) fn set_cluster_keys(&mut self, c: &SetClusterKeys) -> Result<Applied, Rejection> {
        if c.token_key.len() < 32 || c.handle_key.len() < 32 {
            return reject(
                RejectKind::InvalidArgument,
                "cluster keys must be at least 32 bytes each",
            );
        }
        if !self.shared_lu.handle_key.is_empty() && self.shared_lu.handle_key != c.handle_key {
            return reject(
                RejectKind::FailedPrecondition,
                "the file-handle key is set once: a new one would invalidate every handle clients hold",
            );
        }
        self.shared_lu.token_key = c.token_key.clone();
        self.shared_lu.handle_key = c.handle_key.clone();
        Ok(Applied::rows(vec![RowKey::SharedLu]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

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
                    role: 0,
                }),
            }))
        };
        assert_eq!(t.apply(&add("alice", 0)).unwrap().assigned, 1000);
        assert_eq!(t.apply(&add("bob", 0)).unwrap().assigned, 1001);
        rejected_with(&mut t, add("alice", 0), RejectKind::AlreadyExists, "already exists");
        rejected_with(&mut t, add("carol", 1001), RejectKind::AlreadyExists, "uid 1001");
        rejected_with(&mut t, add("", 0), RejectKind::InvalidArgument, "empty");
        rejected_with(&mut t, add("../etc", 0), RejectKind::InvalidArgument, "not allowed");
        rejected_with(
            &mut t,
            add(&"x".repeat(65), 0),
            RejectKind::InvalidArgument,
            "limit is 64",
        );
        let plain = cmd(Kind::AddUser(AddUser {
            user: Some(User {
                name: "dave".into(),
                password_hash: "secret".into(),
                ..Default::default()
            }),
        }));
        rejected_with(&mut t, plain, RejectKind::InvalidArgument, "argon2");
        let role = |user: &str, role: Role| {
            cmd(Kind::SetRole(SetRole {
                user: user.into(),
                role: role as i32,
            }))
        };
        t.apply(&role("alice", Role::Admin)).unwrap();
        assert_eq!(t.users["alice"].role, Role::Admin as i32);
        rejected_with(
            &mut t,
            role("alice", Role::Viewer),
            RejectKind::FailedPrecondition,
            "last admin",
        );
        rejected_with(
            &mut t,
            role("nobody", Role::Viewer),
            RejectKind::NotFound,
            "does not exist",
        );
        t.apply(&role("bob", Role::Admin)).unwrap();
        t.apply(&role("alice", Role::None)).unwrap();
        assert_eq!(t.users["alice"].role, Role::None as i32);
    }
}
