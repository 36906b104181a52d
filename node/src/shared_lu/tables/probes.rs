//! The probe table: keyed registers that operators and the nemesis suite
//! write and read to check the shared LU end to end.

use super::*;

/// Most bytes a probe's value may hold.
pub const MAX_PROBE_VALUE: usize = 1024;
/// Most probes the table holds: a check reuses its keys.
pub const MAX_PROBES: usize = 10_000;

impl Tables {
    pub(super) fn write_probe(&mut self, probe: Option<&Probe>) -> Result<Applied, Rejection> {
        let Some(p) = probe else {
            return reject(RejectKind::InvalidArgument, "probe is missing");
        };
        check_name("probe", &p.key)?;
        if p.value.len() > MAX_PROBE_VALUE {
            return reject(
                RejectKind::InvalidArgument,
                format!("probe value is {} bytes; the limit is {MAX_PROBE_VALUE}", p.value.len()),
            );
        }
        if !self.probes.contains_key(&p.key) && self.probes.len() >= MAX_PROBES {
            return reject(
                RejectKind::FailedPrecondition,
                format!("the probe table is full ({MAX_PROBES} keys); write to existing keys"),
            );
        }
        self.probes.insert(p.key.clone(), p.clone());
        Ok(Applied::rows(vec![RowKey::Probe(p.key.clone())]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn write(key: &str, value: &[u8]) -> Command {
        cmd(Kind::WriteProbe(WriteProbe {
            probe: Some(Probe {
                key: key.into(),
                value: value.to_vec(),
            }),
        }))
    }

    #[test]
    fn probes_are_registers_with_checked_keys_and_values() {
        let mut t = Tables::default();
        t.apply(&write("k1", b"a")).unwrap();
        t.apply(&write("k1", b"b")).unwrap();
        assert_eq!(t.probes["k1"].value, b"b");
        rejected_with(&mut t, write("", b"x"), RejectKind::InvalidArgument, "empty");
        rejected_with(&mut t, write("a/b", b"x"), RejectKind::InvalidArgument, "not allowed");
        let big = vec![0u8; MAX_PROBE_VALUE + 1];
        rejected_with(&mut t, write("k2", &big), RejectKind::InvalidArgument, "limit is 1024");
        let missing = cmd(Kind::WriteProbe(WriteProbe { probe: None }));
        rejected_with(&mut t, missing, RejectKind::InvalidArgument, "missing");
    }

    #[test]
    fn a_full_probe_table_still_takes_writes_to_existing_keys() {
        let mut t = Tables::default();
        for i in 0..MAX_PROBES {
            t.apply(&write(&format!("p{i}"), b"v")).unwrap();
        }
        rejected_with(&mut t, write("one-more", b"v"), RejectKind::FailedPrecondition, "full");
        t.apply(&write("p7", b"w")).unwrap();
        assert_eq!(t.probes["p7"].value, b"w");
    }
}
