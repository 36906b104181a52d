//! The boundaries docs/ARCHITECTURE.md promises, checked on the source:
//! nothing below `service/` names a gRPC status or code, and the node's
//! modules import each other without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as (path relative to `src/`, text).
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src())
                    .expect("under src")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).expect("read source")));
            }
        }
    }
    out.sort();
    out
}

/// Code without `//` comments, so that prose may name anything.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module a file belongs to, at the grain the boundaries are drawn:
/// `chn/lu_host/lease.rs` is `chn::lu_host`, `array/raid5.rs` is `array`.
fn unit_of_file(rel: &str) -> String {
    let parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        ["chn", sub, ..] if *sub != "mod" && *sub != "error" => format!("chn::{sub}"),
        [top, ..] => top.to_string(),
        [] => String::new(),
    }
}

/// The module a `crate::...` path names, at the same grain.
fn unit_of_path(path: &str) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    match parts.as_slice() {
        ["chn", sub, ..] if sub.chars().next().is_some_and(char::is_lowercase) && *sub != "error" => {
            format!("chn::{sub}")
        }
        [top, ..] => top.to_string(),
        [] => String::new(),
    }
}

/// Every `crate::a::b...` path in `code`, and each path inside a
/// `use crate::{a, b::c}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(
                group[..end]
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            );
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].trim_end_matches(':').to_string());
    }
    out
}

#[test]
fn nothing_below_service_names_a_grpc_status_or_code() {
    let mut offenders = Vec::new();
    for (rel, text) in sources(&src()) {
        if rel.starts_with("service/") || rel == "server.rs" {
            continue;
        }
        let code = code(&text);
        let named = code.contains("tonic::Status")
            || code.contains("tonic::Code")
            || code
                .lines()
                .any(|l| l.trim_start().starts_with("use tonic::") && (l.contains("Status") || l.contains("Code")))
            || code.contains(".code() ==");
        if named {
            offenders.push(rel);
        }
    }
    assert!(
        offenders.is_empty(),
        "these files below service/ name tonic::Status or tonic::Code, or branch on a status code; \
         give them a domain error and map it in service/status.rs: {offenders:?}"
    );
}

#[test]
fn the_node_modules_import_each_other_without_a_cycle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in sources(&src()) {
        let from = unit_of_file(&rel);
        for path in crate_paths(&code(&text)) {
            let to = unit_of_path(&path);
            if !to.is_empty() && to != from && !from.starts_with(&format!("{to}::")) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(n, &edges, &mut state, &mut Vec::new()) {
                panic!("import cycle between the node's modules: {}", cycle.join(" -> "));
            }
        }
    }
    // The layering the architecture document states.
    for low in ["rt", "array", "fs", "shared_lu"] {
        let up: Vec<&String> = edges
            .get(low)
            .into_iter()
            .flatten()
            .filter(|m| m.starts_with("chn") || *m == "service" || *m == "server")
            .collect();
        assert!(up.is_empty(), "{low} imports from the layers above it: {up:?}");
    }
    assert!(
        edges.get("rt").is_none_or(|e| e.is_empty()),
        "rt must stay a leaf: {:?}",
        edges.get("rt")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The parsers must find the paths and units they are meant to, or the
    // two tests above would pass vacuously.
    assert_eq!(
        crate_paths("use crate::chn::lu_host::{LuHost, Route};\nlet x = crate::rt::now_ms();"),
        ["chn::lu_host", "rt::now_ms"]
    );
    assert_eq!(
        crate_paths("use crate::{array::Array, fs::Volume};"),
        ["array::Array", "fs::Volume"]
    );
    assert_eq!(unit_of_path("chn::lu_host::LuHost"), "chn::lu_host");
    assert_eq!(unit_of_path("chn::Error"), "chn");
    assert_eq!(unit_of_file("chn/lu_host/lease.rs"), "chn::lu_host");
    assert_eq!(unit_of_file("array/raid5.rs"), "array");
    assert!(code("let a = 1; // tonic::Status").find("tonic").is_none());
}
