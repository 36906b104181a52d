//! (d) A network partition: the serving CHN, in a network namespace of its
//! own (`cluster up --netns`), is cut off while `nasctl drill` writes. Its
//! partner takes over, clients follow, and when the link comes back the
//! cut-off CHN has closed the LU it lost and serves nothing: every
//! acknowledged write is read back, the locks of live clients are held,
//! and the RAID 5 parity scrub finds every stripe consistent.
//!
//! Needs root and iproute2, as CI has; it fails (not skips) without them.

use std::time::Duration;

use nas_tests::{ok, wait_until, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn d_a_partitioned_owner_is_fenced_and_service_moves() {
    let c = TestCluster::up_netns(3).expect("cluster up --netns (needs root and iproute2)");
    c.with_exports();
    let bob = c.nas("bob", "home").await.expect("bob's session");
    bob.create("/locked", 0o666, false, false).await.expect("create");
    bob.lock("/locked", false, Duration::ZERO).await.expect("lock");

    let v = c.drill("partition", &["--pause-ms", "2500"]).expect("drill");
    let report = v.to_string();
    assert_eq!(v["lost"], 0, "{report}");
    assert_eq!(v["errors"], 0, "{report}");
    let run = &v["runs"][0];
    assert_eq!(run["chn"], "CHN1", "{report}");
    assert!(run["new_owner"].as_str().is_some_and(|o| o != "CHN1"), "{report}");
    assert!(run["resumed_ms"].as_u64().is_some(), "{report}");
    assert!(v["checked"].as_u64().unwrap_or(0) >= 40, "{report}");

    // Back on the network, CHN1 knows it lost the LU and serves nothing.
    wait_until("CHN1 to close the LU it lost", Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(c.dir().join("chn1").join("nasd.log")).unwrap_or_default();
        log.contains("LU lease lost").then_some(())
    })
    .await
    .expect("CHN1 fenced");
    let exports = ok(c.nasctl(&["--json", "export", "list"]));
    assert!(!exports.contains("\"owner_chn\": \"CHN1\""), "{exports}");
    let locks = ok(c.nasctl(&["--json", "lock", "list"]));
    assert!(locks.contains(bob.client_id()), "bob's lock was lost: {locks}");
    let scrub = ok(c.nasctl(&["--json", "lu", "scrub", "1"]));
    assert!(scrub.contains(" 0 with a damaged or inconsistent block"), "{scrub}");
}

/// The file service's readiness as CHN `name` reports it: `Some(true)`
/// SERVING, `Some(false)` anything else, `None` when it does not answer.
async fn nas_ready(c: &TestCluster, name: &str) -> Option<bool> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let mut client = HealthClient::new(c.channel(name));
    let asked = client.check(HealthCheckRequest {
        service: "nas.v1.Nas".into(),
    });
    let reply = tokio::time::timeout(Duration::from_millis(500), asked)
        .await
        .ok()?
        .ok()?;
    Some(reply.into_inner().status == ServingStatus::Serving as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chn_cut_off_from_the_majority_is_not_ready_within_2_s_and_ready_again_after() -> anyhow::Result<()> {
    let c = TestCluster::up_netns(3)?;
    c.with_exports();
    // A session on each export: both are open on CHN1 before it is judged.
    for export in ["home", "small"] {
        c.nas("alice", export).await?.stat("/").await?;
    }
    for name in ["CHN1", "CHN3"] {
        wait_until(&format!("{name} to be ready"), Duration::from_secs(30), || async {
            (nas_ready(&c, name).await == Some(true)).then_some(())
        })
        .await?;
    }
    // `health --ready` says the same for both services, in one command.
    let addr = c.node("CHN1").addr.clone();
    ok(c.nasctl(&["health", "--ready", "--addr", &addr]));

    // CHN1 (owner of the exports) loses the majority; the test still reaches it.
    c.drop_packets("CHN1", "CHN2", true)?;
    c.drop_packets("CHN1", "CHN3", true)?;
    let cut = std::time::Instant::now();
    wait_until("CHN1 to turn NOT_SERVING", Duration::from_secs(10), || async {
        (nas_ready(&c, "CHN1").await == Some(false)).then_some(())
    })
    .await?;
    let took = cut.elapsed();
    eprintln!("CHN1 turned NOT_SERVING {took:?} after it lost the majority");
    assert!(took <= Duration::from_secs(2), "NOT_SERVING after {took:?}");
    let out = c.nasctl(&["health", "--ready", "--addr", &addr]);
    assert!(!out.status.success(), "--ready passed on a CHN without a quorum");
    // After 2 s without a majority CHN1 reports a lost quorum: its hook
    // would run now; the event log gets it once the majority is back.
    let log = c.dir().join("chn1").join("nasd.log");
    wait_until("CHN1 to see its quorum lost", Duration::from_secs(10), || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("quorum.lost")
            .then_some(())
    })
    .await?;
    // The majority elects a leader among itself and is ready again.
    wait_until(
        "CHN3, on the majority side, to be ready",
        Duration::from_secs(30),
        || async { (nas_ready(&c, "CHN3").await == Some(true)).then_some(()) },
    )
    .await?;

    c.drop_packets("CHN1", "CHN2", false)?;
    c.drop_packets("CHN1", "CHN3", false)?;
    wait_until("CHN1 to be ready again", Duration::from_secs(30), || async {
        c.nasctl(&["health", "--ready", "--addr", &addr])
            .status
            .success()
            .then_some(())
    })
    .await?;
    let events = wait_until("CHN1's quorum events in the log", Duration::from_secs(10), || async {
        let out = c.nasctl(&["--json", "events"]);
        let kinds: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["chn"] == "CHN1")
            .filter_map(|e| e["kind"].as_str().map(str::to_string))
            .collect();
        kinds.contains(&"quorum.regained".to_string()).then_some(kinds)
    })
    .await?;
    let lost = events.iter().position(|k| k == "quorum.lost");
    let regained = events.iter().position(|k| k == "quorum.regained");
    assert!(lost.is_some() && lost < regained, "{events:?}");
    Ok(())
}
