//! The byte stream to the server (TCP, Unix socket or TLS over TCP) and message framing.
//!
//! Reading is cancel-safe: bytes go into our own buffer with `read_buf`, and a message is taken
//! out only once it is complete. So a caller may wrap [`Wire::read`] in a timeout, drop it when
//! the timeout fires, and read again later without losing or splitting a message — which is what
//! [`crate::stream::ReplicationStream::next`] does while waiting for WAL.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use crate::error::ReplError;
use crate::frames;

/// Read granularity: large enough for a whole XLogData message (128 KiB of WAL) in a few reads.
const READ_CHUNK: usize = 128 * 1024;

/// The transport under the protocol.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its type byte and body (without the length word).
pub(crate) struct Message {
    pub tag: u8,
    pub body: Bytes,
}

/// A framed, buffered connection.
pub(crate) struct Wire {
    socket: Socket,
    rbuf: BytesMut,
    /// Frontend messages are encoded here (by `postgres_protocol::message::frontend`), then
    /// written by [`Wire::flush`].
    pub wbuf: BytesMut,
}

impl Wire {
    pub fn new(socket: Socket) -> Wire {
        Wire {
            socket,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
        }
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The next complete backend message. Cancel-safe; no timeout of its own.
    pub async fn read(&mut self) -> Result<Message, ReplError> {
        loop {
            let mut want = 5;
            if self.rbuf.len() >= 5 {
                let header = [
                    self.rbuf[0],
                    self.rbuf[1],
                    self.rbuf[2],
                    self.rbuf[3],
                    self.rbuf[4],
                ];
                let (tag, len) = frames::parse_header(header)?;
                want = 5 + len;
                if self.rbuf.len() >= want {
                    let mut msg = self.rbuf.split_to(want);
                    msg.advance(5);
                    return Ok(Message {
                        tag,
                        body: msg.freeze(),
                    });
                }
            }
            self.rbuf.reserve((want - self.rbuf.len()).max(READ_CHUNK));
            let n = self
                .socket
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| ReplError::lost("reading from the server", e))?;
            if n == 0 {
                return Err(ReplError::lost(
                    "reading from the server",
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                ));
            }
        }
    }

    /// [`Wire::read`] bounded by `timeout`.
    pub async fn read_timeout(
        &mut self,
        timeout: Duration,
        during: &str,
    ) -> Result<Message, ReplError> {
        match tokio::time::timeout(timeout, self.read()).await {
            Ok(r) => r,
            Err(_) => Err(ReplError::Timeout {
                during: during.to_string(),
                after: timeout,
            }),
        }
    }

    /// Writes everything encoded in `wbuf`, bounded by `timeout`.
    pub async fn flush(&mut self, timeout: Duration, during: &str) -> Result<(), ReplError> {
        let write = async {
            // write_all_buf advances `wbuf` as bytes go out, so a timed-out write leaves only
            // the unsent rest behind.
            self.socket.write_all_buf(&mut self.wbuf).await?;
            self.socket.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ReplError::lost(during, e)),
            Err(_) => Err(ReplError::Timeout {
                during: during.to_string(),
                after: timeout,
            }),
        }
    }

    /// Sends Terminate ('X', "Message Formats") and closes, best effort, bounded by `timeout`.
    pub async fn terminate(mut self, timeout: Duration) {
        postgres_protocol::message::frontend::terminate(&mut self.wbuf);
        let _ = self.flush(timeout, "closing the connection").await;
        let _ = tokio::time::timeout(timeout, self.socket.shutdown()).await;
    }
}
