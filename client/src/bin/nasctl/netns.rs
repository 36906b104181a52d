//! Network namespaces for a local cluster (`cluster up --netns`): each CHN
//! in a namespace of its own, joined to the host by a veth pair on one
//! bridge, so that a drill can cut a CHN off the network for real
//! (`drill --fault partition`) rather than only kill or pause it.
//!
//! Owns the names and addresses it derives from the cluster folder, and
//! the `ip` commands that make and remove them. It must never touch a
//! namespace, link or bridge whose name it did not derive itself.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// The network of one local cluster.
pub struct Net {
    id: String,
    /// Second and third octet of the cluster's 10.x.y.0/24.
    net: (u8, u8),
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {} (network namespaces need root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn exists(args: &[&str]) -> bool {
    Command::new("ip").args(args).output().is_ok_and(|o| o.status.success())
}

impl Net {
    /// The network of the cluster in `dir` (a canonical path).
    pub fn for_dir(dir: &Path) -> Net {
        // FNV-1a: stable across runs and builds, unlike the std hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in dir.as_os_str().as_encoded_bytes() {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        Net {
            id: format!("{:06x}", h & 0xff_ffff),
            net: (100 + (h >> 24) as u8 % 100, (h >> 16) as u8),
        }
    }

    /// The address CHN number `i` (from 0) listens on.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.{}.{}:7000", self.net.0, self.net.1, i + 2)
    }

    /// The namespace CHN number `i` runs in.
    pub fn ns(&self, i: usize) -> String {
        format!("nas{}-{}", self.id, i + 1)
    }

    fn bridge(&self) -> String {
        format!("nb{}", self.id)
    }

    /// The host end of CHN `i`'s link.
    fn link(&self, i: usize) -> String {
        format!("nv{}{}", self.id, i + 1)
    }

    /// Makes the bridge and CHN `i`'s namespace and link (if missing).
    pub fn ensure(&self, i: usize) -> anyhow::Result<()> {
        let br = self.bridge();
        if !exists(&["link", "show", &br]) {
            ip(&["link", "add", &br, "type", "bridge"])?;
            ip(&[
                "addr",
                "add",
                &format!("10.{}.{}.1/24", self.net.0, self.net.1),
                "dev",
                &br,
            ])?;
            ip(&["link", "set", &br, "up"])?;
        }
        self.let_bridge_forward()?;
        let (ns, link) = (self.ns(i), self.link(i));
        if !exists(&["netns", "exec", &ns, "true"]) {
            ip(&["netns", "add", &ns])?;
        }
        if !exists(&["link", "show", &link]) {
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &link, "master", &br, "up"])?;
            let host = self.addr(i);
            let host = host.split(':').next().unwrap_or_default();
            ip(&["-n", &ns, "addr", "add", &format!("{host}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Where bridged frames pass through iptables (br_netfilter, loaded
    /// by Docker, which also sets the FORWARD policy to DROP), the CHNs
    /// could not reach each other: accept what stays on this bridge.
    fn let_bridge_forward(&self) -> anyhow::Result<()> {
        let filtered =
            std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").is_ok_and(|v| v.trim() == "1");
        if !filtered {
            return Ok(());
        }
        let br = self.bridge();
        let rule = ["FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"];
        let iptables = |op: &str| {
            Command::new("iptables").arg(op).args(rule).output().map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                )
            })
        };
        match iptables("-C") {
            Ok((true, _)) => Ok(()),
            Ok(_) => match iptables("-I") {
                Ok((true, _)) => Ok(()),
                Ok((false, err)) => bail!("cannot let the CHNs' bridge {br} forward (`iptables -I {}`): {err}", rule.join(" ")),
                Err(e) => bail!("cannot run iptables: {e}"),
            },
            Err(_) => bail!(
                "bridged traffic goes through iptables here (net.bridge.bridge-nf-call-iptables=1, e.g. with Docker running), \
                 but there is no iptables command to let the CHNs' bridge {br} forward: install iptables"
            ),
        }
    }

    /// Cuts CHN `i` off the network (`cut`) or connects it again.
    pub fn cut(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        ip(&["link", "set", &self.link(i), if cut { "down" } else { "up" }])
    }

    /// Drops (or stops dropping) every packet CHN `from` sends to CHN `to`:
    /// a one-way partition, with iptables inside `from`'s namespace.
    pub fn drop_to(&self, from: usize, to: usize, drop: bool) -> anyhow::Result<()> {
        let target = self.addr(to);
        let ip_to = target.split(':').next().unwrap_or_default();
        let op = if drop { "-I" } else { "-D" };
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "iptables",
                op,
                "OUTPUT",
                "-d",
                ip_to,
                "-j",
                "DROP",
            ])
            .output()
            .context("cannot run `ip netns exec ... iptables` (install iproute2 and iptables)")?;
        if !out.status.success() {
            bail!(
                "iptables in {} failed: {}",
                self.ns(from),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Removes the namespaces, links and bridge of `nodes` CHNs.
    pub fn remove(&self, nodes: usize) {
        for i in 0..nodes {
            let _ = ip(&["link", "del", &self.link(i)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let br = self.bridge();
        let _ = ip(&["link", "del", &br]);
        // The rule let_bridge_forward added, if any (quietly absent otherwise).
        let _ = Command::new("iptables")
            .args(["-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"])
            .output();
    }
}
