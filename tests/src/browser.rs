//! A real headless Chromium driven over the DevTools protocol, for tests
//! of the status page: load a URL, run JavaScript in the page (to read the
//! rendered DOM or fill a form), take a screenshot.
//!
//! Only the handful of DevTools commands the tests use; each waits for its
//! own answer with a deadline.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use tungstenite::WebSocket;

/// How long one DevTools command may take.
const COMMAND: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: $CHROMIUM, else Debian's `chromium`.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

impl Browser {
    /// Starts Chromium headless with one blank tab.
    pub fn launch() -> anyhow::Result<Browser> {
        let profile = tempfile::Builder::new().prefix("nas-chromium-").tempdir()?;
        let mut child = Command::new(chromium())
            .args([
                "--headless=new",
                // Tests run as root in containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                // The cluster's certificates are signed by its own CA,
                // which this throwaway profile does not know.
                "--ignore-certificate-errors",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} (Debian package chromium)", chromium()))?;
        let stderr = child.stderr.take().context("chromium stderr")?;
        // Chromium prints where its DevTools endpoint listens; the reader
        // thread ends when it finds that line or Chromium exits.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(Ok(url.trim().to_string()));
                    // Keep draining so that Chromium never blocks on a full pipe.
                    continue;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            let _ = tx.send(Err(seen));
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(url)) => url,
            Ok(Err(out)) => {
                let _ = child.kill();
                bail!("chromium exited before opening DevTools:\n{out}")
            }
            Err(_) => {
                let _ = child.kill();
                bail!("chromium did not open DevTools within 30 s")
            }
        };
        let authority = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .with_context(|| format!("unexpected DevTools URL {url}"))?;
        let stream = TcpStream::connect(authority)?;
        stream.set_read_timeout(Some(COMMAND))?;
        let (ws, _) = tungstenite::client(url.as_str(), stream).context("DevTools websocket handshake")?;
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = b.call_browser("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}))?;
        b.session = attached["sessionId"].as_str().context("sessionId")?.to_string();
        b.call("Page.enable", json!({}))?;
        b.call("Runtime.enable", json!({}))?;
        Ok(b)
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(tungstenite::Message::text(msg.to_string()))?;
        let deadline = Instant::now() + COMMAND;
        while Instant::now() < deadline {
            let tungstenite::Message::Text(text) = self.ws.read()? else {
                continue;
            };
            let v: Value = serde_json::from_str(&text)?;
            if v["id"].as_u64() != Some(id) {
                continue; // an event, or another command's answer
            }
            if let Some(e) = v.get("error") {
                bail!("{method}: {e}");
            }
            return Ok(v["result"].clone());
        }
        bail!("{method}: no answer within {COMMAND:?}")
    }

    fn call_browser(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params, None)
    }

    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let s = self.session.clone();
        self.send(method, params, Some(s))
    }

    /// Runs `expr` in the page; its value (JSON-able), awaiting promises.
    pub fn eval(&mut self, expr: &str) -> anyhow::Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Opens `url` and waits until the document has loaded.
    pub fn goto(&mut self, url: &str) -> anyhow::Result<()> {
        let r = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(e) = r["errorText"].as_str() {
            bail!("cannot open {url}: {e}");
        }
        self.wait_for("document.readyState === 'complete'", Duration::from_secs(15))
            .with_context(|| format!("{url} did not finish loading"))
    }

    /// Waits until `expr` is true in the page.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expr)?.as_bool() == Some(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("`{expr}` still false after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets the viewport (a phone: 390 x 844; a desktop: 1440 x 900).
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) -> anyhow::Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )?;
        Ok(())
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().context("screenshot data")?)?;
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
