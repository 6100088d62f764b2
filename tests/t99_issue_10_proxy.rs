//! Issue 10: the proxy bounce, against real processes. A star of four `nodecloud` processes:
//! the master serves the proxy (`proxy = …`), each of three workers advertises an HTTP backend
//! (`http = …`), a tiny hyper server run by this test that answers with its worker's name.
//! Requests go through the proxy with hyper's client; the bounds are checked on the wire, the
//! per-backend counters in the master's `/metrics`, a websocket echo through the proxy with
//! tungstenite. The last test registers a backend at run time over the service protocol, on
//! an in-process star.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod procs;
}

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::procs::Proc;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodecloud::testing::Ports;
use tokio::sync::{oneshot, watch};

const WAIT: Duration = Duration::from_secs(20);
const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

/// A backend: a hyper server on a thread and runtime of its own, answering `GET`s and `POST`s
/// with its worker's name (and the `X-Forwarded-For` it saw). With a gate, each request waits
/// until the gate opens. Killing it drops the runtime: the listener and every connection
/// close at once, as when its process dies.
struct Backend {
    addr: SocketAddr,
    /// Requests received (sent on each one), and those that were POSTs.
    hits: watch::Receiver<usize>,
    posts: Arc<AtomicUsize>,
    /// Requests waiting at the gate now (sent when it changes).
    waiting: watch::Receiver<usize>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// A backend that takes `slowness` to answer each request (the model of a slow server;
    /// zero for an ordinary one).
    fn start_slow(
        name: &'static str,
        gate: Option<watch::Receiver<bool>>,
        slowness: Duration,
    ) -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (hits_tx, hits) = watch::channel(0usize);
        let hits_tx = Arc::new(hits_tx);
        let posts = Arc::new(AtomicUsize::new(0));
        let (waiting_tx, waiting) = watch::channel(0usize);
        let waiting_tx = Arc::new(waiting_tx);
        let (kill, killed) = oneshot::channel::<()>();
        let (h, p) = (hits_tx, posts.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = l.accept().await else {
                            continue;
                        };
                        let (h, p, gate, waiting_tx) =
                            (h.clone(), p.clone(), gate.clone(), waiting_tx.clone());
                        tokio::spawn(async move {
                            let service =
                                hyper::service::service_fn(move |req: Request<Incoming>| {
                                    let (h, p, gate, waiting_tx) =
                                        (h.clone(), p.clone(), gate.clone(), waiting_tx.clone());
                                    async move {
                                        h.send_modify(|n| *n += 1);
                                        if req.method() == Method::POST {
                                            p.fetch_add(1, Ordering::SeqCst);
                                        }
                                        let xff = req
                                            .headers()
                                            .get("x-forwarded-for")
                                            .cloned()
                                            .unwrap_or(hyper::header::HeaderValue::from_static(""));
                                        let _ = req.into_body().collect().await;
                                        if !slowness.is_zero() {
                                            tokio::time::sleep(slowness).await;
                                        }
                                        if let Some(mut gate) = gate {
                                            waiting_tx.send_modify(|n| *n += 1);
                                            let _ = gate.wait_for(|open| *open).await;
                                            waiting_tx.send_modify(|n| *n -= 1);
                                        }
                                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                                        resp.headers_mut().insert("x-seen-forwarded-for", xff);
                                        Ok::<_, Infallible>(resp)
                                    }
                                });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = killed => {}
                    () = serve => {}
                }
            });
            // Dropping the runtime drops every connection's task, and so its socket.
            drop(rt);
        });
        Backend {
            addr,
            hits,
            posts,
            waiting,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client with a runtime of its own (the test itself blocks on log lines).
struct Http {
    rt: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What came back: status, the node that served it (`X-Nodecloud-Node`), the body.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    served_by: Option<String>,
    headers: hyper::HeaderMap,
    body: String,
}

impl Http {
    fn new() -> Http {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Http { rt, client }
    }

    async fn send_async(
        client: Client<HttpConnector, Full<Bytes>>,
        proxy: SocketAddr,
        method: Method,
        pin: Option<&str>,
    ) -> Result<Answer, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{proxy}/hello?x=1"));
        if let Some(p) = pin {
            req = req.header("x-nodecloud-node", p);
        }
        let req = req.body(Full::new(Bytes::from_static(b"payload"))).unwrap();
        let resp = tokio::time::timeout(WAIT, client.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let served_by = headers
            .get("x-nodecloud-node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            served_by,
            headers,
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        })
    }

    /// The body of `GET url`.
    fn get(&self, url: &str) -> String {
        self.rt.block_on(async {
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            let resp = self.client.request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        })
    }

    fn send(&self, proxy: SocketAddr, method: Method, pin: Option<&str>) -> Answer {
        self.rt
            .block_on(Self::send_async(self.client.clone(), proxy, method, pin))
            .unwrap()
    }
}

/// The star: the master with the proxy, three workers each advertising its backend.
struct Star {
    _dir: tempfile::TempDir,
    _ports: Ports,
    proxy: SocketAddr,
    /// The master's HTTP API (for `/metrics`).
    api: SocketAddr,
    master: Proc,
    workers: Vec<Proc>,
    backends: Vec<Backend>,
    gate: watch::Sender<bool>,
}

impl Star {
    /// Start the star; with `gated`, backends hold every request until [`Star::open`].
    fn start(max_requests: usize, gated: bool) -> Star {
        Star::start_with(max_requests, gated, None)
    }

    /// [`Star::start`], worker-1 advertising `worker_1_http` instead of its backend if given.
    fn start_with(max_requests: usize, gated: bool, worker_1_http: Option<SocketAddr>) -> Star {
        Star::start_full(max_requests, gated, worker_1_http, Duration::ZERO)
    }

    /// [`Star::start_with`], worker-1's backend taking `worker_1_slowness` per request.
    fn start_full(
        max_requests: usize,
        gated: bool,
        worker_1_http: Option<SocketAddr>,
        worker_1_slowness: Duration,
    ) -> Star {
        let (gate, gate_rx) = watch::channel(!gated);
        let backends: Vec<Backend> = WORKERS
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let slowness = if i == 0 {
                    worker_1_slowness
                } else {
                    Duration::ZERO
                };
                Backend::start_slow(w, gated.then(|| gate_rx.clone()), slowness)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Ports::new();
        let proxy = ports.reserve();
        let api = ports.reserve();
        let mut text = format!(
            "[cluster]\nname = \"proxy\"\ntopology = \"star\"\n\
             secret = \"proxy-test-secret-0123456789\"\n\
             heartbeat_interval_ms = 100\nfailure_threshold = 5\n\
             proxy_max_requests = {max_requests}\nproxy_response_timeout_ms = 15000\n\n\
             [[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"{}\"\n\
             proxy = \"{proxy}\"\napi = \"{api}\"\n",
            ports.reserve(),
        );
        for (i, (w, b)) in WORKERS.iter().zip(&backends).enumerate() {
            let http = match worker_1_http {
                Some(a) if i == 0 => a,
                _ => b.addr,
            };
            text.push_str(&format!(
                "\n[[nodes]]\nname = \"{w}\"\nlisten = \"{}\"\nhttp = \"{http}\"\n",
                ports.reserve(),
            ));
        }
        let path: PathBuf = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        let mut master = Proc::start(&path, "master", &ports);
        let workers: Vec<Proc> = WORKERS
            .iter()
            .map(|w| Proc::start(&path, w, &ports))
            .collect();
        master.expect_line(&["HTTP proxy serving"], WAIT);
        for w in WORKERS {
            master.expect_line(&[&format!("membership: {w} up")], WAIT);
        }
        // The log line comes before the view that the proxy reads is published: wait until
        // the API (which reads the same view) shows every worker up with its backend.
        let http = Http::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let doc: serde_json::Value =
                serde_json::from_str(&http.get(&format!("http://{api}/api/v1/cluster"))).unwrap();
            let ready = doc["members"].as_array().unwrap().iter().filter(|m| {
                m["state"] == "up" && m["http"].as_array().is_some_and(|h| !h.is_empty())
            });
            if ready.count() == WORKERS.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "workers not all up in the view: {doc}"
            );
            std::thread::sleep(Duration::from_millis(20)); // polling, bounded by WAIT
        }
        Star {
            _dir: dir,
            _ports: ports,
            proxy,
            api,
            master,
            workers,
            backends,
            gate,
        }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

#[test]
fn three_hundred_requests_reach_all_three_workers_with_forwarded_headers() {
    let star = Star::start(1024, false);
    let http = Http::new();
    let mut by_node = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        let a = http.send(star.proxy, Method::GET, None);
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.served_by.as_deref(), Some(a.body.as_str()));
        assert_eq!(a.headers["x-seen-forwarded-for"], "127.0.0.1");
        *by_node.entry(a.body).or_default() += 1;
    }
    assert_eq!(by_node.len(), 3, "{by_node:?}");
    assert!(by_node.values().all(|&n| n >= 30), "{by_node:?}");
    let total: usize = star.backends.iter().map(|b| *b.hits.borrow()).sum();
    assert_eq!(total, 300);
    // A pinned request goes where it is pinned, and a pin to no node is refused.
    for w in WORKERS {
        let a = http.send(star.proxy, Method::GET, Some(w));
        assert_eq!(a.body, w);
    }
    let a = http.send(star.proxy, Method::GET, Some("nowhere"));
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    // `/metrics` counts the requests of each backend.
    let metrics = http.get(&format!("http://{}/metrics", star.api));
    for (w, n) in &by_node {
        let b = &star.backends[WORKERS.iter().position(|x| x == w).unwrap()];
        let line = format!(
            "nodecloud_proxy_requests_total{{node=\"{w}\",backend=\"{}\"}} {}",
            b.addr,
            n + 1
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("nodecloud_proxy_response_seconds_bucket{node=\"worker-1\""));
    // `/api/v1/proxy` (what the dashboard's request rates read) counts the same.
    let doc: serde_json::Value =
        serde_json::from_str(&http.get(&format!("http://{}/api/v1/proxy", star.api))).unwrap();
    assert_eq!(doc["listen"], star.proxy.to_string());
    let backends = doc["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3, "{doc}");
    for b in backends {
        let w = b["node"].as_str().unwrap();
        assert_eq!(b["requests"], by_node[w] as u64 + 1, "{doc}");
        assert_eq!(b["errors"], 0, "{doc}");
        assert_eq!(b["in_flight"], 0, "{doc}");
    }
}

#[test]
fn a_post_is_never_retried_on_another_node_and_a_get_is() {
    let mut star = Star::start(1024, false);
    let http = Http::new();
    star.backends[0].kill();
    // The requests go to each backend in turn: one of the first POSTs meets the dead one.
    let mut failed = 0;
    let mut ok = 0;
    for _ in 0..30 {
        let a = http.send(star.proxy, Method::POST, None);
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_GATEWAY => {
                failed += 1;
                break;
            }
            other => panic!("unexpected {other}: {a:?}"),
        }
    }
    assert_eq!(failed, 1, "a POST met the dead backend and failed");
    let delivered: usize = star.backends[1..]
        .iter()
        .map(|b| b.posts.load(Ordering::SeqCst))
        .sum();
    assert_eq!(delivered, ok, "the failed POST reached no other backend");
    // Its back-off over (or not), a GET meeting the dead backend is retried elsewhere: none
    // fails.
    for _ in 0..30 {
        let a = http.send(star.proxy, Method::GET, None);
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_ne!(a.body, WORKERS[0]);
    }
}

#[test]
fn oversized_headers_get_431_and_the_connection_stays_usable() {
    let star = Star::start(1024, false);
    let mut s = TcpStream::connect(star.proxy).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let big = "a".repeat(70 * 1024);
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 431, "{body}");
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(WORKERS.contains(&body.as_str()), "{body}");
}

#[test]
fn more_than_100_header_lines_get_431_and_a_body_past_the_bound_gets_413() {
    let star = Star::start(1024, false);
    // 101 short header lines, far under 64 KiB in all: hyper's line bound answers.
    let mut s = TcpStream::connect(star.proxy).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        head.push_str(&format!("X-Line-{i}: {i}\r\n"));
    }
    write!(s, "{head}\r\n").unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 431, "{body}");

    // A PUT body one byte past `proxy_max_body_bytes` (8 MiB by default).
    let mut s = TcpStream::connect(star.proxy).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let len = 8 * 1024 * 1024 + 1;
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The proxy may answer and close before it has read everything: errors are expected.
        let _ = write!(
            writer,
            "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
        );
        let _ = writer.write_all(&vec![b'a'; len]);
    });
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 413, "{body}");
    drop(s);
    sender.join().unwrap();
    let total: usize = star.backends.iter().map(|b| *b.hits.borrow()).sum();
    assert_eq!(total, 0, "neither request reached a backend");
}

/// One response off `s` (this test's own minimal reading: a head, then `Content-Length` bytes).
fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn past_the_concurrency_bound_a_request_gets_503_with_retry_after() {
    let star = Star::start(4, true);
    let http = Http::new();
    let held: Vec<_> = (0..4)
        .map(|_| {
            let client = http.client.clone();
            let proxy = star.proxy;
            http.rt
                .spawn(async move { Http::send_async(client, proxy, Method::GET, None).await })
        })
        .collect();
    // The four are in flight once the backends hold four requests.
    let deadline = Instant::now() + WAIT;
    let mut waiting: Vec<_> = star.backends.iter().map(|b| b.waiting.clone()).collect();
    http.rt.block_on(async {
        loop {
            let n: usize = waiting.iter_mut().map(|w| *w.borrow_and_update()).sum();
            if n == 4 {
                break;
            }
            let changed =
                futures_util::future::select_all(waiting.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::time::timeout_at(deadline.into(), changed)
                .await
                .expect("four requests held by the backends")
                .0
                .unwrap();
        }
    });
    let a = http.send(star.proxy, Method::GET, None);
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
    assert_eq!(a.headers["retry-after"], "1");
    star.open();
    for h in held {
        let a = http.rt.block_on(h).unwrap().unwrap();
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    // Room again.
    assert_eq!(
        http.send(star.proxy, Method::GET, None).status,
        StatusCode::OK
    );
}

#[test]
fn a_worker_killed_under_steady_gets_fails_no_request_after_it_is_seen_down() {
    let mut star = Star::start(1024, false);
    const LOADERS: usize = 4;
    // Each loader: GETs one after another until told to stop; each outcome with its start.
    let (stop_tx, stop_rx) = watch::channel(false);
    let loaders: Vec<_> = (0..LOADERS)
        .map(|_| {
            let proxy = star.proxy;
            let stop = stop_rx.clone();
            std::thread::spawn(move || {
                let http = Http::new();
                let mut outcomes = Vec::new();
                while !*stop.borrow() {
                    let started = Instant::now();
                    let r = http.rt.block_on(Http::send_async(
                        http.client.clone(),
                        proxy,
                        Method::GET,
                        None,
                    ));
                    let ok = matches!(&r, Ok(a) if a.status == StatusCode::OK);
                    outcomes.push((started, ok, format!("{r:?}")));
                }
                outcomes
            })
        })
        .collect();
    let http = Http::new();
    let hits: Vec<_> = star.backends.iter().map(|b| b.hits.clone()).collect();
    let hits_reach = |b: usize, n: usize| {
        let mut hits = hits[b].clone();
        http.rt
            .block_on(async { tokio::time::timeout(WAIT, hits.wait_for(|h| *h >= n)).await })
            .expect("the load reaches the backend")
            .unwrap();
    };
    // Load flows to worker-2 before the kill.
    hits_reach(1, 20);
    star.backends[1].kill();
    star.workers[1].signal("KILL");
    star.master
        .expect_line(&["membership: worker-2 down"], WAIT);
    let seen_down = Instant::now();
    // Keep the load on for a hundred more requests on worker-1.
    let after = *star.backends[0].hits.borrow();
    hits_reach(0, after + 100);
    stop_tx.send_replace(true);
    let outcomes: Vec<_> = loaders
        .into_iter()
        .flat_map(|l| l.join().unwrap())
        .collect();
    let late_failures: Vec<_> = outcomes
        .iter()
        .filter(|(started, ok, _)| *started >= seen_down && !ok)
        .collect();
    assert!(late_failures.is_empty(), "{late_failures:?}");
    let failures = outcomes.iter().filter(|(_, ok, _)| !ok).count();
    eprintln!(
        "{} requests, {failures} failed (before the kill was seen)",
        outcomes.len()
    );
    assert!(
        failures <= LOADERS,
        "at most the requests in flight at the kill fail: {failures}"
    );
    assert!(
        outcomes
            .iter()
            .filter(|(s, ok, _)| *s >= seen_down && *ok)
            .count()
            >= 50
    );
}

#[actix_rt::test]
async fn a_backend_an_application_registers_is_advertised_until_it_detaches() {
    use nodecloud::service::{Client, Incoming};
    let mut c = nodecloud::testing::star(1);
    c.config.nodes[1].service = Some(c.ports.reserve());
    let nodes = c.start().await.unwrap();
    nodecloud::testing::wait_converged(&nodes, WAIT)
        .await
        .unwrap();
    let mut view = nodes[0].membership();
    let mut app = Client::connect_via(&c.config(), "worker-1", "web")
        .await
        .unwrap();
    // A malformed address is refused, and the link goes on.
    app.http_backend("no-port").await.unwrap();
    match tokio::time::timeout(WAIT, app.next()).await.unwrap() {
        Some(Incoming::Refused { op, code, .. }) => {
            assert_eq!(
                (op.as_str(), code.as_str()),
                ("http_backend", "bad_address")
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    app.http_backend("127.0.0.1:9999").await.unwrap();
    app.sync().await.unwrap();
    let advertised = |http: &[&str]| {
        let http: Vec<String> = http.iter().map(|s| (*s).to_owned()).collect();
        move |v: &Arc<nodecloud::node::MembershipView>| {
            v.members.get("worker-1").is_some_and(|m| m.http == http)
        }
    };
    tokio::time::timeout(WAIT, view.wait_for(advertised(&["127.0.0.1:9999"])))
        .await
        .expect("the master sees worker-1's backend")
        .unwrap();
    app.close().await;
    tokio::time::timeout(WAIT, view.wait_for(advertised(&[])))
        .await
        .expect("the backend leaves with its application")
        .unwrap();
    nodecloud::cluster::stop(&nodes).await;
}

/// A websocket echo server (tungstenite, blocking, a thread per connection); lives as long as
/// the test process.
fn websocket_echo() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    if (m.is_text() || m.is_binary()) && ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_websocket_echo_works_through_the_proxy() {
    use tungstenite::client::IntoClientRequest;
    let star = Star::start_with(1024, false, Some(websocket_echo()));
    let mut req = format!("ws://{}/echo", star.proxy)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-nodecloud-node", "worker-1".parse().unwrap());
    let stream = TcpStream::connect(star.proxy).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, resp) = tungstenite::client(req, stream).unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-nodecloud-node"], "worker-1");
    for text in ["one", "two", &"x".repeat(100_000)] {
        ws.send(tungstenite::Message::text(text)).unwrap();
        let back = ws.read().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    ws.close(None).unwrap();
}

#[test]
fn a_slow_backend_gets_fewer_requests() {
    const LOADERS: usize = 4;
    const EACH: usize = 60;
    let star = Star::start_full(1024, false, None, Duration::from_millis(50));
    let loaders: Vec<_> = (0..LOADERS)
        .map(|_| {
            let proxy = star.proxy;
            std::thread::spawn(move || {
                let http = Http::new();
                for _ in 0..EACH {
                    assert_eq!(http.send(proxy, Method::GET, None).status, StatusCode::OK);
                }
            })
        })
        .collect();
    for l in loaders {
        l.join().unwrap();
    }
    let hits: Vec<usize> = star.backends.iter().map(|b| *b.hits.borrow()).collect();
    assert_eq!(hits.iter().sum::<usize>(), LOADERS * EACH);
    // While it answers one request the others answer many: it is rarely the least busy.
    assert!(hits[0] * 3 < hits[1].min(hits[2]), "{hits:?}");
}
