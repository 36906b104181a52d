//! The queue side of a group-commit writer thread: what one write and one
//! sync will carry.
//!
//! Owns only the draining of a queue. It must never wait for more work
//! than is already queued once it holds one item: a group commit trades
//! nothing in latency for the batching it gets.

use std::sync::mpsc::Receiver;

/// Waits for the next item, then takes whatever else is already queued,
/// up to `max` in all. `None` once every sender is gone and the queue is
/// empty.
pub fn next_group<T>(queue: &Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = queue.recv().ok()?;
    let mut group = vec![first];
    group.extend(queue.try_iter().take(max.saturating_sub(1)));
    Some(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_takes_what_is_queued_up_to_the_cap_and_ends_with_the_senders() {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_group(&rx, 3), Some(vec![0, 1, 2]));
        assert_eq!(next_group(&rx, 3), Some(vec![3, 4]));
        drop(tx);
        assert_eq!(next_group(&rx, 3), None);
    }
}
