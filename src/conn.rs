//! Connections: how many each address keeps, what each may hold, and how
//! the HTTP address serves them.
//!
//! Every accepted connection holds a slot of its listener until it closes.
//! When a new connection arrives and every slot is taken, the connection
//! that has gone longest without a request in progress is closed to make
//! room (a connection that never sent a request counts as idle since it
//! opened), so idle or silent sockets cannot keep a proxy out; only when
//! every connection has a request in progress does the newcomer wait. Each
//! connection carries a [`Connection`] into its requests: its peer, its
//! share of the body budget and its WebAuthn ceremony slots.
//! docs/security.md ("Resource limits") lists the figures.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use futures_util::Stream;
use futures_util::task::AtomicWaker;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::budget::ByteBudget;

/// What one connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once on the address.
    pub connections: usize,
    /// Bytes of bodies or messages one connection's requests may hold.
    pub body_bytes: usize,
    /// WebAuthn calls in progress on one connection.
    pub ceremonies: usize,
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
    /// Requests in progress.
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when a request last started or ended.
    last_request_ms: AtomicU64,
    /// One more than the milliseconds after `opened` when the first byte of
    /// a request head arrived with no request in progress (HTTP/1.1); 0 when
    /// no head is being received.
    head_since_ms: AtomicU64,
    /// Whether a byte has been read, and whether the first ones were the
    /// HTTP/2 preface.
    read_any: AtomicBool,
    http2: AtomicBool,
    /// Asked to close (evicted): reads see the end of the stream.
    closing: AtomicBool,
    closed: Notify,
    reader: AtomicWaker,
}

impl Connection {
    fn new(peer: SocketAddr, limits: &Limits) -> Self {
        Connection {
            peer,
            body_budget: ByteBudget::new(limits.body_bytes),
            ceremonies: Arc::new(Semaphore::new(limits.ceremonies)),
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_request_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            read_any: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
            reader: AtomicWaker::new(),
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
            },
        )
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Marks a request in progress until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        // While one is in progress the time of the last request is not read
        // (the guard's drop sets it), so the start reads no clock.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.head_since_ms.load(Ordering::Acquire) != 0 {
            self.head_since_ms.store(0, Ordering::Release);
        }
        RequestGuard(self.clone())
    }

    /// How long the connection has gone without a request in progress;
    /// `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(last))
    }

    /// How long an HTTP/1.1 request head has been arriving without being
    /// complete; `None` when none is.
    pub fn head_for(&self) -> Option<Duration> {
        match self.head_since_ms.load(Ordering::Acquire) {
            0 => None,
            since => Some(
                self.opened
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }

    /// Closes the connection: its reads end, its writes fail.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_one();
        self.reader.wake();
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Bytes arrived: the first ones tell HTTP/2 (its preface) from
    /// HTTP/1.1, whose request heads are timed from their first byte.
    fn on_read(&self, bytes: &[u8]) {
        if !self.read_any.load(Ordering::Acquire) && !self.read_any.swap(true, Ordering::AcqRel) {
            self.http2
                .store(bytes.starts_with(b"PRI "), Ordering::Release);
        }
        if !self.http2.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == 0
        {
            self.head_since_ms
                .store(self.now_ms() + 1, Ordering::Release);
        }
    }
}

/// A request in progress on its connection.
pub struct RequestGuard(Arc<Connection>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.last_request_ms.store(c.now_ms(), Ordering::Release);
        c.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted stream: holds its listener slot, reports what it reads to
/// its [`Connection`], and ends when the connection is closed.
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
        if self.conn.is_closing() {
            return Poll::Ready(Ok(()));
        }
        self.conn.reader.register(cx.waker());
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection closed by authgate")
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.conn.is_closing() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.conn.is_closing() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    /// Not vectored, on purpose: h2 then copies DATA payloads of up to
    /// 1 KiB into its write buffer (256 B when vectored) and sends many
    /// answers in one write. Vectored, an allow larger than 256 B (one
    /// with an upstream token) is written alone, one `writev` per answer:
    /// 60 % more server CPU a Check at 64 streams (docs/benchmarks.md).
    fn is_write_vectored(&self) -> bool {
        false
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
    open: Mutex<Vec<Weak<Connection>>>,
}

impl Listener {
    pub fn new(tcp: TcpListener, limits: Limits) -> Self {
        Listener {
            tcp,
            slots: Arc::new(Semaphore::new(limits.connections)),
            limits,
            open: Mutex::new(Vec::new()),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection. With every slot taken, the connection idle the
    /// longest is closed to make room; with none idle, the newcomer waits
    /// for a slot. Accept errors (a full file table, a connection reset
    /// before it was accepted) are logged and waited out, never returned:
    /// the listener must go on. Not cancel-safe: dropped while it waits for
    /// a slot, it drops the connection it accepted.
    pub async fn accept(&self) -> Admitted {
        let (io, peer) = loop {
            match self.tcp.accept().await {
                Ok(accepted) => break accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let _ = io.set_nodelay(true);
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                self.evict_idlest();
                match self.slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    // Never closed; should it be, wait instead of spinning.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let conn = Arc::new(Connection::new(peer, &self.limits));
        if let Ok(mut open) = self.open.lock() {
            open.retain(|w| w.strong_count() > 0);
            open.push(Arc::downgrade(&conn));
        }
        Admitted {
            io,
            conn,
            _slot: slot,
        }
    }

    /// Closes the open connection that has gone longest without a request
    /// in progress; false when every one has a request in progress.
    fn evict_idlest(&self) -> bool {
        let victim = self.open.lock().ok().and_then(|open| {
            open.iter()
                .filter_map(Weak::upgrade)
                .filter(|c| !c.is_closing())
                .filter_map(|c| c.idle_for().map(|idle| (idle, c)))
                .max_by_key(|(idle, _)| *idle)
                .map(|(_, c)| c)
        });
        match victim {
            Some(c) => {
                tracing::debug!(peer = %c.peer, "connection limit reached: closing the idlest connection");
                c.close();
                true
            }
            None => false,
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
    /// HTTP/1.1: a request head must arrive whole within this time of its
    /// first byte; the connection is closed otherwise.
    pub header_read_timeout: Duration,
    /// A connection without a request in progress for this long is closed
    /// (gracefully): HTTP/1.1 keep-alive, and HTTP/2.
    pub idle_timeout: Duration,
    /// HTTP/1.1: the largest read buffer; a request head that does not fit
    /// is refused with 431.
    pub max_buf_size: usize,
    /// HTTP/2: streams open at once on one connection, and the flow-control
    /// window of a stream and of the connection (what a client may send
    /// before authgate reads it).
    pub max_concurrent_streams: u32,
    pub window: u32,
}

/// How often each HTTP connection's deadlines are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

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
        // hyper's own timer runs from the moment a connection waits for a
        // head, idle time included: here it only backs up the idle limit.
        .header_read_timeout(settings.idle_timeout)
        .max_buf_size(settings.max_buf_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_stream_window_size(settings.window)
        .initial_connection_window_size(settings.window)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    // Kept across iterations: an accept future dropped while it waits for a
    // slot would drop the connection it has already accepted.
    let mut accepting = std::pin::pin!(listener.accept());
    loop {
        let admitted = tokio::select! {
            a = accepting.as_mut() => {
                accepting.set(listener.accept());
                a
            }
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
                let guard = state.request();
                req.extensions_mut().insert(ConnectInfo(state.peer));
                req.extensions_mut().insert(state.clone());
                let call = tower::ServiceExt::oneshot(app.clone(), req);
                async move {
                    let resp = call.await;
                    drop(guard);
                    resp
                }
            });
            let served = builder.serve_connection(TokioIo::new(admitted), service);
            tokio::pin!(served);
            let mut closing = false;
            let mut tick = tokio::time::interval(WATCH_EVERY);
            loop {
                tokio::select! {
                    r = served.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP connection ended");
                        }
                        return;
                    }
                    // Evicted: no request was in progress.
                    _ = conn.closed.notified() => return,
                    _ = stopped(&mut stop), if !closing => {
                        closing = true;
                        served.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick() => {
                        if conn.head_for().is_some_and(|t| t >= settings.header_read_timeout) {
                            tracing::debug!(peer = %conn.peer, "request head not received in time");
                            return;
                        }
                        if !closing && conn.idle_for().is_some_and(|t| t >= settings.idle_timeout) {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(connections: usize) -> Limits {
        Limits {
            connections,
            body_bytes: 10,
            ceremonies: 1,
        }
    }

    #[tokio::test]
    async fn a_full_listener_closes_its_idlest_connection_for_a_newcomer() {
        let listener = Listener::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), limits(2));
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut first = listener.accept().await;
        let second = listener.accept().await;
        assert_eq!(first.connection().body_budget.available(), 10);
        // The second one has a request in progress; the first has none.
        let _busy = second.connection().request();
        let third = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::spawn(async move {
            let admitted = listener.accept().await;
            (listener, admitted)
        });
        // The first connection's reads end (its task would close it and
        // free its slot).
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
            .await
            .expect("the evicted connection's read ends")
            .unwrap();
        assert_eq!(n, 0);
        assert!(first.write_all(b"x").await.is_err());
        drop(first);
        let (listener, _third) = tokio::time::timeout(Duration::from_secs(5), accepting)
            .await
            .expect("the newcomer gets the freed slot")
            .unwrap();
        drop((third, clients));
        // With every connection busy, a newcomer waits.
        let _ = TcpStream::connect(addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(
            waited.is_err(),
            "no slot while both connections are open and busy"
        );
        drop(second);
    }

    #[test]
    fn heads_are_timed_from_their_first_byte_on_http1_only() {
        let c = Arc::new(Connection::detached(10));
        assert!(c.head_for().is_none());
        c.on_read(b"GET / HT");
        assert!(c.head_for().is_some());
        let guard = c.request();
        assert!(c.head_for().is_none() && c.idle_for().is_none());
        c.on_read(b"body bytes");
        assert!(c.head_for().is_none(), "bytes of a request in progress");
        drop(guard);
        assert!(c.idle_for().is_some());
        let h2 = Arc::new(Connection::detached(10));
        h2.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        h2.on_read(b"frames");
        assert!(h2.head_for().is_none());
    }
}
