//! Client tokens, and [`AuthLayer`]: the tower layer that checks them.
//!
//! A request carries `Authorization: Bearer T` (the native API, VESSL,
//! Bifrost) or `Authorization: Api-Key T` (Baseten). A known token's
//! [`Identity`] goes into the request's extensions, where the owner function
//! given to `DeferLayer::owner` finds it: every job belongs to the identity
//! that submitted it, and any other identity gets 404 for it. An unknown or
//! missing token gets `401` with a problem document.
//!
//! An identity is the token's name (`name:token` in the tokens file; two
//! tokens with one name share their jobs, which is how a token is rotated) or
//! else `token-` and the first 16 hex digits of the token's SHA-256: stable
//! across restarts and replicas, and not the secret itself.

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use pin_project::pin_project;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};
use tower_defer::BoxError;

/// The response body every part of the proxy answers with.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Who sent a request, as found by [`Auth`]: the owner of the jobs it submits.
#[derive(Clone, Debug)]
pub(crate) struct Identity(pub(crate) Arc<str>);

/// One accepted token: its identity and the SHA-256 it is compared by.
struct Token {
    identity: Arc<str>,
    digest: [u8; 32],
}

/// The accepted tokens. Empty: the proxy serves openly.
#[derive(Default)]
pub(crate) struct Tokens(Vec<Token>);

impl Tokens {
    /// The tokens of `--token` and of `--tokens-file`.
    pub(crate) fn load(flags: &[String], file: Option<&Path>) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        for t in flags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            tokens.push(Token::new(None, t));
        }
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--tokens-file {}: {e}", file.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, token) = match line.split_once(':') {
                    Some((name, token)) if is_name(name) => (Some(name), token.trim()),
                    _ => (None, line),
                };
                if token.is_empty() {
                    return Err(format!(
                        "--tokens-file {} line {}: the token is empty",
                        file.display(),
                        n + 1
                    ));
                }
                tokens.push(Token::new(name, token));
            }
        }
        Ok(Tokens(tokens))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// For the start-up report: how many, and whose (never the tokens).
    pub(crate) fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none: OPEN, no authentication".into();
        }
        let mut names: Vec<&str> = self.0.iter().map(|t| &*t.identity).collect();
        names.sort_unstable();
        names.dedup();
        format!("{} ({})", self.0.len(), names.join(", "))
    }

    /// The identity of `presented`, compared in constant time: every token's
    /// digest is compared in full with `subtle`, whichever matches, so the
    /// time taken says neither which token nor how much of one matched.
    fn identify(&self, presented: &[u8]) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for token in &self.0 {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token.identity.clone());
            }
        }
        found
    }
}

impl Token {
    fn new(name: Option<&str>, token: &str) -> Token {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let identity = match name {
            Some(name) => name.to_owned(),
            None => digest[..8].iter().fold(String::from("token-"), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            }),
        };
        Token {
            identity: identity.into(),
            digest,
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// The token in an `Authorization` header: `Bearer T` or `Api-Key T`, the
/// scheme in any case.
fn presented(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let known = scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"api-key");
    let token = rest.trim_ascii();
    (known && !token.is_empty()).then_some(token)
}

/// Checks client tokens in front of the async API and the upstream.
#[derive(Clone)]
pub(crate) struct AuthLayer {
    tokens: Arc<Tokens>,
    open_paths: Arc<[String]>,
    strip: bool,
}

impl AuthLayer {
    /// Checks `tokens` on every path but `open_paths` (answered without one);
    /// `strip` removes the `Authorization` header once checked, so the
    /// proxy's token is not sent on to the upstream.
    pub(crate) fn new(tokens: Arc<Tokens>, open_paths: Vec<String>, strip: bool) -> Self {
        AuthLayer {
            tokens,
            open_paths: open_paths.into(),
            strip,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] builds.
#[derive(Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B, RB> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let tokens = &self.layer.tokens;
        let open = tokens.is_empty() || self.layer.open_paths.iter().any(|p| p == req.uri().path());
        if !open {
            let identity = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(presented)
                .and_then(|t| tokens.identify(t));
            match identity {
                Some(identity) => {
                    req.extensions_mut().insert(Identity(identity));
                    if self.layer.strip {
                        req.headers_mut().remove(AUTHORIZATION);
                    }
                }
                None => {
                    let missing = !req.headers().contains_key(AUTHORIZATION);
                    return AuthFuture::Denied(Some(unauthorized(missing)));
                }
            }
        }
        AuthFuture::Inner(self.inner.call(req))
    }
}

/// The future of [`Auth`]: a refusal at once, or the inner call with its
/// body boxed. An enum rather than a boxed future: every request through the
/// proxy takes this path, and needs no allocation for it.
#[pin_project(project = AuthProj)]
pub(crate) enum AuthFuture<F> {
    Denied(Option<Response<ProxyBody>>),
    Inner(#[pin] F),
}

impl<F, RB, E> Future for AuthFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthProj::Denied(response) => {
                Poll::Ready(Ok(response.take().expect("polled after it was ready")))
            }
            AuthProj::Inner(fut) => {
                let response = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(response.map(|b| b.map_err(Into::into).boxed_unsync())))
            }
        }
    }
}

/// 401 with a problem document; the detail says which of the two it was.
fn unauthorized(missing: bool) -> Response<ProxyBody> {
    let detail = if missing {
        "send a token: Authorization: Bearer <token> (or Api-Key <token>)"
    } else {
        "the token is not valid"
    };
    let body = serde_json::json!({
        "type": "urn:tower-defer:problem:unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": detail,
        "code": "unauthorized",
    });
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tower-defer\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_only_byte_for_byte() {
        let tokens = Tokens::load(&["alpha-token".into(), "beta-token".into()], None).unwrap();
        let alpha = tokens.identify(b"alpha-token").unwrap();
        let beta = tokens.identify(b"beta-token").unwrap();
        assert!(
            alpha.starts_with("token-") && alpha.len() == 6 + 16,
            "{alpha}"
        );
        assert_ne!(alpha, beta);
        for wrong in [
            &b"alpha-tokem"[..],
            b"alpha-token ",
            b"alpha",
            b"",
            b"ALPHA-TOKEN",
        ] {
            assert!(tokens.identify(wrong).is_none(), "{wrong:?}");
        }
        assert!(Tokens::default().identify(b"alpha-token").is_none());
    }
}
