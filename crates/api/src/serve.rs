//! The HTTP/1 server loop: bounded connections, header and body deadlines,
//! graceful shutdown. Slow or greedy clients cost a bounded number of
//! connections for a bounded time, whatever they send, and a client whose
//! request head is too slow is told so (408) before it is cut off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// How many connections flick holds and how long a client may take.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Open connections at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time to send a request's headers (and the longest a kept-alive
    /// connection may sit idle); past it the connection is closed.
    pub header_read_timeout: Duration,
}

/// What a connection over the limit is told before it is closed.
const BUSY_BODY: &str =
    "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"flick is at its connection limit; retry shortly\"}}";

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let (closing_tx, closing) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing.clone();
        let header_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = builder.serve_connection(TokioIo::new(Watched::new(stream)), service);
            tokio::select! {
                result = &mut conn => match result {
                    // hyper closes a connection whose request head is late
                    // without a word; a client that had begun a request is
                    // told why first. One that sent nothing (an idle
                    // keep-alive) is closed as HTTP allows.
                    Err(e) if e.is_timeout() => {
                        let parts = conn.into_parts();
                        let watched = parts.io.into_inner();
                        if watched.request_begun || !parts.read_buf.is_empty() {
                            answer_slow_head(watched.stream, header_timeout).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "connection ended"),
                    Ok(()) => {}
                },
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
                    Pin::new(&mut conn).graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    let _ = closing_tx.send(true);
    // Every connection gives its permit back when it ends.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// Answers 503 to a connection over the limit and closes it.
async fn refuse(stream: TcpStream) {
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BUSY_BODY}",
        BUSY_BODY.len()
    );
    answer_and_close(stream, busy).await;
}

/// Answers 408 to a client whose request head did not arrive in time, and
/// closes the connection.
async fn answer_slow_head(stream: TcpStream, timeout: Duration) {
    let body = format!(
        "{{\"error\":{{\"code\":\"request_timeout\",\"message\":\"the request's headers did not arrive within \
         {} (header_read_timeout)\"}}}}",
        flick_core::units::format_duration(timeout)
    );
    let answer = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    answer_and_close(stream, answer).await;
}

/// Writes a whole answer flick makes itself and closes the connection;
/// bounded in time so these cannot pile up either.
async fn answer_and_close(mut stream: TcpStream, answer: String) {
    let answer = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Drain what the client sent, so closing does not reset the
        // connection before it reads the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}

/// A connection's stream that remembers whether the client sent anything
/// since flick last wrote to it, i.e. whether a new request has begun.
struct Watched {
    stream: TcpStream,
    request_begun: bool,
}

impl Watched {
    fn new(stream: TcpStream) -> Self {
        Self { stream, request_begun: false }
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.request_begun = true;
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.request_begun = false;
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.request_begun = false;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
