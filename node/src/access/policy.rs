//! Which role each Admin call needs. One table, checked against the
//! service's descriptor by a test, so that no call is left open by
//! omission: a method missing here is refused.

use nas_proto::Role;

/// What a call needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No credential: the call reveals nothing and changes nothing a
    /// stranger may not (or, for Login, Bootstrap and RestoreSharedLu, is
    /// how one starts: the last two only on a CHN in no shared LU).
    Open,
    /// A caller with at least this role.
    Role(Role),
}

/// What the Admin call `method` (its name as in the .proto) needs; None
/// for a method the table does not know.
pub fn admin(method: &str) -> Option<Need> {
    let (viewer, operator, admin) = (
        Need::Role(Role::Viewer),
        Need::Role(Role::Operator),
        Need::Role(Role::Admin),
    );
    Some(match method {
        "NodeInfo" | "Login" | "Bootstrap" | "RestoreSharedLu" => Need::Open,
        "ClusterStatus"
        | "ListPaths"
        | "ListChns"
        | "ListDisks"
        | "ListLus"
        | "ListUsers"
        | "ListExports"
        | "ListClients"
        | "ListLocks"
        | "FailoverStatus"
        | "ListProbes"
        | "SharedLuBackupStatus"
        | "ListSnapshots"
        | "CheckExport"
        | "ListBackups"
        | "ListEvents" => viewer,
        "FailDisk" | "ReplaceDisk" | "RebuildLu" | "ScrubLu" | "MoveExport" | "BreakFileLock" | "WriteProbe"
        | "CreateSnapshot" | "DeleteSnapshot" | "CreateBackup" | "VerifyBackup" | "ScheduleBackup" => operator,
        // A restore writes over an export's files; a prune deletes backups.
        "InitSharedLu" | "AddPath" | "RemovePath" | "InstallChn" | "RemoveChn" | "InitArray" | "CreateLu"
        | "AddUser" | "SetRole" | "SetPassword" | "CreateExport" | "ReadLu" | "WriteLu" | "ListAudit"
        | "BackupSharedLu" | "RestoreBackup" | "PruneBackups" => admin,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_admin_method_has_a_policy() {
        let set = prost_types::FileDescriptorSet::decode(nas_proto::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name.as_deref() == Some("Admin"))
            .flat_map(|s| &s.method)
            .filter_map(|m| m.name.clone())
            .collect();
        assert!(methods.len() > 30, "{methods:?}");
        for m in &methods {
            assert!(admin(m).is_some(), "Admin method {m} has no policy in access::policy");
        }
        assert_eq!(admin("UpsertClient"), None);
        assert_eq!(admin("ReadLu"), Some(Need::Role(Role::Admin)));
    }
}
