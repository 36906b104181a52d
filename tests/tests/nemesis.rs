//! The shared LU under faults, against real `nasd` processes: linearizable
//! reads after whole-cluster crashes, quiet rejoins after partitions, and a
//! short nemesis run per fault with every history checked for
//! linearizability (the long soak is `cargo bench --bench nemesis`).
//!
//! Every run prints its seed; `NEMESIS_SEED=N` replays it. The partition
//! tests need root and iproute2, as CI has; they fail (not skip) without.

use std::time::{Duration, Instant};

use nas_client::proto::{ListRequest, WriteProbeRequest};
use nas_tests::nemesis::{self, Fault};
use nas_tests::{wait_until, TestCluster};
use rand::{Rng, SeedableRng};

/// Reads `last` linearizably through `chn` in a tight loop until `until`,
/// returning every answer (the first ones after a restart matter most).
async fn read_loop(c: &TestCluster, chn: String, until: Instant) -> Vec<Option<Vec<u8>>> {
    let mut admin = c.admin(&chn);
    let mut seen = Vec::new();
    while Instant::now() < until {
        let read = tokio::time::timeout(
            Duration::from_millis(500),
            admin.list_probes(ListRequest { local: false }),
        )
        .await;
        match read {
            Ok(Ok(r)) => seen.push(
                r.into_inner()
                    .probes
                    .into_iter()
                    .find(|p| p.key == "last")
                    .map(|p| p.value),
            ),
            // Not up yet, or no quorum yet: a failed read observed nothing.
            _ => tokio::task::yield_now().await,
        }
    }
    seen
}

/// kill -9 of every CHN right after a write was acknowledged, followers
/// restarted first and the old leader 50 to 400 ms later (when it comes
/// back as leader in its old term, without an election): the first
/// linearizable read through every CHN must see that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_whole_cluster_crash_see_every_acknowledged_write() {
    let seed = nemesis::seed();
    eprintln!("seed {seed} (NEMESIS_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c = TestCluster::up(3, &[]).expect("cluster up");
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    for round in 0..8u64 {
        let leader = c
            .leader_seen_by("CHN1", Duration::from_secs(20))
            .await
            .expect("a leader");
        let value = (round + 1).to_be_bytes().to_vec();
        c.admin(&leader)
            .write_probe(WriteProbeRequest {
                key: "last".into(),
                value: value.clone(),
            })
            .await
            .expect("write through the leader");
        for n in &names {
            c.kill9(n);
        }
        let followers: Vec<String> = names.iter().filter(|n| **n != leader).cloned().collect();
        // Readers on every CHN from the moment the first CHN restarts.
        let until = Instant::now() + Duration::from_millis(2500);
        let readers = futures::future::join_all(names.iter().map(|n| read_loop(&c, n.clone(), until)));
        let restart = async {
            c.start_only(&followers).expect("restart the followers");
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
            c.start_only(std::slice::from_ref(&leader))
                .expect("restart the old leader");
        };
        let (reads, ()) = tokio::join!(readers, restart);
        for (chn, seen) in names.iter().zip(reads) {
            assert!(
                !seen.is_empty(),
                "round {round}: no read through {chn} answered within 2.5 s\n{}",
                c.logs()
            );
            let stale = seen.iter().filter(|v| v.as_deref() != Some(value.as_slice())).count();
            assert_eq!(
                stale,
                0,
                "round {round}: {stale} of {} linearizable reads through {chn} missed the write acknowledged \
                 before the crash (leader was {leader}; seed {seed})\n{}",
                seen.len(),
                c.logs()
            );
        }
    }
}

/// A follower cut off the network for 3 s and put back: the leader stays
/// leader in the same term, and the follower serves linearizable reads
/// again within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_a_partition_rejoins_fast_without_an_election() {
    let c = TestCluster::up_netns(3).expect("cluster up --netns (needs root and iproute2)");
    let leader = c
        .leader_seen_by("CHN1", Duration::from_secs(20))
        .await
        .expect("a leader");
    let follower = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader)
        .expect("a follower");
    let term = c.status(&leader).await.expect("leader status").term;
    for round in 0..2 {
        c.cut(&follower, true).expect("cut");
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.cut(&follower, false).expect("heal");
        let healed = Instant::now();
        wait_until(
            &format!("{follower} to serve a linearizable read"),
            Duration::from_secs(10),
            || async { c.admin(&follower).list_probes(ListRequest { local: false }).await.ok() },
        )
        .await
        .expect("the follower serves again");
        let rejoined = healed.elapsed();
        let after = c.status(&leader).await.expect("leader status");
        assert_eq!(after.leader_name, leader, "round {round}: the leader changed");
        assert_eq!(
            after.term, term,
            "round {round}: the term rose from {term} to {}",
            after.term
        );
        assert!(
            rejoined < Duration::from_secs(1),
            "round {round}: {follower} served again only {} ms after the link came back",
            rejoined.as_millis()
        );
        eprintln!(
            "round {round}: {follower} served again {} ms after the heal, term {term}",
            rejoined.as_millis()
        );
    }
}

async fn nemesis_run(c: &mut TestCluster, fault: Fault) {
    let seed = nemesis::seed();
    let report = nemesis::run(c, fault, Duration::from_secs(14), 6, seed)
        .await
        .unwrap_or_else(|e| panic!("{} run (seed {seed}) failed: {e:#}\n{}", fault.name(), c.logs()));
    eprintln!("{report}");
    assert!(report.passed(), "{report}\n{}", c.logs());
    assert!(report.faults_injected >= 2, "{report}");
    assert!(
        report.acknowledged_writes >= 50,
        "too few writes to mean anything: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_kill_the_leader() {
    let mut c = TestCluster::up(3, &[]).expect("cluster up");
    nemesis_run(&mut c, Fault::KillLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_kill_a_minority() {
    let mut c = TestCluster::up(3, &[]).expect("cluster up");
    nemesis_run(&mut c, Fault::KillMinority).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_kill_every_chn() {
    let mut c = TestCluster::up(3, &[]).expect("cluster up");
    nemesis_run(&mut c, Fault::KillAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_pause_the_leader() {
    let mut c = TestCluster::up(3, &[]).expect("cluster up");
    nemesis_run(&mut c, Fault::PauseLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_partition_the_leader() {
    let mut c = TestCluster::up_netns(3).expect("cluster up --netns (needs root and iproute2)");
    nemesis_run(&mut c, Fault::PartitionLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_drop_the_leaders_packets_to_a_follower() {
    let mut c = TestCluster::up_netns(3).expect("cluster up --netns (needs root and iproute2)");
    nemesis_run(&mut c, Fault::DropLeaderToFollower).await;
}

/// The same on a one-CHN cluster: kill -9 right after an acknowledged
/// write, restart, and the very first linearizable read must see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_a_restart_sees_the_last_acknowledged_write() {
    let c = TestCluster::up(1, &[]).expect("cluster up");
    for round in 0..5u64 {
        let value = (round + 1).to_be_bytes().to_vec();
        c.admin("CHN1")
            .write_probe(WriteProbeRequest {
                key: "last".into(),
                value: value.clone(),
            })
            .await
            .expect("write");
        c.kill9("CHN1");
        c.start_only(&["CHN1".to_string()]).expect("restart");
        let seen = loop {
            // No pause between attempts: the first read that answers counts.
            if let Ok(r) = c.admin("CHN1").list_probes(ListRequest { local: false }).await {
                break r
                    .into_inner()
                    .probes
                    .into_iter()
                    .find(|p| p.key == "last")
                    .map(|p| p.value);
            }
        };
        assert_eq!(
            seen.as_deref(),
            Some(value.as_slice()),
            "round {round}: the first linearizable read after the restart missed the last acknowledged write\n{}",
            c.logs()
        );
    }
}
