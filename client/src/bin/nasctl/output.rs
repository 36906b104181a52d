//! Output of nasctl: aligned tables for people, JSON for scripts.
//!
//! Owns formatting only. The JSON field names and value spellings are a
//! contract with scripts: add fields, never rename or drop them.

use serde_json::{json, Map, Value};

use ::nas_client::proto::WriteReply;

/// Rows with named columns, printed as a table or as a JSON array.
pub struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; values are in column order.
    pub fn row(&mut self, values: Vec<Value>) {
        self.rows.push(values);
    }

    /// The rows as a JSON array of objects keyed by column.
    pub fn to_json(&self) -> Value {
        let out: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let obj: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|c| c.to_string())
                    .zip(r.iter().cloned())
                    .collect();
                Value::Object(obj)
            })
            .collect();
        Value::Array(out)
    }

    /// Prints the table (or JSON) to stdout.
    pub fn print(&self, json: bool) {
        if json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&self.to_json()).unwrap_or_else(|_| "[]".into())
            );
            return;
        }
        let cells: Vec<Vec<String>> = self.rows.iter().map(|r| r.iter().map(cell).collect()).collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| cells.iter().map(|r| r[i].len()).max().unwrap_or(0).max(c.len()))
            .collect();
        let header: Vec<String> = self
            .columns
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{:<w$}", c.to_uppercase().replace('_', " ")))
            .collect();
        outln!("{}", header.join("  ").trim_end());
        for r in &cells {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            outln!("{}", line.join("  ").trim_end());
        }
        if self.rows.is_empty() {
            outln!("(none)");
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Prints a list, noting on stderr when it came from a possibly stale copy.
pub fn print_list(t: &Table, json: bool, stale: bool) {
    t.print(json);
    if stale && !json {
        eprintln!("(answered from the contacted CHN's copy; may be stale)");
    }
}

pub fn written(json: bool, what: &str, r: WriteReply) {
    if json {
        outln!("{}", json!({"log_index": r.log_index, "assigned": r.assigned}));
    } else {
        outln!("{what} (log index {})", r.log_index);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_641_937_882), "2026-11-25 21:25:37");
    }
}
