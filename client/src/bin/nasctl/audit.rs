//! `audit`: the cluster's audit log (every Admin change, every login and
//! every refused call), oldest first; `--follow` keeps printing new ones.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use ::nas_client::proto::{AuditRecord, AuditRequest};
use ::nas_client::Cluster;

use crate::output::{utc, Table};
use crate::status_err;

#[derive(Args)]
pub(crate) struct AuditArgs {
    /// Only records this recent: 30s, 15m, 2h, 7d.
    #[arg(long, value_parser = parse_age)]
    since: Option<Duration>,
    /// Keep printing new records as they come (Ctrl-C ends).
    #[arg(long)]
    follow: bool,
    /// Records per page.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

pub(crate) fn parse_age(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not an age; use e.g. 30s, 15m, 2h, 7d"))?;
    let secs = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in {s:?}; use s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn print(records: &[AuditRecord], json: bool, header: bool) {
    if json {
        for r in records {
            outln!(
                "{}",
                json!({"seq": r.seq, "time_ms": r.time_ms, "user": r.user, "role": r.role, "source": r.source,
                       "chn": r.chn, "call": r.call, "args": r.args, "code": r.code, "result": r.result})
            );
        }
        return;
    }
    let mut t = Table::new(&[
        "seq",
        "time (UTC)",
        "user",
        "role",
        "source",
        "chn",
        "call",
        "code",
        "args / result",
    ]);
    for r in records {
        let detail = if r.result.is_empty() {
            r.args.clone()
        } else {
            format!("{} -> {}", r.args, r.result)
        };
        t.row(vec![
            json!(r.seq),
            json!(utc(r.time_ms)),
            json!(r.user),
            json!(r.role),
            json!(r.source),
            json!(r.chn),
            json!(r.call),
            json!(format!("{:?}", tonic::Code::from(r.code))),
            json!(detail),
        ]);
    }
    if header || !records.is_empty() {
        t.print(false);
    }
}

pub(crate) async fn run(c: &Cluster, a: AuditArgs, json: bool) -> anyhow::Result<()> {
    let since_ms = since_ms(a.since);
    pages(
        a.follow,
        a.limit,
        |after_seq| async move {
            let req = AuditRequest {
                local: false,
                after_seq,
                since_ms,
                limit: a.limit,
            };
            c.list_audit(req).await.map_err(status_err).map(|l| l.records)
        },
        |r| r.seq,
        |page, header| print(page, json, header),
    )
    .await
}

/// The time `--since AGE` names, as milliseconds since the epoch (0: all).
pub(crate) fn since_ms(since: Option<Duration>) -> u64 {
    since.map_or(0, |d| {
        ::nas_client::drill::now_ms().saturating_sub(d.as_millis() as u64)
    })
}

/// Pages through a numbered log (the audit log, the event log), printing
/// each page; with `follow`, asks for new rows every second until Ctrl-C.
pub(crate) async fn pages<T, F, Fut>(
    follow: bool,
    limit: u32,
    mut fetch: F,
    seq: impl Fn(&T) -> u64,
    mut print: impl FnMut(&[T], bool),
) -> anyhow::Result<()>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<T>>>,
{
    let mut after_seq = 0;
    let mut first = true;
    loop {
        let page = fetch(after_seq).await?;
        if let Some(last) = page.last() {
            after_seq = seq(last);
        }
        print(&page, first && !follow);
        first = false;
        let full = page.len() >= limit as usize;
        if !follow && !full {
            return Ok(());
        }
        if !full {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_parse() {
        assert_eq!(super::parse_age("90s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(super::parse_age("2h"), Ok(std::time::Duration::from_secs(7200)));
        assert!(super::parse_age("2w").is_err());
    }
}
