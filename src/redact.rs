//! What logs, probes and error messages may show of values that can carry
//! secrets.

/// `url` without user name, password, query and fragment: URLs of key
/// sets and webhooks may carry credentials in any of them.
pub fn url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            super::url("https://svc:S3cret@idp.example:8443/jwks.json?token=abc#x"),
            "https://idp.example:8443/jwks.json"
        );
        assert_eq!(super::url("not a url"), "<invalid url>");
    }
}
