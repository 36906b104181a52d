//! The file system against an in-memory model, remounts and power cuts
//! included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::volume::{CallId, Change, Outcome};
use super::*;
use crate::array::{ArrayError, BlockDevice};

/// An LU in memory that remembers what was flushed, so a test can cut
/// the power: everything written since the last flush is lost.
struct MemDev {
    state: Mutex<(Vec<u8>, Vec<u8>)>,
    /// This many of the next writes fail with EIO.
    failing: std::sync::atomic::AtomicU64,
}

impl MemDev {
    fn new(len: usize) -> Arc<Self> {
        Arc::new(MemDev {
            state: Mutex::new((vec![0; len], vec![0; len])),
            failing: Default::default(),
        })
    }

    /// A device holding only what was durable on this one.
    fn power_cut(&self) -> Arc<Self> {
        let s = self.state.lock().unwrap();
        Arc::new(MemDev {
            state: Mutex::new((s.1.clone(), s.1.clone())),
            failing: Default::default(),
        })
    }
}

impl BlockDevice for MemDev {
    fn len(&self) -> u64 {
        self.state.lock().unwrap().0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), ArrayError> {
        let s = self.state.lock().unwrap();
        buf.copy_from_slice(&s.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::result::Result<(), ArrayError> {
        let fail = |n: u64| n.checked_sub(1);
        if self
            .failing
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                fail,
            )
            .is_ok()
        {
            return Err(ArrayError::io("injected", std::io::Error::from_raw_os_error(libc::EIO)));
        }
        let mut s = self.state.lock().unwrap();
        s.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> std::result::Result<(), ArrayError> {
        let mut s = self.state.lock().unwrap();
        s.1 = s.0.clone();
        Ok(())
    }
}

const DEV_BYTES: usize = 24 << 20;

fn root() -> Caller {
    Caller {
        uid: 0,
        user: "root".into(),
    }
}

fn alice() -> Caller {
    Caller {
        uid: 1000,
        user: "alice".into(),
    }
}

fn bob() -> Caller {
    Caller {
        uid: 1001,
        user: "bob".into(),
    }
}

fn p(s: &str) -> FsPath {
    FsPath::parse(s).unwrap()
}

fn change(v: &Volume, caller: &Caller, change: Change) -> Result<Outcome> {
    v.change_blocking(Request {
        caller: caller.clone(),
        change,
        call: None,
        durable: true,
        stream_since: None,
    })
}

fn create(v: &Volume, c: &Caller, path: &str) -> Result<u64> {
    match change(
        v,
        c,
        Change::Create {
            path: p(path),
            mode: 0o644,
            exclusive: false,
            truncate: false,
        },
    )? {
        Outcome::Attr(a) => Ok(a.inode.ino),
        o => panic!("create returned {o:?}"),
    }
}

fn write(v: &Volume, c: &Caller, ino: u64, offset: u64, data: &[u8]) -> Result<Outcome> {
    change(
        v,
        c,
        Change::Write {
            ino,
            offset,
            data: data.to_vec().into(),
        },
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// The model: path -> node, the root implied.
#[derive(Debug, Default, Clone)]
struct Model(BTreeMap<String, Node>);

fn kind(e: &FsError) -> &'static str {
    match e {
        FsError::InvalidArgument(_) => "invalid",
        FsError::NotFound(_) => "notfound",
        FsError::AlreadyExists(_) => "exists",
        FsError::PermissionDenied(_) => "perm",
        FsError::FailedPrecondition(_) => "precondition",
        FsError::NoSpace(_) => "nospace",
        FsError::MetadataFull(_) => "metafull",
        FsError::Interrupted(_) => "interrupted",
        FsError::OutOfRange(_) => "range",
        FsError::Io(_) => "io",
        FsError::Corrupt(_) => "corrupt",
    }
}

impl Model {
    fn parent(path: &str) -> String {
        match path.rfind('/') {
            Some(0) | None => "/".into(),
            Some(i) => path[..i].into(),
        }
    }

    /// Resolves like the tree does: a missing component is NotFound, a
    /// file on the way is FailedPrecondition.
    fn resolve(&self, path: &str) -> std::result::Result<Node, &'static str> {
        if path == "/" {
            return Ok(Node::Dir);
        }
        let mut cur = String::new();
        let names: Vec<&str> = path.split('/').filter(|n| !n.is_empty()).collect();
        for (i, n) in names.iter().enumerate() {
            cur.push('/');
            cur.push_str(n);
            match self.0.get(&cur) {
                None => return Err("notfound"),
                Some(Node::File(_)) if i + 1 < names.len() => return Err("precondition"),
                Some(node) => {
                    if i + 1 == names.len() {
                        return Ok(node.clone());
                    }
                }
            }
        }
        Ok(Node::Dir)
    }

    fn dir_parent(&self, path: &str) -> std::result::Result<(), &'static str> {
        match self.resolve(&Self::parent(path))? {
            Node::Dir => Ok(()),
            Node::File(_) => Err("precondition"),
        }
    }

    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        self.0
            .keys()
            .filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .cloned()
            .collect()
    }

    fn mkdir(&mut self, path: &str) -> std::result::Result<(), &'static str> {
        self.dir_parent(path)?;
        if self.0.contains_key(path) {
            return Err("exists");
        }
        self.0.insert(path.into(), Node::Dir);
        Ok(())
    }

    fn create(&mut self, path: &str) -> std::result::Result<(), &'static str> {
        self.dir_parent(path)?;
        match self.0.get(path) {
            Some(Node::Dir) => Err("precondition"),
            Some(Node::File(_)) => Ok(()),
            None => {
                self.0.insert(path.into(), Node::File(vec![]));
                Ok(())
            }
        }
    }

    fn remove(&mut self, path: &str, dir: bool) -> std::result::Result<(), &'static str> {
        self.dir_parent(path)?;
        match self.0.get(path) {
            None => Err("notfound"),
            Some(Node::Dir) if !dir => Err("precondition"),
            Some(Node::File(_)) if dir => Err("precondition"),
            Some(Node::Dir) if !self.children(path).is_empty() => Err("precondition"),
            _ => {
                self.0.remove(path);
                Ok(())
            }
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> std::result::Result<(), &'static str> {
        if to != from && to.starts_with(&format!("{from}/")) {
            return Err("invalid");
        }
        self.dir_parent(from)?;
        self.dir_parent(to)?;
        let moving = self.0.get(from).cloned().ok_or("notfound")?;
        if from == to {
            return Ok(());
        }
        match (&moving, self.0.get(to)) {
            (Node::Dir, Some(Node::File(_))) | (Node::File(_), Some(Node::Dir)) => return Err("precondition"),
            (Node::Dir, Some(Node::Dir)) if !self.children(to).is_empty() => return Err("precondition"),
            _ => {}
        }
        let moved: Vec<(String, Node)> = self
            .0
            .iter()
            .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
            .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), v.clone()))
            .collect();
        self.0.retain(|k, _| !(k == from || k.starts_with(&format!("{from}/"))));
        self.0.remove(to);
        self.0.extend(moved);
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Mkdir(String),
    Create(String),
    Write(String, u64, Vec<u8>),
    Truncate(String, u64),
    Unlink(String),
    Rmdir(String),
    Rename(String, String),
    Remount,
    PowerCut,
    Snapshot(String),
    DeleteSnapshot(String),
}

fn snapshot_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["s1", "s2", "s3"]).prop_map(str::to_string)
}

fn path_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4).prop_map(|v| format!("/{}", v.join("/")))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => path_strategy().prop_map(Op::Mkdir),
        3 => path_strategy().prop_map(Op::Create),
        5 => (path_strategy(), 0u64..40_000, prop::collection::vec(any::<u8>(), 1..12_000))
            .prop_map(|(p, o, d)| Op::Write(p, o, d)),
        2 => (path_strategy(), 0u64..30_000).prop_map(|(p, s)| Op::Truncate(p, s)),
        2 => path_strategy().prop_map(Op::Unlink),
        1 => path_strategy().prop_map(Op::Rmdir),
        2 => (path_strategy(), path_strategy()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => Just(Op::Remount),
        1 => Just(Op::PowerCut),
        2 => snapshot_name().prop_map(Op::Snapshot),
        1 => snapshot_name().prop_map(Op::DeleteSnapshot),
    ]
}

fn same<T: std::fmt::Debug>(got: Result<T>, want: std::result::Result<(), &'static str>, what: &str) {
    match (&got, want) {
        (Ok(_), Ok(())) => {}
        (Err(e), Err(k)) => assert_eq!(kind(e), k, "{what}: {e}"),
        _ => panic!("{what}: file system {got:?}, model {want:?}"),
    }
}

/// The files and directories under `top` (the root, or a snapshot's
/// `/.snapshot/NAME`), keyed by their path below it, and the bytes their
/// extents take.
fn tree_of(v: &Volume, top: &str) -> (BTreeMap<String, Node>, u64) {
    let mut seen = BTreeMap::new();
    let mut stack = vec!["/".to_string()];
    let mut allocated = 0;
    let full = |dir: &str| {
        if dir == "/" {
            top.to_string()
        } else {
            format!("{}{dir}", top.trim_end_matches('/'))
        }
    };
    while let Some(dir) = stack.pop() {
        let mut after = String::new();
        loop {
            let page = v.list(&root(), &p(&full(&dir)), &after, 2).unwrap();
            if page.is_empty() {
                break;
            }
            for e in page {
                let path = if dir == "/" {
                    format!("/{}", e.name)
                } else {
                    format!("{dir}/{}", e.name)
                };
                allocated += e.attr.allocated_bytes;
                assert_eq!(e.attr.allocated_bytes % BLOCK, 0);
                assert!(
                    e.attr.allocated_bytes <= e.attr.inode.size.div_ceil(BLOCK) * BLOCK,
                    "{path} holds blocks past its end"
                );
                let node = match e.attr.inode.kind {
                    FileKind::Dir => {
                        stack.push(path.clone());
                        Node::Dir
                    }
                    FileKind::File => Node::File(v.read(&root(), e.attr.inode.ino, 0, u64::MAX).unwrap()),
                };
                after = e.name;
                seen.insert(path, node);
            }
        }
    }
    (seen, allocated)
}

/// Every file and directory of the model is in the volume with the same
/// content, nothing more; each snapshot holds what the tree held when it
/// was taken; and every block is in exactly one place.
fn check(v: &Volume, m: &Model, snaps: &BTreeMap<String, Model>) {
    let (seen, allocated) = tree_of(v, "/");
    assert_eq!(digest(&seen), digest(&m.0));
    for (name, snap) in snaps {
        let (seen, _) = tree_of(v, &format!("/.snapshot/{name}"));
        assert_eq!(digest(&seen), digest(&snap.0), "snapshot {name}");
    }
    let listed: Vec<String> = v.snapshots().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(listed.len(), snaps.len(), "{listed:?}");
    let space = v.space().unwrap();
    assert_eq!(
        space.free_bytes + allocated + space.snapshot_bytes,
        space.data_bytes,
        "space leaked or double counted"
    );
    assert_eq!(space.files as usize, m.0.len());
    let blocks = v.check_blocks().unwrap();
    assert!(blocks.problems.is_empty(), "{blocks:?}");
    assert_eq!(blocks.live_bytes, allocated);
}

/// Names, kinds, lengths and checksums: short enough to read in a failure.
fn digest(tree: &BTreeMap<String, Node>) -> Vec<(String, Option<(usize, u32)>)> {
    tree.iter()
        .map(|(k, n)| {
            let file = match n {
                Node::Dir => None,
                Node::File(d) => Some((d.len(), crc32fast::hash(d))),
            };
            (k.clone(), file)
        })
        .collect()
}

fn ino_of(v: &Volume, path: &str) -> Option<u64> {
    v.stat(&root(), &p(path)).ok().map(|a| a.inode.ino)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_tree_behaves_like_the_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let mut dev = MemDev::new(DEV_BYTES);
        let mut v = Volume::mount(dev.clone()).unwrap();
        let mut m = Model::default();
        let mut snaps: BTreeMap<String, Model> = BTreeMap::new();
        let c = root();
        for op in ops {
            match op {
                Op::Mkdir(path) => same(change(&v, &c, Change::Mkdir { path: p(&path), mode: 0o755 }), m.mkdir(&path), "mkdir"),
                Op::Create(path) => same(create(&v, &c, &path), m.create(&path), "create"),
                Op::Write(path, off, data) => {
                    if let (Some(ino), Ok(Node::File(mut content))) = (ino_of(&v, &path), m.resolve(&path)) {
                        write(&v, &c, ino, off, &data).unwrap();
                        let end = off as usize + data.len();
                        if content.len() < end {
                            content.resize(end, 0);
                        }
                        content[off as usize..end].copy_from_slice(&data);
                        m.0.insert(path, Node::File(content));
                    }
                }
                Op::Truncate(path, size) => {
                    if let (Some(ino), Ok(Node::File(mut content))) = (ino_of(&v, &path), m.resolve(&path)) {
                        change(&v, &c, Change::Truncate { ino, size }).unwrap();
                        content.resize(size as usize, 0);
                        m.0.insert(path, Node::File(content));
                    }
                }
                Op::Unlink(path) => same(change(&v, &c, Change::Unlink { path: p(&path) }), m.remove(&path, false), "unlink"),
                Op::Rmdir(path) => same(change(&v, &c, Change::Rmdir { path: p(&path) }), m.remove(&path, true), "rmdir"),
                Op::Rename(from, to) => same(change(&v, &c, Change::Rename { from: p(&from), to: p(&to) }), m.rename(&from, &to), "rename"),
                Op::Remount => {
                    drop(v);
                    v = Volume::mount(dev.clone()).unwrap();
                }
                Op::PowerCut => {
                    // Every change above was acknowledged durable: a power
                    // cut must not lose any of them.
                    let cut = dev.power_cut();
                    drop(v);
                    dev = cut;
                    v = Volume::mount(dev.clone()).unwrap();
                }
                Op::Snapshot(name) => {
                    let want = if snaps.contains_key(&name) { Err("exists") } else { Ok(()) };
                    same(change(&v, &c, Change::Snapshot { name: name.clone() }), want, "snapshot");
                    snaps.entry(name).or_insert_with(|| m.clone());
                }
                Op::DeleteSnapshot(name) => {
                    let want = if snaps.remove(&name).is_some() { Ok(()) } else { Err("notfound") };
                    same(change(&v, &c, Change::DeleteSnapshot { name }), want, "delete snapshot");
                }
            }
        }
        check(&v, &m, &snaps);
    }
}

#[test]
fn non_durable_pieces_vanish_in_a_power_cut_and_leave_no_trace() {
    let dev = MemDev::new(DEV_BYTES);
    let v = Volume::mount(dev.clone()).unwrap();
    let ino = create(&v, &root(), "/f").unwrap();
    write(&v, &root(), ino, 0, &[7; 5000]).unwrap();
    for i in 0..4u64 {
        v.change_blocking(Request {
            caller: root(),
            change: Change::Write {
                ino,
                offset: 5000 + i * 100_000,
                data: vec![9; 100_000].into(),
            },
            call: None,
            durable: false,
            stream_since: None,
        })
        .unwrap();
    }
    assert_eq!(v.stat_handle(ino).unwrap().inode.size, 405_000);
    // The cut comes before the unmount, which would make them durable.
    let cut = dev.power_cut();
    drop(v);
    let v = Volume::mount(cut).unwrap();
    let mut m = Model::default();
    m.0.insert("/f".into(), Node::File(vec![7; 5000]));
    check(&v, &m, &BTreeMap::new());
}

#[test]
fn a_call_sent_twice_is_applied_once() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let ino = create(&v, &root(), "/log").unwrap();
    let append = |seq| {
        v.change_blocking(Request {
            caller: root(),
            change: Change::Write {
                ino,
                offset: v.stat_handle(ino).unwrap().inode.size,
                data: b"x".to_vec().into(),
            },
            call: Some(CallId {
                client: "c1".into(),
                seq,
                acked: 0,
            }),
            durable: true,
            stream_since: None,
        })
    };
    assert_eq!(append(1).unwrap(), Outcome::Size(1));
    assert_eq!(
        append(1).unwrap(),
        Outcome::Size(1),
        "the retry returns the first reply"
    );
    assert_eq!(append(2).unwrap(), Outcome::Size(2));
    assert_eq!(v.stored_reply("c1", 1).unwrap(), Some(Outcome::Size(1)));
    // Acknowledging 2 forgets 1.
    v.change_blocking(Request {
        caller: root(),
        change: Change::Sync { ino },
        call: Some(CallId {
            client: "c1".into(),
            seq: 3,
            acked: 3,
        }),
        durable: true,
        stream_since: None,
    })
    .unwrap();
    assert_eq!(v.stored_reply("c1", 1).unwrap(), None);
    assert_eq!(v.read(&root(), ino, 0, 10).unwrap(), b"xx");
}

#[test]
fn a_full_file_system_refuses_writes_cleanly_and_recovers_after_deletes() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let free = v.space().unwrap().free_bytes;
    let a = create(&v, &root(), "/a").unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut written = 0;
    let err = loop {
        match write(&v, &root(), a, written, &chunk) {
            Ok(_) => written += chunk.len() as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(kind(&err), "nospace", "{err}");
    assert!(err.to_string().contains("delete files"), "{err}");
    assert_eq!(
        v.stat_handle(a).unwrap().inode.size,
        written,
        "the refused write changed nothing"
    );
    let b = create(&v, &root(), "/b").unwrap();
    assert_eq!(kind(&write(&v, &root(), b, 0, &chunk).unwrap_err()), "nospace");
    change(&v, &root(), Change::Unlink { path: p("/a") }).unwrap();
    assert_eq!(v.space().unwrap().free_bytes, free);
    write(&v, &root(), b, 0, &chunk).unwrap();
    assert_eq!(v.read(&root(), b, 0, 16).unwrap(), vec![1u8; 16]);
}

#[test]
fn owners_and_modes_are_enforced() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let f = create(&v, &alice(), "/alice.txt").unwrap();
    write(&v, &alice(), f, 0, b"mine").unwrap();
    assert_eq!(kind(&write(&v, &bob(), f, 0, b"evil").unwrap_err()), "perm");
    assert_eq!(v.read(&bob(), f, 0, 4).unwrap(), b"mine", "0644 lets others read");
    // The root is sticky: bob may not remove or replace alice's file.
    assert_eq!(
        kind(&change(&v, &bob(), Change::Unlink { path: p("/alice.txt") }).unwrap_err()),
        "perm"
    );
    create(&v, &bob(), "/bob.txt").unwrap();
    let r = change(
        &v,
        &bob(),
        Change::Rename {
            from: p("/bob.txt"),
            to: p("/alice.txt"),
        },
    );
    assert_eq!(kind(&r.unwrap_err()), "perm");
    change(
        &v,
        &alice(),
        Change::Mkdir {
            path: p("/private"),
            mode: 0o700,
        },
    )
    .unwrap();
    assert_eq!(kind(&create(&v, &bob(), "/private/x").unwrap_err()), "perm");
    assert_eq!(kind(&v.list(&bob(), &p("/private"), "", 10).unwrap_err()), "perm");
    create(&v, &alice(), "/private/x").unwrap();
    assert_eq!(v.read(&alice(), f, 0, 4).unwrap(), b"mine");
}

#[test]
fn bad_names_and_ranges_are_refused() {
    for bad in ["", "relative", "/a/../b", "/a/./b", "/a\0b"] {
        assert!(FsPath::parse(bad).is_err(), "{bad:?}");
    }
    assert!(FsPath::parse(&format!("/{}", "n".repeat(256))).is_err());
    assert!(FsPath::parse(&format!("/{}", "n".repeat(255))).is_ok());
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let f = create(&v, &root(), "/f").unwrap();
    write(&v, &root(), f, 0, b"abc").unwrap();
    assert_eq!(kind(&write(&v, &root(), f, MAX_FILE_SIZE, b"x").unwrap_err()), "range");
    assert_eq!(kind(&v.read(&root(), f, 4, 1).unwrap_err()), "range");
    assert_eq!(
        v.read(&root(), f, 3, 10).unwrap(),
        b"",
        "reading at the end gives nothing"
    );
    assert_eq!(v.read(&root(), f, 1, 10).unwrap(), b"bc", "reads stop at the end");
    assert_eq!(
        kind(&change(&v, &root(), Change::Rmdir { path: p("/") }).unwrap_err()),
        "invalid"
    );
    change(
        &v,
        &root(),
        Change::Mkdir {
            path: p("/d"),
            mode: 0o755,
        },
    )
    .unwrap();
    let r = change(
        &v,
        &root(),
        Change::Rename {
            from: p("/d"),
            to: p("/d/e"),
        },
    );
    assert_eq!(kind(&r.unwrap_err()), "invalid");
    change(&v, &root(), Change::Unlink { path: p("/f") }).unwrap();
    let gone = v.read(&root(), f, 0, 1).unwrap_err();
    assert!(gone.to_string().contains("deleted"), "{gone}");
}

#[test]
fn a_large_sequential_file_stays_in_one_extent() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let f = create(&v, &root(), "/big").unwrap();
    for i in 0..8u64 {
        write(&v, &root(), f, i << 20, &vec![i as u8; 1 << 20]).unwrap();
    }
    let a = v.stat_handle(f).unwrap();
    assert_eq!(a.extents, 1);
    assert_eq!(a.allocated_bytes, 8 << 20);
    assert!(a.head_address >= layout::META_AT);
    assert_eq!(v.read(&root(), f, (5 << 20) - 1, 2).unwrap(), vec![4, 5]);
}

#[test]
fn a_full_metadata_area_refuses_additions_and_deletes_still_work() {
    // The smallest LU a file system fits (an 8 MiB metadata area).
    let v = Volume::mount(MemDev::new(14 << 20)).unwrap();
    let name = |t: usize, i: usize| format!("/{t:02}-{i:06}-{}", "n".repeat(180));
    let create = |v: &Volume, c: &Caller, path: &str| {
        v.change_blocking(Request {
            caller: c.clone(),
            change: Change::Create {
                path: p(path),
                mode: 0o644,
                exclusive: true,
                truncate: false,
            },
            call: None,
            durable: true,
            stream_since: None,
        })
    };
    // Many writers at once, as 64 clients would: groups of changes.
    let made: Vec<Vec<String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..32)
            .map(|t| {
                let v = &v;
                s.spawn(move || {
                    let mut made = Vec::new();
                    for i in 0.. {
                        match create(v, &root(), &name(t, i)) {
                            Ok(_) => made.push(name(t, i)),
                            Err(e) => {
                                assert_eq!(kind(&e), "metafull", "{e}");
                                return made;
                            }
                        }
                    }
                    made
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let files: usize = made.iter().map(Vec::len).sum();
    // About 1 KB of metadata each with these long names; the database
    // grows by doubling, so between half and all of the 8 MiB area.
    assert!(files > 3_000, "only {files} files fit");
    let space = v.space().unwrap();
    assert!(space.meta_used_bytes > space.meta_bytes / 2, "{space:?}");
    // Full: additions are refused, precisely and at once, every time.
    for _ in 0..3 {
        let e = create(&v, &root(), "/one-more").unwrap_err();
        assert_eq!(kind(&e), "metafull", "{e}");
        assert!(e.to_string().contains("delete files"), "{e}");
    }
    // Reads and deletes work in the full area.
    assert!(v.stat(&root(), &p(&made[0][0])).is_ok());
    std::thread::scope(|s| {
        for paths in &made {
            let v = &v;
            s.spawn(move || {
                for path in paths {
                    if let Err(e) = change(v, &root(), Change::Unlink { path: p(path) }) {
                        panic!("unlink {path}: {e}");
                    }
                }
            });
        }
    });
    // And the freed room takes new files without a remount.
    for i in 0..100 {
        create(&v, &root(), &format!("/again-{i}")).unwrap();
    }
}

#[test]
fn a_failed_group_reopens_the_database_and_a_stream_across_it_is_refused() {
    let dev = MemDev::new(DEV_BYTES);
    let v = Volume::mount(dev.clone()).unwrap();
    let ino = create(&v, &root(), "/f").unwrap();
    let piece = |offset: u64, durable: bool, since: Option<u64>| {
        v.change_blocking(Request {
            caller: root(),
            change: Change::Write {
                ino,
                offset,
                data: vec![5u8; 4096].into(),
            },
            call: None,
            durable,
            stream_since: since,
        })
    };
    let since = Some(v.generation());
    piece(0, false, since).unwrap();
    // The device fails one group: nothing of it is kept, and the database,
    // which redb would now refuse to use, is opened again.
    dev.failing.store(1, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(kind(&write(&v, &root(), ino, 0, b"x").unwrap_err()), "io");
    assert_eq!(v.generation(), since.unwrap() + 1);
    // The stream's first piece did not survive that: its end is refused.
    let last = piece(4096, true, since).unwrap_err();
    assert_eq!(kind(&last), "interrupted", "{last}");
    assert_eq!(v.stat(&root(), &p("/f")).unwrap().inode.size, 0);
    // The volume works on: writes, and streams begun after the reopening.
    piece(0, true, Some(v.generation())).unwrap();
    assert_eq!(v.stat(&root(), &p("/f")).unwrap().inode.size, 4096);
}

fn read_all(v: &Volume, path: &str) -> Vec<u8> {
    let attr = v.stat(&root(), &p(path)).unwrap();
    v.read(&root(), attr.inode.ino, 0, u64::MAX).unwrap()
}

fn snapshot(v: &Volume, name: &str) -> Result<Outcome> {
    change(v, &root(), Change::Snapshot { name: name.into() })
}

#[test]
fn a_snapshot_keeps_files_as_they_were_while_they_change_and_deleting_it_frees_its_blocks() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let c = root();
    change(
        &v,
        &c,
        Change::Mkdir {
            path: p("/d"),
            mode: 0o755,
        },
    )
    .unwrap();
    let a = create(&v, &c, "/d/a").unwrap();
    let old = random(3 * BLOCK as usize + 100, 1);
    write(&v, &c, a, 0, &old).unwrap();
    let b = create(&v, &c, "/b").unwrap();
    write(&v, &c, b, 0, &random(10_000, 2)).unwrap();
    let before = v.space().unwrap();
    match snapshot(&v, "monday").unwrap() {
        Outcome::Snapshot(s) => assert_eq!((s.name.as_str(), s.files), ("monday", 3)),
        o => panic!("{o:?}"),
    }
    // Taking it copied no data.
    assert_eq!(v.space().unwrap().free_bytes, before.free_bytes);

    // Overwrite part of a block, grow past the end, shrink and delete.
    let mut new = old.clone();
    new[5000..5010].copy_from_slice(&[0xee; 10]);
    write(&v, &c, a, 5000, &[0xee; 10]).unwrap();
    write(&v, &c, a, old.len() as u64 + 3000, b"tail").unwrap();
    new.resize(old.len() + 3000, 0);
    new.extend_from_slice(b"tail");
    change(&v, &c, Change::Truncate { ino: b, size: 10 }).unwrap();
    change(&v, &c, Change::Truncate { ino: b, size: 5000 }).unwrap();
    change(&v, &c, Change::Unlink { path: p("/d/a") }).unwrap();
    let a2 = create(&v, &c, "/d/a").unwrap();
    write(&v, &c, a2, 0, &new).unwrap();

    assert_eq!(read_all(&v, "/.snapshot/monday/d/a"), old);
    assert_eq!(read_all(&v, "/.snapshot/monday/b"), random(10_000, 2));
    assert_eq!(read_all(&v, "/d/a"), new);
    let mut b_now = random(10, 2);
    b_now.resize(5000, 0);
    assert_eq!(
        read_all(&v, "/b"),
        b_now,
        "the grown tail reads as zeros, not as the snapshot's bytes"
    );
    let listed = v.list(&c, &p("/.snapshot"), "", 10).unwrap();
    assert_eq!(listed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["monday"]);
    assert!(v
        .list(&c, &p("/"), "", 10)
        .unwrap()
        .iter()
        .all(|e| e.name != ".snapshot"));

    let held = v.space().unwrap().snapshot_bytes;
    assert!(held >= 4 * BLOCK, "the snapshot holds the old blocks: {held}");
    let check = v.check_blocks().unwrap();
    assert!(check.problems.is_empty(), "{check:?}");
    assert_eq!(v.snapshots().unwrap()[0].unique_bytes, held);

    change(&v, &c, Change::DeleteSnapshot { name: "monday".into() }).unwrap();
    let after = v.space().unwrap();
    assert_eq!(after.snapshot_bytes, 0);
    let check = v.check_blocks().unwrap();
    assert!(check.problems.is_empty(), "{check:?}");
    assert_eq!(after.free_bytes + check.live_bytes, after.data_bytes);
    let e = v.stat(&c, &p("/.snapshot/monday/b")).unwrap_err();
    assert_eq!(kind(&e), "notfound", "{e}");
}

#[test]
fn snapshots_are_read_only_and_their_names_are_checked() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let c = root();
    let f = create(&v, &c, "/f").unwrap();
    write(&v, &c, f, 0, b"hello").unwrap();
    snapshot(&v, "s").unwrap();
    let in_snapshot = v.stat(&c, &p("/.snapshot/s/f")).unwrap();
    assert_eq!(in_snapshot.inode.mode & 0o222, 0);
    assert_ne!(in_snapshot.inode.ino, f, "a snapshot's file has a handle of its own");
    assert_eq!(v.stat_handle(in_snapshot.inode.ino).unwrap().inode.size, 5);
    for refused in [
        change(
            &v,
            &c,
            Change::Write {
                ino: in_snapshot.inode.ino,
                offset: 0,
                data: b"x".to_vec().into(),
            },
        ),
        change(
            &v,
            &c,
            Change::Truncate {
                ino: in_snapshot.inode.ino,
                size: 0,
            },
        ),
        change(
            &v,
            &c,
            Change::Unlink {
                path: p("/.snapshot/s/f"),
            },
        ),
        change(
            &v,
            &c,
            Change::Mkdir {
                path: p("/.snapshot/x"),
                mode: 0o755,
            },
        ),
        change(
            &v,
            &c,
            Change::Rename {
                from: p("/f"),
                to: p("/.snapshot/s/g"),
            },
        ),
    ] {
        let e = refused.unwrap_err();
        assert_eq!(kind(&e), "perm", "{e}");
    }
    assert_eq!(kind(&snapshot(&v, "s").unwrap_err()), "exists");
    for bad in ["", ".hidden", "a/b", &"x".repeat(65)] {
        assert_eq!(kind(&snapshot(&v, bad).unwrap_err()), "invalid", "{bad:?}");
    }
    let e = change(&v, &c, Change::DeleteSnapshot { name: "nope".into() }).unwrap_err();
    assert_eq!(kind(&e), "notfound");
    assert_eq!(read_all(&v, "/f"), b"hello");
}

#[test]
fn a_full_file_system_refuses_to_overwrite_what_a_snapshot_holds_and_says_so() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let c = root();
    let f = create(&v, &c, "/big").unwrap();
    let free = v.space().unwrap().free_bytes;
    let data = random((free - 2 * BLOCK) as usize, 3);
    write(&v, &c, f, 0, &data).unwrap();
    snapshot(&v, "s").unwrap();
    // An overwrite needs fresh blocks now; there are two.
    let e = write(&v, &c, f, 0, &random(3 * BLOCK as usize, 4)).unwrap_err();
    assert_eq!(kind(&e), "nospace", "{e}");
    assert!(e.to_string().contains("snapshots"), "{e}");
    write(&v, &c, f, 0, &random(BLOCK as usize, 5)).unwrap();
    assert_eq!(read_all(&v, "/.snapshot/s/big"), data);
    // Deleting the file frees nothing while the snapshot holds it.
    change(&v, &c, Change::Unlink { path: p("/big") }).unwrap();
    assert!(v.space().unwrap().free_bytes < 3 * BLOCK);
    change(&v, &c, Change::DeleteSnapshot { name: "s".into() }).unwrap();
    assert_eq!(v.space().unwrap().free_bytes, free);
    assert!(v.check_blocks().unwrap().problems.is_empty());
}

#[test]
fn snapshots_survive_a_remount_and_a_power_cut_leaves_a_snapshot_whole_or_not_at_all() {
    let dev = MemDev::new(DEV_BYTES);
    let v = Volume::mount(dev.clone()).unwrap();
    let c = root();
    let f = create(&v, &c, "/f").unwrap();
    write(&v, &c, f, 0, &random(20_000, 6)).unwrap();
    snapshot(&v, "kept").unwrap();
    write(&v, &c, f, 0, &random(20_000, 7)).unwrap();
    drop(v);
    let v = Volume::mount(dev.clone()).unwrap();
    assert_eq!(read_all(&v, "/.snapshot/kept/f"), random(20_000, 6));
    // A snapshot commits durably, or not at all: after a cut right after
    // it returns, it is there whole.
    snapshot(&v, "second").unwrap();
    let cut = dev.power_cut();
    drop(v);
    let v = Volume::mount(cut).unwrap();
    assert_eq!(read_all(&v, "/.snapshot/second/f"), random(20_000, 7));
    assert!(v.check_blocks().unwrap().problems.is_empty());
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// Replies are stored with postcard: each outcome keeps its variant number,
/// so that replies stored by an older nasd still decode after an upgrade.
#[test]
fn stored_replies_keep_their_encoding() {
    assert_eq!(postcard::to_stdvec(&Outcome::Size(5)).unwrap(), [1, 5]);
    assert_eq!(postcard::to_stdvec(&Outcome::Done).unwrap(), [2]);
}

#[test]
fn snapshots_that_fill_the_metadata_area_are_refused_and_deleting_one_makes_room() {
    // An 8 MiB metadata area and a tree of 1,000 files: every snapshot
    // copies its metadata, so only so many fit.
    let v = Volume::mount(MemDev::new(14 << 20)).unwrap();
    let c = root();
    for i in 0..1000 {
        let f = create(&v, &c, &format!("/f{i:04}-{}", "x".repeat(60))).unwrap();
        write(&v, &c, f, 0, b"data").unwrap();
    }
    let mut taken = Vec::new();
    let refused = loop {
        let name = format!("s{}", taken.len());
        match snapshot(&v, &name) {
            Ok(_) => taken.push(name),
            Err(e) => break e,
        }
        assert!(taken.len() < 200, "the metadata area never filled");
    };
    assert_eq!(kind(&refused), "metafull", "{refused}");
    assert!(taken.len() >= 2, "only {} snapshots fit", taken.len());
    // The tree and every snapshot taken are intact, and reads go on.
    assert_eq!(
        read_all(&v, &format!("/.snapshot/{}/f0999-{}", taken[0], "x".repeat(60))),
        b"data"
    );
    assert!(v.check_blocks().unwrap().problems.is_empty());
    // Deleting snapshots frees room: a new one fits again.
    for name in &taken[..taken.len() / 2 + 1] {
        change(&v, &c, Change::DeleteSnapshot { name: name.clone() }).unwrap();
    }
    let fits = (0..50).any(|_| {
        // The writer rechecks the area's use every few commits.
        snapshot(&v, "again").is_ok()
    });
    assert!(fits, "no snapshot fits after deleting half of them");
    assert!(v.check_blocks().unwrap().problems.is_empty());
}

#[test]
fn lost_lu_ranges_are_named_by_file_and_byte_range() {
    let v = Volume::mount(MemDev::new(DEV_BYTES)).unwrap();
    let c = root();
    change(
        &v,
        &c,
        Change::Mkdir {
            path: p("/docs"),
            mode: 0o755,
        },
    )
    .unwrap();
    let f = create(&v, &c, "/docs/report.txt").unwrap();
    write(&v, &c, f, 0, &random(3 * BLOCK as usize, 8)).unwrap();
    let other = create(&v, &c, "/other").unwrap();
    write(&v, &c, other, 0, b"untouched").unwrap();
    let head = v.stat_handle(f).unwrap().head_address;
    // The file's second block, and a range of the metadata area.
    let named = v.files_at(&[(head + BLOCK, BLOCK), (layout::META_AT, BLOCK)]).unwrap();
    assert_eq!(
        named,
        [
            format!(
                "file-system metadata (LU bytes {}..{})",
                layout::META_AT,
                layout::META_AT + BLOCK
            ),
            format!("/docs/report.txt (bytes {}..{})", BLOCK, 2 * BLOCK),
        ]
    );
    assert!(v.files_at(&[]).unwrap().is_empty());
}
