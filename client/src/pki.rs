//! The cluster's certificates: one CA, and a certificate per CHN that the
//! CA signs, made with rcgen and kept as PEM files in one folder:
//! `ca.crt`, `ca.key`, and `NAME.crt`, `NAME.key` per CHN (name in lower
//! case). Keys are written mode 0600, atomically.
//!
//! A CHN certificate names `nas-chn` (what clients verify) and
//! `NAME.nas-chn` (who the CHN is), plus the hosts it is reached at, so
//! that other tools can verify it by address too. Owns making and finding
//! these files; it must never overwrite a key that exists.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nas_proto::transport::{chn_name, TlsFiles, SERVICE_NAME};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Years a CHN certificate is valid from the start of this year.
const CHN_YEARS: i32 = 3;
/// Years the CA is valid from the start of this year.
const CA_YEARS: i32 = 10;
const CA_NAME: &str = "NAS cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("{0} exists without {1}: remove both to make new ones, or supply the missing file")]
    HalfPair(PathBuf, PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn this_year() -> i32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

/// Writes `content` to `path` with `mode`, never replacing a file.
fn write_new(path: &Path, content: &str, mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(content.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::hard_link(&tmp, path).map_err(io(path))?;
    std::fs::remove_file(&tmp).map_err(io(&tmp))?;
    Ok(())
}

/// The CA's parameters: the same every time, so that the CA can sign again
/// later from its key alone.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let year = this_year();
    p.not_before = rcgen::date_time_ymd(year, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
    Ok(p)
}

/// A folder of cluster certificates.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> CertDir {
        CertDir { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// CHN `name`'s certificate and key files.
    pub fn chn_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = name.to_ascii_lowercase();
        (
            self.dir.join(format!("{base}.crt")),
            self.dir.join(format!("{base}.key")),
        )
    }

    fn mkdir(&self) -> Result<(), PkiError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(io(&self.dir))
    }

    /// Makes the CA unless it exists; true when it was made.
    pub fn ensure_ca(&self) -> Result<bool, PkiError> {
        let (cert, key) = (self.ca_cert(), self.ca_key());
        match (cert.exists(), key.exists()) {
            (true, true) => return Ok(false),
            (true, false) => return Err(PkiError::HalfPair(cert, key)),
            (false, true) => return Err(PkiError::HalfPair(key, cert)),
            (false, false) => {}
        }
        self.mkdir()?;
        let pair = KeyPair::generate()?;
        let ca = ca_params()?.self_signed(&pair)?;
        write_new(&key, &pair.serialize_pem(), 0o600)?;
        write_new(&cert, &ca.pem(), 0o644)?;
        Ok(true)
    }

    /// Makes CHN `name`'s certificate, reached at `hosts` (names or IP
    /// addresses), unless it exists; true when it was made.
    pub fn ensure_chn(&self, name: &str, hosts: &[String]) -> Result<bool, PkiError> {
        let (cert, key) = self.chn_files(name);
        match (cert.exists(), key.exists()) {
            (true, true) => return Ok(false),
            (true, false) => return Err(PkiError::HalfPair(cert, key)),
            (false, true) => return Err(PkiError::HalfPair(key, cert)),
            (false, false) => {}
        }
        let ca_key = std::fs::read_to_string(self.ca_key()).map_err(io(&self.ca_key()))?;
        let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key)?);
        let mut sans = vec![SERVICE_NAME.to_string(), chn_name(name)];
        sans.extend(hosts.iter().filter(|h| !h.is_empty()).cloned());
        sans.dedup();
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, name);
        let year = this_year();
        p.not_before = rcgen::date_time_ymd(year, 1, 1);
        p.not_after = rcgen::date_time_ymd(year + CHN_YEARS, 1, 1);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Server to clients, client to other CHNs (mutual TLS).
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let pair = KeyPair::generate()?;
        let signed = p.signed_by(&pair, &issuer)?;
        write_new(&key, &pair.serialize_pem(), 0o600)?;
        write_new(&cert, &signed.pem(), 0o644)?;
        Ok(true)
    }

    /// What a client needs: the CA, and no certificate of its own.
    pub fn client_files(&self) -> Result<TlsFiles, PkiError> {
        let ca = std::fs::read(self.ca_cert()).map_err(io(&self.ca_cert()))?;
        Ok(TlsFiles { ca, identity: None })
    }

    /// What CHN `name` presents: its certificate and key, and the CA.
    pub fn chn_tls_files(&self, name: &str) -> Result<TlsFiles, PkiError> {
        let (cert, key) = self.chn_files(name);
        let mut files = self.client_files()?;
        files.identity = Some((
            std::fs::read(&cert).map_err(io(&cert))?,
            std::fs::read(&key).map_err(io(&key))?,
        ));
        Ok(files)
    }
}

/// The host part of `host:port` (IPv6 brackets removed).
pub fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_ca_signs_chn_certificates_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path().join("tls"));
        assert!(certs.ensure_ca().unwrap());
        assert!(!certs.ensure_ca().unwrap(), "an existing CA is kept");
        assert!(certs.ensure_chn("CHN1", &["127.0.0.1".into()]).unwrap());
        assert!(!certs.ensure_chn("CHN1", &[]).unwrap());
        let (cert, key) = certs.chn_files("CHN1");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(dir.path().join("tls/ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(std::fs::read_to_string(cert).unwrap().contains("BEGIN CERTIFICATE"));
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(certs.ensure_chn("CHN1", &[]), Err(PkiError::HalfPair(..))));
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("chn1:7000"), "chn1");
    }
}
