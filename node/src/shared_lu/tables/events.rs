//! The event log: state changes an operator cares about (failovers, disk
//! and LU health, CHNs joining and failing, leader and quorum changes),
//! in order, bounded by count and age like the audit log.

use super::*;

/// Events one command may append.
pub const MAX_EVENTS_PER_COMMAND: usize = 1024;
/// Bounds on the configured retention.
const MIN_KEEP: u64 = 10;
const MAX_KEEP: u64 = 1_000_000;
/// Longest text kept in one field of an event, and most fields.
const MAX_TEXT: usize = 1024;
const MAX_FIELDS: usize = 32;

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Drops the oldest rows of a log beyond `keep`, then those older than
/// `max_age_ms` before `now_ms` (0: no age limit), recording each key.
pub(super) fn trim<V>(
    log: &mut BTreeMap<u64, V>,
    keep: usize,
    max_age_ms: u64,
    now_ms: u64,
    time_of: impl Fn(&V) -> u64,
    key: impl Fn(u64) -> RowKey,
    touched: &mut Vec<RowKey>,
) {
    while log.len() > keep {
        let Some((seq, _)) = log.pop_first() else { break };
        touched.push(key(seq));
    }
    if max_age_ms == 0 {
        return;
    }
    let oldest = now_ms.saturating_sub(max_age_ms);
    while let Some(entry) = log.first_entry() {
        if time_of(entry.get()) >= oldest {
            break;
        }
        touched.push(key(*entry.key()));
        entry.remove();
    }
}

impl Tables {
    pub(super) fn append_events(&mut self, c: &AppendEvents) -> Result<Applied, Rejection> {
        if c.events.len() > MAX_EVENTS_PER_COMMAND {
            return reject(
                RejectKind::InvalidArgument,
                format!(
                    "{} events in one command; the limit is {MAX_EVENTS_PER_COMMAND}",
                    c.events.len()
                ),
            );
        }
        let mut touched = Vec::new();
        let first = self.events.keys().next_back().map_or(1, |last| last + 1);
        for (seq, e) in (first..).zip(&c.events) {
            let row = Event {
                seq,
                time_ms: e.time_ms,
                chn: clip(&e.chn),
                kind: clip(&e.kind),
                severity: clip(&e.severity),
                message: clip(&e.message),
                fields: e
                    .fields
                    .iter()
                    .take(MAX_FIELDS)
                    .map(|(k, v)| (clip(k), clip(v)))
                    .collect(),
            };
            self.events.insert(seq, row);
            touched.push(RowKey::Event(seq));
        }
        trim(
            &mut self.events,
            c.keep.clamp(MIN_KEEP, MAX_KEEP) as usize,
            c.max_age_ms,
            c.now_ms,
            |e| e.time_ms,
            RowKey::Event,
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
        let event = Event {
            time_ms,
            chn: "CHN1".into(),
            kind: "disk.failed".into(),
            severity: "warning".into(),
            message: "x".repeat(5000),
            ..Default::default()
        };
        cmd(Kind::AppendEvents(AppendEvents {
            events: vec![event; n],
            keep,
            max_age_ms,
            now_ms: time_ms,
        }))
    }

    #[test]
    fn the_event_log_numbers_events_and_keeps_the_newest() {
        let mut t = Tables::default();
        t.apply(&append(30, 1000, 20, 0)).unwrap();
        assert_eq!(t.events.len(), 20, "the oldest beyond keep go");
        assert_eq!(t.events.keys().next(), Some(&11));
        assert_eq!(t.events.keys().next_back(), Some(&30));
        assert!(t.events[&30].message.len() <= MAX_TEXT);
        t.apply(&append(5, 10_000, 100, 5_000)).unwrap();
        assert_eq!(
            t.events.keys().copied().collect::<Vec<_>>(),
            (31..=35).collect::<Vec<_>>(),
            "events older than the age limit go"
        );
        rejected_with(
            &mut t,
            append(MAX_EVENTS_PER_COMMAND + 1, 1, 100, 0),
            RejectKind::InvalidArgument,
            "the limit is",
        );
    }
}
