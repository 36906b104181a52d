//! nasctl's Admin credentials: where they come from, `login`, `logout`
//! and `role`, and the first admin's password at setup.
//!
//! A credential is, first found: $NAS_TOKEN; $NAS_ADMIN_PASSWORD (for
//! user $NAS_ADMIN_USER, default `admin`), for scripts; the token file
//! `nasctl login` wrote. The token file and its folder are private to the
//! user (0600, 0700). Nothing here prints a password or a token.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;

use ::nas_client::proto::{LoginRequest, Role, SetRoleRequest};
use ::nas_client::{Cluster, Credential};

use crate::status_err;

pub const TOKEN_ENV: &str = "NAS_TOKEN";
pub const ADMIN_USER_ENV: &str = "NAS_ADMIN_USER";
pub const ADMIN_PASSWORD_ENV: &str = "NAS_ADMIN_PASSWORD";
/// The first admin's name unless $NAS_ADMIN_USER says otherwise.
pub const DEFAULT_ADMIN: &str = "admin";

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Give USER a role on the Admin service: viewer (lists, status),
    /// operator (disks, rebuild, scrub, failover, drills, lock breaking)
    /// or admin (everything). Needs admin.
    Grant { user: String, role: String },
    /// Take USER's role away: it can then only use the file service.
    Revoke { user: String },
}

/// An environment variable's value; empty counts as unset (compose
/// passes unset variables as empty strings).
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The folder of nasctl's own files: $NAS_CONFIG_DIR, else
/// $XDG_CONFIG_HOME/nas, else ~/.config/nas.
fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("NAS_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(d).join("nas"));
    }
    let home = std::env::var_os("HOME").context("neither $HOME nor $XDG_CONFIG_HOME nor $NAS_CONFIG_DIR is set")?;
    Ok(PathBuf::from(home).join(".config").join("nas"))
}

fn token_file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("token"))
}

/// The credential Admin calls carry.
pub fn credential() -> Credential {
    if let Some(t) = env(TOKEN_ENV) {
        return Credential::Token(t.trim().to_string());
    }
    if let Some(password) = env(ADMIN_PASSWORD_ENV) {
        let user = env(ADMIN_USER_ENV).unwrap_or_else(|| DEFAULT_ADMIN.into());
        return Credential::Password { user, password };
    }
    match token_file().and_then(|f| Ok(std::fs::read_to_string(f)?)) {
        Ok(t) if !t.trim().is_empty() => Credential::Token(t.trim().to_string()),
        _ => Credential::None,
    }
}

/// A password: from `file`, else $NAS_ADMIN_PASSWORD, else asked for
/// without echo on a terminal, else one line of standard input.
pub(crate) fn read_password(user: &str, file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(f) = file {
        let p = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        return Ok(p.trim_end_matches(['\n', '\r']).to_string());
    }
    if let Some(p) = env(ADMIN_PASSWORD_ENV) {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("password for {user}: "))
            .context("cannot read a password from the terminal; set NAS_ADMIN_PASSWORD instead");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Writes `content` to `path` readable by its owner only, replacing it
/// atomically.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A random password for a new cluster's first admin.
pub fn generate_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..24).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

/// The first admin of a new cluster: $NAS_ADMIN_USER (default admin)
/// with $NAS_ADMIN_PASSWORD, or a password typed at a terminal.
pub fn first_admin() -> anyhow::Result<(String, String)> {
    let user = env(ADMIN_USER_ENV).unwrap_or_else(|| DEFAULT_ADMIN.into());
    let password = match env(ADMIN_PASSWORD_ENV) {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("password for the first admin, {user}: "))?
        }
        None => bail!(
            "a new cluster needs its first admin's password: set {ADMIN_PASSWORD_ENV} (8 characters or more); there is no default"
        ),
    };
    Ok((user, password))
}

/// `nasctl login`: a token for USER, stored in the token file.
pub async fn login(
    c: &Cluster,
    user: Option<String>,
    password_file: Option<PathBuf>,
    ttl: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let user = user
        .or_else(|| env(ADMIN_USER_ENV))
        .unwrap_or_else(|| DEFAULT_ADMIN.into());
    let password = read_password(&user, password_file.as_deref())?;
    let req = LoginRequest {
        user: user.clone(),
        password,
        ttl_s: ttl.as_secs(),
    };
    let reply = c.login(req).await.map_err(status_err)?;
    let file = token_file()?;
    write_private(&file, &format!("{}\n", reply.token))?;
    let role = ::nas_client::proto::labels::role(reply.role);
    let secs = reply.expires_ms.saturating_sub(::nas_client::drill::now_ms()) / 1000;
    if json {
        outln!(
            "{}",
            serde_json::json!({"user": user, "role": role, "expires_ms": reply.expires_ms, "token_file": file})
        );
    } else {
        outln!(
            "logged in as {user} (role {role}) for {}h{:02}m; token in {}",
            secs / 3600,
            secs % 3600 / 60,
            file.display()
        );
    }
    Ok(())
}

/// `nasctl logout`: forgets the stored token.
pub fn logout(json: bool) -> anyhow::Result<()> {
    let file = token_file()?;
    let removed = match std::fs::remove_file(&file) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file.display())),
    };
    if json {
        outln!("{}", serde_json::json!({"removed": removed, "token_file": file}));
    } else if removed {
        outln!("logged out ({} removed)", file.display());
    } else {
        outln!("not logged in (no {})", file.display());
    }
    Ok(())
}

pub async fn run_role(c: &Cluster, cmd: RoleCmd, json: bool) -> anyhow::Result<()> {
    let (user, role) = match cmd {
        RoleCmd::Grant { user, role } => {
            let r = match role.to_ascii_lowercase().as_str() {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                "admin" => Role::Admin,
                other => bail!("role {other:?} does not exist; use viewer, operator or admin"),
            };
            (user, r)
        }
        RoleCmd::Revoke { user } => (user, Role::None),
    };
    let r = c
        .set_role(SetRoleRequest {
            user: user.clone(),
            role: role as i32,
        })
        .await
        .map_err(status_err)?;
    let name = ::nas_client::proto::labels::role(role as i32);
    if json {
        outln!(
            "{}",
            serde_json::json!({"user": user, "role": name, "log_index": r.log_index})
        );
    } else {
        outln!("{user} now has role {name}");
    }
    Ok(())
}
