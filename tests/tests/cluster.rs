//! The shared LU across real `nasd` processes: writes through every CHN,
//! leader loss, restarts, snapshot catch-up, membership changes.

use std::time::{Duration, Instant};

use ::nas_client::proto::*;
use nas_tests::{wait_until, TestCluster};
use tonic::Code;

fn probe(key: &str) -> WriteProbeRequest {
    WriteProbeRequest {
        key: key.into(),
        value: format!("v-{key}").into_bytes(),
    }
}

/// Writes `n` probes named `prefix-i` through any CHN and returns the
/// acknowledged keys.
async fn write_probes(client: &::nas_client::Cluster, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut acked = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i:03}");
        client.write_probe(probe(&id)).await?;
        acked.push(id);
    }
    Ok(acked)
}

async fn probe_keys(c: &TestCluster, chn: &str, local: bool) -> Vec<String> {
    let r = c
        .admin(chn)
        .list_probes(ListRequest { local })
        .await
        .expect("list probes");
    r.into_inner().probes.into_iter().map(|p| p.key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_chn_are_seen_by_every_chn() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    for n in &c.nodes {
        let r = c.admin(&n.name).write_probe(probe(&format!("via-{}", n.name))).await?;
        assert!(r.into_inner().log_index > 0);
    }
    // A table command through a follower is forwarded and applied once.
    let out = c.nasctl(&[
        "--cluster",
        &c.node("CHN3").addr,
        "array",
        "init",
        "--disks",
        "4",
        "--size",
        "8M",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in &c.nodes {
        let ids = probe_keys(&c, &n.name, false).await;
        assert_eq!(
            ids,
            ["via-CHN1", "via-CHN2", "via-CHN3"],
            "linearizable read on {}",
            n.name
        );
        let disks = c
            .admin(&n.name)
            .list_disks(ListRequest { local: false })
            .await?
            .into_inner();
        assert_eq!(disks.disks.len(), 4);
        assert!(!disks.possibly_stale);
    }
    let status = c.status("CHN2").await.expect("status");
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
    assert!(status.shared_lu.is_some_and(|s| s.initialized && s.backup_initialized));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_elects_a_new_leader_and_loses_nothing() -> anyhow::Result<()> {
    // No snapshot before the kill; after it, compaction forces the
    // restarted CHN to catch up by snapshot install.
    let c = TestCluster::up(3, &["--snapshot-threshold=150", "--keep-logs=0"])?;
    let client = c.client();
    let mut acked = write_probes(&client, "before", 20).await?;
    let old = c.leader_seen_by("CHN1", Duration::from_secs(5)).await?;
    let killed_at = Instant::now();
    c.kill9(&old);
    let survivor = c
        .nodes
        .iter()
        .find(|n| n.name != old)
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let new = wait_until("a new leader", Duration::from_secs(10), || async {
        c.status(&survivor)
            .await
            .filter(|s| s.leader_id != 0 && s.leader_name != old)
            .map(|s| s.leader_name)
    })
    .await?;
    let elected_in = killed_at.elapsed();
    eprintln!("new leader {new} elected {elected_in:?} after kill -9 of {old}");
    // Election timeout is 400-800 ms; allow for a loaded 2-core machine.
    assert!(elected_in < Duration::from_secs(5), "election took {elected_in:?}");

    acked.extend(write_probes(&client, "after", 200).await?);
    acked.sort();
    let mut seen = probe_keys(&c, &new, false).await;
    seen.sort();
    assert_eq!(seen, acked, "an acknowledged write is missing after failover");
    let snapshot_index = wait_until("the leader to compact its log", Duration::from_secs(10), || async {
        c.status(&new).await.map(|s| s.snapshot_index).filter(|i| *i > 0)
    })
    .await?;

    let mut c = c;
    c.cluster_up(None, &[])?;
    let back = wait_until("the restarted CHN to catch up", Duration::from_secs(20), || async {
        let s = c.status(&old).await?;
        let leader = c.status(&new).await?;
        (s.last_applied >= leader.last_applied && s.snapshot_index > 0).then_some(s)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    assert!(
        back.snapshot_index >= snapshot_index.min(back.last_applied),
        "catch-up did not go through a snapshot"
    );
    let mut local = probe_keys(&c, &old, true).await;
    local.sort();
    assert_eq!(local, acked, "the restarted CHN lacks acknowledged writes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_kill9_and_restart_keeps_every_acknowledged_write() -> anyhow::Result<()> {
    let mut c = TestCluster::up(3, &[])?;
    let client = c.client();
    let acked = write_probes(&client, "k", 50).await?;
    let lu = client
        .init_array(InitArrayRequest {
            disks: 3,
            disk_capacity_bytes: 1 << 20,
        })
        .await?;
    for n in c.nodes.clone() {
        c.kill9(&n.name);
    }
    c.cluster_up(None, &[])?;
    let mut seen = probe_keys(&c, "CHN2", false).await;
    seen.sort();
    assert_eq!(seen, acked);
    let status = c.status("CHN1").await.expect("status");
    assert!(status.last_applied >= lu.log_index);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chns_join_as_voters_and_can_be_removed() -> anyhow::Result<()> {
    // Compact early so that the new CHNs must start from a snapshot.
    let mut c = TestCluster::up(3, &["--snapshot-threshold=20", "--keep-logs=0"])?;
    write_probes(&c.client(), "early", 30).await?;
    let compacted = wait_until("the leader to compact its log", Duration::from_secs(10), || async {
        c.status("CHN1").await.map(|s| s.snapshot_index).filter(|i| *i > 0)
    })
    .await?;
    c.cluster_up(Some(5), &[])?;
    let status = c.status("CHN5").await.expect("status from CHN5");
    assert!(
        status.snapshot_index > 0,
        "CHN5 joined without a snapshot (leader compacted at {compacted})"
    );
    assert_eq!(
        probe_keys(&c, "CHN5", false).await.len(),
        30,
        "CHN5 lacks rows from before it joined"
    );
    let voters: Vec<_> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(voters, ["CHN1", "CHN2", "CHN3", "CHN4", "CHN5"]);
    let out = c.nasctl(&["--json", "chn", "list"]);
    let chns: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(chns.as_array().map(Vec::len), Some(5));
    assert!(chns.as_array().into_iter().flatten().all(|c| c["state"] == "INSTALLED"));

    // Remove CHN4 through another CHN; the request reaches the leader.
    let out = c.nasctl(&["--cluster", &c.node("CHN2").addr, "chn", "remove", "CHN4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = wait_until("CHN4 out of the membership", Duration::from_secs(10), || async {
        c.status("CHN1")
            .await
            .filter(|s| s.members.iter().all(|m| m.name != "CHN4"))
    })
    .await?;
    assert_eq!(status.members.len(), 4);
    let chns = c
        .admin("CHN3")
        .list_chns(ListRequest { local: false })
        .await?
        .into_inner()
        .chns;
    assert!(chns.iter().all(|d| d.chn != "CHN4"));
    // Removing it again is a precise NOT_FOUND.
    let err = c
        .admin("CHN1")
        .remove_chn(RemoveChnRequest { name: "CHN4".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    // The cluster still commits with CHN4 gone.
    c.admin("CHN5").write_probe(probe("after-remove")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_quorum_gives_unavailable_and_service_comes_back() -> anyhow::Result<()> {
    let mut c = TestCluster::up(3, &["--quorum-timeout-ms=1500"])?;
    c.admin("CHN1").write_probe(probe("before")).await?;
    c.kill9("CHN2");
    c.kill9("CHN3");
    let err = c.admin("CHN1").write_probe(probe("no-quorum")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    let err = c
        .admin("CHN1")
        .list_clients(ListRequest { local: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    // A stale local read still answers, and says so.
    let local = c
        .admin("CHN1")
        .list_clients(ListRequest { local: true })
        .await?
        .into_inner();
    assert!(local.possibly_stale);
    // The status answers without a quorum too, marked.
    let status = c.status("CHN1").await.expect("status without a quorum");
    assert!(status.possibly_stale, "a status no quorum confirmed must say so");
    c.cluster_up(None, &[])?;
    let status = c.status("CHN1").await.expect("status");
    assert!(!status.possibly_stale, "with the quorum back the status is current");
    c.client().write_probe(probe("after")).await?;
    let ids = probe_keys(&c, "CHN3", false).await;
    assert!(
        ids.contains(&"before".to_string()) && ids.contains(&"after".to_string()),
        "{ids:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_down_stops_cleanly_and_up_restarts_with_the_same_state() -> anyhow::Result<()> {
    let mut c = TestCluster::up(3, &[])?;
    let acked = write_probes(&c.client(), "kept", 10).await?;
    let dir = c.dir().display().to_string();
    let out = c.nasctl(&["cluster", "down", "--dir", &dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in &c.nodes {
        assert!(c.pid(&n.name).is_none(), "{} still runs after cluster down", n.name);
        let log = std::fs::read_to_string(c.dir().join(n.name.to_lowercase()).join("nasd.log"))?;
        assert!(
            log.contains("SIGTERM: shutting down") && log.contains("CHN stopped"),
            "{} did not stop cleanly:\n{log}",
            n.name
        );
    }
    let before: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    c.cluster_up(None, &[])?;
    let after: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    assert_eq!(before, after, "a restarted cluster keeps its addresses");
    let mut seen = probe_keys(&c, "CHN3", false).await;
    seen.sort();
    assert_eq!(seen, acked);
    Ok(())
}
