//! Who belongs to the shared LU: bootstrapping the first CHN, adding a CHN
//! as a learner and promoting it, removing one.
//!
//! Owns every change of the Raft membership. It must never promote a CHN
//! that has not caught up, and never remove the last voter.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ChangeMembers;

use super::{ChnNode, Error, NodeId, SharedLu};

/// Longest a CHN may take to catch up as a learner before it is promoted.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a freshly bootstrapped group may take to elect this CHN.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(10);

fn failed(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Membership {
        what,
        reason: e.to_string(),
    }
}

impl SharedLu {
    /// Starts a new shared LU with this CHN as its only voter, and waits
    /// until it leads.
    pub async fn bootstrap(&self) -> Result<(), Error> {
        if self.is_initialized().await? {
            return Err(Error::AlreadyMember {
                name: self.name.clone(),
            });
        }
        let me = ChnNode {
            name: self.name.clone(),
            addr: self.addr.clone(),
        };
        self.raft
            .initialize(BTreeMap::from([(self.id, me)]))
            .await
            .map_err(|e| failed("bootstrapping", e))?;
        self.raft
            .wait(Some(BOOTSTRAP_TIMEOUT))
            .current_leader(self.id, "bootstrap")
            .await
            .map_err(|e| Error::Unavailable(format!("bootstrapped, but no leader yet: {e}; retry `chn list`")))?;
        Ok(())
    }

    /// Adds `node` as a learner, waits until it has caught up with the
    /// log, then makes it a voter. Runs on the leader.
    pub async fn add_voter(&self, id: NodeId, node: ChnNode) -> Result<(), Error> {
        tokio::time::timeout(CATCH_UP_TIMEOUT, self.raft.add_learner(id, node, true))
            .await
            .map_err(|_| Error::CatchUpTimeout {
                secs: CATCH_UP_TIMEOUT.as_secs(),
            })?
            .map_err(|e| failed("adding the learner", e))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| failed("promoting the learner to voter", e))?;
        Ok(())
    }

    /// Removes member `id` (a voter or a learner) and returns the log index
    /// of the change. Runs on the leader.
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, Error> {
        let (_, voters) = self.members();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(Error::LastVoter);
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let resp = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| failed("removal", e))?;
        Ok(resp.log_id.index)
    }
}
