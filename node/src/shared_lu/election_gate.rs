//! Elections only when they can help: a pre-vote kept by the CHN itself.
//!
//! openraft 0.9 has no PreVote. A CHN cut off from the others would start
//! election after election, raising its term each time; when the link
//! comes back, the leader meets that higher term in a reply and steps
//! down, and the cluster stops for an election it did not need. So each
//! CHN probes the other voters' health services and lets openraft start an
//! election only while the leader it knows has stopped answering *and* a
//! majority of the voters (itself included) still answers. A CHN that is
//! cut off sees both stop at once and never campaigns; a CHN that outlives
//! its leader sees the others answer and campaigns as before.
//!
//! Owns the election switch of this CHN's Raft. It must never keep
//! elections off while a majority answers and no leader does.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use super::network::Peers;
use super::{NodeId, Raft};

/// How often every other voter is probed.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// A probe answered this long ago still counts as an answer.
const FRESH: Duration = Duration::from_millis(150);

/// Keeps `raft`'s elections switched on only while they can help. Runs
/// until the task is dropped.
pub async fn run(raft: Raft, peers: Peers, me: NodeId) {
    let mut answered: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut allowed = true;
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<(NodeId, String)> = membership
            .voter_ids()
            .filter(|id| *id != me)
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
            .collect();
        let probes = voters.iter().map(|(id, addr)| {
            let peers = peers.clone();
            async move { (*id, probe(&peers, addr).await) }
        });
        let now = Instant::now();
        for (id, ok) in futures::future::join_all(probes).await {
            if ok {
                answered.insert(id, now);
            }
        }
        let fresh = |id: &NodeId| answered.get(id).is_some_and(|t| now.duration_since(*t) <= FRESH);
        let reachable = 1 + voters.iter().filter(|(id, _)| fresh(id)).count();
        let majority = reachable * 2 > voters.len() + 1;
        let leader_gone = match m.current_leader {
            None => true,
            Some(l) if l == me => false,
            Some(l) => !fresh(&l),
        };
        let allow = majority && leader_gone || voters.is_empty();
        if allow != allowed {
            tracing::debug!(allow, reachable, voters = voters.len() + 1, "elections switched");
            raft.runtime_config().elect(allow);
            allowed = allow;
        }
    }
}

/// Whether the CHN at `addr` answers its health service within the
/// freshness window.
async fn probe(peers: &Peers, addr: &str) -> bool {
    let Ok(channel) = peers.channel(addr) else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest { service: String::new() });
    matches!(
        tokio::time::timeout(FRESH, check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}
