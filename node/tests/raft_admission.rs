//! Raft messages a peer could forge: a vote with the largest term used to
//! panic every Raft core (and, persisted, again after every restart). Sent
//! here as raw gRPC calls with openraft's own types, as an attacker with
//! the source would build them.

use nas_proto::{raft_client::RaftClient, RaftBytes, WriteProbeRequest};
use nas_tests::{ok, TestCluster};
use openraft::raft::VoteRequest;
use openraft::{CommittedLeaderId, LogId, Vote};
use tonic::Code;

fn vote(term: u64, candidate: u64, last_log: Option<(u64, u64)>) -> RaftBytes {
    let last_log_id = last_log.map(|(term, index)| LogId::new(CommittedLeaderId::new(term, candidate), index));
    let req = VoteRequest::<u64>::new(Vote::new(term, candidate), last_log_id);
    RaftBytes {
        data: postcard::to_allocvec(&req).expect("encode"),
    }
}

async fn probe_write(c: &TestCluster, key: &str) -> anyhow::Result<()> {
    c.client()
        .write_probe(WriteProbeRequest {
            key: key.into(),
            value: vec![1],
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_votes_with_impossible_terms_are_refused_and_nothing_panics() -> anyhow::Result<()> {
    let mut c = TestCluster::up(3, &[])?;
    probe_write(&c, "before").await?;
    for node in &c.nodes {
        // From a CHN's own certificate: mutual TLS lets it in, the
        // admission checks must not.
        let mut raft = RaftClient::new(c.channel_as_chn(&node.name, "CHN1"));
        for forged in [
            vote(u64::MAX, 1, None),
            vote(u64::MAX - 1, 1, None),
            vote(5, 1, Some((u64::MAX, 3))),
            vote(5, 1, Some((4, u64::MAX))),
            vote(5, u64::MAX, None),
        ] {
            let err = raft.vote(forged).await.expect_err("a forged vote must be refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{}: {err:?}", node.name);
            assert!(
                err.message().contains("forged or corrupt") || err.message().contains("node id"),
                "{err:?}"
            );
        }
    }
    // CHN1's certificate cannot speak for CHN2.
    let mut raft = RaftClient::new(c.channel_as_chn("CHN3", "CHN1"));
    let err = raft.vote(vote(5, 2, None)).await.expect_err("an impostor's vote");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Every CHN still serves, and after a full stop and start too (nothing
    // poisoned was persisted).
    probe_write(&c, "after").await?;
    let dir = c.dir().display().to_string();
    ok(c.nasctl(&["cluster", "down", "--dir", &dir]));
    c.cluster_up(None, &[])?;
    probe_write(&c, "after-restart").await?;
    let logs = c.logs();
    assert!(!logs.contains("panicked"), "a CHN panicked:\n{logs}");
    let status = c.status("CHN1").await.expect("status");
    assert!(status.term < 1000, "the term ran away: {}", status.term);
    Ok(())
}
