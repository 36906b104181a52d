//! The user table: names, uids and password hashes (never a clear password).

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
        let uid = row.uid;
        self.users.insert(row.name.clone(), row);
        Ok(Applied {
            assigned: uid as u64,
            touched: vec![RowKey::User(u.name.clone())],
        })
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
    }
}
