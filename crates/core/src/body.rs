//! An outbound call's answer body, read with a size cap: a key server,
//! issuer or hook cannot make authgate buffer more than it allows.

/// Why a body was not read whole.
pub(crate) enum BodyError {
    /// Over the cap (by `Content-Length`, or as it arrived).
    TooLarge,
    /// The connection failed while reading.
    Read(reqwest::Error),
}

/// The body of `resp`, at most `max` bytes.
pub(crate) async fn read_capped(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
