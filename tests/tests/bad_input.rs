//! Bad input on purpose: every refusal is a precise gRPC status with a
//! message that says what to do, nothing changes, and no CHN goes down.

use ::nas_client::proto::*;
use nas_tests::TestCluster;
use tonic::Code;

async fn expect(r: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>, code: Code, needle: &str) {
    let err = r.expect_err("must be refused");
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(err.message().contains(needle), "{:?} lacks {needle:?}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_precise_statuses() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    // Through a follower, so that forwarding keeps the status intact.
    let follower = {
        let leader = c.leader_seen_by("CHN1", std::time::Duration::from_secs(5)).await?;
        c.nodes
            .iter()
            .find(|n| n.name != leader)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    let mut a = c.admin(&follower);
    a.init_array(InitArrayRequest {
        disks: 4,
        disk_capacity_bytes: 4 << 20,
    })
    .await?;
    expect(
        a.init_array(InitArrayRequest {
            disks: 4,
            disk_capacity_bytes: 4 << 20,
        })
        .await,
        Code::AlreadyExists,
        "already initialized",
    )
    .await;
    let lu = |raid: RaidLevel, disks: &[u32]| CreateLuRequest {
        raid: raid as i32,
        disks: disks.to_vec(),
        stripe_unit_bytes: 0,
    };
    expect(
        a.create_lu(lu(RaidLevel::Raid5, &[1, 2])).await,
        Code::InvalidArgument,
        "at least 3 disks",
    )
    .await;
    a.create_lu(lu(RaidLevel::Raid1, &[1, 2])).await?;
    expect(
        a.create_lu(lu(RaidLevel::Raid1, &[2, 3])).await,
        Code::FailedPrecondition,
        "already USED",
    )
    .await;
    expect(
        a.create_lu(lu(RaidLevel::Raid1, &[3, 3])).await,
        Code::InvalidArgument,
        "listed twice",
    )
    .await;
    expect(
        a.create_lu(lu(RaidLevel::Raid1, &[3, 40])).await,
        Code::NotFound,
        "disk 40",
    )
    .await;
    expect(
        a.create_lu(CreateLuRequest {
            raid: 7,
            disks: vec![3, 4],
            stripe_unit_bytes: 0,
        })
        .await,
        Code::InvalidArgument,
        "use 1 or 5",
    )
    .await;

    let user = |name: &str, password: &str| AddUserRequest {
        name: name.into(),
        password: password.into(),
        uid: 0,
        groups: vec![],
    };
    a.add_user(user("alice", "correct-horse")).await?;
    expect(
        a.add_user(user("alice", "correct-horse")).await,
        Code::AlreadyExists,
        "already exists",
    )
    .await;
    expect(
        a.add_user(user("bob", "short")).await,
        Code::InvalidArgument,
        "8 to 1024",
    )
    .await;
    expect(
        a.add_user(user("", "correct-horse")).await,
        Code::InvalidArgument,
        "empty",
    )
    .await;
    expect(
        a.add_user(user("bo\0b", "correct-horse")).await,
        Code::InvalidArgument,
        "not allowed",
    )
    .await;
    let users = a.list_users(ListRequest { local: false }).await?.into_inner().users;
    assert_eq!(users.len(), 2, "the first admin and the one user added: {users:?}");
    assert!(
        users.iter().all(|u| u.password_hash.is_empty()),
        "hashes must not leave the shared LU"
    );

    let export = |name: &str, lu: u32, owner: &str| CreateExportRequest {
        name: name.into(),
        lu,
        owner_chn: owner.into(),
        partner_chn: "CHN2".into(),
        users: vec!["alice".into()],
    };
    expect(a.create_export(export("home", 9, "CHN1")).await, Code::NotFound, "LU 9").await;
    expect(a.create_export(export("home", 1, "CHN7")).await, Code::NotFound, "CHN7").await;
    expect(
        a.create_export(export("ho me", 1, "CHN1")).await,
        Code::InvalidArgument,
        "not allowed",
    )
    .await;
    a.create_export(export("home", 1, "CHN1")).await?;
    expect(
        a.remove_chn(RemoveChnRequest { name: "CHN1".into() }).await,
        Code::FailedPrecondition,
        "serves export home",
    )
    .await;

    expect(
        a.add_path(PathRequest { path: None }).await,
        Code::InvalidArgument,
        "missing",
    )
    .await;
    let path = Path {
        chn: "CHN1".into(),
        target: PathTarget::PathDataLu as i32,
        lu: 5,
    };
    expect(
        a.add_path(PathRequest { path: Some(path) }).await,
        Code::NotFound,
        "LU 5",
    )
    .await;
    let backup = Path {
        chn: "CHN2".into(),
        target: PathTarget::PathSharedLuBackup as i32,
        lu: 0,
    };
    a.remove_path(PathRequest {
        path: Some(backup.clone()),
    })
    .await?;
    expect(
        a.remove_path(PathRequest { path: Some(backup) }).await,
        Code::NotFound,
        "no such path",
    )
    .await;
    expect(
        a.set_role(SetRoleRequest {
            user: "nobody".into(),
            role: Role::Viewer as i32,
        })
        .await,
        Code::NotFound,
        "does not exist",
    )
    .await;
    expect(
        a.set_role(SetRoleRequest {
            user: nas_tests::ADMIN_USER.into(),
            role: 42,
        })
        .await,
        Code::InvalidArgument,
        "role 42",
    )
    .await;

    expect(
        a.install_chn(InstallChnRequest {
            name: "CHN9".into(),
            address: "nowhere".into(),
        })
        .await,
        Code::InvalidArgument,
        "HOST:PORT",
    )
    .await;
    expect(
        a.install_chn(InstallChnRequest {
            name: "CHN9".into(),
            address: "127.0.0.1:1".into(),
        })
        .await,
        Code::Unavailable,
        "start it first",
    )
    .await;
    expect(
        a.install_chn(InstallChnRequest {
            name: "CHN9".into(),
            address: c.node("CHN3").addr.clone(),
        })
        .await,
        Code::InvalidArgument,
        "is named CHN3",
    )
    .await;
    expect(
        c.admin("CHN1")
            .bootstrap(BootstrapRequest {
                admin_user: "mallory".into(),
                admin_password: "mallory-password".into(),
            })
            .await,
        Code::AlreadyExists,
        "already belongs",
    )
    .await;

    // Nothing above changed the tables beyond the accepted commands.
    let lus = a.list_lus(ListRequest { local: false }).await?.into_inner().lus;
    assert_eq!(lus.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_raft_messages_are_refused_and_the_chn_survives() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    // As another CHN would send them: with CHN1's certificate.
    let mut raft = raft_client::RaftClient::new(c.channel_as_chn("CHN2", "CHN1"));
    for garbage in [vec![], vec![0xff; 7], vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]] {
        // AppendEntries is a stream: the malformed request ends it.
        let request = tokio_stream::iter([RaftBytes { data: garbage.clone() }]);
        let mut replies = raft.append_entries(request).await?.into_inner();
        let err = replies.message().await.expect_err("a malformed request is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        let err = raft.vote(RaftBytes { data: garbage.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        let err = raft.install_snapshot(RaftBytes { data: garbage }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    }
    let err = raft.forward(Command { kind: None }).await;
    // The empty command reaches the leader's state machine, which refuses it.
    let err = err.expect_err("empty command");
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::Unavailable),
        "{err:?}"
    );
    // CHN2 is still a healthy member.
    c.admin("CHN2")
        .write_probe(WriteProbeRequest {
            key: "x".into(),
            value: vec![],
        })
        .await?;
    assert!(c.pid("CHN2").is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chn_that_was_never_installed_says_how_to_bootstrap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    /// Kills the nasd also when an assertion fails.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let certs = ::nas_client::pki::CertDir::new(dir.path().join("tls"));
    certs.ensure_ca()?;
    certs.ensure_chn("CHN7", &["127.0.0.1".into()])?;
    let (cert, key) = certs.chn_files("CHN7");
    let _nasd = Killed(
        std::process::Command::new(nas_tests::bin("nasd"))
            .args(["--name", "CHN7", "--listen", &addr, "--data"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--tls-ca")
            .arg(certs.ca_cert())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    // With a credential: a CHN outside any cluster has no users to check
    // it against, and says so rather than "wrong password".
    let mut admin = admin_client::AdminClient::with_interceptor(
        ::nas_client::Transport::Tls(certs.client_files()?)
            .endpoint(&addr)?
            .connect_lazy(),
        nas_tests::admin_credential().authorization(),
    );
    let answered = nas_tests::wait_until("the new nasd to answer", std::time::Duration::from_secs(20), || {
        let mut a = admin.clone();
        async move { a.node_info(NodeInfoRequest {}).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    let info = answered?;
    assert!(!info.initialized);
    assert_eq!((info.node_id, info.name.as_str()), (7, "CHN7"));
    let r = admin
        .init_array(InitArrayRequest {
            disks: 3,
            disk_capacity_bytes: 1 << 20,
        })
        .await;
    expect(r, Code::FailedPrecondition, "--bootstrap").await;
    let r = admin
        .install_chn(InstallChnRequest {
            name: "CHN8".into(),
            address: "127.0.0.1:9".into(),
        })
        .await;
    expect(r, Code::FailedPrecondition, "--bootstrap").await;
    Ok(())
}

/// Sends bytes as they are: for messages no generated client can build.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawCoder;

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_that_is_not_utf8_is_an_invalid_argument() -> anyhow::Result<()> {
    let c = TestCluster::up(1, &[])?;
    let mut grpc = tonic::client::Grpc::new(c.channel("CHN1"));
    // OpenSessionRequest { user: <0xff 0xfe> }: field 1, length-delimited.
    for path in ["/nas.v1.Nas/OpenSession", "/nas.v1.Admin/Login"] {
        grpc.ready().await?;
        let r = grpc
            .unary(
                tonic::Request::new(vec![0x0a, 0x02, 0xff, 0xfe]),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await;
        let err = r.expect_err("must be refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {}", err.message());
        assert!(err.message().contains("UTF-8"), "{path}: {}", err.message());
    }
    // The CHN is still there.
    assert!(c.status("CHN1").await.is_some());
    Ok(())
}
