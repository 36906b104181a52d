//! `nas-client`: talk to a NAS cluster through any of its CHNs.
//!
//! Owns connection handling: a list of CHN addresses, lazily connected
//! channels, and retry with backoff on UNAVAILABLE, rotating to the next
//! CHN. It must never retry an error other than UNAVAILABLE: every other
//! status is the cluster's answer and goes back to the caller unchanged.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use nas_proto::admin_client::AdminClient;
use nas_proto::{ClusterStatusReply, ClusterStatusRequest, LoginRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

pub use nas_proto as proto;
pub use nas_proto::transport::Transport;

pub mod admin;
pub mod credential;
pub mod drill;
pub use credential::{Authorization, Credential};
pub mod nas;
pub mod pki;
pub use nas::NasClient;

/// Environment variable holding the comma-separated CHN addresses.
pub const CLUSTER_ENV: &str = "NAS_CLUSTER";
/// Environment variable naming the cluster CA file clients verify CHNs with.
pub const CA_ENV: &str = "NAS_CA";

/// The transport of a client: TLS verified against the CA file `ca`, or
/// plaintext when `insecure` (with a warning on stderr).
pub fn client_transport(ca: Option<&std::path::Path>, insecure: bool) -> Result<Transport, ConnectError> {
    match (ca, insecure) {
        (_, true) => {
            eprintln!("warning: --insecure: talking plaintext; passwords, tokens and data cross the network readable");
            Ok(Transport::Insecure)
        }
        (Some(ca), false) => {
            let pem = std::fs::read(ca).map_err(|e| ConnectError::Ca {
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
            Ok(Transport::Tls(nas_proto::transport::TlsFiles {
                ca: pem,
                identity: None,
            }))
        }
        (None, false) => Err(ConnectError::NoCa),
    }
}

/// Errors building a cluster handle.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no CHN address given: pass --cluster HOST:PORT,... or set {CLUSTER_ENV} (see `nasctl cluster up`)")]
    NoAddress,
    #[error("bad CHN address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("no cluster CA to verify CHNs with: pass --ca FILE or set {CA_ENV} (cluster.env has it; `nasctl cluster certs` makes one), or --insecure for a plaintext cluster")]
    NoCa,
    #[error("cannot read the cluster CA {path}: {reason}")]
    Ca { path: String, reason: String },
}

impl From<nas_proto::transport::BadAddress> for ConnectError {
    fn from(e: nas_proto::transport::BadAddress) -> Self {
        ConnectError::BadAddress {
            addr: e.addr,
            reason: e.reason,
        }
    }
}

/// Pings on every connection, so that a call to a CHN that stopped
/// answering (paused, cut off) fails within seconds instead of hanging:
/// the caller then retries elsewhere.
pub fn keepalive(e: Endpoint) -> Endpoint {
    e.http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
}

/// Whether `s` is a broken connection rather than a CHN's answer: the
/// transport made it (it carries the transport error as its source, which
/// a status sent by a CHN never does). A CHN that died mid-call, or one
/// that closed the connection (an h2 GOAWAY), is such a case.
pub fn broken_connection(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// An Admin client whose calls carry the cluster handle's credential.
pub type AdminConn = AdminClient<InterceptedService<Channel, Authorization>>;

/// A handle on the cluster: any CHN can take any call.
pub struct Cluster {
    addrs: Vec<String>,
    endpoints: Vec<Endpoint>,
    /// Made on first use: a channel needs the caller's Tokio runtime.
    channels: Vec<OnceLock<Channel>>,
    preferred: AtomicUsize,
    retry_for: Duration,
    transport: Transport,
    credential: Credential,
    /// The token a password credential logged in for, once it has.
    token: std::sync::Mutex<Option<String>>,
}

impl Cluster {
    /// A handle on the CHNs at `addrs` (`host:port`), reached over
    /// `transport`. Connections are made on first use.
    pub fn new<S: AsRef<str>>(addrs: &[S], transport: Transport) -> Result<Cluster, ConnectError> {
        let addrs: Vec<String> = addrs
            .iter()
            .map(|a| {
                let a = a.as_ref().trim();
                a.strip_prefix("http://")
                    .or_else(|| a.strip_prefix("https://"))
                    .unwrap_or(a)
                    .to_string()
            })
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress);
        }
        let endpoints: Vec<Endpoint> = addrs
            .iter()
            .map(|a| transport.endpoint(a).map(keepalive))
            .collect::<Result<_, _>>()?;
        let channels = endpoints.iter().map(|_| OnceLock::new()).collect();
        Ok(Cluster {
            addrs,
            endpoints,
            channels,
            preferred: AtomicUsize::new(0),
            retry_for: Duration::from_secs(15),
            transport,
            credential: Credential::None,
            token: std::sync::Mutex::new(None),
        })
    }

    /// A handle on other CHNs (`addrs`) with this one's settings and
    /// credential.
    pub fn on<S: AsRef<str>>(&self, addrs: &[S]) -> Result<Cluster, ConnectError> {
        Ok(Cluster::new(addrs, self.transport.clone())?
            .with_retry_for(self.retry_for)
            .with_credential(self.credential.clone()))
    }

    /// Admin calls carry `credential` from now on.
    pub fn with_credential(mut self, credential: Credential) -> Cluster {
        self.credential = credential;
        self.token = std::sync::Mutex::new(None);
        self
    }

    fn cached_token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn cache_token(&self, token: Option<String>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// What Admin calls send now: a token once a password logged in, else
    /// the credential itself.
    fn authorization(&self) -> Authorization {
        match self.cached_token() {
            Some(t) => Authorization::bearer(&t),
            None => self.credential.authorization(),
        }
    }

    /// Exchanges a password credential for a token, once; a password
    /// checked per call costs the CHN an argon2 hash every time. `admin`
    /// does it by itself; call it before using `admin_at` in a loop.
    pub async fn log_in(&self) -> Result<(), Status> {
        let Credential::Password { user, password } = &self.credential else {
            return Ok(());
        };
        if self.cached_token().is_some() {
            return Ok(());
        }
        let req = LoginRequest {
            user: user.clone(),
            password: password.clone(),
            ttl_s: 0,
        };
        let reply = self
            .call_any(Authorization::none(), |mut a| {
                let req = req.clone();
                async move { a.login(req).await }
            })
            .await?;
        self.cache_token(Some(reply.token));
        Ok(())
    }

    /// Parses a comma-separated address list, as in `NAS_CLUSTER`.
    pub fn from_list(list: &str, transport: Transport) -> Result<Cluster, ConnectError> {
        Cluster::new(&list.split(',').collect::<Vec<_>>(), transport)
    }

    /// How this handle reaches CHNs.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// How long calls keep retrying UNAVAILABLE answers (default 15 s).
    pub fn with_retry_for(mut self, d: Duration) -> Cluster {
        self.retry_for = d;
        self
    }

    /// The CHN addresses of this handle.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    fn channel_at(&self, i: usize) -> Channel {
        let i = i % self.endpoints.len();
        self.channels[i]
            .get_or_init(|| self.endpoints[i].connect_lazy())
            .clone()
    }

    /// An Admin client on the CHN at position `i` (no retry), carrying the
    /// credential (a password goes as such until `admin` has logged in).
    /// Must be called inside a Tokio runtime.
    pub fn admin_at(&self, i: usize) -> AdminConn {
        AdminClient::with_interceptor(self.channel_at(i), self.authorization())
    }

    /// Calls the Admin service on some CHN. On UNAVAILABLE (CHN down,
    /// no leader yet) it tries the next CHN, backing off, until the
    /// retry budget is spent; any other status is returned at once. A
    /// password credential logs in first, and again once if its token
    /// was refused (expired).
    pub async fn admin<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(AdminConn) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.log_in().await?;
        match self.call_any(self.authorization(), &mut call).await {
            Err(s) if s.code() == Code::Unauthenticated && self.cached_token().is_some() => {
                self.cache_token(None);
                self.log_in().await?;
                self.call_any(self.authorization(), &mut call).await
            }
            r => r,
        }
    }

    async fn call_any<T, F, Fut>(&self, auth: Authorization, mut call: F) -> Result<T, Status>
    where
        F: FnMut(AdminConn) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(50);
        let mut i = self.preferred.load(Ordering::Relaxed);
        let mut tried_all_once = 0;
        loop {
            match call(AdminClient::with_interceptor(self.channel_at(i), auth.clone())).await {
                Ok(r) => {
                    self.preferred.store(i % self.channels.len(), Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Err(s)
                    if (s.code() == Code::Unavailable || broken_connection(&s))
                        && tokio::time::Instant::now() < deadline =>
                {
                    i += 1;
                    tried_all_once += 1;
                    if tried_all_once >= self.channels.len() {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
                Err(s) => return Err(s),
            }
        }
    }
}

impl Cluster {
    /// The cluster status as the Raft leader sees it (replication progress
    /// and heartbeat ages are only current there). Falls back to the view
    /// of whichever CHN answered when the leader cannot be reached.
    pub async fn leader_status(&self) -> Result<ClusterStatusReply, Status> {
        let first = self.cluster_status(ClusterStatusRequest {}).await?;
        if first.leader_id == 0 || first.answered_by == first.leader_name {
            return Ok(first);
        }
        let Some(leader) = first.members.iter().find(|m| m.node_id == first.leader_id) else {
            return Ok(first);
        };
        let Ok(endpoint) = self.transport.endpoint(&leader.address) else {
            return Ok(first);
        };
        let mut a = AdminClient::with_interceptor(endpoint.connect_lazy(), self.authorization());
        match a.cluster_status(ClusterStatusRequest {}).await {
            Ok(r) => Ok(r.into_inner()),
            Err(_) => Ok(first),
        }
    }
}

/// Keeps large buffers on the heap: file data moves in 1 MiB messages, and
/// glibc would otherwise map and unmap each one, paying page faults on every
/// message. Call it first thing in `main` of a program that moves files.
pub fn keep_message_buffers() {
    // SAFETY: mallopt only tunes the allocator's thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Parses a size such as `4096`, `64K`, `64M`, `2G` or `1T` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use e.g. 4096, 64K, 64M, 2G"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown unit in {s:?}; use K, M, G or T")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Formats bytes for people: `64.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
    }

    #[tokio::test]
    async fn empty_address_lists_are_refused() {
        assert!(matches!(
            Cluster::from_list(" , ", Transport::Insecure),
            Err(ConnectError::NoAddress)
        ));
        assert_eq!(
            Cluster::from_list("127.0.0.1:1, https://127.0.0.1:2", Transport::Insecure)
                .unwrap()
                .addrs(),
            ["127.0.0.1:1", "127.0.0.1:2"]
        );
        assert!(matches!(client_transport(None, false), Err(ConnectError::NoCa)));
    }
}
