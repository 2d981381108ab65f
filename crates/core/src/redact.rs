//! What logs, probes and error messages may show of values that can carry
//! secrets.

/// A secret string whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

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

/// The URL with any password (in the user info or a `password=` query
/// parameter) replaced by `***`, for messages.
pub fn database_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
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

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::database_url("postgres://app:s3cret@db:5432/auth?sslmode=require"),
            "postgres://app:***@db:5432/auth?sslmode=require"
        );
        assert_eq!(
            super::database_url("postgres://db/auth?user=app&password=s3cret"),
            "postgres://db/auth?user=app&password=***"
        );
        assert_eq!(
            super::database_url("postgres://app@db/auth"),
            "postgres://app@db/auth"
        );
        assert_eq!(
            super::database_url("sqlite://authgate.db"),
            "sqlite://authgate.db"
        );
        assert_eq!(
            super::database_url("postgresql://u:p%40ss@h/d"),
            "postgresql://u:***@h/d"
        );
    }
}
