//! A Jepsen-style nemesis run against real `nasd` processes: clients write
//! and read registers (the shared LU's probe table) through random CHNs
//! while a nemesis kills, pauses and cuts off CHNs; the history is then
//! checked for linearizability.
//!
//! Owns the clients that record the history, the nemeses and the report.
//! Every random choice comes from one seed, printed with the report, so a
//! failing run can be replayed with `NEMESIS_SEED`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::nas_client::proto::{ListRequest, WriteProbeRequest};
use ::nas_client::AdminConn;
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::block_in_place;

use crate::linearizability::{self, Call, Op, Outcome};
use crate::TestCluster;

/// Registers the clients share: few, so that operations on one key overlap.
const KEYS: usize = 6;
/// How long a client waits for an answer before it records "unknown".
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// A fault the nemesis injects over and over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the Raft leader, restarted a moment later.
    KillLeader,
    /// kill -9 of one CHN that does not lead.
    KillMinority,
    /// kill -9 of every CHN right after a write was acknowledged; the
    /// followers restart first, the old leader 50 to 400 ms later.
    KillAll,
    /// SIGSTOP of the leader for 2 to 4 s.
    PauseLeader,
    /// The leader's link cut for 3 to 5 s (needs a `--netns` cluster).
    PartitionLeader,
    /// Every packet from the leader to one follower dropped for 3 to 5 s,
    /// the other way untouched (needs a `--netns` cluster).
    DropLeaderToFollower,
}

impl Fault {
    /// Whether the fault needs a `cluster up --netns` cluster.
    pub fn needs_netns(self) -> bool {
        matches!(self, Fault::PartitionLeader | Fault::DropLeaderToFollower)
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillMinority => "kill-minority",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::DropLeaderToFollower => "drop-leader-to-follower",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        [
            Fault::KillLeader,
            Fault::KillMinority,
            Fault::KillAll,
            Fault::PauseLeader,
            Fault::PartitionLeader,
            Fault::DropLeaderToFollower,
        ]
        .into_iter()
        .find(|f| f.name() == s)
    }
}

/// What a run did and found.
pub struct Report {
    pub fault: Fault,
    pub seed: u64,
    pub faults_injected: usize,
    pub ops: usize,
    pub acknowledged_writes: usize,
    pub unknown: usize,
    pub violation: Option<linearizability::Violation>,
    /// Final reads that differ between CHNs (each CHN's local copy against
    /// the final linearizable read), after the cluster settled.
    pub divergent: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: seed {}, {} faults, {} operations ({} acknowledged writes, {} unknown): {}",
            self.fault.name(),
            self.seed,
            self.faults_injected,
            self.ops,
            self.acknowledged_writes,
            self.unknown,
            match (&self.violation, self.divergent.is_empty()) {
                (None, true) => "linearizable, every CHN's copy equal".to_string(),
                (Some(v), _) => format!("NOT LINEARIZABLE\n{v}"),
                (None, false) => format!("copies differ: {:?}", self.divergent),
            }
        )
    }
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violation.is_none() && self.divergent.is_empty()
    }
}

/// The seed: `NEMESIS_SEED` when set (to replay a run), else random.
pub fn seed() -> u64 {
    std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// One client: writes unique values and reads every register, through a
/// CHN picked at random for each call, recording each call.
async fn client(
    process: usize,
    admins: Vec<AdminConn>,
    seed: u64,
    started: Instant,
    until: Instant,
    history: Arc<Mutex<Vec<Op>>>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ (process as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let now = || started.elapsed().as_nanos() as u64;
    let mut next_value = (process as u64 + 1) << 40;
    while Instant::now() < until {
        let mut admin = admins[rng.gen_range(0..admins.len())].clone();
        if rng.gen_bool(0.5) {
            next_value += 1;
            let key = format!("r{}", rng.gen_range(0..KEYS));
            let req = WriteProbeRequest {
                key: key.clone(),
                value: next_value.to_be_bytes().to_vec(),
            };
            let invoked = now();
            let outcome = match tokio::time::timeout(CALL_TIMEOUT, admin.write_probe(req)).await {
                Ok(Ok(_)) => Outcome::Ok(None),
                // Refused by the tables: certainly not applied. Anything
                // else (no quorum, a leader change, a timeout) may or may
                // not have been.
                Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => Outcome::Fail,
                _ => Outcome::Unknown,
            };
            let completed = (outcome != Outcome::Unknown).then(now);
            let op = Op {
                process,
                key,
                call: Call::Write(next_value),
                invoked,
                completed,
                outcome,
            };
            history.lock().unwrap_or_else(|p| p.into_inner()).push(op);
        } else {
            let invoked = now();
            let reply = tokio::time::timeout(CALL_TIMEOUT, admin.list_probes(ListRequest { local: false })).await;
            let completed = now();
            // A read that failed observed nothing: not recorded.
            let Ok(Ok(reply)) = reply else { continue };
            let probes = reply.into_inner().probes;
            let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
            for k in 0..KEYS {
                let key = format!("r{k}");
                let value = probes.iter().find(|p| p.key == key).and_then(|p| decode(&p.value));
                h.push(Op {
                    process,
                    key,
                    call: Call::Read,
                    invoked,
                    completed: Some(completed),
                    outcome: Outcome::Ok(value),
                });
            }
        }
    }
    Ok(())
}

fn decode(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Runs `clients` clients for `duration` while the nemesis injects `fault`
/// every few seconds, then heals everything, checks the history and
/// compares every CHN's copy with a final linearizable read.
pub async fn run(
    c: &mut TestCluster,
    fault: Fault,
    duration: Duration,
    clients: usize,
    seed: u64,
) -> anyhow::Result<Report> {
    let mut rng = StdRng::seed_from_u64(seed);
    let token = c.admin_token();
    let admins: Vec<AdminConn> = c.nodes.iter().map(|n| c.admin_with_token(&n.addr, &token)).collect();
    let history = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|p| tokio::spawn(client(p, admins.clone(), seed, started, until, history.clone())))
        .collect();
    let mut faults_injected = 0;
    // Let the clients get going before the first fault.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
    while Instant::now() + Duration::from_secs(2) < until {
        inject(c, fault, &mut rng)
            .await
            .with_context(|| format!("{} #{}", fault.name(), faults_injected + 1))?;
        faults_injected += 1;
        // Quiet time: the cluster must serve again before the next fault.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(800..2000))).await;
    }
    for t in tasks {
        t.await.context("client task")??;
    }
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    // The search is CPU work: off the runtime, so timers keep running.
    let (history, violation) = tokio::task::spawn_blocking(move || {
        let v = linearizability::check(&history).err();
        (history, v)
    })
    .await
    .context("checker task")?;
    let divergent = final_copies_agree(c).await?;
    Ok(Report {
        fault,
        seed,
        faults_injected,
        ops: history.len(),
        acknowledged_writes: history
            .iter()
            .filter(|o| matches!(o.call, Call::Write(_)) && o.outcome == Outcome::Ok(None))
            .count(),
        unknown: history.iter().filter(|o| o.outcome == Outcome::Unknown).count(),
        violation,
        divergent,
    })
}

/// The current leader's name, as the first CHN that answers sees it.
async fn leader(c: &TestCluster) -> anyhow::Result<String> {
    for n in &c.nodes {
        if let Ok(l) = c.leader_seen_by(&n.name, Duration::from_secs(10)).await {
            return Ok(l);
        }
    }
    bail!("no CHN sees a leader")
}

/// A CHN other than `leader`, picked with `rng`.
fn random_follower(c: &TestCluster, leader: &str, rng: &mut StdRng) -> String {
    let others: Vec<&str> = c
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != leader)
        .collect();
    others[rng.gen_range(0..others.len())].to_string()
}

async fn inject(c: &mut TestCluster, fault: Fault, rng: &mut StdRng) -> anyhow::Result<()> {
    let leader = leader(c).await?;
    // Starting, killing and cutting CHNs wait on processes: tell the
    // runtime (block_in_place), so that the clients keep running meanwhile.
    match fault {
        Fault::KillLeader => {
            block_in_place(|| c.kill9(&leader));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
            block_in_place(|| c.cluster_up(None, &[]))?;
        }
        Fault::KillMinority => {
            let victim = random_follower(c, &leader, rng);
            block_in_place(|| c.kill9(&victim));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
            block_in_place(|| c.cluster_up(None, &[]))?;
        }
        Fault::KillAll => {
            let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
            for n in &names {
                block_in_place(|| c.kill9(n));
            }
            // Followers first, the old leader a moment later: the restart
            // order that let a read miss an acknowledged write.
            block_in_place(|| c.start_only(&names.iter().filter(|n| **n != leader).cloned().collect::<Vec<_>>()))?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
            block_in_place(|| c.start_only(std::slice::from_ref(&leader)))?;
        }
        Fault::PauseLeader => {
            c.signal(&leader, libc::SIGSTOP);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..4000))).await;
            c.signal(&leader, libc::SIGCONT);
        }
        Fault::PartitionLeader => {
            block_in_place(|| c.cut(&leader, true))?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
            block_in_place(|| c.cut(&leader, false))?;
        }
        Fault::DropLeaderToFollower => {
            let victim = random_follower(c, &leader, rng);
            block_in_place(|| c.drop_packets(&leader, &victim, true))?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
            block_in_place(|| c.drop_packets(&leader, &victim, false))?;
        }
    }
    Ok(())
}

/// After the run: waits until every CHN's own copy of the probe table
/// equals a linearizable read made in the same round. Each round reads
/// the truth again: a write whose caller gave up (unknown) may still
/// commit after the run, from a queue on the CHN that was cut off, and
/// must then show on every copy. Returns the CHNs whose copy still
/// differs after 40 s, with how.
async fn final_copies_agree(c: &TestCluster) -> anyhow::Result<Vec<String>> {
    let last = std::sync::Mutex::new(vec!["no linearizable read answered".to_string()]);
    let agreed = crate::wait_until(
        "every CHN's copy to equal a linearizable read",
        Duration::from_secs(40),
        || async {
            let truth = c.client().list_probes(false).await.ok()?.probes;
            let mut divergent = Vec::new();
            for n in &c.nodes {
                match c.admin(&n.name).list_probes(ListRequest { local: true }).await {
                    Ok(r) => {
                        let mine = r.into_inner().probes;
                        if mine != truth {
                            let differing = truth.iter().filter(|p| !mine.contains(p)).count();
                            divergent.push(format!(
                                "{} ({} probes against {}, {differing} missing or older)",
                                n.name,
                                mine.len(),
                                truth.len()
                            ));
                        }
                    }
                    Err(s) => divergent.push(format!("{} (the local read failed: {s})", n.name)),
                }
            }
            let done = divergent.is_empty();
            *last.lock().unwrap_or_else(|p| p.into_inner()) = divergent;
            done.then_some(())
        },
    )
    .await;
    Ok(match agreed {
        Ok(()) => Vec::new(),
        Err(_) => last.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}
