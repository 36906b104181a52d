//! Watching the cluster from outside: Prometheus metrics that move by
//! what happened, the event log with its hook and webhook, and the status
//! page in a real headless Chromium.
//!
//! Needs Debian's `chromium` for the page test (`.ci/run` installs it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ::nas_client::proto::{EventsRequest, ListRequest};
use nas_tests::browser::Browser;
use nas_tests::{ok, wait_until, TestCluster, ADMIN_PASSWORD, ADMIN_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// LU 1 RAID 5 on disks 1-3 and disk 4 free (to replace a failed one),
/// export `home` served by `owner` with `partner`.
fn with_home_and_a_spare_disk(c: &TestCluster, owner: &str, partner: &str) {
    c.with_home_and_spares("64M", &["5:1,2,3"], 1, owner, Some(partner));
}

/// One scrape of CHN `name`, parsed by a Prometheus text-format parser.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn of(c: &TestCluster, name: &str) -> anyhow::Result<Scrape> {
        let text = c.metrics_text(&c.http()?, name).await?;
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Ok(Scrape(prometheus_parse::Scrape::parse(lines)?))
    }

    /// The value of the sample `metric` whose labels include `labels`; 0
    /// when there is none yet.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus_parse::Value;
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_what_happened_and_need_a_viewer() -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    with_home_and_a_spare_disk(&c, "CHN1", "CHN2");
    let alice = c.nas("alice", "home").await?;
    let file = alice.create("/counted", 0o644, false, false).await?;

    let before = Scrape::of(&c, "CHN1").await?;
    let mut admin = c.admin("CHN1");
    for _ in 0..7 {
        admin.list_disks(ListRequest { local: true }).await?;
    }
    let piece = vec![7u8; 10_000];
    for i in 0..5u64 {
        alice.write(file.handle, i * 10_000, &piece).await?;
    }
    let after = Scrape::of(&c, "CHN1").await?;
    let moved = |metric: &str, labels: &[(&str, &str)]| after.value(metric, labels) - before.value(metric, labels);
    assert_eq!(
        moved(
            "nas_admin_request_duration_seconds",
            &[("rpc", "ListDisks"), ("code", "Ok")]
        ),
        7.0,
        "ListDisks calls"
    );
    assert_eq!(
        moved(
            "nas_file_operation_duration_seconds",
            &[("op", "Write"), ("code", "Ok")]
        ),
        5.0,
        "Write calls"
    );
    assert_eq!(moved("nas_file_written_bytes_total", &[]), 50_000.0, "bytes written");
    assert_eq!(after.value("nas_sessions_open", &[]), 1.0, "alice's session");
    assert_eq!(after.value("nas_exports_served", &[]), 1.0);
    assert!(after.value("nas_raft_term", &[]) >= 1.0);
    assert!(after.value("nas_raft_leader_id", &[]) >= 1.0);
    assert!(after.value("nas_raft_commit_index", &[]) >= before.value("nas_raft_commit_index", &[]));
    assert!(
        after.value("process_resident_memory_bytes", &[]) > 1e6,
        "the process collector runs"
    );
    assert!(
        after.value("nas_raft_log_fsync_duration_seconds", &[]) > 0.0,
        "Raft log fsyncs are timed"
    );

    ok(c.nasctl(&["disk", "fail", "2"]));
    wait_until(
        "disk 2 FAILED and LU 1 DEGRADED in CHN1's metrics",
        Duration::from_secs(10),
        || async {
            let s = Scrape::of(&c, "CHN1").await.ok()?;
            (s.value("nas_disk_state", &[("disk", "2"), ("state", "FAILED")]) == 1.0
                && s.value("nas_disk_state", &[("disk", "2"), ("state", "USED")]) == 0.0
                && s.value("nas_lu_state", &[("lu", "1"), ("state", "DEGRADED")]) == 1.0)
                .then_some(())
        },
    )
    .await?;

    // Without a credential: a Basic challenge, as Prometheus expects.
    let url = format!("{}metrics", c.node("CHN1").web);
    let anonymous = c.http()?.get(&url).send().await?;
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    // A file-service user without a role on the Admin service.
    let alice_scrape = c
        .http()?
        .get(&url)
        .basic_auth("alice", Some("correct-horse"))
        .send()
        .await?;
    assert_eq!(alice_scrape.status(), 403, "{:?}", alice_scrape.text().await);
    // A viewer's password, as `basic_auth` in a scrape config sends it.
    ok(c.nasctl(&["role", "grant", "alice", "viewer"]));
    let viewer = c
        .http()?
        .get(&url)
        .basic_auth("alice", Some("correct-horse"))
        .send()
        .await?;
    assert_eq!(viewer.status(), 200);
    Ok(())
}

/// A minimal HTTP receiver for the webhook: every body POSTed to it.
async fn webhook_receiver(listener: tokio::net::TcpListener, got: tokio::sync::mpsc::UnboundedSender<String>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let got = got.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Ok(n) = conn.read(&mut chunk).await else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() < len {
                    continue;
                }
                let _ = got.send(body[..len].to_string());
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
        });
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn events(c: &TestCluster) -> anyhow::Result<Vec<nas_client::proto::Event>> {
    let req = EventsRequest {
        local: false,
        after_seq: 0,
        since_ms: 0,
        limit: 0,
    };
    Ok(c.client().list_events(req).await?.events)
}

/// The kinds of `events` in order, each with the CHN that saw it.
fn kinds(events: &[nas_client::proto::Event]) -> Vec<String> {
    events.iter().map(|e| format!("{} ({})", e.kind, e.chn)).collect()
}

fn position(events: &[nas_client::proto::Event], kind: &str, field: Option<(&str, &str)>) -> Option<usize> {
    events
        .iter()
        .position(|e| e.kind == kind && field.is_none_or(|(k, v)| e.fields.get(k).map(String::as_str) == Some(v)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_disk_failure_a_failover_and_a_leader_change_reach_the_log_hook_and_webhook() -> anyhow::Result<()>
{
    let started_ms = nas_client::drill::now_ms();
    let work = tempfile::tempdir()?;
    let hooks = work.path().join("hooks");
    std::fs::create_dir(&hooks)?;
    let hang = work.path().join("hang");
    // Writes each event to a file of its own, then (once `hang` exists)
    // hangs far beyond the failover time, until killed at its timeout.
    let hook = work.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat > {hooks}/$(date +%s%N)-$$.json\nif [ -e {hang} ]; then sleep 30; fi\n",
            hooks = hooks.display(),
            hang = hang.display()
        ),
    )?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // The webhook's receiver is not listening yet: its first POSTs are
    // refused, and retried.
    let port = free_port()?;
    let hook_arg = format!("--event-hook={}", hook.display());
    let webhook_arg = format!("--event-webhook=http://127.0.0.1:{port}/events");
    let c = TestCluster::up(3, &[&hook_arg, "--event-hook-timeout-ms=10000", &webhook_arg])?;
    with_home_and_a_spare_disk(&c, "CHN1", "CHN2");
    // The export's LU is open (its health is reported) before the disk fails.
    c.nas("alice", "home").await?.stat("/").await?;
    let leader = c.leader_seen_by("CHN1", Duration::from_secs(10)).await?;

    // A disk fails, is replaced, and its LU rebuilt.
    ok(c.nasctl(&["disk", "fail", "2"]));
    wait_until("LU 1 to be reported DEGRADED", Duration::from_secs(10), || async {
        position(&events(&c).await.ok()?, "lu.degraded", Some(("lu", "1")))
    })
    .await?;
    let (tx, mut posted) = tokio::sync::mpsc::unbounded_channel();
    let receiver = tokio::spawn(webhook_receiver(
        tokio::net::TcpListener::bind(("127.0.0.1", port)).await?,
        tx,
    ));
    ok(c.nasctl(&["disk", "replace", "2"]));
    ok(c.nasctl(&["lu", "rebuild", "1"]));
    let disk_events = wait_until("the disk and LU events", Duration::from_secs(20), || async {
        let e = events(&c).await.ok()?;
        position(&e, "lu.optimal", Some(("lu", "1"))).map(|_| e)
    })
    .await?;
    let order = [
        position(&disk_events, "disk.failed", Some(("disk", "2"))),
        position(&disk_events, "lu.degraded", Some(("lu", "1"))),
        position(&disk_events, "disk.replaced", Some(("disk", "2"))),
        position(&disk_events, "lu.rebuild_started", Some(("lu", "1"))),
        position(&disk_events, "lu.rebuild_finished", Some(("lu", "1"))),
        position(&disk_events, "lu.optimal", Some(("lu", "1"))),
    ];
    assert!(order.iter().all(Option::is_some), "{:?}", kinds(&disk_events));
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {:?}",
        kinds(&disk_events)
    );
    let now_ms = nas_client::drill::now_ms();
    for e in &disk_events {
        assert!((started_ms..=now_ms).contains(&e.time_ms), "time of {e:?}");
        assert_eq!(e.chn, leader, "table changes are reported by the leader: {e:?}");
    }

    // The owner (CHN1) is killed while every hook hangs: the failover must
    // not wait for them.
    std::fs::write(&hang, "")?;
    let killed = Instant::now();
    c.kill9("CHN1");
    let served_after = wait_until("CHN2 to serve home", Duration::from_secs(15), || async {
        let e = events(&c).await.ok()?;
        position(&e, "export.taken_over", Some(("export", "home"))).map(|_| killed.elapsed())
    })
    .await?;
    assert!(
        served_after < Duration::from_secs(8),
        "the takeover waited for the hanging hook: {served_after:?}"
    );
    std::fs::remove_file(&hang)?;
    c.start_only(&["CHN1".to_string()])?;
    let all = wait_until("CHN1's recovery", Duration::from_secs(30), || async {
        let e = events(&c).await.ok()?;
        position(&e, "chn.recovered", Some(("chn", "CHN1"))).map(|_| e)
    })
    .await?;
    let failed = position(&all, "chn.failed", Some(("chn", "CHN1")));
    let taken = position(&all, "export.taken_over", Some(("export", "home")));
    let recovered = position(&all, "chn.recovered", Some(("chn", "CHN1")));
    assert!(failed.is_some() && taken.is_some(), "{:?}", kinds(&all));
    assert!(failed < recovered && taken < recovered, "{:?}", kinds(&all));
    let t = &all[taken.unwrap_or_default()];
    assert_eq!(t.chn, "CHN2", "the taker reports its takeover: {t:?}");
    assert_eq!(t.fields.get("from").map(String::as_str), Some("CHN1"), "{t:?}");
    assert_eq!(t.fields.get("to").map(String::as_str), Some("CHN2"), "{t:?}");
    assert!(
        t.fields.get("cause").is_some_and(|c| c == "probes" || c == "heartbeat"),
        "{t:?}"
    );
    for f in ["detection_ms", "takeover_ms"] {
        assert!(
            t.fields.get(f).and_then(|v| v.parse::<u64>().ok()).is_some(),
            "{f} in {t:?}"
        );
    }
    if leader == "CHN1" {
        let elected = all.iter().position(|e| {
            e.kind == "leader.elected"
                && e.chn != "CHN1"
                && e.fields.get("previous").map(String::as_str) == Some("CHN1")
        });
        assert!(elected.is_some(), "no new leader reported: {:?}", kinds(&all));
    }

    // The hooks saw the events on the CHNs that saw them, as JSON.
    let hooked = wait_until("the hook to see the takeover", Duration::from_secs(30), || async {
        let mut seen = Vec::new();
        for f in std::fs::read_dir(&hooks).ok()?.flatten() {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.path()).ok()?).ok()?;
            seen.push(format!("{} ({})", v["kind"].as_str()?, v["chn"].as_str()?));
        }
        seen.contains(&"export.taken_over (CHN2)".to_string()).then_some(seen)
    })
    .await?;
    assert!(hooked.contains(&format!("disk.failed ({leader})")), "{hooked:?}");
    let log = c.dir().join("chn2").join("nasd.log");
    wait_until("CHN2 to kill its hanging hook", Duration::from_secs(30), || async {
        let log = std::fs::read_to_string(&log).ok()?;
        log.contains("still running after 10000 ms").then_some(())
    })
    .await?;

    // The webhook got the events POSTed while it refused connections.
    let posted_kinds = wait_until("the webhook to get disk.failed", Duration::from_secs(20), || {
        let mut kinds = Vec::new();
        while let Ok(body) = posted.try_recv() {
            kinds.push(body);
        }
        async move { kinds.iter().any(|b| b.contains("\"disk.failed\"")).then_some(kinds) }
    })
    .await;
    receiver.abort();
    posted_kinds?;
    Ok(())
}

/// Where the screenshots go: NAS_SCREENSHOTS (the docs keep them) or the
/// test's own folder.
fn screenshot_dir(c: &TestCluster) -> PathBuf {
    std::env::var_os("NAS_SCREENSHOTS").map_or_else(|| c.dir().to_path_buf(), PathBuf::from)
}

fn health_of_lu1(b: &mut Browser) -> anyhow::Result<String> {
    Ok(
        b.eval("document.querySelector('tr[data-lu=\"1\"]')?.dataset.health ?? ''")?
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_follows_a_disk_failure_rebuild_and_failover_without_reloading(
) -> anyhow::Result<()> {
    let c = TestCluster::up(3, &[])?;
    // The page is CHN1's; the export lives on CHN2, so that CHN2 can fail.
    with_home_and_a_spare_disk(&c, "CHN2", "CHN3");
    c.nas("alice", "home").await?.stat("/").await?;
    let shots = screenshot_dir(&c);
    let url = c.node("CHN1").web.clone();
    let mut b = tokio::task::block_in_place(Browser::launch)?;
    let step = |b: &mut Browser| -> anyhow::Result<()> {
        b.viewport(1440, 900, false)?;
        b.goto(&url)?;
        // Not logged in: the login form.
        b.wait_for("location.pathname === '/login'", Duration::from_secs(5))?;
        b.eval(&format!(
            "document.querySelector('input[name=user]').value = '{ADMIN_USER}';
             document.querySelector('input[name=password]').value = '{ADMIN_PASSWORD}';
             document.querySelector('form').submit(); true"
        ))?;
        b.wait_for(
            "location.pathname === '/' && !!document.querySelector('tr[data-lu=\"1\"]')",
            Duration::from_secs(10),
        )?;
        // Marks this document: a reload would lose the mark.
        b.eval("window.__same_document = true")?;
        Ok(())
    };
    tokio::task::block_in_place(|| step(&mut b))?;
    assert_eq!(tokio::task::block_in_place(|| health_of_lu1(&mut b))?, "OPTIMAL");
    tokio::task::block_in_place(|| b.screenshot(&shots.join("status-healthy.png")))?;

    ok(c.nasctl(&["disk", "fail", "2"]));
    let failed_at = Instant::now();
    tokio::task::block_in_place(|| {
        b.wait_for(
            "document.querySelector('tr[data-lu=\"1\"]')?.dataset.health === 'DEGRADED'",
            Duration::from_secs(2),
        )
    })?;
    eprintln!("the page showed DEGRADED {:?} after disk fail", failed_at.elapsed());
    tokio::task::block_in_place(|| {
        b.wait_for(
            "document.querySelector('tr[data-disk=\"2\"]')?.dataset.state === 'FAILED'",
            Duration::from_secs(2),
        )
    })?;
    tokio::task::block_in_place(|| b.screenshot(&shots.join("status-degraded.png")))?;
    // The phone layout, for the docs.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        b.viewport(390, 844, true)?;
        b.screenshot(&shots.join("status-phone.png"))?;
        b.viewport(1440, 900, false)
    })?;

    ok(c.nasctl(&["disk", "replace", "2"]));
    ok(c.nasctl(&["lu", "rebuild", "1"]));
    tokio::task::block_in_place(|| {
        b.wait_for(
            "document.querySelector('tr[data-lu=\"1\"]')?.dataset.health === 'OPTIMAL'",
            Duration::from_secs(10),
        )
    })?;

    c.kill9("CHN2");
    tokio::task::block_in_place(|| {
        b.wait_for(
            "document.querySelector('tr[data-chn=\"CHN2\"]')?.dataset.state === 'FAILED' \
             && document.querySelector('tr[data-export=\"home\"]')?.dataset.owner === 'CHN3'",
            Duration::from_secs(15),
        )
    })?;
    // Events arrive a moment after the takeover itself.
    tokio::task::block_in_place(|| {
        b.wait_for(
            "!!document.querySelector('tr[data-kind=\"export.taken_over\"]')",
            Duration::from_secs(5),
        )
    })?;
    tokio::task::block_in_place(|| b.screenshot(&shots.join("status-failed-over.png")))?;
    assert_eq!(
        tokio::task::block_in_place(|| b.eval("window.__same_document === true"))?,
        serde_json::json!(true),
        "the page reloaded instead of updating in place"
    );
    Ok(())
}
