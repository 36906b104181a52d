//! The audit log: who did what on the Admin service, every login and
//! every refused call, in order, bounded by count and age.

use super::*;

/// Records one command may append.
pub const MAX_RECORDS_PER_COMMAND: usize = 4096;
/// Bounds on the configured retention.
pub const MIN_KEEP: u64 = 100;
pub const MAX_KEEP: u64 = 1_000_000;
/// Longest text kept in one field of a record.
pub const MAX_FIELD: usize = 2048;

fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Tables {
    pub(super) fn append_audit(&mut self, c: &AppendAudit) -> Result<Applied, Rejection> {
        if c.records.len() > MAX_RECORDS_PER_COMMAND {
            return reject(
                RejectKind::InvalidArgument,
                format!(
                    "{} audit records in one command; the limit is {MAX_RECORDS_PER_COMMAND}",
                    c.records.len()
                ),
            );
        }
        let mut touched = Vec::new();
        let mut next = self.audit.keys().next_back().map_or(1, |last| last + 1);
        for r in &c.records {
            let row = AuditRecord {
                seq: next,
                time_ms: r.time_ms,
                user: clip(&r.user),
                role: clip(&r.role),
                source: clip(&r.source),
                chn: clip(&r.chn),
                call: clip(&r.call),
                args: clip(&r.args),
                code: r.code,
                result: clip(&r.result),
            };
            self.audit.insert(next, row);
            touched.push(RowKey::AuditRecord(next));
            next += 1;
        }
        super::events::trim(
            &mut self.audit,
            c.keep.clamp(MIN_KEEP, MAX_KEEP) as usize,
            c.max_age_ms,
            c.now_ms,
            |r| r.time_ms,
            RowKey::AuditRecord,
            &mut touched,
        );
        Ok(Applied::rows(touched))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn append(n: usize, time_ms: u64, keep: u64, max_age_ms: u64) -> Command {
        let rec = AuditRecord {
            time_ms,
            user: "admin".into(),
            call: "Admin/AddUser".into(),
            args: "x".repeat(MAX_FIELD + 10),
            ..Default::default()
        };
        cmd(Kind::AppendAudit(AppendAudit {
            records: vec![rec; n],
            keep,
            max_age_ms,
            now_ms: time_ms,
        }))
    }

    #[test]
    fn records_are_numbered_clipped_and_bounded_by_count_and_age() {
        let mut t = Tables::default();
        t.apply(&append(150, 1_000, 120, 0)).unwrap();
        assert_eq!(t.audit.len(), 120, "the oldest beyond keep go");
        assert_eq!(t.audit.keys().next(), Some(&31));
        assert_eq!(t.audit.keys().next_back(), Some(&150));
        assert!(t.audit[&150].args.len() <= MAX_FIELD + 3);
        // An hour later, with a half-hour age limit: only the new ones stay.
        t.apply(&append(5, 3_601_000, 120, 1_800_000)).unwrap();
        assert_eq!(
            t.audit.keys().copied().collect::<Vec<_>>(),
            (151..=155).collect::<Vec<_>>()
        );
        rejected_with(
            &mut t,
            append(MAX_RECORDS_PER_COMMAND + 1, 1, 120, 0),
            RejectKind::InvalidArgument,
            "the limit is",
        );
    }
}
