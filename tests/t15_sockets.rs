//! Nodes on sockets bound before they start: a node serves on exactly the listener it is
//! handed, and a node restarted on a held port serves there again (the held socket is the
//! same one the first node accepted on).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nodecloud::testing;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);

#[actix_rt::test]
async fn a_node_serves_on_exactly_the_listeners_it_is_handed() {
    let mut c = testing::star(1);
    c.config.nodes[0].service = Some(c.ports.reserve());
    let listen = c.config.nodes[0].listen;
    let service = c.config.nodes[0].service;
    let nodes = c.start().await.expect("cluster starts");
    assert_eq!(nodes[0].listen_addr(), listen);
    assert_eq!(nodes[0].service_addr(), service);
    // The worker dials the configured address: the handed-over socket is the one served.
    testing::wait_converged(&nodes, WAIT).await.unwrap();
    nodecloud::cluster::stop(&nodes).await;
}

#[actix_rt::test]
async fn a_node_stopped_and_started_again_serves_on_the_same_held_port() {
    let c = testing::star(1);
    let master = c.start_node("master").await.unwrap();
    let worker = c.start_node("worker-1").await.unwrap();
    testing::wait_converged(&[master.clone(), worker.clone()], WAIT)
        .await
        .unwrap();
    let listen = master.listen_addr();

    master.shutdown().await;
    testing::wait_down(&worker, "master", WAIT).await.unwrap();
    // The port stays reserved while the master is away: a connection waits in the backlog.
    let early = tokio::time::timeout(WAIT, TcpStream::connect(listen)).await;
    assert!(matches!(early, Ok(Ok(_))), "the held port still accepts");

    let master = c.start_node("master").await.unwrap();
    assert_eq!(master.listen_addr(), listen);
    testing::wait_up(&worker, &["master"], WAIT).await.unwrap();
    testing::wait_up(&master, &["worker-1"], WAIT)
        .await
        .unwrap();
    nodecloud::cluster::stop(&[master, worker]).await;
}
