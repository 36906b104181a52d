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
