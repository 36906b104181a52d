//! A real S3-compatible server for tests: moto's standalone server
//! (`moto_server`, from PyPI's `moto[server]`, which `.ci/run` installs) on
//! a free loopback port, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts the server and waits (up to 30 s) until it accepts connections.
    /// It takes any credentials.
    pub fn start() -> anyhow::Result<S3Server> {
        Self::spawn(false)
    }

    /// A server that checks credentials and knows none: every signed
    /// request is refused (403, InvalidAccessKeyId).
    pub fn start_refusing_every_credential() -> anyhow::Result<S3Server> {
        Self::spawn(true)
    }

    fn spawn(check_credentials: bool) -> anyhow::Result<S3Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new("moto_server");
        if check_credentials {
            // moto checks credentials after this many unchecked actions.
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot start moto_server; install it with `python3 -m pip install 'moto[server]'` (README, set-up)",
            )?;
        let server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                bail!("moto_server did not listen on 127.0.0.1:{port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`: what AWS_ENDPOINT_URL takes.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS_* variables a client needs for this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    /// Creates `bucket` (moto takes an unsigned CreateBucket).
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        if !reply.starts_with("HTTP/1.1 200") {
            bail!(
                "creating bucket {bucket} failed: {}",
                reply.lines().next().unwrap_or("")
            );
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
