//! Whether this CHN is ready to serve, as opposed to merely running: the
//! Admin service needs a quorum (a read barrier the leader confirms in
//! time); the file service needs that too, and every export this CHN owns
//! mounted on an LU it holds unfenced. An owned export that is not
//! mounted yet is opened here, so that readiness means clients are served
//! at once rather than on their first call.
//!
//! Owns the readiness verdict and nothing else: the server maps it onto
//! the gRPC health service. It must never change a table.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chn::exports::Exports;
use crate::chn::lu_host::LuHost;
use crate::shared_lu::SharedLu;

/// How often readiness is judged.
const EVERY: Duration = Duration::from_millis(200);
/// How long a read barrier may take before the CHN counts as cut off.
const QUORUM_WAIT: Duration = Duration::from_millis(700);

/// Why a service is not ready, or `None` when it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    pub admin: Option<String>,
    pub nas: Option<String>,
}

impl Readiness {
    fn starting() -> Self {
        let why = Some("starting".to_string());
        Readiness {
            admin: why.clone(),
            nas: why,
        }
    }
}

/// Judges readiness every [`EVERY`]; the receiver sees each change.
pub fn watch(
    lu: SharedLu,
    exports: Exports,
    host: LuHost,
) -> (watch::Receiver<Readiness>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = watch::channel(Readiness::starting());
    let looped = async move {
        let mut opening = HashMap::new();
        loop {
            let now = judge(&lu, &exports, &host, &mut opening).await;
            tx.send_if_modified(|old| {
                if *old == now {
                    return false;
                }
                tracing::info!(admin = ?now.admin, nas = ?now.nas, "readiness changed (None: ready)");
                *old = now;
                true
            });
            tokio::time::sleep(EVERY).await;
        }
    };
    (rx, looped)
}

/// Opens of owned exports in progress, by export: they run on their own,
/// so that a slow open (crash recovery) never delays the verdict.
type Opening = HashMap<String, JoinHandle<Result<(), String>>>;

async fn judge(lu: &SharedLu, exports: &Exports, host: &LuHost, opening: &mut Opening) -> Readiness {
    let quorum = match tokio::time::timeout(QUORUM_WAIT, lu.ensure_current()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("no quorum: {e}")),
        Err(_) => Some(format!(
            "no quorum: the leader did not confirm a read within {} ms",
            QUORUM_WAIT.as_millis()
        )),
    };
    if let Some(why) = quorum {
        return Readiness {
            admin: Some(why.clone()),
            nas: Some(why),
        };
    }
    let owned: Vec<nas_proto::Export> =
        lu.read(|t| t.exports.values().filter(|e| e.owner_chn == lu.name).cloned().collect());
    opening.retain(|name, _| owned.iter().any(|e| &e.name == name));
    let mut nas = None;
    for export in owned {
        if exports.is_mounted(&export.name) {
            if host.holds(export.lu) {
                continue;
            }
            nas.get_or_insert(format!(
                "export {} is fenced (LU {} is not held)",
                export.name, export.lu
            ));
            continue;
        }
        let why = match opening.remove(&export.name) {
            Some(open) if open.is_finished() => match open.await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("export {} could not be opened: {e}", export.name),
                Err(e) => format!("opening export {} failed: {e}", export.name),
            },
            Some(open) => {
                opening.insert(export.name.clone(), open);
                format!("export {} is still opening", export.name)
            }
            None => {
                let (exports, row) = (exports.clone(), export.clone());
                let open =
                    tokio::spawn(async move { exports.volume(&row).await.map(|_| ()).map_err(|e| e.to_string()) });
                opening.insert(export.name.clone(), open);
                format!("export {} is opening", export.name)
            }
        };
        nas.get_or_insert(why);
    }
    Readiness { admin: None, nas }
}
