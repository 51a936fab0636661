//! A snapshot's bytes as openraft reads and writes them: ready (a stored file, or one being
//! received), or a copy of the state still to be packed, which is packed on a background
//! thread when first read. openraft asks the state machine for its current snapshot in its
//! own task, whose waiting stops the group's applies; a copy packed there would stop a hot
//! group's bids for seconds, and one asked for only for its metadata (as openraft does at
//! startup) would be packed for nothing.

use std::future::Future;
use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

type Packing = Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send>>;

pub struct SnapshotData {
    contents: Contents,
    /// A seek asked for before the bytes were ready, made once they are.
    seek_when_ready: Option<SeekFrom>,
}

enum Contents {
    Ready(Cursor<Vec<u8>>),
    /// Not begun until first polled: dropped unread, it costs nothing.
    Packing(Packing),
    /// Packing failed: every read says why.
    Failed(io::ErrorKind, String),
}

impl SnapshotData {
    pub fn ready(bytes: Vec<u8>) -> SnapshotData {
        SnapshotData {
            contents: Contents::Ready(Cursor::new(bytes)),
            seek_when_ready: None,
        }
    }

    /// The bytes `packing` produces, produced when first read.
    pub fn packed_by(
        packing: impl Future<Output = io::Result<Vec<u8>>> + Send + 'static,
    ) -> SnapshotData {
        SnapshotData {
            contents: Contents::Packing(Box::pin(packing)),
            seek_when_ready: None,
        }
    }

    /// All the bytes, packing them first if need be.
    pub async fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        std::future::poll_fn(|cx| self.poll_ready(cx).map_ok(|_| ())).await?;
        match self.contents {
            Contents::Ready(cursor) => Ok(cursor.into_inner()),
            _ => unreachable!("poll_ready returned ready"),
        }
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Cursor<Vec<u8>>>> {
        if let Contents::Packing(packing) = &mut self.contents {
            self.contents = match ready!(packing.as_mut().poll(cx)) {
                Ok(bytes) => Contents::Ready(Cursor::new(bytes)),
                Err(e) => Contents::Failed(e.kind(), e.to_string()),
            };
        }
        match &mut self.contents {
            Contents::Ready(cursor) => {
                if let Some(position) = self.seek_when_ready.take() {
                    Pin::new(&mut *cursor).start_seek(position)?;
                }
                Poll::Ready(Ok(cursor))
            }
            Contents::Failed(kind, why) => Poll::Ready(Err(io::Error::new(*kind, why.clone()))),
            Contents::Packing(_) => unreachable!("replaced above"),
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let cursor = ready!(self.get_mut().poll_ready(cx))?;
        Pin::new(cursor).poll_read(cx, buf)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.contents {
            Contents::Ready(cursor) => Pin::new(cursor).start_seek(position),
            _ => {
                this.seek_when_ready = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let cursor = ready!(self.get_mut().poll_ready(cx))?;
        Pin::new(cursor).poll_complete(cx)
    }
}

/// Written only while received: a snapshot being packed is only ever read.
impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().contents {
            Contents::Ready(cursor) => Pin::new(cursor).poll_write(cx, buf),
            _ => Poll::Ready(Err(io::Error::other(
                "a snapshot packed from the state is not written to",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn packing_begins_at_the_first_read_and_a_seek_waits_for_it() {
        let begun = Arc::new(AtomicBool::new(false));
        let flag = begun.clone();
        let mut data = SnapshotData::packed_by(async move {
            flag.store(true, Ordering::SeqCst);
            Ok(b"0123456789".to_vec())
        });
        tokio::task::yield_now().await;
        assert!(!begun.load(Ordering::SeqCst), "packed before anyone read");
        assert_eq!(data.seek(SeekFrom::Start(4)).await.unwrap(), 4);
        assert!(begun.load(Ordering::SeqCst));
        let mut rest = Vec::new();
        data.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"456789");
    }

    #[tokio::test]
    async fn a_snapshot_dropped_unread_is_never_packed() {
        let begun = Arc::new(AtomicBool::new(false));
        let flag = begun.clone();
        drop(SnapshotData::packed_by(async move {
            flag.store(true, Ordering::SeqCst);
            Ok(Vec::new())
        }));
        assert!(!begun.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failed_packing_fails_every_read_and_refuses_writes() {
        let mut data =
            SnapshotData::packed_by(async { Err(io::Error::other("the disk is on fire")) });
        assert!(data.write_all(b"x").await.is_err());
        let mut buf = [0u8; 4];
        let first = data.read(&mut buf).await.unwrap_err();
        assert!(first.to_string().contains("on fire"), "{first}");
        assert!(data.read(&mut buf).await.is_err());
        assert!(data.into_bytes().await.is_err());
    }

    #[tokio::test]
    async fn a_received_snapshot_is_written_then_read_whole() {
        let mut data = SnapshotData::ready(Vec::new());
        data.write_all(b"chunk one, ").await.unwrap();
        data.write_all(b"chunk two").await.unwrap();
        assert_eq!(data.into_bytes().await.unwrap(), b"chunk one, chunk two");
    }
}
