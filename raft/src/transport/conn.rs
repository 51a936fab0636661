//! One established peer connection: a writer task that drains a bounded queue of encoded
//! frames, and a reader task that completes pending calls, answers clock probes and hands
//! every other inbound request to the handler, within a budget of requests in flight (Raft
//! RPCs and application requests apart); beyond it a request is answered `Busy` at once.
//!
//! Any read or write error, a malformed or oversized frame, or an unexpected handshake frame
//! closes the connection: the stream can no longer be trusted to be in sync. Pending calls then
//! fail at once (`Disconnected`) instead of waiting for their timeouts.
//!
//! The tasks are generic over the two halves of the stream: a plain connection is split into
//! the socket's owned halves exactly as before TLS existed, a TLS one with `tokio::io::split`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

use super::frame::{encode_frame, read_frame, Envelope, FrameError, Hello, Message};
use super::messages::{PeerRequest, PeerResponse};
use super::tls::PeerStream;
use super::{lock, CallError, InboundHandler};
use crate::gather_ready;
use crate::types::NodeId;

/// Most frames written before the writer looks at the queue again.
const FRAMES_PER_WRITE_MAX: usize = 64;

pub(super) struct ConnParams {
    pub peer: NodeId,
    pub dialed_by: NodeId,
    pub frame_bytes_max: usize,
    pub outbound_frames_max: usize,
    pub inbound_requests_in_flight_max: usize,
}

type Handler = Arc<OnceLock<Arc<dyn InboundHandler>>>;

/// Raft RPCs one connection handles at once. openraft sends each peer at most one replication
/// request and one vote per group at a time (plus a snapshot chunk), so this is a backstop
/// against a misbehaving peer rather than a limit a healthy cluster meets.
const RAFT_REQUESTS_IN_FLIGHT_MAX: usize = 4 * 1024;

pub(super) struct Conn {
    peer: NodeId,
    dialed_by: NodeId,
    frame_bytes_max: usize,
    outbound: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<PeerResponse>>>,
    next_request_id: AtomicU64,
    closed: AtomicBool,
    close_signal: Notify,
}

pub(super) async fn write_hello<W: AsyncWrite + Unpin>(
    stream: &mut W,
    hello: Hello,
    frame_bytes_max: usize,
) -> Result<(), FrameError> {
    let envelope = Envelope {
        request_id: 0,
        group: 0,
        message: Message::Hello(hello),
    };
    stream
        .write_all(&encode_frame(&envelope, frame_bytes_max)?)
        .await?;
    Ok(())
}

impl Conn {
    /// Starts the connection's tasks. `on_close` runs once when it closes.
    pub fn start(
        stream: PeerStream,
        params: ConnParams,
        handler: Handler,
        on_close: impl FnOnce(&Arc<Conn>) + Send + 'static,
    ) -> Arc<Conn> {
        let (outbound, queue) = mpsc::channel(params.outbound_frames_max);
        let conn = Arc::new(Conn {
            peer: params.peer,
            dialed_by: params.dialed_by,
            frame_bytes_max: params.frame_bytes_max,
            outbound,
            pending: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            close_signal: Notify::new(),
        });
        let budgets = Budgets {
            raft: Arc::new(Semaphore::new(RAFT_REQUESTS_IN_FLIGHT_MAX)),
            app: Arc::new(Semaphore::new(params.inbound_requests_in_flight_max)),
            app_max: params.inbound_requests_in_flight_max,
        };
        let tasks = Tasks {
            queue,
            handler,
            budgets,
        };
        match stream {
            PeerStream::Plain(tcp) => {
                let (reader, writer) = tcp.into_split();
                conn.spawn_tasks(reader, writer, tasks, on_close);
            }
            PeerStream::Tls(tls) => {
                let (reader, writer) = tokio::io::split(*tls);
                conn.spawn_tasks(reader, writer, tasks, on_close);
            }
        }
        conn
    }

    fn spawn_tasks<R, W>(
        self: &Arc<Conn>,
        reader: R,
        writer: W,
        tasks: Tasks,
        on_close: impl FnOnce(&Arc<Conn>) + Send + 'static,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Tasks {
            queue,
            handler,
            budgets,
        } = tasks;
        tokio::spawn(write_loop(self.clone(), writer, queue));
        let reading = self.clone();
        tokio::spawn(async move {
            let outcome = read_loop(&reading, reader, handler, budgets).await;
            if let Err(e) = outcome {
                tracing::warn!(peer = reading.peer, error = %e, "peer connection closed");
                if matches!(
                    e,
                    FrameError::Malformed(_)
                        | FrameError::TooLarge { .. }
                        | FrameError::Version(_)
                        | FrameError::Empty
                ) {
                    metrics::counter!("gavel_peer_frames_rejected_total").increment(1);
                }
            }
            reading.close();
            on_close(&reading);
        });
    }

    pub fn dialed_by(&self) -> NodeId {
        self.dialed_by
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the connection: both tasks stop and every pending call fails.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close_signal.notify_waiters();
            // Dropping the senders wakes each waiting caller with `Disconnected`.
            lock(&self.pending).clear();
        }
    }

    pub async fn call(
        &self,
        group: u32,
        request: PeerRequest,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        let peer = self.peer;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            request_id,
            group,
            message: Message::Request(request),
        };
        let frame =
            encode_frame(&envelope, self.frame_bytes_max).map_err(|e| CallError::Encode {
                peer,
                reason: e.to_string(),
            })?;
        let (answer, response) = oneshot::channel();
        lock(&self.pending).insert(request_id, answer);
        if self.is_closed() {
            lock(&self.pending).remove(&request_id);
            return Err(CallError::Disconnected { peer });
        }
        let timed_out = || CallError::Timeout {
            peer,
            timeout_ms: timeout.as_millis() as u64,
        };
        let sent = tokio::time::timeout_at(deadline, self.outbound.send(frame)).await;
        let outcome = match sent {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(CallError::Disconnected { peer }),
            Ok(Ok(())) => match tokio::time::timeout_at(deadline, response).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(_)) => Err(CallError::Disconnected { peer }),
                Err(_) => Err(timed_out()),
            },
        };
        lock(&self.pending).remove(&request_id);
        outcome
    }
}

/// What a connection's tasks take over from `Conn::start`.
struct Tasks {
    queue: mpsc::Receiver<Vec<u8>>,
    handler: Handler,
    budgets: Budgets,
}

async fn write_loop<W: AsyncWrite + Unpin>(
    conn: Arc<Conn>,
    writer: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let mut writer = BufWriter::new(writer);
    let mut frames = Vec::new();
    'writing: loop {
        let received = tokio::select! {
            received = queue.recv_many(&mut frames, FRAMES_PER_WRITE_MAX) => received,
            _ = conn.close_signal.notified() => 0,
        };
        if received == 0 {
            break;
        }
        // What other groups' tasks, ready to run, are about to send shares the syscall.
        gather_ready(&mut queue, &mut frames, FRAMES_PER_WRITE_MAX).await;
        for frame in frames.drain(..) {
            if writer.write_all(&frame).await.is_err() {
                break 'writing;
            }
        }
        // Pipelining: flush only once the queue is drained, so bursts share a syscall.
        if queue.is_empty() && writer.flush().await.is_err() {
            break;
        }
        if conn.is_closed() {
            break;
        }
    }
    conn.close();
    let _ = writer.shutdown().await;
}

/// The reader's two budgets of inbound requests handled at once.
struct Budgets {
    /// Raft RPCs: bounded by the peer's own Raft (a few per group), so a spare budget.
    raft: Arc<Semaphore>,
    /// Application requests, which may wait long (a forwarded write until it is applied).
    app: Arc<Semaphore>,
    app_max: usize,
}

// The reader never awaits anything that needs the reader: a request it cannot take on at once
// is answered `Busy` at once. Waiting for a slot instead stalled the pair: forwarded writes
// held every slot until committed, and commit waited for AppendEntries answers that only this
// reader could read.
async fn read_loop<R: AsyncRead + Unpin>(
    conn: &Arc<Conn>,
    mut reader: R,
    handler: Handler,
    budgets: Budgets,
) -> Result<(), FrameError> {
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, conn.frame_bytes_max) => frame?,
            _ = conn.close_signal.notified() => return Ok(()),
        };
        let Some(envelope) = frame else { return Ok(()) };
        match envelope.message {
            Message::Response(response) => {
                if let Some(answer) = lock(&conn.pending).remove(&envelope.request_id) {
                    let _ = answer.send(response);
                }
            }
            Message::Request(PeerRequest::ClockProbe { .. }) => {
                // Read at once, so the reading is as close to the probe's arrival as this node
                // can make it; answered even while the node starts.
                let now_ms = crate::clock::wall_clock_ms();
                let response = PeerResponse::ClockProbe { now_ms };
                respond_now(conn, envelope.request_id, envelope.group, response);
            }
            Message::Request(request) => {
                let (budget, in_flight_max) = match request {
                    PeerRequest::App(_) => (&budgets.app, budgets.app_max),
                    _ => (&budgets.raft, RAFT_REQUESTS_IN_FLIGHT_MAX),
                };
                let Ok(permit) = budget.clone().try_acquire_owned() else {
                    metrics::counter!("gavel_peer_requests_busy_total", "kind" => request.name())
                        .increment(1);
                    let busy = PeerResponse::Busy {
                        in_flight_max: u32::try_from(in_flight_max).unwrap_or(u32::MAX),
                    };
                    respond_now(conn, envelope.request_id, envelope.group, busy);
                    continue;
                };
                let conn = conn.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let response = match handler.get() {
                        Some(handler) => handler.handle(conn.peer, envelope.group, request).await,
                        None => PeerResponse::Refused("node is starting".into()),
                    };
                    respond(&conn, envelope.request_id, envelope.group, response).await;
                    drop(permit);
                });
            }
            Message::Hello(_) => {
                return Err(FrameError::Malformed("hello after the handshake".into()))
            }
        }
    }
}

/// Answers without waiting: queues the response if the writer has room. A writer so far behind
/// that its queue is full drops the answer, and the caller's timeout covers it (the reader must
/// not wait on the writer's peer to read).
fn respond_now(conn: &Conn, request_id: u64, group: u32, response: PeerResponse) {
    let Some(frame) = response_frame(conn, request_id, group, response) else {
        return;
    };
    if conn.outbound.try_send(frame).is_err() {
        metrics::counter!("gavel_peer_answers_dropped_total").increment(1);
    }
}

async fn respond(conn: &Conn, request_id: u64, group: u32, response: PeerResponse) {
    if let Some(frame) = response_frame(conn, request_id, group, response) {
        let _ = conn.outbound.send(frame).await;
    }
}

fn response_frame(
    conn: &Conn,
    request_id: u64,
    group: u32,
    response: PeerResponse,
) -> Option<Vec<u8>> {
    let envelope = Envelope {
        request_id,
        group,
        message: Message::Response(response),
    };
    match encode_frame(&envelope, conn.frame_bytes_max) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::error!(peer = conn.peer, error = %e, "cannot encode a response");
            let refused = Envelope {
                request_id,
                group,
                message: Message::Response(PeerResponse::Refused(e.to_string())),
            };
            encode_frame(&refused, conn.frame_bytes_max).ok()
        }
    }
}
