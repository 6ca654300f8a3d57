//! CORS, exactly as Synapse sends it, so that a web client (Element Web, any page running
//! matrix-js-sdk) can talk to hungryserv from another origin.
//!
//! What holds:
//! - Every response hungryserv produces itself — local-room endpoints, merged endpoints
//!   (`/sync`, `/versions`, …), operations and admin endpoints, and errors such as the 502/504
//!   of the proxy layer or a 413 — carries Synapse's four CORS headers with Synapse's values
//!   (`synapse/http/server.py`, `set_cors_headers`, Synapse 1.163). Without them a browser
//!   hands the page no response at all, not even the error.
//! - A response relayed from Synapse ([`upstream::Forwarded`]) passes untouched: Synapse set
//!   its own headers, and adding ours would duplicate them or add them where Synapse has none.
//! - An `OPTIONS` request (a CORS preflight) for a request hungryserv would answer is answered
//!   here with Synapse's `204`, empty body and the headers, before any handler and without
//!   authentication: a browser sends a preflight without credentials, and refuses the real
//!   request unless the preflight succeeds. Which request it is about comes from
//!   `Access-Control-Request-Method`, so a preflight for a `/sync` is answered here even while
//!   Synapse is down. Preflights for requests that go to Synapse go to Synapse.
//! - A wrong method on a path hungryserv owns gets Synapse's `405` Matrix error
//!   (`M_UNRECOGNIZED`, "Unrecognized request") rather than axum's empty 405.
//!
//! May import: `routing`, `upstream`, `error`.

use axum::body::Body;
use axum::body::HttpBody as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::error::{ErrorCode, MatrixError};
use crate::routing::{self, LiveClasses, Route};
use crate::upstream;

const ALLOW_ORIGIN: HeaderValue = HeaderValue::from_static("*");
const ALLOW_METHODS: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS");
const ALLOW_HEADERS: HeaderValue =
    HeaderValue::from_static("X-Requested-With, Content-Type, Authorization, Date");
const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static("Synapse-Trace-Id, Server");
/// Synapse's values for the QR-login rendezvous endpoints (MSC4108), which use ETags.
const RENDEZVOUS_ALLOW_HEADERS: HeaderValue =
    HeaderValue::from_static("Content-Type, If-Match, If-None-Match");
const RENDEZVOUS_EXPOSE_HEADERS: HeaderValue =
    HeaderValue::from_static("Synapse-Trace-Id, Server, ETag");

/// The CORS headers a path gets: Synapse varies two of them for the rendezvous endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cors {
    /// Every path but the rendezvous ones.
    Api,
    /// `/_matrix/client/unstable/org.matrix.msc4108/rendezvous` and
    /// `/_synapse/client/rendezvous…`.
    Rendezvous,
}

impl Cors {
    /// The headers for a request to `path`, with Synapse's test for the rendezvous paths.
    pub fn for_path(path: &str) -> Self {
        if path == "/_matrix/client/unstable/org.matrix.msc4108/rendezvous"
            || path.starts_with("/_synapse/client/rendezvous")
        {
            Cors::Rendezvous
        } else {
            Cors::Api
        }
    }

    /// Sets the four headers, replacing any value a handler set (never a second copy).
    pub fn set(self, headers: &mut HeaderMap) {
        let (allow, expose) = match self {
            Cors::Api => (ALLOW_HEADERS, EXPOSE_HEADERS),
            Cors::Rendezvous => (RENDEZVOUS_ALLOW_HEADERS, RENDEZVOUS_EXPOSE_HEADERS),
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW_ORIGIN);
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
    }

    /// Finishes a response on its way out: Synapse's own pass untouched; ours get the headers,
    /// and an empty 405 (axum's answer to a wrong method) becomes Synapse's Matrix error.
    pub fn finish(self, response: Response<Body>) -> Response<Body> {
        if response.extensions().get::<upstream::Forwarded>().is_some() {
            return response;
        }
        let mut response = if response.status() == StatusCode::METHOD_NOT_ALLOWED
            && response.body().is_end_stream()
        {
            MatrixError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unrecognized,
                "Unrecognized request",
            )
            .into_response()
        } else {
            response
        };
        self.set(response.headers_mut());
        response
    }
}

/// Whether hungryserv answers this request as a preflight: it is an `OPTIONS`, and the request
/// it announces (`Access-Control-Request-Method`, else the `OPTIONS` itself) would not be
/// forwarded to Synapse.
pub fn answers_preflight<B>(classes: &LiveClasses, route: &Route, request: &Request<B>) -> bool {
    if request.method() != Method::OPTIONS {
        return false;
    }
    let announced = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|value| Method::from_bytes(value.as_bytes()).ok());
    match announced {
        Some(method) => {
            !routing::classify(&classes.current(), &method, request.uri().path()).is_forward()
        }
        None => !route.is_forward(),
    }
}

/// Synapse's preflight answer (`OptionsResource.render_OPTIONS`): 204 with no body;
/// [`Cors::finish`] adds the headers. (Synapse also sends `Content-Length: 0`; hyper leaves
/// it out of a 204, as RFC 9110 §8.6 asks, and browsers do not need it.)
pub fn preflight_response() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    const HEADERS: [HeaderName; 4] = [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
    ];

    fn headers(cors: Cors, response: Response<Body>) -> Vec<(String, String)> {
        let response = cors.finish(response);
        HEADERS
            .iter()
            .map(|name| {
                let values: Vec<_> = response.headers().get_all(name).iter().collect();
                assert_eq!(values.len(), 1, "{name} once");
                (
                    name.to_string(),
                    values[0].to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn synapse_values() {
        let got = headers(Cors::Api, Response::new(Body::from("{}")));
        let want = [
            ("access-control-allow-origin", "*"),
            (
                "access-control-allow-methods",
                "GET, HEAD, POST, PUT, DELETE, OPTIONS",
            ),
            (
                "access-control-allow-headers",
                "X-Requested-With, Content-Type, Authorization, Date",
            ),
            ("access-control-expose-headers", "Synapse-Trace-Id, Server"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rendezvous_paths_get_synapse_variant() {
        for (path, cors) in [
            (
                "/_matrix/client/unstable/org.matrix.msc4108/rendezvous",
                Cors::Rendezvous,
            ),
            ("/_synapse/client/rendezvous/abc", Cors::Rendezvous),
            (
                "/_matrix/client/unstable/org.matrix.msc4108/rendezvous/abc",
                Cors::Api,
            ),
            ("/_matrix/client/versions", Cors::Api),
        ] {
            assert_eq!(Cors::for_path(path), cors, "{path}");
        }
        let got = headers(Cors::Rendezvous, Response::new(Body::empty()));
        assert_eq!(got[2].1, "Content-Type, If-Match, If-None-Match");
        assert_eq!(got[3].1, "Synapse-Trace-Id, Server, ETag");
    }

    #[test]
    fn handler_value_replaced_not_duplicated() {
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://example.org"),
        );
        assert_eq!(headers(Cors::Api, response)[0].1, "*");
    }

    #[test]
    fn forwarded_untouched() {
        let mut response = Response::new(Body::empty());
        response.extensions_mut().insert(upstream::Forwarded);
        let response = Cors::Api.finish(response);
        for name in HEADERS {
            assert!(!response.headers().contains_key(&name), "{name}");
        }
    }

    #[tokio::test]
    async fn empty_405_becomes_matrix_error() {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        let response = Cors::Api.finish(response);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
        );
    }
}
