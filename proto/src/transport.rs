//! How every gRPC channel of the project is made: plaintext only when an
//! operator said `--insecure`, else TLS against the cluster's CA, with
//! this side's certificate when it has one (CHNs present theirs to each
//! other: mutual TLS).
//!
//! Owns the names certificates carry. Every CHN certificate names the
//! cluster service, [`SERVICE_NAME`], which is what clients check
//! whatever address they dialled (an IP, a container name, a namespace
//! address), and the CHN itself, [`chn_name`], which is how a CHN knows
//! which peer is calling. It must never turn off verification.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The DNS name every CHN certificate carries and every client verifies.
pub const SERVICE_NAME: &str = "nas-chn";

/// The DNS name that identifies CHN `chn` in its certificate.
pub fn chn_name(chn: &str) -> String {
    format!("{}.{SERVICE_NAME}", chn.to_ascii_lowercase())
}

/// PEM files of one side of a TLS connection.
#[derive(Clone)]
pub struct TlsFiles {
    /// The cluster CA every peer's certificate must chain to.
    pub ca: Vec<u8>,
    /// This side's certificate and key, if it presents one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach CHNs.
#[derive(Clone)]
pub enum Transport {
    /// Plaintext HTTP/2: for debugging only, by explicit choice.
    Insecure,
    Tls(TlsFiles),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Insecure => write!(f, "Insecure"),
            Transport::Tls(t) => write!(f, "Tls {{ identity: {} }}", t.identity.is_some()),
        }
    }
}

/// Why an endpoint could not be made.
#[derive(Debug)]
pub struct BadAddress {
    pub addr: String,
    pub reason: String,
}

impl std::fmt::Display for BadAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad CHN address {:?}: {}", self.addr, self.reason)
    }
}

impl std::error::Error for BadAddress {}

/// Makes AES-128-GCM the first choice of every TLS connection of this
/// process (rustls' default puts AES-256 first): both are TLS 1.3
/// suites, and AES-128 takes 10 rounds to AES-256's 14, which shows when
/// files move at a gigabyte a second. Tonic's client and server configs
/// take the process default. Idempotent; call before making any.
pub fn prefer_aes128() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256};
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.sort_by_key(|s| {
            !matches!(
                s.suite(),
                TLS13_AES_128_GCM_SHA256 | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            )
        });
        // Another provider installed first (by an embedding program) wins.
        let _ = provider.install_default();
    });
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// An endpoint for the CHN at `addr` (`host:port`), with TLS set up
    /// and a short connect timeout; connect it lazily or at once.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, BadAddress> {
        let bad = |reason: String| BadAddress {
            addr: addr.to_string(),
            reason,
        };
        let scheme = if self.is_tls() { "https" } else { "http" };
        let e = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_millis(800))
            .tcp_nodelay(true);
        let Transport::Tls(files) = self else {
            return Ok(e);
        };
        prefer_aes128();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&files.ca))
            .domain_name(SERVICE_NAME);
        if let Some((cert, key)) = &files.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        e.tls_config(tls).map_err(|e| bad(format!("TLS set-up failed: {e}")))
    }
}
