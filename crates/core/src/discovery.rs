//! Reading an issuer's discovery document (OpenID Connect Discovery 1.0,
//! section 4; RFC 8414 for the OAuth fields): the `oidcIssuer` key source
//! takes its `jwks_uri`, an `introspection` mode its
//! `introspection_endpoint`.

/// Largest discovery document read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why discovery failed, shown in `/readyz` and logs (never a URL: it may
/// carry secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("discovery: {0}")]
pub(crate) struct DiscoveryError(pub(crate) String);

fn fail<T>(why: impl Into<String>) -> Result<T, DiscoveryError> {
    Err(DiscoveryError(why.into()))
}

/// The fields authgate uses; the document holds many more.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Document {
    issuer: Option<String>,
    pub(crate) jwks_uri: Option<String>,
    pub(crate) introspection_endpoint: Option<String>,
}

/// GETs the document at `url`: its `issuer` must be `issuer` exactly
/// (Discovery 1.0, section 4.3).
pub(crate) async fn read(
    client: &reqwest::Client,
    headers: &reqwest::header::HeaderMap,
    url: &str,
    issuer: &str,
) -> Result<Document, DiscoveryError> {
    let failed = |e: reqwest::Error| {
        DiscoveryError(
            if e.is_timeout() {
                "the request timed out"
            } else if e.is_connect() {
                "the connection failed"
            } else {
                "the request failed"
            }
            .into(),
        )
    };
    let span = tracing::info_span!(
        target: crate::trace::SPAN_TARGET,
        "oidc.discovery",
        otel.kind = "client",
        url.full = %crate::redact::url(url),
    );
    let sent = client
        .get(url)
        .headers(headers.clone())
        .headers(span.in_scope(crate::trace::context_headers))
        .header(reqwest::header::ACCEPT, "application/json")
        .send();
    let mut resp = tracing::Instrument::instrument(sent, span)
        .await
        .map_err(failed)?;
    let status = resp.status().as_u16();
    if status != 200 {
        return fail(format!("unexpected HTTP status {status}"));
    }
    let body = match crate::body::read_capped(&mut resp, MAX_DOCUMENT_BYTES).await {
        Ok(b) => b,
        Err(crate::body::BodyError::TooLarge) => {
            return fail(format!(
                "the document is larger than {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
        Err(crate::body::BodyError::Read(e)) => return Err(failed(e)),
    };
    let doc: Document = serde_json::from_slice(&body).map_err(|e| {
        DiscoveryError(match e.classify() {
            serde_json::error::Category::Data => {
                "a field the document must hold as a string is not one".into()
            }
            _ => "the document is not a JSON object".into(),
        })
    })?;
    match doc.issuer.as_deref() {
        Some(found) if found == issuer => Ok(doc),
        Some(found) => {
            // The document's value, shortened: it is shown in /readyz and
            // logged on every retry.
            let shown: String = found.chars().take(200).collect();
            fail(format!(
                "the document names the issuer {shown:?}, not the configured {issuer:?}"
            ))
        }
        None => fail("the document has no issuer"),
    }
}

/// An endpoint the document at `doc_url` names in `field`: https, or http
/// on the document's own origin; on that origin only when `headers_set`
/// (configured headers go only where the operator pointed them).
pub(crate) fn endpoint(
    doc_url: &str,
    uri: Option<String>,
    field: &str,
    headers_set: bool,
) -> Result<String, DiscoveryError> {
    let Some(uri) = uri else {
        return fail(format!("the document has no {field}"));
    };
    let (Ok(target), Ok(doc)) = (reqwest::Url::parse(&uri), reqwest::Url::parse(doc_url)) else {
        return fail(format!("{field} is not a URL"));
    };
    let same_origin = target.origin() == doc.origin();
    if !same_origin && headers_set {
        return fail(format!(
            "{field} is on another origin than the issuer; httpClient.headers go only to the issuer's"
        ));
    }
    if target.scheme() != "https" && !(target.scheme() == "http" && same_origin) {
        return fail(format!(
            "{field} must be https (or http on an http issuer's own origin)"
        ));
    }
    Ok(uri)
}
