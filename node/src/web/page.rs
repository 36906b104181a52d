//! The status page's HTML, rendered here on the server (maud escapes
//! every value), with its stylesheet and the small script that refreshes
//! the live part every second. No build step: both assets are embedded.
//!
//! It must never show a secret: no password hashes, tokens or session
//! secrets reach a `View`.

use std::time::{Duration, UNIX_EPOCH};

use axum::http::header;
use axum::response::IntoResponse;
use maud::{html, Markup, DOCTYPE};
use nas_proto::{labels, Lu, LuJob};

use super::view::{ExportView, Member, View};
use crate::access::Caller;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

pub async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

pub async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS)
}

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) }
        link rel="stylesheet" href="/static/console.css";
    }
}

pub fn login(error: Option<&str>) -> Markup {
    html! {
        html lang="en" {
            head { (head("NAS cluster · log in")) }
            body.login {
                form.card method="post" action="/login" {
                    h1 { "NAS cluster" }
                    p.muted { "Status console. Log in as a user with the viewer role or above." }
                    @if let Some(e) = error { p.error { (e) } }
                    label { "User" input name="user" autocomplete="username" required autofocus; }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
            }
        }
    }
}

pub fn console(view: &View, caller: &Caller) -> Markup {
    html! {
        html lang="en" {
            head { (head(&format!("NAS cluster · {}", view.me))) }
            body {
                header.bar {
                    div.brand { "NAS cluster" }
                    div.meta { "served by " b { (view.me) } " · " (caller.user) " (" (labels::role(caller.role as i32)) ")" }
                    div #pulse .pulse.ok { "live" }
                    form method="post" action="/logout" { button.link type="submit" { "Log out" } }
                }
                main #live { (live(view)) }
                script src="/static/console.js" {}
            }
        }
    }
}

/// The part of the page the script replaces every second.
pub fn live(view: &View) -> Markup {
    let up = view.members.iter().filter(|m| !m.health.failed).count();
    let optimal = view
        .lus
        .iter()
        .filter(|l| labels::lu_health(l.health) == "OPTIMAL")
        .count();
    let serving = view.exports.iter().filter(|e| e.export.state == 1).count();
    html! {
        section.tiles {
            (tile("Leader", view.leader.as_deref().unwrap_or("none"), &format!("term {}", view.term), view.leader.is_some()))
            (tile(
                "Quorum",
                if view.no_quorum.is_none() { "OK" } else { "LOST" },
                view.no_quorum.as_deref().unwrap_or(&format!("applied {}", view.applied)),
                view.no_quorum.is_none()
            ))
            (tile("CHNs up", &format!("{up} / {}", view.members.len()), "heartbeats and probes", up == view.members.len()))
            (tile("LUs optimal", &format!("{optimal} / {}", view.lus.len()), "RAID health", optimal == view.lus.len()))
            (tile("Exports serving", &format!("{serving} / {}", view.exports.len()), "service table", serving == view.exports.len()))
            (tile("Sessions", &view.sessions.to_string(), &format!("{} file locks", view.locks), true))
        }
        div.grid {
            section.panel #cluster {
                h2 { "Cluster" }
                (table(&["CHN", "~Address", "Role", "Heartbeat", "~Probe", "State", "~Version"], html! {
                    @for m in &view.members { (member_row(m)) }
                }))
            }
            section.panel #disks {
                h2 { "Disks" }
                (table(&["Disk", "~Capacity", "LU", "State", "~Checksum errors"], html! {
                    @for d in &view.disks {
                        tr data-disk=(d.number) data-state=(labels::disk_state(d.state)) {
                            td { (d.number) }
                            td.opt { (bytes(d.capacity_bytes)) }
                            td { @if d.raid_group > 0 { (d.raid_group) } @else { "-" } }
                            td { (badge(labels::disk_state(d.state))) }
                            td.num.opt { (d.checksum_errors) }
                        }
                    }
                }))
            }
            section.panel.wide #lus {
                h2 { "LUs" }
                (table(&["LU", "RAID", "~Disks", "~Capacity", "Health", "Job"], html! {
                    @for l in &view.lus { (lu_row(l)) }
                }))
            }
            section.panel.wide #exports {
                h2 { "Exports" }
                (table(&["Export", "~LU", "Owner", "~Partner", "State", "~Epoch", "~Lease", "~Last move"], html! {
                    @for e in &view.exports { (export_row(e, view.now_ms)) }
                }))
            }
            section.panel.wide #events {
                h2 { "Last events" }
                @if view.events.is_empty() { p.muted { "No events yet." } }
                @else {
                    (table(&["Time (UTC)", "~CHN", "~Event", "What happened"], html! {
                        @for e in &view.events {
                            tr class=(format!("sev-{}", e.severity)) data-kind=(e.kind) {
                                td.time { (time(e.time_ms)) }
                                td.opt { (e.chn) }
                                td.opt { code { (e.kind) } }
                                td.wrap { (e.message) }
                            }
                        }
                    }))
                }
            }
        }
        p.footer.muted { "As " (view.me) " sees it at " (time(view.now_ms)) "." }
    }
}

fn tile(label: &str, value: &str, sub: &str, good: bool) -> Markup {
    html! {
        div class={ "tile " (if good { "good" } else { "bad" }) } {
            div.label { (label) }
            div.value { (value) }
            div.sub { (sub) }
        }
    }
}

/// A table; columns named with a leading `~` are left out on a phone.
fn table(columns: &[&str], rows: Markup) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr { @for c in columns {
                    @if let Some(optional) = c.strip_prefix('~') { th.opt { (optional) } } @else { th { (c) } }
                } } }
                tbody { (rows) }
            }
        }
    }
}

fn member_row(m: &Member) -> Markup {
    let state = if m.health.failed { "FAILED" } else { "UP" };
    let role = if m.leader {
        "leader"
    } else if m.voter {
        "follower"
    } else {
        "learner"
    };
    html! {
        tr data-chn=(m.daemon.chn) data-state=(state) {
            td { b { (m.daemon.chn) } }
            td.mono.opt { (m.daemon.address) }
            td { (role) }
            td.num { (age(m.health.heartbeat_age_ms)) }
            td.opt { @if m.health.probe_ok { "ok" } @else { (m.health.probe_failures) " failed" } }
            td { (badge(state)) }
            td.mono.opt { (m.daemon.version) }
        }
    }
}

fn export_row(e: &ExportView, now_ms: u64) -> Markup {
    let x = &e.export;
    let state = labels::service_state(x.state);
    html! {
        tr data-export=(x.name) data-owner=(x.owner_chn) {
            td { b { (x.name) } }
            td.opt { (x.lu) }
            td { (x.owner_chn) }
            td.opt { (if x.partner_chn.is_empty() { "-" } else { &x.partner_chn }) }
            td { (badge(&state.to_uppercase())) }
            td.num.opt { (e.lock.as_ref().map_or(0, |l| l.epoch)) }
            td.num.opt { (e.lock.as_ref().map_or("-".into(), |l| age(l.lease_expiry_ms.saturating_sub(now_ms)))) }
            td.opt.wrap {
                @if x.moved_ms > 0 {
                    (time(x.moved_ms)) " from " (x.moved_from) ": " (x.move_reason)
                } @else { "-" }
            }
        }
    }
}

fn lu_row(l: &Lu) -> Markup {
    let health = labels::lu_health(l.health);
    let disks: Vec<String> = l.disks.iter().map(u32::to_string).collect();
    html! {
        tr data-lu=(l.number) data-health=(health) {
            td { b { (l.number) } }
            td { "RAID " (l.raid) }
            td.opt { (disks.join(", ")) }
            td.opt { (bytes(l.capacity_bytes)) }
            td { (badge(health)) }
            td.wrap { @if let Some(j) = &l.job { (job(j)) } @else { "-" } }
        }
    }
}

fn job(j: &LuJob) -> Markup {
    let pct = if j.total_bytes == 0 {
        100.0
    } else {
        j.done_bytes as f64 * 100.0 / j.total_bytes as f64
    };
    html! {
        @if j.finished {
            span.muted { (j.kind) " finished: " (j.result) }
        } @else {
            progress max="100" value=(format!("{pct:.1}")) title=(format!("{} {:.0}% on {}", j.kind, pct, j.chn)) {
                (format!("{pct:.0}%"))
            }
            span.small { (j.kind) " " (format!("{pct:.0}%")) " · " (bytes(j.bytes_per_sec)) "/s · ETA " (j.eta_secs) " s" }
        }
    }
}

fn badge(state: &str) -> Markup {
    let class = match state {
        "OPTIMAL" | "UP" | "USED" | "SERVING" => "ok",
        "DEGRADED" | "REBUILDING" | "FAILING OVER" | "SPARE" | "NEW" => "warn",
        "FAILED" | "STOPPED" => "bad",
        _ => "neutral",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn age(ms: u64) -> String {
    match ms {
        u64::MAX => "never".into(),
        0..=9_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} s", ms / 1000),
    }
}

fn time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}
