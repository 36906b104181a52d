//! Which CHN is calling: the certificate a peer presented over mutual TLS
//! (rustls has already checked that the cluster CA signed it) must name
//! an installed CHN as `NAME.nas-chn`.
//!
//! Owns that mapping only; it must never accept a certificate that names
//! no installed CHN once the CHN belongs to a cluster.

use nas_proto::transport::{chn_name, SERVICE_NAME};
use rustls_pki_types::{CertificateDer, DnsName, ServerName};

use super::AccessError;

fn names(cert: &webpki::EndEntityCert<'_>, dns: &str) -> bool {
    DnsName::try_from(dns.to_string())
        .map(|n| cert.verify_is_valid_for_subject_name(&ServerName::DnsName(n)).is_ok())
        .unwrap_or(false)
}

/// The node id of the installed CHN (name, node id) that `leaf` names;
/// `None` when this CHN knows no CHNs yet (it is being installed) and the
/// certificate is a CHN certificate of this CA.
pub fn identify(installed: &[(String, u64)], leaf: &[u8]) -> Result<Option<u64>, AccessError> {
    let der = CertificateDer::from(leaf);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| AccessError::PermissionDenied(format!("the peer's certificate cannot be parsed: {e}")))?;
    if installed.is_empty() {
        return if names(&cert, SERVICE_NAME) {
            Ok(None)
        } else {
            Err(AccessError::PermissionDenied(format!(
                "the peer's certificate does not name {SERVICE_NAME}: it is not a CHN certificate"
            )))
        };
    }
    installed
        .iter()
        .find(|(name, _)| names(&cert, &chn_name(name)))
        .map(|(_, id)| Some(*id))
        .ok_or_else(|| {
            AccessError::PermissionDenied(
                "the peer's certificate names no installed CHN; only CHNs of this cluster may use the Raft service"
                    .into(),
            )
        })
}
