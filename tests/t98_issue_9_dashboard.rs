//! Issue 9: the live dashboard in a real headless Chromium. A star of four (the master in this
//! process, serving the HTTP API; three workers as `nodecloud` processes), the page opened at
//! `/?token=…`: it shows four nodes up, a worker killed with SIGKILL turns `down` within 2 s
//! of the kill, and `up` again once restarted. The page is saved as a screenshot
//! (`target/dashboard.png`). Without the token the page asks for it. The master also serves
//! the HTTP proxy and worker-1 advertises a backend: the page shows which node serves HTTP
//! and the request rate the proxy sends it.
//!
//! Needs Debian's `chromium`: skipped with a note when it is missing, unless `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common {
    pub mod browser;
    pub mod procs;
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::procs::Proc;
use nodecloud::config::Config;
use nodecloud::testing::{self, Ports, TestCluster};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "dashboard-test-token-0123";
const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

/// The configuration file, on addresses `ports` holds: the master serves the API and the
/// proxy; worker-1 advertises `backend`.
fn write_config(dir: &std::path::Path, ports: &mut Ports, backend: SocketAddr) -> PathBuf {
    let mut text = format!(
        "[cluster]\nname = \"dashboard\"\ntopology = \"star\"\n\
         secret = \"dashboard-test-secret-0123\"\napi_token = \"{TOKEN}\"\n\
         heartbeat_interval_ms = 100\nfailure_threshold = 5\n\n\
         [[nodes]]\nname = \"master\"\nrole = \"master\"\nlisten = \"{}\"\napi = \"{}\"\n\
         proxy = \"{}\"\n",
        ports.reserve(),
        ports.reserve(),
        ports.reserve()
    );
    for w in WORKERS {
        let http = if w == "worker-1" {
            format!("http = \"{backend}\"\n")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{w}\"\nlisten = \"{}\"\n{http}",
            ports.reserve()
        ));
    }
    let path = dir.join("dashboard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A web server that answers every request with `200 ok` and closes the connection: worker-1's
/// backend. Runs until the test process ends.
fn backend() -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                // The request head ends with an empty line; GETs carry no body.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = (&stream).write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

fn state_of(node: &str) -> String {
    format!(
        "(document.querySelector('#graph g[data-node=\"{node}\"]') || {{dataset: {{}}}}).dataset.state"
    )
}

#[actix_rt::test]
async fn the_dashboard_shows_the_star_up_a_killed_worker_down_within_two_seconds_and_back_up() {
    if let Some(why) = Browser::missing() {
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Ports::new();
    let path = write_config(dir.path(), &mut ports, backend());
    let config = Config::load(&path).unwrap();
    let api: SocketAddr = config.node("master").unwrap().api.unwrap();
    let proxy: SocketAddr = config.node("master").unwrap().proxy.unwrap();
    let worker_1_http = config
        .node("worker-1")
        .unwrap()
        .http
        .clone()
        .unwrap()
        .to_string();
    let cluster = TestCluster { config, ports };
    let master = cluster
        .start_node("master")
        .await
        .expect("the master starts");
    let mut workers: Vec<Proc> = WORKERS
        .iter()
        .map(|w| Proc::start(&path, w, &cluster.ports))
        .collect();
    testing::wait_up(&master, &WORKERS, WAIT).await.unwrap();

    // Without a token the page asks for one.
    let base = format!("http://{api}/");
    let mut browser = Browser::open(&base, WAIT).expect("chromium starts");
    browser
        .wait_for("!document.getElementById('login').hidden", WAIT)
        .expect("the page asks for the token");
    drop(browser);

    let mut browser = Browser::open(&format!("{base}?token={TOKEN}"), WAIT).expect("chromium");
    browser
        .wait_for(
            "document.querySelectorAll('#graph g[data-state=\"up\"]').length === 4",
            WAIT,
        )
        .expect("four nodes up");
    // Names and states are text in the document, not pixels.
    let names = browser
        .eval("[...document.querySelectorAll('#graph text.name')].map(t => t.textContent).sort().join(',')")
        .unwrap();
    assert_eq!(names, "master,worker-1,worker-2,worker-3");
    assert_eq!(
        browser
            .eval("new URL(location.href).searchParams.has('token')")
            .unwrap(),
        false,
        "the token leaves the address bar"
    );
    // Which node serves HTTP, and the rate of requests the proxy sends it.
    assert_eq!(
        browser
            .eval("document.querySelector('#nodes tr[data-node=\"worker-1\"] td.http').textContent")
            .unwrap(),
        worker_1_http
    );
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let requests = requests.clone();
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .build();
            let mut ok = 0u32;
            while requests.load(std::sync::atomic::Ordering::Relaxed) {
                if agent.get(&format!("http://{proxy}/")).call().is_ok() {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(20)); // a steady trickle, not a sync
            }
            ok
        })
    };
    browser
        .wait_for(
            "Number(document.querySelector('#nodes tr[data-node=\"worker-1\"] td.http-rate').textContent) > 0",
            WAIT,
        )
        .expect("worker-1's HTTP request rate shown");
    assert_eq!(
        browser
            .eval("document.querySelector('#nodes tr[data-node=\"worker-2\"] td.http-rate').textContent")
            .unwrap(),
        "–",
        "a node without a backend has no rate"
    );
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot).unwrap();
    requests.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 0, "requests went through the proxy");

    let killed = Instant::now();
    workers[1].signal("KILL");
    let took = browser
        .wait_for(
            &format!("{} === 'down'", state_of("worker-2")),
            Duration::from_secs(2),
        )
        .expect("worker-2 shown down within 2 s of the kill");
    assert!(
        killed.elapsed() <= Duration::from_secs(2) + Duration::from_millis(200),
        "{took:?}"
    );
    assert_eq!(
        browser.eval(&state_of("worker-1")).unwrap(),
        "up",
        "the others stay up"
    );

    workers[1] = Proc::start(&path, "worker-2", &cluster.ports);
    browser
        .wait_for(&format!("{} === 'up'", state_of("worker-2")), WAIT)
        .expect("worker-2 shown up again after its restart");
    browser
        .wait_for(
            "document.getElementById('summary').textContent === '4 of 4 nodes up'",
            WAIT,
        )
        .unwrap();
    browser.screenshot(&shot).unwrap();
    drop(workers);
    nodecloud::cluster::stop(&[master]).await;
}
