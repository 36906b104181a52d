//! The file service through real `nasd` processes: files written and read
//! through `nas-client` and `nasctl fs`, kill -9 of the serving CHN in the
//! middle of a write stream, concurrent clients, file locks and their
//! expiry, exactly-once retries, and every bad input a client can send.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::nas_client::proto::nas_client::NasClient as NasGrpc;
use ::nas_client::proto::*;
use ::nas_client::NasClient;
use nas_tests::{ok, random_bytes, wait_until, TestCluster};
use tonic::transport::Channel;
use tonic::Code;

/// A raw `Nas` stub on one CHN: for calls the library would not send.
fn grpc(c: &TestCluster, chn: &str) -> NasGrpc<Channel> {
    NasGrpc::new(c.channel(chn))
}

/// A raw session of `user` with `export` mounted, on CHN1 (the owner).
async fn raw_session(c: &TestCluster, user: &str, export: &str) -> (NasGrpc<Channel>, String) {
    let mut g = grpc(c, "CHN1");
    let s = g
        .open_session(OpenSessionRequest {
            user: user.into(),
            password: "correct-horse".into(),
            client_id: String::new(),
        })
        .await
        .expect("open session")
        .into_inner();
    g.mount(MountRequest {
        token: s.token.clone(),
        export: export.into(),
    })
    .await
    .expect("mount");
    (g, s.token)
}

fn call(token: &str, seq: u64) -> Option<Call> {
    Some(Call {
        token: token.into(),
        seq,
        acked: 0,
    })
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(s.message().contains(needle), "{:?} lacks {needle:?}", s.message());
        }
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

/// Every file under `dir` with its content, walking the tree.
async fn snapshot(nas: &NasClient, dir: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_string()];
    while let Some(d) = stack.pop() {
        for e in nas.list(&d).await.expect("list") {
            let path = format!("{}/{}", d.trim_end_matches('/'), e.name);
            if e.r#type == FileType::FileDirectory as i32 {
                stack.push(path);
            } else {
                let data = nas.read(e.handle, 0, e.size).await.expect("read");
                assert_eq!(data.len() as u64, e.size, "{path} reads as long as its size");
                out.insert(path, data);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_through_the_library_and_nasctl() {
    let c = TestCluster::up(3, &[]).expect("cluster");
    c.with_exports();
    // A raw LU read through CHN3 before anyone mounted: the LU must end up
    // held by the export's owner, not by CHN3.
    let raw = tempfile::NamedTempFile::new().expect("temp file");
    let out = raw.path().to_str().unwrap();
    ok(c.nasctl(&[
        "--cluster",
        &c.node("CHN3").addr,
        "lu",
        "read",
        "1",
        "--length",
        "4K",
        "--out",
        out,
    ]));
    let locks: serde_json::Value = serde_json::from_str(&ok(c.nasctl(&["--json", "lock", "list"]))).expect("json");
    let lu1 = locks
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == "LU 1")
        .expect("LU 1 is locked");
    assert_eq!(lu1["holder"], "CHN1", "{locks}");
    // The library finds the owner (CHN1) even when told only of CHN3.
    let only3 = c.client().on(&[c.node("CHN3").addr.as_str()]).expect("address");
    let nas = NasClient::connect(only3, "alice", "correct-horse", "home", Default::default())
        .await
        .expect("connect");
    assert_eq!(nas.serving_addr(), c.node("CHN1").addr);

    nas.mkdir("/docs", 0o755).await.expect("mkdir");
    let big = random_bytes(5 << 20, 1);
    let f = nas.create("/docs/big.bin", 0, true, false).await.expect("create");
    assert_eq!(nas.write(f.handle, 0, &big).await.expect("write"), big.len() as u64);
    // Random offsets: overwrite in place, extend past a hole.
    nas.write(f.handle, 12_345, b"patch").await.expect("patch");
    let end = nas.write(f.handle, (6 << 20) + 7, b"tail").await.expect("tail");
    assert_eq!(end, (6 << 20) + 11);
    let mut want = big.clone();
    want[12_345..12_350].copy_from_slice(b"patch");
    want.resize((6 << 20) + 7, 0);
    want.extend_from_slice(b"tail");
    assert_eq!(nas.read(f.handle, 0, end).await.expect("read"), want);
    assert_eq!(
        nas.read(f.handle, 1 << 20, 3).await.expect("read"),
        want[1 << 20..(1 << 20) + 3]
    );

    nas.rename("/docs/big.bin", "/docs/renamed.bin").await.expect("rename");
    expect_code(nas.stat("/docs/big.bin").await, Code::NotFound, "does not exist");
    let t = nas.truncate(f.handle, 100).await.expect("truncate");
    assert_eq!(t.size, 100);
    nas.fsync(f.handle).await.expect("fsync");

    // Paginated listing.
    for i in 0..25 {
        nas.create(&format!("/docs/f{i:02}"), 0o600, true, false)
            .await
            .expect("create");
    }
    let (mut g, token) = raw_session(&c, "alice", "home").await;
    let mut names = Vec::new();
    let mut after = String::new();
    loop {
        let page = g
            .read_dir(ReadDirRequest {
                call: call(&token, 0),
                path: "/docs".into(),
                after: after.clone(),
                limit: 7,
            })
            .await
            .expect("readdir")
            .into_inner();
        assert!(page.entries.len() <= 7);
        names.extend(page.entries.iter().map(|e| e.name.clone()));
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    assert_eq!(names.len(), 26, "{names:?}");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "pages in name order, no repeats");

    // nasctl on top of the same library.
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("in.bin");
    std::fs::write(&local, &big).expect("write local");
    let env = |args: &[&str]| {
        let mut all = vec!["--user", "alice"];
        all.extend_from_slice(args);
        ok(c.nasctl(&all))
    };
    env(&["fs", "put", local.to_str().unwrap(), "home:/docs/put.bin"]);
    let back = dir.path().join("out.bin");
    env(&["fs", "get", "home:/docs/put.bin", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).expect("read back"), big);
    let stat: serde_json::Value =
        serde_json::from_str(&env(&["--json", "fs", "stat", "home:/docs/put.bin"])).expect("json");
    assert_eq!(stat["size"], big.len() as u64);
    assert_eq!(stat["owner"], "alice");
    assert_eq!(stat["mode"], "644");
    assert!(stat["head_address"].as_u64().unwrap() > 0);
    assert!(stat["mtime_ms"].as_u64().unwrap() > 0);
    env(&["fs", "mkdir", "home:/x"]);
    env(&["fs", "mv", "home:/docs/put.bin", "home:/x/moved.bin"]);
    env(&["fs", "rm", "home:/x/moved.bin"]);
    env(&["fs", "rm", "home:/x"]);
    let ls = env(&["fs", "ls", "home:/"]);
    assert!(ls.contains("docs") && !ls.contains(" x "), "{ls}");
    // Sessions are in the shared LU, without their secrets.
    let clients: serde_json::Value = serde_json::from_str(&ok(c.nasctl(&["--json", "client", "list"]))).expect("json");
    let mine = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client_id"] == nas.client_id())
        .expect("session row");
    assert_eq!(mine["export"], "home");
    assert_eq!(mine["session"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_serving_chn_mid_stream_loses_no_acknowledged_write() {
    let mut c = TestCluster::up(3, &["--lu-lease-ms=2000"]).expect("cluster");
    c.with_exports();
    let nas = Arc::new(c.nas("alice", "home").await.expect("connect"));
    let f = nas.create("/log.bin", 0, true, false).await.expect("create");
    // The writer appends 512 KiB records and small files; it records
    // what was acknowledged.
    let writer = {
        let nas = nas.clone();
        tokio::spawn(async move {
            let mut acked: Vec<(u64, u64)> = Vec::new();
            let mut files = Vec::new();
            for i in 0..60u64 {
                let rec = random_bytes(512 << 10, 100 + i);
                match nas.write(f.handle, i * (512 << 10), &rec).await {
                    Ok(_) => acked.push((i, 100 + i)),
                    Err(e) => panic!("write {i} failed after retries: {e}"),
                }
                let name = format!("/small-{i}");
                let h = nas.create(&name, 0, true, false).await.expect("create small");
                nas.write(h.handle, 0, name.as_bytes()).await.expect("write small");
                files.push(name);
            }
            (acked, files)
        })
    };
    wait_until("the writer to be under way", Duration::from_secs(60), || async {
        let s = nas.stat_handle(f.handle).await.ok()?;
        (s.size >= 8 << 20).then_some(())
    })
    .await
    .expect("writer progress");
    c.kill9("CHN1");
    c.cluster_up(None, &[]).expect("restart CHN1");
    let (acked, files) = writer.await.expect("writer");
    assert_eq!(acked.len(), 60, "every write was acknowledged in the end");

    let check = c.nas("alice", "home").await.expect("connect after restart");
    let got = check.read(f.handle, 0, 60 * (512 << 10)).await.expect("read log");
    for (i, seed) in acked {
        let at = (i * (512 << 10)) as usize;
        assert!(
            got[at..at + (512 << 10)] == random_bytes(512 << 10, seed)[..],
            "record {i} differs"
        );
    }
    let tree = snapshot(&check, "/").await;
    for name in &files {
        assert_eq!(tree.get(name).map(Vec::as_slice), Some(name.as_bytes()), "{name}");
    }
    assert_eq!(tree.len(), files.len() + 1, "nothing half-created: {:?}", tree.keys());
    // Space adds up: what the files hold plus what is free is the whole.
    let df = check.statfs().await.expect("statfs");
    let mut allocated = 0;
    for e in check.list("/").await.expect("list") {
        allocated += e.allocated_bytes;
    }
    assert_eq!(df.free_bytes + allocated, df.data_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_locks_and_lock_expiry() {
    let c = TestCluster::up(3, &["--session-lease-ms=3000"]).expect("cluster");
    c.with_exports();
    let a = Arc::new(c.nas("alice", "home").await.expect("alice"));
    let b = Arc::new(c.nas("bob", "home").await.expect("bob"));
    a.mkdir("/shared", 0o777).await.expect("mkdir");
    let common = a.create("/shared/common", 0o666, true, false).await.expect("create");
    // Four clients create files in one directory and write disjoint parts
    // of one file at the same time.
    let mut tasks = Vec::new();
    for k in 0..4u64 {
        let nas = if k % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..10u64 {
                let name = format!("/shared/c{k}-{i}");
                let h = nas.create(&name, 0o644, true, false).await.expect("create");
                nas.write(h.handle, 0, name.as_bytes()).await.expect("write");
                nas.write(common.handle, (k * 10 + i) * 4096, &random_bytes(4096, k * 10 + i))
                    .await
                    .expect("write common");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let listed = a.list("/shared").await.expect("list");
    assert_eq!(listed.len(), 41);
    let all = a.read(common.handle, 0, 40 * 4096).await.expect("read common");
    for j in 0..40u64 {
        assert!(
            all[(j * 4096) as usize..((j + 1) * 4096) as usize] == random_bytes(4096, j)[..],
            "block {j}"
        );
    }

    // Conflicts answer at once, or wait up to the caller's timeout.
    a.lock("/shared/common", false, Duration::ZERO)
        .await
        .expect("alice locks");
    expect_code(
        b.lock("/shared/common", true, Duration::ZERO).await,
        Code::FailedPrecondition,
        a.client_id(),
    );
    expect_code(
        b.lock("/shared/common", false, Duration::from_millis(300)).await,
        Code::DeadlineExceeded,
        "waited 300 ms",
    );
    let unlocker = {
        let a = a.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            a.unlock("/shared/common").await
        })
    };
    b.lock("/shared/common", true, Duration::from_secs(10))
        .await
        .expect("bob gets it after alice lets go");
    unlocker.await.expect("task").expect("unlock");
    a.lock("/shared/common", true, Duration::ZERO)
        .await
        .expect("shared locks coexist");
    let list: serde_json::Value = serde_json::from_str(&ok(c.nasctl(&["--json", "lock", "list"]))).expect("json");
    let holders: Vec<&serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == "home:/shared/common")
        .collect();
    assert_eq!(holders.len(), 2, "{list}");
    b.unlock("/shared/common").await.expect("bob unlocks");
    a.unlock("/shared/common").await.expect("alice unlocks");

    // A client that vanishes (no keepalive) loses its session and locks
    // after the lease; alive clients keep theirs.
    let c3 = c.nas("alice", "home").await.expect("third client");
    c3.lock("/shared/c0-0", false, Duration::ZERO).await.expect("lock");
    a.lock("/shared/c0-1", false, Duration::ZERO)
        .await
        .expect("lock held by a live client");
    let gone = c3.client_id().to_string();
    drop(c3);
    b.lock("/shared/c0-0", false, Duration::from_secs(20))
        .await
        .expect("the vanished client's lock is released by its lease");
    expect_code(
        b.lock("/shared/c0-1", false, Duration::ZERO).await,
        Code::FailedPrecondition,
        "locked",
    );
    // The operator breaks it.
    ok(c.nasctl(&["unlock", "home:/shared/c0-1"]));
    b.lock("/shared/c0-1", false, Duration::ZERO)
        .await
        .expect("a broken lock is free");
    session_ended(&c, &gone).await;
}

/// Waits until the client table no longer lists `client_id`.
async fn session_ended(c: &TestCluster, client_id: &str) {
    wait_until("the idle session to end", Duration::from_secs(20), || async {
        let list = c.client().list_clients(false).await.ok()?;
        (!list.clients.iter().any(|r| r.client_id == client_id)).then_some(())
    })
    .await
    .expect("session expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_is_applied_once() {
    let c = TestCluster::up(3, &[]).expect("cluster");
    c.with_exports();
    let (mut g, token) = raw_session(&c, "alice", "home").await;
    let mkdir = |seq| MkdirRequest {
        call: call(&token, seq),
        path: "/once".into(),
        mode: 0o755,
    };
    let first = g.mkdir(mkdir(1)).await.expect("mkdir").into_inner();
    let again = g
        .mkdir(mkdir(1))
        .await
        .expect("the same call again answers as the first time")
        .into_inner();
    assert_eq!(first.handle, again.handle);
    expect_code(g.mkdir(mkdir(2)).await, Code::AlreadyExists, "already exists");

    let f = g
        .create(CreateRequest {
            call: call(&token, 3),
            path: "/once/log".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    // An append computed from the size: applied twice it would double.
    let append = |seq| {
        tokio_stream::iter(vec![WriteChunk {
            call: call(&token, seq),
            handle: f.handle,
            offset: 0,
            data: b"entry-1;".to_vec().into(),
            total: 8,
        }])
    };
    let w1 = g.write(append(4)).await.expect("write").into_inner();
    let w2 = g.write(append(4)).await.expect("write again").into_inner();
    assert_eq!((w1.size, w2.size), (8, 8));
    let rename = |seq| RenameRequest {
        call: call(&token, seq),
        from: "/once/log".into(),
        to: "/once/log.1".into(),
    };
    g.rename(rename(5)).await.expect("rename");
    g.rename(rename(5))
        .await
        .expect("a retried rename returns its first reply, not NOT_FOUND");
    let unlink = |seq| FsPathRequest {
        call: call(&token, seq),
        path: "/once/log.1".into(),
    };
    g.unlink(unlink(6)).await.expect("unlink");
    g.unlink(unlink(6)).await.expect("a retried unlink succeeds once more");
    expect_code(g.unlink(unlink(7)).await, Code::NotFound, "does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_precise_statuses_and_change_nothing() {
    let c = TestCluster::up(3, &["--session-lease-ms=3000"]).expect("cluster");
    c.with_exports();
    let mut g = grpc(&c, "CHN1");
    let open = |user: &str, pw: &str| OpenSessionRequest {
        user: user.into(),
        password: pw.into(),
        client_id: String::new(),
    };
    expect_code(
        g.open_session(open("alice", "wrong-password")).await,
        Code::Unauthenticated,
        "password is wrong",
    );
    expect_code(
        g.open_session(open("mallory", "whatever1")).await,
        Code::Unauthenticated,
        "password is wrong",
    );
    let bad_id = OpenSessionRequest {
        client_id: "has space".into(),
        ..open("alice", "correct-horse")
    };
    expect_code(g.open_session(bad_id).await, Code::InvalidArgument, "client id");

    let (mut g, token) = raw_session(&c, "alice", "home").await;
    let stat = |token: &str, path: &str| FsPathRequest {
        call: call(token, 0),
        path: path.into(),
    };
    let forged = format!("{}.{}", token.split('.').next().unwrap(), "0".repeat(32));
    expect_code(g.stat(stat(&forged, "/")).await, Code::Unauthenticated, "not valid");
    expect_code(g.stat(stat("nonsense", "/")).await, Code::Unauthenticated, "malformed");
    expect_code(
        g.stat(FsPathRequest {
            call: None,
            path: "/".into(),
        })
        .await,
        Code::Unauthenticated,
        "no session",
    );
    let mount = |token: &str, export: &str| MountRequest {
        token: token.into(),
        export: export.into(),
    };
    let missing_seq = CreateRequest {
        call: call(&token, 0),
        path: "/x".into(),
        ..Default::default()
    };
    expect_code(g.create(missing_seq).await, Code::InvalidArgument, "sequence number");
    expect_code(
        g.mount(mount(&token, "nope")).await,
        Code::NotFound,
        "export nope does not exist",
    );
    let (_, bob) = raw_session(&c, "bob", "home").await;
    expect_code(
        g.mount(mount(&bob, "small")).await,
        Code::PermissionDenied,
        "may not use export small",
    );
    // A CHN that does not serve the export says who does.
    let mut other = grpc(&c, "CHN2");
    let s = other
        .stat(stat(&token, "/"))
        .await
        .expect_err("CHN2 does not serve home");
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(
        s.metadata().get("x-nas-owner").and_then(|v| v.to_str().ok()),
        Some(c.node("CHN1").addr.as_str())
    );

    let nas = c.nas("alice", "home").await.expect("alice");
    let f = nas.create("/mine", 0o644, true, false).await.expect("create");
    nas.write(f.handle, 0, b"alice's").await.expect("write");
    let before = snapshot(&nas, "/").await;
    let bad_paths = [
        ("", "not absolute"),
        ("/a/../mine", "not allowed"),
        ("/a\0b", "NUL"),
        (&format!("/{}", "n".repeat(256)), "limit is 255"),
    ];
    for (p, needle) in bad_paths.iter() {
        expect_code(nas.create(p, 0, false, false).await, Code::InvalidArgument, needle);
        expect_code(nas.mkdir(p, 0).await, Code::InvalidArgument, needle);
    }
    expect_code(nas.create("/", 0, false, false).await, Code::InvalidArgument, "root");
    expect_code(nas.mkdir("/mine", 0).await, Code::AlreadyExists, "already exists");
    expect_code(nas.rmdir("/mine").await, Code::FailedPrecondition, "is a file");
    expect_code(
        nas.write(f.handle, 1 << 40, b"x").await,
        Code::OutOfRange,
        "largest file size",
    );
    expect_code(nas.read(f.handle, 100, 1).await, Code::OutOfRange, "past the end");
    expect_code(nas.write(987_654, 0, b"x").await, Code::NotFound, "deleted");
    expect_code(nas.fsync(987_654).await, Code::NotFound, "deleted");
    // Another user's file.
    let bob_nas = c.nas("bob", "home").await.expect("bob");
    expect_code(
        bob_nas.write(f.handle, 0, b"bob was here").await,
        Code::PermissionDenied,
        "may not write",
    );
    expect_code(bob_nas.unlink("/mine").await, Code::PermissionDenied, "only its owner");
    expect_code(
        bob_nas.truncate(f.handle, 0).await,
        Code::PermissionDenied,
        "may not write",
    );
    assert_eq!(snapshot(&nas, "/").await, before, "refused calls changed nothing");

    // A full LU: refused cleanly, usable again after deletes.
    let small = c.nas("alice", "small").await.expect("small");
    let free = small.statfs().await.expect("statfs").free_bytes;
    let h = small.create("/fill", 0, true, false).await.expect("create");
    let chunk = vec![7u8; 4 << 20];
    let mut at = 0;
    let full = loop {
        match small.write(h.handle, at, &chunk).await {
            Ok(_) => at += chunk.len() as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(full.code(), Code::ResourceExhausted, "{}", full.message());
    assert!(full.message().contains("delete files"), "{}", full.message());
    assert_eq!(
        small.stat_handle(h.handle).await.expect("stat").size,
        at,
        "the refused write left the file as it was"
    );
    small.unlink("/fill").await.expect("delete");
    assert_eq!(small.statfs().await.expect("statfs").free_bytes, free);
    let again = small.create("/again", 0, true, false).await.expect("create");
    small
        .write(again.handle, 0, &chunk)
        .await
        .expect("space is usable again");
    small.unlink("/again").await.expect("delete");

    // A streamed write sent without its total size that runs out of space
    // part-way stores nothing of itself.
    let (mut raw, token) = raw_session(&c, "alice", "small").await;
    let streamed = small.create("/streamed", 0, true, false).await.expect("create");
    let pieces: Vec<WriteChunk> = (0..(free >> 20) + 8)
        .map(|i| WriteChunk {
            call: (i == 0).then(|| call(&token, 1)).flatten(),
            handle: streamed.handle,
            offset: i << 20,
            data: vec![9u8; 1 << 20].into(),
            total: 0,
        })
        .collect();
    let refused = raw.write(tokio_stream::iter(pieces)).await;
    expect_code(refused, Code::ResourceExhausted, "delete files");
    assert_eq!(
        small.stat_handle(streamed.handle).await.expect("stat").size,
        0,
        "the refused stream left part of itself"
    );
    small.unlink("/streamed").await.expect("delete");
    assert_eq!(small.statfs().await.expect("statfs").free_bytes, free);

    // An idle session ends after its lease; its token no longer works.
    let (_, short) = raw_session(&c, "alice", "home").await;
    session_ended(&c, short.split('.').next().unwrap()).await;
    expect_code(g.stat(stat(&short, "/")).await, Code::Unauthenticated, "has ended");
}
