//! Connections: how many each address keeps, what each may hold, and how
//! the HTTP address serves them.
//!
//! Every accepted connection holds a slot of its listener until it closes;
//! with every slot taken, the listener stops accepting (new connections
//! wait in the kernel's backlog) while established ones, such as a proxy's
//! pooled connections, go on. Each connection carries a [`Connection`]
//! into its requests: its peer, its share of the body budget and its
//! WebAuthn ceremony slots. docs/security.md ("Resource limits") lists the
//! figures.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::budget::ByteBudget;

/// What one connection may hold, and how long it may stay quiet.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once on the address.
    pub connections: usize,
    /// Bytes of bodies or messages one connection's requests may hold.
    pub body_bytes: usize,
    /// WebAuthn calls in progress on one connection.
    pub ceremonies: usize,
    /// A connection that neither sends nor receives a byte for this long is
    /// closed (gracefully: requests in progress finish). `None`: not
    /// tracked (the gRPC address, whose peer is Envoy's pool, relies on
    /// HTTP/2 keep-alive pings instead).
    pub idle: Option<Duration>,
}

/// One accepted connection, as its requests see it.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// This connection's share of the body budget.
    pub body_budget: ByteBudget,
    /// WebAuthn calls in progress on this connection.
    pub ceremonies: Arc<Semaphore>,
    opened: Instant,
    /// Milliseconds after `opened` of the last byte read or written, when
    /// idle time is tracked.
    last_io_ms: Option<AtomicU64>,
}

impl Connection {
    fn new(peer: SocketAddr, limits: &Limits) -> Self {
        Connection {
            peer,
            body_budget: ByteBudget::new(limits.body_bytes),
            ceremonies: Arc::new(Semaphore::new(limits.ceremonies)),
            opened: Instant::now(),
            last_io_ms: limits.idle.map(|_| AtomicU64::new(0)),
        }
    }

    /// A connection not accepted by a [`Listener`] (a router served some
    /// other way): its own body budget, one ceremony at a time.
    pub fn detached(body_bytes: usize) -> Self {
        Connection::new(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            &Limits {
                connections: 1,
                body_bytes,
                ceremonies: 1,
                idle: None,
            },
        )
    }

    fn touch(&self) {
        if let Some(last) = &self.last_io_ms {
            let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            last.store(ms, Ordering::Relaxed);
        }
    }

    /// How long since the last byte either way (zero when not tracked).
    pub fn quiet_for(&self) -> Duration {
        match &self.last_io_ms {
            Some(last) => {
                let last = Duration::from_millis(last.load(Ordering::Relaxed));
                self.opened.elapsed().saturating_sub(last)
            }
            None => Duration::ZERO,
        }
    }
}

/// An accepted stream: holds its listener slot and records activity.
pub struct Admitted {
    io: TcpStream,
    conn: Arc<Connection>,
    _slot: OwnedSemaphorePermit,
}

impl Admitted {
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.touch();
        }
        polled
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// tonic puts this into every request's extensions.
impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = Arc<Connection>;

    fn connect_info(&self) -> Arc<Connection> {
        self.conn.clone()
    }
}

/// A TCP listener that keeps at most [`Limits::connections`] open.
pub struct Listener {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
    limits: Limits,
}

impl Listener {
    pub fn new(tcp: TcpListener, limits: Limits) -> Self {
        Listener {
            tcp,
            slots: Arc::new(Semaphore::new(limits.connections)),
            limits,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The next connection, once a slot is free. Accept errors (a full file
    /// table, a connection reset before it was accepted) are logged and
    /// waited out, never returned: the listener must go on.
    pub async fn accept(&self) -> Admitted {
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(s) => s,
            // Never closed; should it be, wait instead of spinning.
            Err(_) => std::future::pending().await,
        };
        loop {
            match self.tcp.accept().await {
                Ok((io, peer)) => {
                    let _ = io.set_nodelay(true);
                    return Admitted {
                        io,
                        conn: Arc::new(Connection::new(peer, &self.limits)),
                        _slot: slot,
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The connections as a stream, for tonic.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Admitted>> + Send + 'static {
        futures_util::stream::unfold(self, |listener| async move {
            let admitted = listener.accept().await;
            Some((Ok(admitted), listener))
        })
    }
}

/// HTTP settings of the HTTP address.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// HTTP/1.1: a request head must arrive whole within this time of the
    /// connection being ready for it (so it is also how long an idle
    /// keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// HTTP/1.1: the largest read buffer; a request head that does not fit
    /// is refused with 431.
    pub max_buf_size: usize,
    /// HTTP/2: streams open at once on one connection.
    pub max_concurrent_streams: u32,
}

/// Serves `app` on `listener` until `stop` turns true, then stops
/// accepting, lets every connection finish its requests (HTTP/2 GOAWAY,
/// HTTP/1.1 close after the response) and returns when all are closed.
pub async fn serve_http(
    listener: Listener,
    app: axum::Router,
    settings: HttpSettings,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_buf_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let idle = listener.limits().idle.unwrap_or(Duration::from_secs(3600));
    let mut connections = JoinSet::new();
    loop {
        let admitted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let conn = admitted.connection().clone();
        let app = app.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let state = conn.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(state.peer));
                req.extensions_mut().insert(state.clone());
                tower::ServiceExt::oneshot(app.clone(), req)
            });
            let served = builder.serve_connection(TokioIo::new(admitted), service);
            tokio::pin!(served);
            let mut closing = false;
            let mut tick = tokio::time::interval(idle / 4);
            loop {
                tokio::select! {
                    r = served.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP connection ended");
                        }
                        return;
                    }
                    _ = stopped(&mut stop), if !closing => {
                        closing = true;
                        served.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick(), if !closing => {
                        if conn.quiet_for() >= idle {
                            closing = true;
                            served.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_listener_waits_for_a_slot() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limits = Limits {
            connections: 2,
            body_bytes: 10,
            ceremonies: 1,
            idle: None,
        };
        let listener = Listener::new(tcp, limits);
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(addr)))
                .await;
        assert!(clients.iter().all(Result::is_ok), "the backlog takes them");
        let first = listener.accept().await;
        let second = listener.accept().await;
        assert_eq!(first.connection().body_budget.available(), 10);
        let third = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(third.is_err(), "no third connection while two are open");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(third.is_ok(), "a closed connection frees its slot");
        drop(second);
    }
}
