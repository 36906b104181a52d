//! Security, tried from outside as an attacker would: raw gRPC calls built
//! here from the method names in the published descriptor, not through
//! the project's client. Every Admin call needs a credential and a role;
//! tokens cannot be forged or outlive their user's password; a session's
//! stored replies never reach another session; a flood of wrong passwords
//! is throttled without slowing a legitimate operator.

use std::str::FromStr;
use std::time::{Duration, Instant};

use ::nas_client::proto::command;
use ::nas_client::proto::nas_client::NasClient as NasGrpc;
use ::nas_client::proto::*;
use nas_tests::{ok, wait_until, TestCluster, ADMIN_PASSWORD, ADMIN_USER};
use prost::Message;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Every method of the Admin service, from the descriptor clients get.
fn admin_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(nas_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    set.file
        .iter()
        .flat_map(|f| &f.service)
        .filter(|s| s.name.as_deref() == Some("Admin"))
        .flat_map(|s| &s.method)
        .filter_map(|m| m.name.clone())
        .collect()
}

/// Calls `/nas.v1.Admin/METHOD` with an empty request and `authorization`.
async fn raw_admin(ch: &Channel, method: &str, authorization: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let mut req = tonic::Request::new(());
    if let Some(a) = authorization {
        req.metadata_mut()
            .insert("authorization", a.parse().expect("ascii credential"));
    }
    let path = PathAndQuery::from_str(&format!("/nas.v1.Admin/{method}")).expect("path");
    grpc.unary(req, path, tonic_prost::ProstCodec::<(), ()>::default())
        .await
        .map(|_| ())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

const OPEN: [&str; 4] = ["NodeInfo", "Login", "Bootstrap", "RestoreSharedLu"];
const VIEWER: [&str; 16] = [
    "ClusterStatus",
    "ListPaths",
    "ListChns",
    "ListDisks",
    "ListLus",
    "ListUsers",
    "ListExports",
    "ListClients",
    "ListLocks",
    "FailoverStatus",
    "ListProbes",
    "ListEvents",
    "SharedLuBackupStatus",
    "ListSnapshots",
    "CheckExport",
    "ListBackups",
];

/// A legitimate login: waits out the throttle that earlier wrong
/// passwords from this address set off.
async fn login_patiently(ch: &Channel, user: &str, password: &str, ttl_s: u64) -> anyhow::Result<LoginReply> {
    let reply = wait_until("the login throttle to let us in", Duration::from_secs(90), || async {
        match login(ch, user, password, ttl_s).await {
            Err(s) if s.code() == Code::ResourceExhausted => None,
            r => Some(r),
        }
    })
    .await?;
    Ok(reply?)
}

async fn login(ch: &Channel, user: &str, password: &str, ttl_s: u64) -> Result<LoginReply, Status> {
    let mut a = admin_client::AdminClient::new(ch.clone());
    a.login(LoginRequest {
        user: user.into(),
        password: password.into(),
        ttl_s,
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_a_credential_and_the_role_for_them() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    let ch = c.channel("CHN2");
    let methods = admin_methods();
    assert!(methods.len() > 30, "{methods:?}");
    assert!(
        !methods.contains(&"UpsertClient".to_string()),
        "UpsertClient must be gone"
    );

    // No credential, a garbage one, a wrong password: nothing but the open calls.
    for m in methods.iter().filter(|m| !OPEN.contains(&m.as_str())) {
        for auth in [
            None,
            Some("Bearer nope"),
            Some("Basic !!!"),
            Some(basic(ADMIN_USER, "wrong-password").as_str()),
        ] {
            let err = raw_admin(&ch, m, auth)
                .await
                .expect_err(&format!("{m} answered with {auth:?}"));
            assert!(
                matches!(err.code(), Code::Unauthenticated | Code::ResourceExhausted),
                "{m} with {auth:?}: {err:?}"
            );
        }
    }

    // A file-service user has no Admin role; a viewer may only look.
    ok(c.nasctl_as(&["user", "add", "victor"], &[("NAS_ADMIN_PASSWORD", ADMIN_PASSWORD)]));
    let plain = login_patiently(&ch, "victor", "correct-horse", 0).await?;
    assert_eq!(plain.role, Role::None as i32);
    let err = raw_admin(&ch, "ListUsers", Some(&format!("Bearer {}", plain.token)))
        .await
        .expect_err("a user without a role lists nothing");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    ok(c.nasctl(&["role", "grant", "victor", "viewer"]));
    let viewer = format!(
        "Bearer {}",
        login_patiently(&ch, "victor", "correct-horse", 0).await?.token
    );
    for m in &methods {
        // A busy machine may make a linearizable read wait past its
        // deadline: that is UNAVAILABLE, retried; a refusal is not.
        let r = wait_until(&format!("{m} to answer"), Duration::from_secs(20), || async {
            match raw_admin(&ch, m, Some(&viewer)).await {
                Err(s) if s.code() == Code::Unavailable => None,
                r => Some(r),
            }
        })
        .await?;
        if VIEWER.contains(&m.as_str()) {
            // Past the gate: an empty request may still name nothing
            // (no export ""), which is not a refusal.
            let refused = r
                .as_ref()
                .is_err_and(|e| matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated));
            assert!(!refused, "a viewer may call {m}: {r:?}");
        } else if !OPEN.contains(&m.as_str()) {
            let err = r.expect_err(&format!("a viewer called {m}"));
            assert_eq!(err.code(), Code::PermissionDenied, "{m}: {err:?}");
            assert!(err.message().contains("role"), "{m}: {err:?}");
        }
    }
    // Nothing the refused calls asked for happened.
    let users = c.client().list_users(false).await?.users;
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(c.client().list_disks(false).await?.disks.is_empty());

    // An operator may fail a disk but not read raw LU bytes or add users.
    ok(c.nasctl(&["role", "grant", "victor", "operator"]));
    let op = format!(
        "Bearer {}",
        login_patiently(&ch, "victor", "correct-horse", 0).await?.token
    );
    let err = raw_admin(&ch, "ReadLu", Some(&op))
        .await
        .expect_err("ReadLu needs admin");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = raw_admin(&ch, "AddUser", Some(&op))
        .await
        .expect_err("AddUser needs admin");
    assert_eq!(err.code(), Code::PermissionDenied);
    // The role is read at every call: revoking it ends its power, with the
    // same token, as soon as the CHN has applied the change (a follower
    // may take a moment).
    ok(c.nasctl(&["role", "revoke", "victor"]));
    let err = wait_until("the revoke to reach CHN2", Duration::from_secs(5), || async {
        raw_admin(&ch, "ListUsers", Some(&op)).await.err()
    })
    .await?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The last admin cannot lose the role.
    let out = c.nasctl(&["role", "revoke", ADMIN_USER]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last admin"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_cannot_be_forged_tampered_with_or_outlive_their_time() -> anyhow::Result<()> {
    let c = TestCluster::up(1, &[])?;
    let ch = c.channel("CHN1");
    let good = login(&ch, ADMIN_USER, ADMIN_PASSWORD, 0).await?.token;
    raw_admin(&ch, "ListUsers", Some(&format!("Bearer {good}"))).await?;
    let parts: Vec<&str> = good.split(':').collect();
    assert_eq!(parts.len(), 4, "{good}");
    let forged = [
        // Another user's name under the admin's MAC.
        format!("{}:victor:{}:{}", parts[0], parts[2], parts[3]),
        // A later expiry.
        format!("{}:{}:{}:{}", parts[0], parts[1], u64::MAX / 2, parts[3]),
        // A flipped MAC digit.
        format!(
            "{}:{}:{}:{}{}",
            parts[0],
            parts[1],
            parts[2],
            if parts[3].starts_with('0') { '1' } else { '0' },
            &parts[3][1..]
        ),
        // A MAC made with a key of the attacker's choosing.
        format!("{}:{}:{}:{}", parts[0], parts[1], parts[2], "00".repeat(32)),
    ];
    for f in &forged {
        let err = raw_admin(&ch, "ListUsers", Some(&format!("Bearer {f}")))
            .await
            .expect_err(&format!("forged token {f} accepted"));
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // A token ends at its expiry.
    let short = login(&ch, ADMIN_USER, ADMIN_PASSWORD, 1).await?.token;
    let short = format!("Bearer {short}");
    raw_admin(&ch, "ListUsers", Some(&short)).await?;
    let err = wait_until("the one-second token to expire", Duration::from_secs(10), || async {
        raw_admin(&ch, "ListUsers", Some(&short)).await.err()
    })
    .await?;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");
    // The cluster status never carries the key that signs tokens.
    let status = c.status("CHN1").await.expect("status");
    let info = status.shared_lu.unwrap_or_default();
    assert!(info.token_key.is_empty() && info.handle_key.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_client_id_reused_by_another_user_sees_none_of_its_replies() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &["--session-lease-ms=1500"])?;
    c.with_exports();
    let ch = c.channel("CHN1");
    let open = |user: &str| OpenSessionRequest {
        user: user.into(),
        password: "correct-horse".into(),
        client_id: "shared-id".into(),
    };
    let mut g = NasGrpc::new(ch.clone());
    let alice = g.open_session(open("alice")).await?.into_inner().token;
    g.mount(MountRequest {
        token: alice.clone(),
        export: "home".into(),
    })
    .await?;
    let call = |token: &str| {
        Some(Call {
            token: token.into(),
            seq: 1,
            acked: 0,
        })
    };
    let first = g
        .mkdir(MkdirRequest {
            call: call(&alice),
            path: "/alice-private".into(),
            mode: 0o700,
        })
        .await?
        .into_inner();
    assert_eq!(first.name, "alice-private");
    // Alice goes away; her session lapses with its lease.
    wait_until("alice's session to lapse", Duration::from_secs(30), || async {
        let clients = c.client().list_clients(false).await.ok()?.clients;
        (!clients.iter().any(|cl| cl.client_id == "shared-id")).then_some(())
    })
    .await?;
    // Bob takes the same client id and sends the same sequence number.
    let bob = g.open_session(open("bob")).await?.into_inner().token;
    g.mount(MountRequest {
        token: bob.clone(),
        export: "home".into(),
    })
    .await?;
    let second = g
        .mkdir(MkdirRequest {
            call: call(&bob),
            path: "/bob-dir".into(),
            mode: 0o755,
        })
        .await?
        .into_inner();
    assert_eq!(second.name, "bob-dir", "bob got alice's stored reply: {second:?}");
    assert_eq!(second.owner, "bob");
    // The session secret is kept only as a hash.
    let clients = c.client().list_clients(false).await?.clients;
    assert!(clients.iter().all(|cl| cl.session.is_empty()));
    Ok(())
}

/// p99 of `n` probe writes in a row through `admin`.
async fn p99_of_writes(admin: &mut ::nas_client::AdminConn, n: usize) -> anyhow::Result<Duration> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        admin
            .write_probe(WriteProbeRequest {
                key: format!("p{}", i % 10),
                value: vec![b'x'; 100],
            })
            .await?;
        lat.push(t0.elapsed());
    }
    lat.sort();
    Ok(lat[(n * 99).div_ceil(100) - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_throttled_and_the_operator_goes_on() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    let leader = c.leader_seen_by("CHN1", Duration::from_secs(10)).await?;
    let addr = c.node(&leader).addr.clone();
    let token = c.admin_token();
    let mut operator = c.admin_with_token(&addr, &token);
    p99_of_writes(&mut operator, 50).await?;
    let idle = p99_of_writes(&mut operator, 300).await?;

    let ch = c.channel(&leader);
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let attempts: Vec<_> = (0..1000)
            .map(|i| {
                let ch = ch.clone();
                async move {
                    let user = if i % 2 == 0 {
                        ADMIN_USER.to_string()
                    } else {
                        format!("guess{i}")
                    };
                    login(&ch, &user, &format!("wrong-{i}"), 0).await
                }
            })
            .collect();
        let results = futures::future::join_all(attempts).await;
        (results, started.elapsed())
    });
    let during = p99_of_writes(&mut operator, 300).await?;
    let (results, took) = flood.await?;
    let throttled = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert!(results.iter().all(|r| r.is_err()), "a wrong password logged in");
    assert!(throttled >= 900, "only {throttled} of 1000 wrong logins were throttled");
    let refused = results
        .iter()
        .find_map(|r| r.as_ref().err().filter(|s| s.code() == Code::ResourceExhausted))
        .expect("a throttled attempt");
    assert!(refused.message().contains("retry in"), "{refused:?}");
    eprintln!(
        "login flood: {throttled}/1000 throttled in {took:?}; operator p99 idle {idle:?}, during the flood {during:?}"
    );
    assert!(
        during < idle * 3,
        "the operator's p99 went from {idle:?} to {during:?} under the flood"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_chns_of_this_cluster_reach_the_raft_service() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    let addr = c.node("CHN2").addr.clone();
    let vote = || RaftBytes { data: vec![0xff; 7] };
    let forward = || Command {
        kind: Some(command::Kind::ExpireClients(ExpireClients { now_ms: u64::MAX })),
    };

    // Plaintext to a TLS port gets nowhere.
    let plain = ::nas_client::Transport::Insecure.endpoint(&addr)?.connect_lazy();
    let err = admin_client::AdminClient::new(plain)
        .node_info(NodeInfoRequest {})
        .await
        .expect_err("plaintext must fail");
    assert!(
        ::nas_client::broken_connection(&err)
            || matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Internal),
        "plaintext got an answer: {err:?}"
    );

    // A client without a certificate: the file and Admin services answer,
    // the Raft service does not.
    let mut raft = raft_client::RaftClient::new(c.channel("CHN2"));
    for err in [
        raft.vote(vote()).await.expect_err("vote"),
        raft.install_snapshot(vote()).await.expect_err("snapshot"),
        raft.forward(forward()).await.expect_err("forward"),
        raft.read_index(ReadIndexRequest {}).await.expect_err("read index"),
        raft.append_entries(tokio_stream::iter([vote()]))
            .await
            .expect_err("append"),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }

    // A certificate this cluster's CA signed for a CHN that is not installed.
    let certs = ::nas_client::pki::CertDir::new(c.dir().join("tls"));
    certs.ensure_chn("CHN9", &[])?;
    let chn9 = ::nas_client::Transport::Tls(certs.chn_tls_files("CHN9")?)
        .endpoint(&addr)?
        .connect_lazy();
    let err = raft_client::RaftClient::new(chn9)
        .forward(forward())
        .await
        .expect_err("a CHN that is not installed");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("no installed CHN"), "{err:?}");

    // A CHN certificate from another CA does not even connect.
    let other = tempfile::tempdir()?;
    let foreign = ::nas_client::pki::CertDir::new(other.path());
    foreign.ensure_ca()?;
    foreign.ensure_chn("CHN1", &[])?;
    let mut files = foreign.chn_tls_files("CHN1")?;
    files.ca = std::fs::read(c.ca_file())?;
    let impostor = ::nas_client::Transport::Tls(files).endpoint(&addr)?.connect_lazy();
    let err = raft_client::RaftClient::new(impostor)
        .forward(forward())
        .await
        .expect_err("another CA's certificate");
    assert_ne!(err.code(), Code::Ok);
    assert_ne!(err.code(), Code::InvalidArgument, "it reached the service: {err:?}");

    // None of it ended a session or changed anything: the cluster serves.
    c.client()
        .write_probe(WriteProbeRequest {
            key: "still".into(),
            value: vec![],
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_handles_cannot_be_guessed_or_listed_past_a_closed_directory() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    c.with_exports();
    let alice = c.nas("alice", "home").await?;
    alice.mkdir("/private", 0o700).await?;
    let secret = alice.create("/private/secret", 0o644, false, false).await?;
    alice.write(secret.handle, 0, b"alice's secret").await?;
    alice.mkdir("/listable", 0o744).await?;
    let inside = alice.create("/listable/inside", 0o644, false, false).await?;
    alice.write(inside.handle, 0, b"behind r without x").await?;

    // Bob, on the same export, tries the handles a sequential scheme would
    // have given out, and a spread of others.
    let bob = c.nas("bob", "home").await?;
    let mut g = NasGrpc::new(c.channel("CHN1"));
    let guesses = (0..3000u64).chain((0..2000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    for handle in guesses {
        let call = Some(Call {
            token: bob.token().into(),
            seq: 0,
            acked: 0,
        });
        let err = g
            .stat_handle(HandleRequest { call, handle })
            .await
            .expect_err(&format!("guessed handle {handle} named a file"));
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    // A listing of a directory bob may read but not search names its
    // files and gives no handle.
    let listed = bob.list("/listable").await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "inside");
    assert_eq!(listed[0].handle, 0, "a listing without search permission gave a handle");
    let err = bob.stat("/listable/inside").await.expect_err("no search permission");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // And bob cannot list or stat what is in the closed directory.
    assert_eq!(
        bob.list("/private").await.expect_err("0700").code(),
        Code::PermissionDenied
    );
    assert_eq!(
        bob.stat("/private/secret").await.expect_err("0700").code(),
        Code::PermissionDenied
    );
    // Alice's handles keep working, on another CHN after a move too.
    assert_eq!(alice.read(secret.handle, 0, 64).await?, b"alice's secret");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_holds_every_change_login_and_refusal() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    let ch = c.channel("CHN2");
    ok(c.nasctl(&["user", "add", "victor"]));
    let _ = raw_admin(&ch, "ListUsers", None).await.expect_err("no credential");
    let plain = login_patiently(&ch, "victor", "correct-horse", 0).await?;
    let _ = raw_admin(&ch, "CreateLu", Some(&format!("Bearer {}", plain.token)))
        .await
        .expect_err("no role");
    let _ = login(&ch, "victor", "not-his-password", 0)
        .await
        .expect_err("wrong password");
    let mut g = NasGrpc::new(c.channel("CHN3"));
    let _ = g
        .open_session(OpenSessionRequest {
            user: "victor".into(),
            password: "guessing-again".into(),
            client_id: String::new(),
        })
        .await
        .expect_err("wrong password");

    let found = |records: &[serde_json::Value], call: &str, code: i64, user: &str| {
        records
            .iter()
            .any(|r| r["call"] == call && r["code"] == code && r["user"] == user)
    };
    let records = wait_until("the audit records", Duration::from_secs(20), || async {
        let out = c.nasctl(&["--json", "audit"]);
        let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let all = found(&records, "Admin/AddUser", 0, ADMIN_USER)
            && found(&records, "Admin/ListUsers", Code::Unauthenticated as i64, "")
            && found(&records, "Admin/CreateLu", Code::PermissionDenied as i64, "victor")
            && found(&records, "Admin/Login", Code::Unauthenticated as i64, "")
            && found(&records, "Nas/OpenSession", Code::Unauthenticated as i64, "victor");
        all.then_some(records)
    })
    .await?;
    let add = records
        .iter()
        .find(|r| r["call"] == "Admin/AddUser")
        .expect("the AddUser record");
    assert!(add["args"].as_str().unwrap_or_default().contains("victor"), "{add}");
    let text = serde_json::to_string(&records)?;
    assert!(!text.contains("correct-horse"), "a password reached the audit log");
    assert!(!text.contains("not-his-password") && !text.contains("guessing-again"));
    assert!(records
        .iter()
        .all(|r| !r["chn"].as_str().unwrap_or_default().is_empty()));
    // Reading the audit log is for admins only.
    let err = raw_admin(&ch, "ListAudit", Some(&format!("Bearer {}", plain.token)))
        .await
        .expect_err("victor may not read the audit log");
    assert_eq!(err.code(), Code::PermissionDenied);
    Ok(())
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_reveal_no_user_names_and_session_secrets_are_not_stored() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    c.with_exports();
    // A session opened before the wrong passwords below throttle this address.
    let nas = c.nas("bob", "home").await?;
    let mut g = NasGrpc::new(c.channel("CHN1"));
    let attempt = |user: &str| OpenSessionRequest {
        user: user.into(),
        password: "wrong-password".into(),
        client_id: String::new(),
    };
    // Three wrong passwords for a real user and three for a made-up one
    // (within the free attempts of the throttle): the same work each.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (user, times) in [("alice", &mut known), ("nobody-here", &mut unknown)] {
            let t = Instant::now();
            let err = g.open_session(attempt(user)).await.expect_err("wrong password");
            times.push(t.elapsed());
            assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
            assert!(!err.message().contains(user), "the answer names the user: {err:?}");
        }
    }
    let (known, unknown) = (known.iter().min().copied(), unknown.iter().min().copied());
    let (known, unknown) = (known.unwrap_or_default(), unknown.unwrap_or_default());
    eprintln!("wrong password: known user {known:?}, unknown user {unknown:?}");
    assert!(
        unknown * 2 >= known && known * 2 >= unknown,
        "timing tells users apart: known {known:?}, unknown {unknown:?}"
    );
    // A real session's secret is nowhere on any CHN's disk.
    let secret = nas
        .token()
        .split_once('.')
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    assert!(secret.len() >= 16);
    wait_until("bob's session everywhere", Duration::from_secs(10), || async {
        let clients = c.client().list_clients(false).await.ok()?.clients;
        clients.iter().any(|cl| cl.user == "bob").then_some(())
    })
    .await?;
    for node in ["chn1", "chn2", "chn3"] {
        for f in files_under(&c.dir().join(node).join("data")) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a session secret in clear",
                f.display()
            );
        }
    }
    Ok(())
}
