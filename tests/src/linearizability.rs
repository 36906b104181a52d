//! A linearizability checker for histories of registers: the Wing–Gong
//! search with Lowe's memoization, as Knossos and Porcupine do it.
//!
//! Owns the model (one register per key: writes set a value, reads return
//! the current one, `None` before the first write) and the search. Each
//! key is checked on its own, which is sound because operations on
//! different registers commute (linearizability is compositional). An
//! operation whose outcome is unknown (a timeout, a broken connection) may
//! take effect at any point after its invocation, or never; a failed one
//! never took effect and is left out. Values written are unique, so an
//! unknown write that no read ever returned is left out too: whether it
//! happened changes nothing any read saw, and keeping it would only make
//! the search exponential in the number of such writes.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Write(u64),
    /// A read; its completion carries the value seen.
    Read,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; for a read, the value it returned.
    Ok(Option<u64>),
    /// Refused: certainly not applied.
    Fail,
    /// No answer: applied or not, nobody knows.
    Unknown,
}

/// One operation of a history. Times are from one clock (nanoseconds
/// since the history began).
#[derive(Debug, Clone)]
pub struct Op {
    pub process: usize,
    pub key: String,
    pub call: Call,
    pub invoked: u64,
    /// `None` when the outcome is unknown.
    pub completed: Option<u64>,
    pub outcome: Outcome,
}

/// Why a history is not linearizable, or could not be checked: the key
/// and its operations.
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    pub ops: Vec<Op>,
    /// The search gave up after this many states without an answer.
    pub gave_up_after: Option<usize>,
}

/// Most search states explored per key before the checker gives up.
const MAX_STATES: usize = 2_000_000;

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.gave_up_after {
            Some(n) => writeln!(
                f,
                "key {:?} could not be checked in {n} search states; its operations:",
                self.key
            )?,
            None => writeln!(f, "key {:?} is not linearizable; its operations:", self.key)?,
        }
        for op in &self.ops {
            let end = op.completed.map_or("?".to_string(), |t| t.to_string());
            writeln!(
                f,
                "  p{} {:?} [{} .. {end}] -> {:?}",
                op.process, op.call, op.invoked, op.outcome
            )?;
        }
        Ok(())
    }
}

/// Checks every key of `history`; the first key that cannot be
/// linearized is returned.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    let seen: HashSet<(&str, u64)> = history
        .iter()
        .filter_map(|o| match (&o.call, &o.outcome) {
            (Call::Read, Outcome::Ok(Some(v))) => Some((o.key.as_str(), *v)),
            _ => None,
        })
        .collect();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.outcome != Outcome::Fail) {
        let keep = match (&op.call, &op.outcome) {
            // A read that did not answer observed nothing.
            (Call::Read, Outcome::Unknown) => false,
            (Call::Write(v), Outcome::Unknown) => seen.contains(&(op.key.as_str(), *v)),
            _ => true,
        };
        if keep {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    for (key, ops) in by_key {
        let verdict = linearizable(&ops);
        if verdict != Some(true) {
            return Err(Violation {
                key: key.to_string(),
                ops: ops.into_iter().cloned().collect(),
                gave_up_after: verdict.is_none().then_some(MAX_STATES),
            });
        }
    }
    Ok(())
}

/// A set of operation indexes, as bits.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The Wing–Gong search over one register's operations: repeatedly
/// linearize an operation that may go first (invoked before every pending
/// operation's completion) and agrees with the register; back up when
/// none does. Lowe's memoization skips (linearized set, value) states
/// already explored. An unknown operation completes "at infinity".
/// `None` when the search ran out of its state budget.
fn linearizable(ops: &[&Op]) -> Option<bool> {
    let n = ops.len();
    let end = |i: usize| ops[i].completed.unwrap_or(u64::MAX);
    // Candidates in invocation order, so the search tries likely orders first.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (ops[i].invoked, end(i)));
    let mut done = Bits::new(n);
    let mut seen: HashSet<(Bits, Option<u64>)> = HashSet::new();
    // The search stack: (operation linearized, value before it, position
    // in `order` to resume the next candidate scan from).
    let mut stack: Vec<(usize, Option<u64>, usize)> = Vec::new();
    let mut value: Option<u64> = None;
    let mut resume = 0usize;
    let mut linearized = 0usize;
    // Pending operations by completion: the first one bounds which may go next.
    let mut pending: BTreeSet<(u64, usize)> = (0..n).map(|i| (end(i), i)).collect();
    loop {
        if linearized == n {
            return Some(true);
        }
        if seen.len() > MAX_STATES {
            return None;
        }
        // The earliest completion among pending operations bounds which
        // of them may be linearized next.
        let horizon = pending.first().map_or(u64::MAX, |(t, _)| *t);
        let mut advanced = false;
        for (pos, &i) in order.iter().enumerate().skip(resume) {
            // In invocation order: none after this one may go next either.
            if ops[i].invoked > horizon {
                break;
            }
            if done.has(i) {
                continue;
            }
            let next = match (&ops[i].call, &ops[i].outcome) {
                (Call::Write(v), _) => Some(Some(*v)),
                (Call::Read, Outcome::Ok(seen_value)) if *seen_value == value => Some(value),
                _ => None,
            };
            let Some(next) = next else { continue };
            done.set(i);
            if seen.insert((done.clone(), next)) {
                pending.remove(&(end(i), i));
                stack.push((i, value, pos + 1));
                value = next;
                linearized += 1;
                resume = 0;
                advanced = true;
                break;
            }
            done.clear(i);
        }
        if !advanced {
            // Unknown writes may also never happen: once only they remain
            // pending, the history is complete without them.
            if (0..n).all(|i| done.has(i) || ops[i].completed.is_none()) {
                return Some(true);
            }
            let Some((i, before, next_pos)) = stack.pop() else {
                return Some(false);
            };
            done.clear(i);
            pending.insert((end(i), i));
            value = before;
            linearized -= 1;
            resume = next_pos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: usize, call: Call, invoked: u64, completed: Option<u64>, outcome: Outcome) -> Op {
        Op {
            process,
            key: "k".into(),
            call,
            invoked,
            completed,
            outcome,
        }
    }
    fn w(p: usize, v: u64, a: u64, b: u64) -> Op {
        op(p, Call::Write(v), a, Some(b), Outcome::Ok(None))
    }
    fn r(p: usize, v: Option<u64>, a: u64, b: u64) -> Op {
        op(p, Call::Read, a, Some(b), Outcome::Ok(v))
    }

    #[test]
    fn sequential_histories_are_linearizable_only_if_reads_see_the_last_write() {
        assert!(check(&[w(0, 1, 0, 1), r(1, Some(1), 2, 3), w(0, 2, 4, 5), r(1, Some(2), 6, 7)]).is_ok());
        assert!(check(&[r(1, None, 0, 1), w(0, 1, 2, 3)]).is_ok());
        // A read after an acknowledged write that misses it: the bug the
        // whole-cluster crash test looks for.
        assert!(check(&[w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, Some(1), 4, 5)]).is_err());
        assert!(check(&[w(0, 1, 0, 1), r(1, None, 2, 3)]).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: it may see the old or the new value.
        assert!(check(&[w(0, 1, 0, 1), w(0, 2, 2, 6), r(1, Some(1), 3, 4)]).is_ok());
        assert!(check(&[w(0, 1, 0, 1), w(0, 2, 2, 6), r(1, Some(2), 3, 4)]).is_ok());
        // Two reads that both overlap the write, the second after the
        // first: once the new value was seen, the old one may not be.
        assert!(check(&[w(0, 1, 0, 1), w(0, 2, 2, 9), r(1, Some(2), 3, 4), r(2, Some(1), 5, 6)]).is_err());
        assert!(check(&[w(0, 1, 0, 1), w(0, 2, 2, 9), r(1, Some(1), 3, 4), r(2, Some(2), 5, 6)]).is_ok());
    }

    #[test]
    fn unknown_writes_may_happen_late_or_never_and_failed_ones_never() {
        let unknown = op(0, Call::Write(2), 2, None, Outcome::Unknown);
        // Seen long after the writer gave up: fine.
        assert!(check(&[w(0, 1, 0, 1), unknown.clone(), r(1, Some(2), 10, 11)]).is_ok());
        // Never seen: fine too.
        assert!(check(&[w(0, 1, 0, 1), unknown.clone(), r(1, Some(1), 10, 11)]).is_ok());
        // But not seen before it was sent.
        assert!(check(&[w(0, 1, 0, 1), r(1, Some(2), 0, 1), unknown]).is_err());
        // Many unknown writes no read returned cost nothing to check.
        let mut h = vec![w(0, 1, 0, 1)];
        h.extend((0..200).map(|i| op(1, Call::Write(100 + i), 2 + i, None, Outcome::Unknown)));
        h.push(r(2, Some(1), 500, 501));
        assert!(check(&h).is_ok());
        let failed = op(0, Call::Write(3), 2, Some(3), Outcome::Fail);
        assert!(check(&[w(0, 1, 0, 1), failed, r(1, Some(3), 4, 5)]).is_err());
    }

    #[test]
    fn keys_are_checked_apart_and_the_violation_names_its_key() {
        let mut a = w(0, 1, 0, 1);
        a.key = "a".into();
        let mut b = r(1, Some(1), 2, 3);
        b.key = "b".into();
        let err = check(&[a, b]).expect_err("b was never written");
        assert_eq!(err.key, "b");
        assert!(err.to_string().contains("not linearizable"));
    }

    #[test]
    fn long_concurrent_histories_are_checked_quickly() {
        // 8 processes writing unique values and reading, overlapping in
        // windows: exponential without memoization.
        let mut h = Vec::new();
        let mut last = None;
        for i in 0..400u64 {
            let t = i * 10;
            h.push(w((i % 8) as usize, i + 1, t, t + 25));
            h.push(r(((i + 4) % 8) as usize, last, t + 1, t + 2));
            last = Some(i + 1);
        }
        // Each read sees the write before its own window began, which some
        // order allows; the search must find it.
        let started = std::time::Instant::now();
        assert!(check(&h).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
