//! The daemon table: installed CHNs, their addresses and heartbeats.

use super::*;

impl Tables {
    pub(super) fn live_chn(&self, name: &str, role: &str) -> Result<(), Rejection> {
        check_name("CHN", name)?;
        if !self.daemons.contains_key(name) {
            return reject(
                RejectKind::NotFound,
                format!("{role} CHN {name} is not installed; see `nasctl chn list`"),
            );
        }
        Ok(())
    }

    pub(super) fn register_chn(&mut self, c: &RegisterChn) -> Result<Applied, Rejection> {
        check_name("CHN", &c.chn)?;
        if c.node_id == 0 {
            return reject(RejectKind::InvalidArgument, "node id 0 is reserved");
        }
        if let Some(other) = self.daemons.values().find(|d| d.node_id == c.node_id && d.chn != c.chn) {
            return reject(
                RejectKind::AlreadyExists,
                format!("node id {} already belongs to CHN {}", c.node_id, other.chn),
            );
        }
        let row = self.daemons.entry(c.chn.clone()).or_default();
        if row.node_id != 0 && row.node_id != c.node_id {
            return reject(
                RejectKind::AlreadyExists,
                format!(
                    "CHN {} is already installed with node id {}; remove it first",
                    c.chn, row.node_id
                ),
            );
        }
        row.chn = c.chn.clone();
        row.node_id = c.node_id;
        row.address = c.address.clone();
        row.state = c.state;
        Ok(Applied::rows(vec![RowKey::Daemon(c.chn.clone())]))
    }

    pub(super) fn remove_chn(&mut self, chn: &str) -> Result<Applied, Rejection> {
        if !self.daemons.contains_key(chn) {
            return reject(
                RejectKind::NotFound,
                format!("CHN {chn} is not installed; see `nasctl chn list`"),
            );
        }
        if let Some(e) = self.exports.values().find(|e| e.owner_chn == chn) {
            return reject(
                RejectKind::FailedPrecondition,
                format!(
                    "CHN {chn} serves export {}; move the export to another CHN first",
                    e.name
                ),
            );
        }
        self.daemons.remove(chn);
        let mut touched = vec![RowKey::Daemon(chn.to_string())];
        let paths: Vec<_> = self.paths.keys().filter(|k| k.0 == chn).cloned().collect();
        for k in paths {
            self.paths.remove(&k);
            touched.push(RowKey::Path(k));
        }
        Ok(Applied::rows(touched))
    }

    pub(super) fn report_daemon(&mut self, c: &ReportDaemon) -> Result<Applied, Rejection> {
        let Some(row) = self.daemons.get_mut(&c.chn) else {
            return reject(
                RejectKind::NotFound,
                format!("CHN {} is not installed; install it with `nasctl chn install`", c.chn),
            );
        };
        row.heartbeat_ms = c.heartbeat_ms;
        row.daemon_states = c.daemon_states.clone();
        row.version = c.version.clone();
        row.load = c.load;
        Ok(Applied::rows(vec![RowKey::Daemon(c.chn.clone())]))
    }

    /// The address CHN `chn` serves on, or "" when it is not installed.
    pub fn address_of(&self, chn: &str) -> String {
        self.daemons.get(chn).map(|d| d.address.clone()).unwrap_or_default()
    }
}
