//! zync's shared-secret check: Rails' HTTP token auth (`Token token="t"`, `Token t`, `Bearer t`) against
//! `ZYNC_AUTHENTICATION_TOKEN`, compared in constant time over SHA-256 digests so length leaks nothing.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use platform::Secret;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The token presented in an `Authorization` header, if the header has one of the accepted forms.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("token") {
        return None;
    }
    // Rails accepts `token="t"` (optionally followed by other `k="v"` pairs) or the bare token.
    let first = rest.split([',', ';']).next().unwrap_or("").trim();
    let token = match first.split_once('=') {
        Some((key, value)) if key.trim().eq_ignore_ascii_case("token") => {
            value.trim().trim_matches('"').to_owned()
        }
        _ => first.trim_matches('"').to_owned(),
    };
    (!token.is_empty()).then_some(token)
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Constant-time equality of the two values' digests.
pub fn token_matches(presented: &str, expected: &Secret) -> bool {
    let (a, b) = (digest(presented), digest(expected.expose()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Middleware: with no configured token every request passes, as in zync.
pub async fn require_token(
    State(expected): State<Option<Secret>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(expected) = expected {
        match presented_token(req.headers()) {
            None => return ApiError::Unauthenticated.into_response(),
            Some(token) if !token_matches(&token, &expected) => {
                return ApiError::Forbidden.into_response()
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn accepts_the_three_rails_forms() {
        assert_eq!(
            presented_token(&headers("Token token=\"abc\"")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers("Token abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers("Bearer abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(presented_token(&headers("Basic abc")), None);
        assert_eq!(presented_token(&headers("Token token=\"\"")), None);
        assert!(token_matches("abc", &Secret::new("abc")));
        assert!(!token_matches("abd", &Secret::new("abc")));
    }
}
