//! The node's HTTP listener: every accepted connection gets `TCP_NODELAY`, a fixed, small kernel
//! send buffer, and writes that fail once they have made no progress for a bounded time, so a
//! peer that stopped reading cannot hold a connection (and its memory) forever.
//!
//! Why a fixed send buffer: Linux grows a socket's send buffer on its own up to `tcp_wmem`'s
//! maximum (4 MiB by default), and a crowd of tens of thousands of viewers with full buffers
//! would pin gigabytes of kernel memory; it would also let a stalled viewer swallow minutes of
//! frames before it is noticed. `SOCKET_SEND_BUFFER_BYTES` is plenty for API responses.
//! Why no delay: frames are small writes that must leave at once (Nagle's algorithm holds a
//! small write until the previous one is acknowledged).
//!
//! It exists for SSE viewers: their body stream is pulled by hyper, which simply stops writing
//! to a full socket and would wait on it indefinitely (TCP keeps a zero-window connection open).
//! With this wrapper the blocked write errors after `--viewer-send-timeout-ms`, hyper drops the
//! connection and the viewer's slot is freed. It applies to every connection of the listener,
//! which is also right for a REST client that never reads its response. WebSocket connections
//! additionally bound each send and ping the viewer (`ws.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use super::CONNECTIONS_STALLED_TOTAL;

/// The kernel send buffer of every accepted connection, in bytes (Linux doubles the value for
/// its own bookkeeping).
pub const SOCKET_SEND_BUFFER_BYTES: usize = 32 * 1024;

/// `TcpListener` whose streams time out stalled writes.
pub struct StallGuardListener {
    inner: TcpListener,
    stall: Duration,
}

impl StallGuardListener {
    pub fn new(inner: TcpListener, stall: Duration) -> StallGuardListener {
        StallGuardListener { inner, stall }
    }
}

impl Listener for StallGuardListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        if let Err(error) =
            socket2::SockRef::from(&stream).set_send_buffer_size(SOCKET_SEND_BUFFER_BYTES)
        {
            tracing::debug!(%error, "cannot set the send buffer size of a connection");
        }
        (
            GuardedStream {
                inner: stream,
                stall: self.stall,
                stalled: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A `TcpStream` whose writes fail with `TimedOut` once they have been pending for `stall`.
pub struct GuardedStream {
    inner: TcpStream,
    stall: Duration,
    /// Armed when a write is first pending; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl GuardedStream {
    /// The socket itself, for a WebSocket viewer whose writes its crowd bounds (`crowd.rs`).
    pub fn into_inner(self) -> TcpStream {
        self.inner
    }

    /// Maps a write poll: progress disarms the timer; `Pending` arms it (registering this task
    /// to be woken when it fires) and turns into an error once it has fired.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let stall = self.stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                metrics::counter!(CONNECTIONS_STALLED_TOTAL).increment(1);
                tracing::debug!(
                    stall_ms = stall.as_millis() as u64,
                    "dropping a connection whose writes stalled"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer stopped reading",
                )))
            }
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A peer that never reads: the server's writes fill both socket buffers, then fail after
    /// the stall time instead of waiting forever.
    #[tokio::test]
    async fn a_write_to_a_peer_that_never_reads_fails_after_the_stall_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut guarded = StallGuardListener::new(listener, Duration::from_millis(200));
        let _peer = TcpStream::connect(addr).await.unwrap();
        let (mut stream, _) = guarded.accept().await;
        let chunk = vec![0u8; 64 * 1024];
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Err(e) = stream.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the stalled write must fail within the test's bound");
        assert_eq!(outcome.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
