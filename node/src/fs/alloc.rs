//! Free space of the data area: a table of free extents (LU offset to
//! length, in whole blocks), first-fit from a hint so a growing file stays
//! contiguous, with neighbours merged on release.
//!
//! Owns the free-extent table; must never hand out a block twice (release
//! refuses overlaps as corruption rather than accept them).

use redb::{ReadableTable, Table, TableDefinition};

use super::{FsError, Result};

/// Free extents: LU offset -> length.
pub const FREE: TableDefinition<u64, u64> = TableDefinition::new("free");

type Free<'t> = Table<'t, u64, u64>;

fn first_at_or_after(free: &Free<'_>, at: u64) -> Result<Option<(u64, u64)>> {
    let mut r = free.range(at..).map_err(FsError::db)?;
    match r.next() {
        Some(e) => {
            let (k, v) = e.map_err(FsError::db)?;
            Ok(Some((k.value(), v.value())))
        }
        None => Ok(None),
    }
}

/// Takes `want` bytes (a multiple of the block) as one or more extents,
/// preferring those at or after `hint`. The caller has checked that the
/// free space suffices; running out anyway means the counters lie.
pub fn allocate(free: &mut Free<'_>, want: u64, mut hint: u64) -> Result<Vec<(u64, u64)>> {
    let mut got = Vec::new();
    let mut need = want;
    while need > 0 {
        let found = match first_at_or_after(free, hint)? {
            Some(e) => e,
            None => first_at_or_after(free, 0)?
                .ok_or_else(|| FsError::Corrupt("the free-space table ran out before its counter did".into()))?,
        };
        let (at, len) = found;
        free.remove(at).map_err(FsError::db)?;
        let take = len.min(need);
        if take < len {
            free.insert(at + take, len - take).map_err(FsError::db)?;
        }
        got.push((at, take));
        need -= take;
        hint = at + take;
    }
    Ok(got)
}

/// Returns an extent to the free table, merged with free neighbours.
pub fn release(free: &mut Free<'_>, mut at: u64, mut len: u64) -> Result<()> {
    let before = {
        let mut r = free.range(..=at).map_err(FsError::db)?;
        match r.next_back() {
            Some(e) => {
                let (k, v) = e.map_err(FsError::db)?;
                Some((k.value(), v.value()))
            }
            None => None,
        }
    };
    if let Some((p, pl)) = before {
        if p + pl > at {
            return Err(FsError::Corrupt(format!(
                "extent {at}+{len} is released while {p}+{pl} is already free"
            )));
        }
        if p + pl == at {
            free.remove(p).map_err(FsError::db)?;
            at = p;
            len += pl;
        }
    }
    if let Some((n, nl)) = first_at_or_after(free, at)? {
        if n < at + len {
            return Err(FsError::Corrupt(format!(
                "extent {at}+{len} is released over free extent {n}+{nl}"
            )));
        }
        if n == at + len {
            free.remove(n).map_err(FsError::db)?;
            len += nl;
        }
    }
    free.insert(at, len).map_err(FsError::db)?;
    Ok(())
}
