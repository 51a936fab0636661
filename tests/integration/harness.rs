//! Self-tests of the integration harness in `common/`: a server whose chosen port was taken in
//! the meantime is started again on fresh ports, and a restart reuses the data dir.

use std::net::TcpListener;

use crate::common::*;

#[tokio::test]
async fn a_taken_port_is_retried_on_fresh_ports() {
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    let server = Server::start_on(Some((taken, free_port()))).await;
    assert_ne!(server.client_port, taken, "moved off the taken port");
    server.get_anonymous("/healthz").await.expect_status(200);
    let log = server.log_tail();
    assert!(
        log.contains("exited before it was ready"),
        "the first attempt should have failed on the taken port; log:\n{log}"
    );
    drop(squatter);
}

#[tokio::test]
async fn restart_keeps_the_data_dir() {
    let mut server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let created = server
        .create_auction(&carol, &active_auction_body("post-harness"))
        .await;
    let data_dir = server.data_dir();
    server.kill9();
    server.restart().await;
    assert_eq!(server.data_dir(), data_dir);
    let id = created["id"].as_str().unwrap();
    assert_eq!(server.get_auction(&carol, id).await, created);
}
