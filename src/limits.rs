//! Every bound on what clients can make authgate hold: connections,
//! streams, bytes, time and concurrent work (docs/security.md).

use std::time::Duration;

/// Decisions of one front door that may be inside the pipeline at once
/// (gRPC Check; or HTTP `/check` and `/auth/*`). More wait for a slot,
/// within their decision timeout.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;
/// WebAuthn calls inside the pipeline at once: their own slots, so that
/// ceremonies can never hold the slots decisions need.
pub const MAX_CONCURRENT_CEREMONIES: usize = 64;
/// WebAuthn calls admitted at once, reading their body or waiting for or
/// holding a slot; one more is refused with 503 at once.
pub const MAX_PENDING_CEREMONIES: usize = 256;
/// Largest gRPC `CheckRequest` decoded; a larger one is refused as a call
/// (`OUT_OF_RANGE`), which Envoy turns into a denial.
pub const MAX_CHECK_REQUEST_BYTES: usize = 1024 * 1024;
/// HTTP/2 streams one gRPC connection may have open at once.
pub const GRPC_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Connections the gRPC address keeps open at once (Envoy opens one or a
/// few per worker).
pub const GRPC_MAX_CONNECTIONS: usize = 256;
/// Bytes of `CheckRequest` messages (headers included) not yet decided on,
/// per gRPC connection and in all.
pub const GRPC_CONNECTION_BYTES: usize = 8 * 1024 * 1024;
pub const GRPC_TOTAL_BYTES: usize = 64 * 1024 * 1024;
/// Time to receive the rest of a Check's message once authgate waits for it
/// (right after its headers).
pub const GRPC_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections the HTTP address keeps open at once.
pub const HTTP_MAX_CONNECTIONS: usize = 2048;
/// Bytes of request bodies (webhook and WebAuthn calls) being read or
/// held, per HTTP connection and in all.
pub const HTTP_CONNECTION_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const HTTP_TOTAL_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Time to receive a whole request body once its head has arrived.
pub const HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/1.1: time to receive a whole request head from its first byte.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1.1 read buffer: the header limit ([`MAX_HEADER_BYTES`]) plus
/// room for the request line and separators.
pub const HTTP_MAX_BUF_SIZE: usize = MAX_HEADER_BYTES + 8 * 1024;
/// HTTP/2 streams one HTTP connection may have open at once, and the
/// flow-control window of a stream and of a connection: what a client may
/// send before authgate reads it (HTTP/2's default, 64 KiB).
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
pub const HTTP2_WINDOW: u32 = 65_535;
/// WebAuthn calls in progress on one HTTP connection.
pub const CEREMONIES_PER_CONNECTION: usize = 16;
/// An HTTP connection without a request in progress for this long is
/// closed (HTTP/1.1 keep-alive, HTTP/2): longer than the idle time of the
/// usual client pools (90 s), so that they close first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most header fields one HTTP request may carry (hyper also refuses more
/// than 100 on HTTP/1.1).
pub const MAX_HEADERS: usize = 100;
/// Largest request target plus header names and values of one HTTP request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
