//! Crowds over real loopback sockets: the connection task of `ws.rs` (`serve_direct`) on the
//! server end, a tungstenite client on the other, the in-memory engine behind the hub.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gavel_rules::ControlAction;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::crowd::CHUNK_VIEWERS;
use super::tests::Fixture;
use super::ws::serve_direct;
use super::LiveConfig;

const CONFIG: LiveConfig = LiveConfig {
    viewers_max: 2 * CHUNK_VIEWERS,
    send_timeout_ms: 1_000,
    ping_interval_ms: 300,
};
/// Long enough for anything due to arrive on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

type Client = WebSocketStream<TcpStream>;

/// A viewer of `id` whose server end is a crowd's: returns the client's end.
async fn direct_viewer(f: &Fixture, id: &str) -> Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    let (server, _) = accepted.unwrap();
    let viewer = f.viewer(id).await;
    tokio::spawn(serve_direct(server, Vec::new(), viewer, CONFIG));
    WebSocketStream::from_raw_socket(client.unwrap(), Role::Client, None).await
}

/// The next text frame as JSON (pings are answered by tungstenite and skipped).
async fn next_frame(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a valid message");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The frame announcing `version`, skipping ticks.
async fn until_version(client: &mut Client, version: u64) -> Value {
    loop {
        let frame = next_frame(client).await;
        if frame["version"] == version && frame["type"] != "tick" {
            return frame;
        }
        assert!(frame["version"].as_u64().unwrap() <= version, "{frame}");
    }
}

/// The close frame the server ends with.
async fn close_code(client: &mut Client) -> CloseCode {
    loop {
        let message = tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("the close in time");
        match message {
            Some(Ok(Message::Close(Some(close)))) => return close.code,
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn viewers_become(f: &Fixture, count: usize) {
    tokio::time::timeout(PATIENCE, async {
        while f.hub.viewers() != count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} viewers, expected {count}", f.hub.viewers()));
}

#[tokio::test]
async fn more_viewers_than_a_chunk_see_every_change_in_order_then_ended_and_a_close() {
    let f = Fixture::with_config(CONFIG);
    f.auction("a").await;
    let mut clients = Vec::new();
    for _ in 0..CHUNK_VIEWERS + 3 {
        let mut client = direct_viewer(&f, "a").await;
        let snapshot = next_frame(&mut client).await;
        assert_eq!(
            (snapshot["type"].as_str(), snapshot["version"].as_u64()),
            (Some("snapshot"), Some(1))
        );
        clients.push(client);
    }
    for amount in [10, 11, 12] {
        f.bid("a", amount).await;
        let version = amount as u64 - 8;
        for client in &mut clients {
            let frame = until_version(client, version).await;
            assert_eq!(frame["type"], "bid");
            assert_eq!(frame["currentPrice"], format!("{amount}.00"));
        }
    }
    f.control("a", ControlAction::End).await;
    for client in &mut clients {
        let ended = until_version(client, 5).await;
        assert_eq!(
            (ended["type"].as_str(), ended["winnerId"].as_str()),
            (Some("ended"), Some("bob"))
        );
        assert_eq!(close_code(client).await, CloseCode::Normal);
    }
    viewers_become(&f, 0).await;
}

#[tokio::test]
async fn an_idle_viewer_gets_ticks_and_pings_and_its_pongs_keep_it() {
    let f = Fixture::with_config(CONFIG);
    f.auction("a").await;
    let mut client = direct_viewer(&f, "a").await;
    next_frame(&mut client).await;
    let (mut ticks, mut pings) = (0, 0);
    // Ticks every second; pings every 300 ms, answered by tungstenite as it reads. An
    // unanswered ping would drop the viewer after three intervals.
    tokio::time::timeout(PATIENCE, async {
        while ticks < 3 || pings < 6 {
            match client.next().await.unwrap().unwrap() {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    assert_eq!(
                        (frame["type"].as_str(), frame["version"].as_u64()),
                        (Some("tick"), Some(1))
                    );
                    ticks += 1;
                }
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("three ticks and six pings");
    assert_eq!(f.hub.viewers(), 1);
}

#[tokio::test]
async fn a_clients_ping_is_answered_between_frames() {
    let f = Fixture::with_config(CONFIG);
    f.auction("a").await;
    let mut client = direct_viewer(&f, "a").await;
    next_frame(&mut client).await;
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PATIENCE, async {
        loop {
            match client.next().await.unwrap().unwrap() {
                Message::Pong(payload) => return payload,
                Message::Text(_) | Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"are you there");
    // The stream goes on, whole.
    f.bid("a", 10).await;
    assert_eq!(until_version(&mut client, 2).await["type"], "bid");
}

#[tokio::test]
async fn a_viewer_that_stops_answering_is_dropped_and_one_that_leaves_frees_its_slot() {
    let f = Fixture::with_config(CONFIG);
    f.auction("a").await;
    let mut silent = direct_viewer(&f, "a").await;
    next_frame(&mut silent).await;
    let mut leaving = direct_viewer(&f, "a").await;
    next_frame(&mut leaving).await;
    let mut staying = direct_viewer(&f, "a").await;
    next_frame(&mut staying).await;
    viewers_become(&f, 3).await;
    leaving.close(None).await.unwrap();
    drop(leaving);
    viewers_become(&f, 2).await;
    // `silent` reads nothing from here on, so it answers no ping: dropped after three
    // intervals. `staying` reads (and so answers) and stays.
    let started = std::time::Instant::now();
    tokio::time::timeout(PATIENCE, async {
        while f.hub.viewers() > 1 {
            tokio::select! {
                _ = next_frame(&mut staying) => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await
    .expect("the silent viewer is dropped");
    assert!(started.elapsed() >= Duration::from_millis(CONFIG.ping_interval_ms * 2));
    f.bid("a", 10).await;
    assert_eq!(until_version(&mut staying, 2).await["type"], "bid");
    drop(silent);
}

#[tokio::test]
async fn closing_the_hub_closes_every_crowd_viewer_with_going_away() {
    let f = Fixture::with_config(CONFIG);
    f.auction("a").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = direct_viewer(&f, "a").await;
        next_frame(&mut client).await;
        clients.push(client);
    }
    f.hub.close();
    for client in &mut clients {
        assert_eq!(close_code(client).await, CloseCode::Away);
    }
    viewers_become(&f, 0).await;
}
