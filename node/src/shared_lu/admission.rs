//! Admission of Raft messages from the network: every vote, append and
//! snapshot a peer sends is checked here before openraft sees it.
//!
//! openraft trusts its peers: a term near `u64::MAX` makes its engine
//! panic (and, persisted as the vote, panic again after every restart),
//! and a log id past any real index poisons the log. Real terms grow by
//! one per election and indexes by one per entry, so bounds far above
//! anything a cluster reaches in millions of years separate a forged or
//! corrupt message from a real one.
//!
//! Owns those bounds and the check that a message claims to come from the
//! peer that sent it; it must never change a message or look at tables.

use openraft::{EntryPayload, LogId, Membership, Vote};

use super::TypeConfig;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

/// Terms at or above this are refused: an election every millisecond
/// would take nine thousand years to get here.
pub const MAX_TERM: u64 = 1 << 48;
/// Log indexes at or above this are refused.
pub const MAX_INDEX: u64 = 1 << 62;
/// Node ids at or above this are refused (node ids come from CHN names).
pub const MAX_NODE_ID: u64 = 1 << 32;

/// Why a Raft message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("term {0} is beyond any real term (limit {MAX_TERM}); the message is forged or corrupt")]
    Term(u64),
    #[error("log index {0} is beyond any real index (limit {MAX_INDEX}); the message is forged or corrupt")]
    Index(u64),
    #[error("node id {0} is beyond any real node id (limit {MAX_NODE_ID})")]
    NodeId(u64),
    #[error("the message claims to come from node {claimed} but its sender is node {sender}")]
    Impostor { claimed: u64, sender: u64 },
    #[error("log entries are out of order or do not follow the previous log id")]
    Disordered,
}

fn node(id: u64) -> Result<(), Refused> {
    if id >= MAX_NODE_ID {
        return Err(Refused::NodeId(id));
    }
    Ok(())
}

fn vote(v: &Vote<u64>, sender: Option<u64>) -> Result<(), Refused> {
    if v.leader_id.term >= MAX_TERM {
        return Err(Refused::Term(v.leader_id.term));
    }
    node(v.leader_id.node_id)?;
    match sender {
        Some(sender) if sender != v.leader_id.node_id => Err(Refused::Impostor {
            claimed: v.leader_id.node_id,
            sender,
        }),
        _ => Ok(()),
    }
}

fn log_id(id: &Option<LogId<u64>>) -> Result<(), Refused> {
    let Some(id) = id else { return Ok(()) };
    if id.leader_id.term >= MAX_TERM {
        return Err(Refused::Term(id.leader_id.term));
    }
    node(id.leader_id.node_id)?;
    if id.index >= MAX_INDEX {
        return Err(Refused::Index(id.index));
    }
    Ok(())
}

fn membership(m: &Membership<u64, super::ChnNode>) -> Result<(), Refused> {
    m.nodes().try_for_each(|(id, _)| node(*id))
}

/// Checks a vote request. `sender` is the node id the transport
/// authenticated (None when the transport cannot tell, as in plaintext
/// mode).
pub fn vote_request(r: &VoteRequest<u64>, sender: Option<u64>) -> Result<(), Refused> {
    vote(&r.vote, sender)?;
    log_id(&r.last_log_id)
}

/// Checks an append request: its vote, and that its entries are real log
/// ids in order after `prev_log_id`.
pub fn append_request(r: &AppendEntriesRequest<TypeConfig>, sender: Option<u64>) -> Result<(), Refused> {
    vote(&r.vote, sender)?;
    log_id(&r.prev_log_id)?;
    log_id(&r.leader_commit)?;
    let mut prev = r.prev_log_id.map(|l| l.index);
    for e in &r.entries {
        log_id(&Some(e.log_id))?;
        if e.log_id.leader_id.term > r.vote.leader_id.term {
            return Err(Refused::Term(e.log_id.leader_id.term));
        }
        if prev.is_some_and(|p| e.log_id.index != p + 1) || (prev.is_none() && e.log_id.index != 0) {
            return Err(Refused::Disordered);
        }
        prev = Some(e.log_id.index);
        if let EntryPayload::Membership(m) = &e.payload {
            membership(m)?;
        }
    }
    Ok(())
}

/// Checks a snapshot chunk's vote and metadata.
pub fn snapshot_request(r: &InstallSnapshotRequest<TypeConfig>, sender: Option<u64>) -> Result<(), Refused> {
    vote(&r.vote, sender)?;
    log_id(&r.meta.last_log_id)?;
    log_id(r.meta.last_membership.log_id())?;
    membership(r.meta.last_membership.membership())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn v(term: u64, node: u64) -> Vote<u64> {
        Vote::new(term, node)
    }

    #[test]
    fn terms_beyond_reach_are_refused() {
        let r = VoteRequest::new(v(u64::MAX, 1), None);
        assert_eq!(vote_request(&r, None), Err(Refused::Term(u64::MAX)));
        let r = VoteRequest::new(v(7, 1), Some(LogId::new(CommittedLeaderId::new(MAX_TERM, 1), 3)));
        assert_eq!(vote_request(&r, None), Err(Refused::Term(MAX_TERM)));
        assert_eq!(vote_request(&VoteRequest::new(v(7, 1), None), None), Ok(()));
    }

    #[test]
    fn a_sender_cannot_speak_for_another_node() {
        let r = VoteRequest::new(v(7, 2), None);
        assert_eq!(
            vote_request(&r, Some(3)),
            Err(Refused::Impostor { claimed: 2, sender: 3 })
        );
        assert_eq!(vote_request(&r, Some(2)), Ok(()));
    }

    #[test]
    fn appends_must_be_ordered_real_log_ids() {
        let entry = |term, index| openraft::Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        };
        let req = |entries| AppendEntriesRequest::<TypeConfig> {
            vote: v(5, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(4, 1), 9)),
            entries,
            leader_commit: None,
        };
        assert_eq!(append_request(&req(vec![entry(5, 10), entry(5, 11)]), Some(1)), Ok(()));
        assert_eq!(
            append_request(&req(vec![entry(5, 11)]), Some(1)),
            Err(Refused::Disordered)
        );
        assert_eq!(append_request(&req(vec![entry(6, 10)]), Some(1)), Err(Refused::Term(6)));
        assert_eq!(
            append_request(&req(vec![entry(5, 10)]), Some(2)),
            Err(Refused::Impostor { claimed: 1, sender: 2 })
        );
    }
}
