//! The client table: file-service sessions, their leases and expiry.

use super::*;

/// Whether a session is past its expiry or its lease at `now`.
fn client_lapsed(c: &Client, now: u64) -> bool {
    (c.expires_ms != 0 && c.expires_ms <= now) || (c.lease_ms != 0 && c.last_seen_ms.saturating_add(c.lease_ms) <= now)
}

impl Tables {
    pub(super) fn upsert_client(&mut self, client: Option<&Client>) -> Result<Applied, Rejection> {
        let Some(c) = client else {
            return reject(RejectKind::InvalidArgument, "client is missing");
        };
        if c.client_id.is_empty() || c.client_id.len() > 128 {
            return reject(RejectKind::InvalidArgument, "client id must be 1 to 128 bytes");
        }
        if c.state.len() > 64 << 10 {
            return reject(RejectKind::InvalidArgument, "client state is larger than 64 KiB");
        }
        self.clients.insert(c.client_id.clone(), c.clone());
        Ok(Applied::rows(vec![RowKey::Client(c.client_id.clone())]))
    }

    pub(super) fn remove_client(&mut self, id: &str) -> Result<Applied, Rejection> {
        if self.clients.remove(id).is_none() {
            return reject(RejectKind::NotFound, format!("client {id} is not known"));
        }
        let mut touched = vec![RowKey::Client(id.to_string())];
        touched.extend(self.drop_holders(|h| h.session == id));
        Ok(Applied::rows(touched))
    }

    /// Removes the file-lock holds `gone` picks; returns the rows touched.
    pub(super) fn drop_holders(&mut self, gone: impl Fn(&FileLockHolder) -> bool) -> Vec<RowKey> {
        let mut touched = Vec::new();
        self.file_locks.retain(|(export, path), row| {
            let before = row.holders.len();
            row.holders.retain(|h| !gone(h));
            if row.holders.len() != before {
                touched.push(RowKey::FileLock((export.clone(), path.clone())));
            }
            !row.holders.is_empty()
        });
        touched
    }

    pub(super) fn touch_clients(&mut self, c: &TouchClients) -> Result<Applied, Rejection> {
        let mut touched = Vec::new();
        for id in &c.client_ids {
            // A client that expired meanwhile stays gone: it must open a
            // new session.
            let Some(client) = self.clients.get_mut(id) else {
                continue;
            };
            client.last_seen_ms = client.last_seen_ms.max(c.now_ms);
            let expiry = c.now_ms.saturating_add(client.lease_ms);
            touched.push(RowKey::Client(id.clone()));
            for ((export, path), row) in self.file_locks.iter_mut() {
                let mut renewed = false;
                for h in row.holders.iter_mut().filter(|h| &h.session == id) {
                    h.lease_expiry_ms = h.lease_expiry_ms.max(expiry);
                    renewed = true;
                }
                if renewed {
                    touched.push(RowKey::FileLock((export.clone(), path.clone())));
                }
            }
        }
        Ok(Applied::rows(touched))
    }

    /// Whether any session or file-lock hold has lapsed at `now`, so that
    /// an ExpireClients command would change something.
    pub fn anything_lapsed(&self, now: u64) -> bool {
        self.clients.values().any(|c| client_lapsed(c, now))
            || self
                .file_locks
                .values()
                .any(|l| l.holders.iter().any(|h| h.lease_expiry_ms <= now))
    }

    pub(super) fn expire_clients(&mut self, now: u64) -> Result<Applied, Rejection> {
        let ended: Vec<String> = self
            .clients
            .values()
            .filter(|c| client_lapsed(c, now))
            .map(|c| c.client_id.clone())
            .collect();
        let mut touched = Vec::new();
        for id in &ended {
            self.clients.remove(id);
            touched.push(RowKey::Client(id.clone()));
        }
        touched.extend(self.drop_holders(|h| ended.contains(&h.session) || h.lease_expiry_ms <= now));
        Ok(Applied {
            assigned: ended.len() as u64,
            touched,
        })
    }
}
