//! Envoy ext_authz v3 gRPC front door: a thin adapter from `CheckRequest`
//! to [`Request`] and from [`Decision`] to `CheckResponse`.
//!
//! A decision is always an OK gRPC call; gRPC errors are only for calls that
//! are not ext_authz requests at all.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BufMut};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc::Status;

use crate::budget::{ByteBudget, Charge};
use crate::conn::Connection;
use crate::decision::{Allow, Decision, Deny};
use crate::limits;
use crate::pipeline::Answer;
use crate::request::Request;
use crate::state::Shared;

mod encode;
#[cfg(any(test, feature = "reference"))]
mod reference;
mod wire;

#[cfg(any(test, feature = "reference"))]
pub use reference::{render, render_answer, to_request};

pub use encode::put_allow;
pub use wire::{DecodeError, decode_check};

/// The gRPC method Envoy calls.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The `envoy.service.auth.v3.Authorization` service. Served by hand rather
/// than through `envoy-types`' generated server so that a `CheckRequest` is
/// decoded straight into a [`Request`] ([`decode_check`]) and an allow is
/// written straight from the decision ([`put_allow`]).
#[derive(Clone)]
pub struct ExtAuthz {
    shared: Arc<Shared>,
    max_request_bytes: usize,
}

impl ExtAuthz {
    /// `max_request_bytes` bounds a `CheckRequest` (larger: OUT_OF_RANGE).
    pub fn new(shared: Arc<Shared>, max_request_bytes: usize) -> Self {
        ExtAuthz {
            shared,
            max_request_bytes,
        }
    }
}

impl NamedService for ExtAuthz {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<B> Service<http::Request<B>> for ExtAuthz
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CHECK_PATH {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("").into_http::<tonic::body::Body>())
            });
        }
        let conn = req.extensions().get::<Arc<Connection>>().cloned();
        let peer = conn.as_ref().map(|c| c.peer.ip());
        // In progress until answered: a connection with a Check in progress
        // is never closed to make room for another.
        let in_progress = conn.as_ref().map(Connection::request);
        let detached;
        let budget = match &conn {
            Some(c) => &c.body_budget,
            None => {
                detached = ByteBudget::new(limits::GRPC_CONNECTION_BYTES);
                &detached
            }
        };
        let mut charge = Charge::new(budget, &self.shared.admission.grpc_bytes);
        // The headers are held as long as the message: charged first.
        let head: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum::<usize>()
            + req.uri().path().len();
        if charge.take(head).is_err() {
            return Box::pin(async { Ok(exhausted().into_http::<tonic::body::Body>()) });
        }
        let req = req.map(|body| MessageBody {
            inner: body,
            charge,
            deadline: None,
        });
        let check = Check(self.shared.clone(), peer);
        let max = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(CheckCodec).apply_max_message_size_config(Some(max), None);
            let answer = grpc.unary(check, req).await;
            drop(in_progress);
            Ok(answer)
        })
    }
}

fn exhausted() -> tonic::Status {
    tonic::Status::resource_exhausted("too many CheckRequest bytes in progress")
}

pin_project_lite::pin_project! {
    /// A Check's request body, bounded: its bytes are charged to the
    /// connection's and the shared budget as they arrive (and given back when
    /// tonic is done with the body), and the whole message must arrive within
    /// [`limits::GRPC_MESSAGE_TIMEOUT`]. A stream that announces a large
    /// message and withholds its end thus holds bounded memory for a bounded
    /// time. The timer is armed only once the body has to be waited for: a
    /// Check whose message is there when it is first polled starts none.
    struct MessageBody<B> {
        #[pin]
        inner: B,
        charge: Charge,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
    }
}

impl<B> Body for MessageBody<B>
where
    B: Body,
    B::Error: Into<StdError>,
{
    type Data = B::Data;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, tonic::Status>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Buf::remaining);
                if this.charge.take(n).is_err() {
                    return Poll::Ready(Some(Err(exhausted())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(tonic::Status::from_error(e.into()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.is_none() {
                    this.deadline
                        .set(Some(tokio::time::sleep(limits::GRPC_MESSAGE_TIMEOUT)));
                }
                let expired = this
                    .deadline
                    .as_pin_mut()
                    .is_some_and(|d| d.poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                        "CheckRequest not received in time",
                    ))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// One Check call: decide, render. Holds the TCP peer's address, the
/// client address when Envoy sends none.
struct Check(Arc<Shared>, Option<IpAddr>);

impl UnaryService<Request> for Check {
    type Response = Answer;
    type Future = BoxFuture<tonic::Response<Answer>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Request>) -> Self::Future {
        let shared = self.0.clone();
        let peer = self.1;
        Box::pin(async move {
            let started = Instant::now();
            // The call's own trace context (Envoy's ext_authz span), only
            // when spans are exported.
            let call =
                crate::telemetry::enabled().then(|| request.metadata().clone().into_headers());
            let mut req = request.into_inner();
            if req.source_ip.is_none() {
                req.source_ip = peer;
            }
            let answer = shared
                .decide_memo(&req, encode_allow, started, call.as_ref())
                .await;
            Ok(tonic::Response::new(answer))
        })
    }
}

/// Decodes with [`decode_check`]; encodes a decision as Envoy's
/// `CheckResponse`: an allow written directly (`encode.rs`), a denial
/// through prost ([`render`]).
struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = Answer;
    type Decode = Request;
    type Encoder = CheckEncoder;
    type Decoder = CheckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        CheckEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckDecoder
    }
}

struct CheckEncoder;

impl Encoder for CheckEncoder {
    type Item = Answer;
    type Error = tonic::Status;

    fn encode(&mut self, item: Answer, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        match item {
            Answer::Decided(Decision::Allow(a)) => encode::put_allow(&a, buf),
            // Bytes `encode_allow` wrote for this token's first repeat.
            Answer::Memo(m) => buf.put_slice(m.bytes()),
            Answer::Decided(Decision::Deny(d)) => {
                // Only fails for want of space, which an EncodeBuf grows.
                deny(&d)
                    .encode(buf)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
            }
        }
        Ok(())
    }
}

struct CheckDecoder;

impl Decoder for CheckDecoder {
    type Item = Request;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Request>, tonic::Status> {
        let n = buf.remaining();
        // A DecodeBuf is one contiguous message; copied only if it is not.
        let req = if buf.chunk().len() >= n {
            decode_check(&buf.chunk()[..n], None)
        } else {
            decode_check(&buf.copy_to_bytes(n), None)
        };
        buf.advance(buf.remaining());
        // As tonic does for a message prost cannot decode.
        req.map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// `append = false` and `OVERWRITE_IF_EXISTS_OR_ADD` both: older Envoys read
/// the deprecated `append`, newer ones `append_action`. An empty value is
/// sent with `keep_empty_value`: an Envoy that honours the flag would drop
/// an empty mutation without it, and the client's header of that name
/// would reach the upstream (the name is not in `headers_to_remove`, since
/// authgate sets it).
#[allow(deprecated)]
pub(crate) fn header(key: String, value: String) -> HeaderValueOption {
    let keep_empty_value = value.is_empty();
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            raw_value: Vec::new(),
        }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value,
    }
}

/// An allow as `CheckResponse` bytes, kept by the token cache for the
/// token's repeats ([`crate::pipeline::Engine::decide_memo`]).
pub fn encode_allow(a: &Allow) -> Box<[u8]> {
    let mut bytes = Vec::with_capacity(256);
    put_allow(a, &mut bytes);
    bytes.into_boxed_slice()
}

pub(crate) fn deny(d: &Deny) -> CheckResponse {
    let mut headers = vec![header("content-type".into(), "application/json".into())];
    if let Some(challenge) = d.reason.www_authenticate() {
        headers.push(header("www-authenticate".into(), challenge.into()));
    }
    CheckResponse {
        status: Some(Status {
            code: d.reason.grpc_code(),
            message: d.reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(d.reason.http_status()),
            }),
            headers,
            body: d.reason.body().to_owned(),
        })),
    }
}

/// File descriptors of the ext_authz API, extracted from `envoy-types` at
/// build time (see `build.rs`), so reflection clients (grpcurl) can call
/// Check without local protos.
const EXT_AUTHZ_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptors.bin"));

/// gRPC reflection for ext_authz and health, in both protocol versions:
/// `grpc.reflection.v1` and the older `v1alpha` that grpcurl before 1.8.8 and
/// many GUI clients still speak. `None` if the descriptors are unusable (then
/// reflection is simply not offered).
pub fn reflection_services() -> Option<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(EXT_AUTHZ_DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    match (builder().build_v1(), builder().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => Some((v1, v1alpha)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "gRPC reflection unavailable");
            None
        }
    }
}
