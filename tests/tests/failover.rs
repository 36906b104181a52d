//! Failover through real `nasd` processes, each case with writers that
//! record every acknowledged write and a checker that reads them back:
//! (a) kill -9 of the serving CHN, (b) of the Raft leader, also when it
//! serves, (c) SIGSTOP of the serving CHN past its lease, (e) many
//! kill/restart cycles in a row, (f) planned takeover, giveback and
//! automatic giveback, and a lost quorum. (d), a network partition, is in
//! `partition.rs`.
//!
//! After each fault: no acknowledged write lost, no call failed or applied
//! twice, the file handles opened before still work, the file locks of
//! live clients are still held, and nothing the fenced CHN might have
//! written shows (the RAID 5 parity scrub finds every stripe consistent).

use std::sync::Arc;
use std::time::Duration;

use ::nas_client::drill::{self, Writers};
use ::nas_client::proto::*;
use ::nas_client::NasClient;
use nas_tests::{ok, wait_until, TestCluster};
use tonic::Code;

const EXPORT: &str = "home";

/// The CHN serving the export, and its address.
async fn owner(c: &TestCluster) -> (String, String) {
    ::nas_client::nas::export_owner(&c.client(), EXPORT, false)
        .await
        .expect("export owner")
}

/// A planned move of the export, through any CHN.
async fn move_export(c: &TestCluster, to: &str) -> Result<MoveExportReply, tonic::Status> {
    c.client()
        .move_export(MoveExportRequest {
            export: EXPORT.into(),
            to: to.to_string(),
        })
        .await
}

/// Moves the export to `to` (if it is not there) and waits until served.
async fn serve_on(c: &TestCluster, to: &str) {
    if owner(c).await.0 != to {
        move_export(c, to).await.expect("move export");
    }
    assert_eq!(owner(c).await.0, to);
}

/// Moves the export to a CHN that does not lead Raft; returns (leader, it).
async fn serve_on_a_follower(c: &TestCluster) -> (String, &'static str) {
    let leader = c.leader_seen_by("CHN1", Duration::from_secs(10)).await.expect("leader");
    let target = ["CHN1", "CHN2", "CHN3"]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower");
    serve_on(c, target).await;
    (leader, target)
}

/// A session that holds an exclusive lock on /locked.
async fn locker(c: &TestCluster) -> NasClient {
    let l = c.nas("bob", EXPORT).await.expect("bob's session");
    l.create("/locked", 0o666, false, false).await.expect("create /locked");
    l.lock("/locked", false, Duration::ZERO).await.expect("lock");
    l
}

/// Whether `session` still holds the lock on /locked, in the tables.
async fn holds_lock(c: &TestCluster, session: &str) -> bool {
    let locks = c.client().list_locks(false).await.expect("lock tables");
    locks
        .file_locks
        .iter()
        .any(|l| l.export == EXPORT && l.path == "/locked" && l.holders.iter().any(|h| h.session == session))
}

/// Waits until the writers have `n` more acknowledgements (or an error,
/// which the caller's checks then report).
async fn more_writes(w: &Writers, n: usize) {
    let before = w.acked();
    wait_until("more acknowledged writes", Duration::from_secs(30), || async {
        (w.acked() >= before + n || !w.errors().is_empty()).then_some(())
    })
    .await
    .expect("writers going on");
}

/// What one drill measured.
struct Outcome {
    timeline: drill::Timeline,
    /// Fault to the first write acknowledged by another CHN, in ms.
    resumed_ms: u64,
    checked: usize,
}

/// Runs writers on `dir`, applies `fault` to the serving CHN once they are
/// going, waits until another CHN acknowledges writes, then checks every
/// acknowledged write. `after` runs once service has resumed (to undo a
/// pause, say) before the writers stop.
async fn drill(
    c: &TestCluster,
    client: &Arc<NasClient>,
    dir: &str,
    fault: impl FnOnce(&str),
    after: impl FnOnce(&str),
) -> Outcome {
    let (old, old_addr) = owner(c).await;
    let w = Writers::start(client.clone(), dir, 3).await.expect("writers");
    more_writes(&w, 30).await;
    let fault_ms = drill::now_ms();
    fault(&old);
    let watcher = c.client_without(&old);
    let timeline = drill::watch_failover(&watcher, EXPORT, &old, fault_ms, Duration::from_secs(30)).await;
    let resumed = wait_until(
        "a write acknowledged by the new owner",
        Duration::from_secs(30),
        || async { w.first_ack_elsewhere(fault_ms, &old_addr) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; errors so far: {:?}\n{}", w.errors(), c.logs()));
    after(&old);
    more_writes(&w, 30).await;
    let ledger = w.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "calls failed: {:?}\n{}",
        ledger.errors,
        c.logs()
    );
    let verdict = drill::check(client, dir, &ledger).await.expect("read back");
    assert!(verdict.lost.is_empty(), "acknowledged writes lost: {:?}", verdict.lost);
    assert!(verdict.checked >= 60, "only {} writes checked", verdict.checked);
    Outcome {
        timeline,
        resumed_ms: resumed.at_ms.saturating_sub(fault_ms),
        checked: verdict.checked,
    }
}

/// Every stripe of LU 1 (the export's RAID 5) is consistent.
fn scrub_clean(c: &TestCluster) {
    let out = ok(c.nasctl(&["--json", "lu", "scrub", "1"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("scrub json");
    let result = v["result"].as_str().unwrap_or_default().to_string();
    assert!(
        result.contains(" 0 with a damaged or inconsistent block"),
        "scrub: {result}"
    );
}

async fn three_chns(extra: &[&str]) -> (TestCluster, Arc<NasClient>) {
    let c = TestCluster::up(3, extra).expect("cluster up");
    c.with_exports();
    let client = Arc::new(c.nas("alice", EXPORT).await.expect("alice's session"));
    (c, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_the_serving_chn_under_load() {
    let (c, client) = three_chns(&[]).await;
    // The owner must not lead Raft here: (b) covers that.
    let (_, target) = serve_on_a_follower(&c).await;
    let lock = locker(&c).await;
    let o = drill(&c, &client, "/a", |chn| c.kill9(chn), |_| {}).await;
    let (new, _) = owner(&c).await;
    assert_ne!(new, target);
    assert!(o.timeline.taken_over_ms.is_some(), "no takeover recorded");
    assert!(holds_lock(&c, lock.client_id()).await, "bob's lock was lost");
    // Bob's session and lock work on the new owner: he can release it.
    lock.unlock("/locked").await.expect("unlock after failover");
    scrub_clean(&c);
    eprintln!(
        "kill owner: detected {:?} ms, taken over {:?} ms, resumed {} ms, {} writes checked",
        o.timeline.detected_ms, o.timeline.taken_over_ms, o.resumed_ms, o.checked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b_kill_the_raft_leader_alone_and_when_it_serves() {
    let (mut c, client) = three_chns(&[]).await;
    // The leader alone: the owner keeps the export (its lease renews with
    // the new leader), and the writers go on.
    let (leader, target) = serve_on_a_follower(&c).await;
    let w = Writers::start(client.clone(), "/b1", 2).await.expect("writers");
    more_writes(&w, 20).await;
    c.kill9(&leader);
    more_writes(&w, 40).await;
    let ledger = w.stop().await;
    assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
    let v = drill::check(&client, "/b1", &ledger).await.expect("check");
    assert!(v.lost.is_empty(), "{:?}", v.lost);
    c.cluster_up(None, &[]).expect("restart the old leader");

    // The leader serving the export: both roles move.
    let leader = c.leader_seen_by(target, Duration::from_secs(10)).await.expect("leader");
    serve_on(&c, &leader).await;
    let o = drill(&c, &client, "/b2", |chn| c.kill9(chn), |_| {}).await;
    assert_ne!(owner(&c).await.0, leader);
    eprintln!("kill leader+owner: {:?}, resumed {} ms", o.timeline, o.resumed_ms);
    scrub_clean(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_a_paused_owner_is_fenced_and_rejoins_as_standby() {
    let (c, client) = three_chns(&[]).await;
    let lock = locker(&c).await;
    let o = drill(
        &c,
        &client,
        "/c",
        |chn| c.signal(chn, libc::SIGSTOP),
        |chn| c.signal(chn, libc::SIGCONT),
    )
    .await;
    assert!(o.timeline.taken_over_ms.is_some());
    // The resumed CHN closed the LU it lost and serves nothing.
    let logs = std::fs::read_to_string(c.dir().join("chn1").join("nasd.log")).unwrap_or_default();
    wait_until("CHN1 to close the LU", Duration::from_secs(10), || async {
        let logs = std::fs::read_to_string(c.dir().join("chn1").join("nasd.log")).unwrap_or_default();
        logs.contains("LU lease lost").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {logs}"));
    let status = c
        .admin("CHN1")
        .failover_status(FailoverStatusRequest {})
        .await
        .expect("CHN1 answers again")
        .into_inner();
    let row = status
        .exports
        .iter()
        .find_map(|e| e.export.as_ref().filter(|e| e.name == EXPORT));
    assert_ne!(row.map(|e| e.owner_chn.as_str()), Some("CHN1"));
    assert!(holds_lock(&c, lock.client_id()).await, "bob's lock was lost");
    scrub_clean(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e_twenty_kill_restart_cycles_in_a_row() {
    let (mut c, client) = three_chns(&[]).await;
    let mut resumed = Vec::new();
    for cycle in 0..20 {
        let o = drill(&c, &client, &format!("/e{cycle}"), |chn| c.kill9(chn), |_| {}).await;
        resumed.push(o.resumed_ms);
        c.cluster_up(None, &[]).expect("restart the killed CHN");
    }
    resumed.sort_unstable();
    eprintln!("20 cycles: resumed after (ms, sorted) {resumed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f_planned_takeover_and_giveback_without_client_errors() {
    let (mut c, client) = three_chns(&["--giveback-after-s=1"]).await;
    let lock = locker(&c).await;
    let w = Writers::start(client.clone(), "/f", 3).await.expect("writers");
    more_writes(&w, 20).await;
    let took = move_export(&c, "CHN3").await.expect("takeover to CHN3");
    assert_eq!(took.export.map(|e| e.owner_chn), Some("CHN3".into()));
    more_writes(&w, 20).await;
    // Bad requests get precise answers.
    let e = move_export(&c, "CHN3").await.expect_err("already there");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let e = move_export(&c, "CHN9").await.expect_err("no such CHN");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    // Giveback (to the home CHN) through nasctl.
    let out = ok(c.nasctl(&["failover", "giveback", EXPORT]));
    assert!(out.contains("CHN1"), "{out}");
    more_writes(&w, 20).await;
    assert_eq!(owner(&c).await.0, "CHN1");
    // Automatic giveback: kill the home CHN, let it fail over, restart it.
    c.kill9("CHN1");
    wait_until("failover away from CHN1", Duration::from_secs(30), || async {
        (owner(&c).await.0 != "CHN1").then_some(())
    })
    .await
    .expect("failover");
    more_writes(&w, 20).await;
    c.cluster_up(None, &[]).expect("restart CHN1");
    wait_until("automatic giveback to CHN1", Duration::from_secs(30), || async {
        (owner(&c).await.0 == "CHN1").then_some(())
    })
    .await
    .expect("giveback");
    more_writes(&w, 20).await;
    let ledger = w.stop().await;
    assert!(ledger.errors.is_empty(), "client errors: {:?}", ledger.errors);
    let v = drill::check(&client, "/f", &ledger).await.expect("check");
    assert!(v.lost.is_empty(), "{:?}", v.lost);
    assert!(holds_lock(&c, lock.client_id()).await, "bob's lock was lost");
    let status = ok(c.nasctl(&["failover", "status"]));
    assert!(status.contains("automatic giveback"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_quorum_answers_unavailable_and_recovers_by_itself() {
    let (mut c, client) = three_chns(&[]).await;
    let f = client.create("/q", 0o644, false, true).await.expect("create");
    client.write(f.handle, 0, b"before").await.expect("write");
    let short = ::nas_client::nas::Options {
        retry_for: Duration::from_secs(3),
        ..Default::default()
    };
    let impatient = NasClient::connect(c.client(), "alice", "correct-horse", EXPORT, short)
        .await
        .expect("session");
    c.kill9("CHN2");
    c.kill9("CHN3");
    // Within its lease the owner may still serve; then it must stop.
    let e = wait_until("the owner to stop serving", Duration::from_secs(30), || async {
        impatient.write(f.handle, 0, b"during").await.err()
    })
    .await
    .expect("no quorum");
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    assert!(e.message().contains("quorum"), "{}", e.message());
    c.cluster_up(None, &[]).expect("restart CHN2 and CHN3");
    // The patient client gets through once the quorum is back.
    client
        .write(f.handle, 0, b"after!")
        .await
        .expect("write after recovery");
    let got = client.read(f.handle, 0, 64).await.expect("read");
    assert!(got == b"after!", "{:?}", String::from_utf8_lossy(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn g_a_stalled_write_stream_does_not_hold_up_a_planned_move() {
    use ::nas_client::proto::nas_client::NasClient as NasGrpc;
    let (c, client) = three_chns(&[]).await;
    let (owner_chn, _) = owner(&c).await;
    let f = client.create("/stalled", 0o644, true, false).await.expect("create");
    // A raw session on the owner that sends the start of a write and then
    // nothing, keeping the stream open.
    let mut g = NasGrpc::new(c.channel(&owner_chn));
    let s = g
        .open_session(OpenSessionRequest {
            user: "alice".into(),
            password: "correct-horse".into(),
            client_id: String::new(),
        })
        .await
        .expect("session")
        .into_inner();
    g.mount(MountRequest {
        token: s.token.clone(),
        export: EXPORT.into(),
    })
    .await
    .expect("mount");
    // Two pieces: the service applies a piece when the next one arrives.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for i in 0..2u64 {
        tx.send(WriteChunk {
            call: (i == 0).then(|| Call {
                token: s.token.clone(),
                seq: 1,
                acked: 0,
            }),
            handle: f.handle,
            offset: i << 20,
            data: vec![1u8; 1 << 20].into(),
            total: 0,
        })
        .await
        .expect("piece");
    }
    let stalled = tokio::spawn(async move { g.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    wait_until("the first piece applied", Duration::from_secs(10), || async {
        (client.stat("/stalled").await.ok()?.size > 0).then_some(())
    })
    .await
    .expect("piece");
    // The move cuts the stalled call off instead of waiting for it.
    let to = if owner_chn == "CHN2" { "CHN3" } else { "CHN2" };
    let moved = move_export(&c, to).await.expect("the move waits for no stalled client");
    assert_eq!(moved.export.map(|e| e.owner_chn), Some(to.into()));
    let cut = stalled.await.expect("join").expect_err("the stalled call was cut off");
    assert_eq!(cut.code(), Code::Unavailable, "{}", cut.message());
    drop(tx);
    // Nothing of it stayed, and the client goes on at the new owner.
    assert_eq!(client.stat("/stalled").await.expect("stat").size, 0);
    client
        .write(f.handle, 0, b"after the move")
        .await
        .expect("write after the move");
}
