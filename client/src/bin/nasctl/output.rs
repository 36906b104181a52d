//! Output of nasctl: aligned tables for people, JSON for scripts.
//!
//! Owns formatting only. The JSON field names and value spellings are a
//! contract with scripts: add fields, never rename or drop them.

use serde_json::{Map, Value};

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

    /// Prints the table (or JSON) to stdout.
    pub fn print(&self, json: bool) {
        if json {
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
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_else(|_| "[]".into()));
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
        println!("{}", header.join("  ").trim_end());
        for r in &cells {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            println!("{}", line.join("  ").trim_end());
        }
        if self.rows.is_empty() {
            println!("(none)");
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
