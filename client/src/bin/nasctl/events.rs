//! `events`: the cluster's event log (state changes an operator cares
//! about), oldest first; `--follow` keeps printing new ones.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use ::nas_client::proto::{Event, EventsRequest};
use ::nas_client::Cluster;

use crate::audit::{pages, parse_age, since_ms};
use crate::output::{utc, Table};
use crate::status_err;

#[derive(Args)]
#[command(after_help = "Examples:\n  nasctl events --since 1h\n  nasctl events --follow --json | jq .kind")]
pub(crate) struct EventsArgs {
    /// Only events this recent: 30s, 15m, 2h, 7d.
    #[arg(long, value_parser = parse_age)]
    since: Option<Duration>,
    /// Keep printing new events as they come (Ctrl-C ends).
    #[arg(long)]
    follow: bool,
    /// Events per page.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

fn print(events: &[Event], json: bool, header: bool) {
    if json {
        // The same object the event hook and the webhook receive.
        for e in events {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        return;
    }
    let mut t = Table::new(&["seq", "time (UTC)", "chn", "severity", "event", "what happened"]);
    for e in events {
        t.row(vec![
            json!(e.seq),
            json!(utc(e.time_ms)),
            json!(e.chn),
            json!(e.severity),
            json!(e.kind),
            json!(e.message),
        ]);
    }
    if header || !events.is_empty() {
        t.print(false);
    }
}

pub(crate) async fn run(c: &Cluster, a: EventsArgs, json: bool) -> anyhow::Result<()> {
    let since_ms = since_ms(a.since);
    pages(
        a.follow,
        a.limit,
        |after_seq| async move {
            let req = EventsRequest {
                local: false,
                after_seq,
                since_ms,
                limit: a.limit,
            };
            c.list_events(req).await.map_err(status_err).map(|l| l.events)
        },
        |e| e.seq,
        |page, header| print(page, json, header),
    )
    .await
}
