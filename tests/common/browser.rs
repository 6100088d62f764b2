//! A real headless Chromium for the dashboard's tests, driven over the DevTools protocol: it
//! starts on `--remote-debugging-port=0` (the browser picks a free port and writes it to
//! `DevToolsActivePort` in its profile: no port is raced for), the test evaluates JavaScript
//! in the page to read what it shows, and takes screenshots.
//!
//! [`Browser::open`] says why it cannot run (no `chromium` on the machine) so the caller can
//! skip, or fail when `CI` is set. The browser and its profile go when the [`Browser`] is
//! dropped, on a panic too.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Where Debian puts it.
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    child: Child,
    profile: tempfile::TempDir,
    page: WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    /// Whether this machine has Chromium; `Some(why not)` otherwise.
    pub fn missing() -> Option<String> {
        (!Path::new(CHROMIUM).exists())
            .then(|| format!("{CHROMIUM} is not installed (Debian package chromium)"))
    }

    /// Start a headless Chromium showing `url`, and attach to its page.
    ///
    /// # Errors
    /// If it cannot start, or does not open its DevTools port within `timeout`.
    pub fn open(url: &str, timeout: Duration) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| format!("profile directory: {e}"))?;
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1200,900",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {CHROMIUM}: {e}"))?;
        let mut child = child;
        let page =
            devtools_port(profile.path(), timeout).and_then(|port| connect_page(port, timeout));
        match page {
            Ok(page) => Ok(Browser {
                child,
                profile,
                page,
                next_id: 0,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Evaluate `expression` in the page; its value (JSON), awaited if it is a promise.
    ///
    /// # Errors
    /// If the protocol fails or the expression throws.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {e}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Until `expression` evaluates to `true`, or `timeout`; the time it took.
    ///
    /// # Errors
    /// After `timeout`, with the expression's last value.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = Value::Null;
        while started.elapsed() < timeout {
            match self.eval(expression) {
                Ok(Value::Bool(true)) => return Ok(started.elapsed()),
                Ok(v) => last = v,
                Err(e) => last = Value::String(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{expression} still {last} after {timeout:?}"))
    }

    /// A PNG of the page as shown.
    ///
    /// # Errors
    /// If the protocol fails.
    pub fn screenshot(&mut self, to: &Path) -> Result<(), String> {
        use base64::Engine as _;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("screenshot: {e}"))?;
        std::fs::write(to, png).map_err(|e| format!("write {}: {e}", to.display()))
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.page
            .send(Message::Text(request))
            .map_err(|e| format!("{method}: {e}"))?;
        loop {
            let msg = self.page.read().map_err(|e| format!("{method}: {e}"))?;
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{method}: {e}"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(v["result"].clone());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port Chromium wrote into its profile.
fn devtools_port(profile: &Path, timeout: Duration) -> Result<u16, String> {
    let file = profile.join("DevToolsActivePort");
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return Ok(port);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "Chromium did not write {} within {timeout:?}",
        file.display()
    ))
}

/// The WebSocket of the browser's first page, from `/json/list` on the DevTools port.
fn connect_page(port: u16, timeout: Duration) -> Result<WebSocket<TcpStream>, String> {
    let started = Instant::now();
    loop {
        let list = http_get(port, "/json/list")?;
        let targets: Value = serde_json::from_str(&list).map_err(|e| format!("/json/list: {e}"))?;
        let page = targets.as_array().and_then(|t| {
            t.iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        if let Some(ws) = page {
            let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("{e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            let (socket, _) =
                tungstenite::client(ws.as_str(), stream).map_err(|e| format!("{ws}: {e}"))?;
            return Ok(socket);
        }
        if started.elapsed() > timeout {
            return Err(format!("no page among the targets: {list}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A GET on loopback `port`, the body.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("devtools: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("devtools: {e}"))?;
    // The DevTools server may keep the connection open: read the head, then Content-Length.
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("devtools: {e}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(usize::MAX);
            if body.len() >= length {
                return Ok(body[..length].to_owned());
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
