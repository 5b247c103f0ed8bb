//! The HTTP/1 server loop: bounded connections, header and body deadlines,
//! graceful shutdown. Slow or greedy clients cost a bounded number of
//! connections for a bounded time, whatever they send.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended");
                    }
                }
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
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

/// Answers 503 to a connection over the limit and closes it; bounded in
/// time so refusals cannot pile up either.
async fn refuse(mut stream: TcpStream) {
    let answer = async {
        let busy = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{BUSY_BODY}",
            BUSY_BODY.len()
        );
        stream.write_all(busy.as_bytes()).await?;
        stream.shutdown().await?;
        // Drain what the client sent, so closing does not reset the
        // connection before it reads the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}
