//! `user`: users of the file service, and how nasctl asks for a password.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::json;

use ::nas_client::proto::*;
use ::nas_client::Cluster;

use crate::output::{print_list, Table};
use crate::{status_err, ReadOpts};

#[derive(Subcommand)]
pub(crate) enum UserCmd {
    /// Add a user. The password is read from $NAS_PASSWORD or asked for without echo.
    Add {
        name: String,
        /// Numeric uid [default: next free from 1000].
        #[arg(long)]
        uid: Option<u32>,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Give a user a new password (from $NAS_PASSWORD or asked for
    /// without echo); its Admin tokens end at once. Needs admin.
    Passwd { name: String },
    /// The user table with roles (hashes are never shown).
    List(ReadOpts),
}

pub(crate) async fn run(c: &Cluster, cmd: UserCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add { name, uid, groups } => add(c, name, uid, groups, json).await,
        UserCmd::Passwd { name } => passwd(c, name, json).await,
        UserCmd::List(o) => list(c, o, json).await,
    }
}

async fn add(c: &Cluster, name: String, uid: Option<u32>, groups: Vec<String>, json: bool) -> anyhow::Result<()> {
    let password = read_password(&name)?;
    let req = AddUserRequest {
        name: name.clone(),
        password,
        uid: uid.unwrap_or(0),
        groups,
    };
    let r = c.add_user(req).await.map_err(status_err)?;
    if json {
        outln!("{}", json!({"user": name, "uid": r.assigned, "log_index": r.log_index}));
    } else {
        outln!("user {name} added with uid {} (log index {})", r.assigned, r.log_index);
    }
    Ok(())
}

async fn passwd(c: &Cluster, name: String, json: bool) -> anyhow::Result<()> {
    let password = read_password(&name)?;
    let r = c
        .set_password(SetPasswordRequest {
            user: name.clone(),
            password,
        })
        .await
        .map_err(status_err)?;
    if json {
        outln!("{}", json!({"user": name, "log_index": r.log_index}));
    } else {
        outln!("password of {name} changed; its Admin tokens have ended");
    }
    Ok(())
}

async fn list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_users(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&["user", "uid", "groups", "role", "enabled"]);
    for u in &r.users {
        t.row(vec![
            json!(u.name),
            json!(u.uid),
            json!(u.groups),
            json!(::nas_client::proto::labels::role(u.role)),
            json!(u.enabled),
        ]);
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}

pub(crate) fn read_password(user: &str) -> anyhow::Result<String> {
    if let Some(p) = crate::auth::env("NAS_PASSWORD") {
        return Ok(p);
    }
    let first = rpassword::prompt_password(format!("password for {user}: "))
        .context("cannot read a password from the terminal; set NAS_PASSWORD instead")?;
    let second = rpassword::prompt_password("again: ").context("cannot read the password")?;
    if first != second {
        bail!("the passwords differ; nothing was changed");
    }
    Ok(first)
}
