//! What the status page shows, read at once from this CHN's Raft state
//! and its copy of the tables, so that one rendering is one consistent
//! picture. It must never wait for the network.

use nas_proto::{Daemon, Disk, Event, Export, Lu, LuLock, PartnerHealth};

use super::Web;
use crate::rt::now_ms;

/// Events the page lists.
const LAST_EVENTS: usize = 15;

pub struct Member {
    pub daemon: Daemon,
    pub health: PartnerHealth,
    pub leader: bool,
    pub voter: bool,
}

pub struct ExportView {
    pub export: Export,
    pub lock: Option<LuLock>,
}

pub struct View {
    /// The CHN answering.
    pub me: String,
    pub leader: Option<String>,
    pub term: u64,
    pub applied: u64,
    /// Why this CHN does not reach a majority now (readiness's judgment),
    /// or `None` when it does.
    pub no_quorum: Option<String>,
    pub members: Vec<Member>,
    pub disks: Vec<Disk>,
    pub lus: Vec<Lu>,
    pub exports: Vec<ExportView>,
    pub sessions: usize,
    pub locks: usize,
    pub events: Vec<Event>,
    pub now_ms: u64,
}

pub fn gather(web: &Web) -> View {
    let m = web.lu.raft.metrics().borrow().clone();
    let leader = web.lu.leader().map(|(_, n)| n.name);
    let (_, voters) = web.lu.members();
    let monitor = web.failover.monitor();
    let no_quorum = web.readiness.borrow().admin.clone();
    web.lu.read(|t| {
        let members = t
            .daemons
            .values()
            .map(|d| Member {
                health: monitor.health(t, &d.chn),
                leader: leader.as_deref() == Some(d.chn.as_str()),
                voter: voters.contains(&d.node_id),
                daemon: d.clone(),
            })
            .collect();
        let exports = t
            .exports
            .values()
            .map(|e| ExportView {
                lock: t.lu_locks.get(&e.lu).cloned(),
                export: e.clone(),
            })
            .collect();
        View {
            me: web.lu.name.clone(),
            leader: leader.clone(),
            term: m.current_term,
            applied: m.last_applied.map_or(0, |l| l.index),
            no_quorum,
            members,
            disks: t.disks.values().cloned().collect(),
            lus: t.lus.values().cloned().collect(),
            exports,
            sessions: t.clients.len(),
            locks: t.file_locks.values().map(|l| l.holders.len()).sum(),
            events: t.events.values().rev().take(LAST_EVENTS).cloned().collect(),
            now_ms: now_ms(),
        }
    })
}
