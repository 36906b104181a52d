//! Shared LU backup copies as the Admin service shows them.

use nas_proto::{RestoreSharedLuReply, SharedLuBackupCopy, SharedLuBackupStatusReply};

use crate::chn::state_backup::{Restored, Status};
use nas_proto::backup_file::{Copy, Listed};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A copy that read back whole.
pub fn copy(c: &Copy) -> SharedLuBackupCopy {
    SharedLuBackupCopy {
        file: c.path.display().to_string(),
        log_index: c.backup.log_index,
        log_term: c.backup.log_term,
        taken_ms: c.backup.taken_ms,
        taken_by: c.backup.taken_by.clone(),
        size_bytes: c.size,
        sha256: hex(&c.sha256),
        damage: String::new(),
        array_id: c.backup.array_id.clone(),
    }
}

/// A file of the location, good or damaged.
fn listed(l: &Listed) -> SharedLuBackupCopy {
    match &l.copy {
        Ok(c) => copy(c),
        Err(e) => SharedLuBackupCopy {
            file: l.path.display().to_string(),
            size_bytes: l.size,
            damage: e.to_string(),
            ..Default::default()
        },
    }
}

pub fn status(answered_by: &str, s: &Status) -> SharedLuBackupStatusReply {
    SharedLuBackupStatusReply {
        answered_by: answered_by.into(),
        location: s.location.display().to_string(),
        copies: s.copies.iter().map(listed).collect(),
        every_s: s.every.map_or(0, |d| d.as_secs()),
        backup_initialized: s.initialized,
        last_error: s.last_error.clone(),
    }
}

pub fn restored(r: &Restored) -> RestoreSharedLuReply {
    let t = r.copy.backup.tables.clone().unwrap_or_default();
    let n = |len: usize| len.try_into().unwrap_or(u32::MAX);
    RestoreSharedLuReply {
        restored_from: Some(copy(&r.copy)),
        disks: n(t.disks.len()),
        lus: n(t.lus.len()),
        users: n(t.users.len()),
        exports: n(t.exports.len()),
        chns: n(t.daemons.len()),
        sessions_dropped: n(r.sessions_dropped),
        file_locks_dropped: n(r.file_locks_dropped),
    }
}
