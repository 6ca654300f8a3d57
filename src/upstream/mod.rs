//! The only module that talks to Synapse: the pooled HTTP client, request forwarding and the
//! readiness probe. (Token resolution, filters, profiles and admin checks join it later.)
//!
//! Forwarding streams: request and response bodies pass through as they arrive and are never
//! buffered whole, so a 20 MB upload costs a few frames of memory, not 20 MB.
//!
//! May import: `config`, `error`.

pub mod client;
mod headers;
pub mod health;
pub mod umbrella;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, Uri, header};
use http_body_util::Limited;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{LimitsConfig, SynapseConfig};
use crate::error::MatrixError;

/// A handle on Synapse. Cheap to clone: the connection pool is shared.
#[derive(Clone)]
pub struct Synapse {
    /// Keep-alive pool of HTTP/1.1 connections (Synapse speaks nothing else).
    client: Client<HttpConnector, Body>,
    /// `host:port` of Synapse's client listener.
    base: http::uri::Authority,
    /// Time allowed until response headers arrive.
    response_timeout: Duration,
    /// Largest request body forwarded, if we enforce one.
    max_body: Option<u64>,
    /// Synapse's last `/versions` answer to an anonymous request, served while it is down.
    last_versions: std::sync::Arc<std::sync::Mutex<Option<serde_json::Value>>>,
    /// Time allowed for `/account/whoami` (a hung Synapse must not hang local requests).
    whoami_timeout: Duration,
    /// How long a merged `/sync` waits for Synapse's half beyond the client's timeout.
    sync_grace: Duration,
    /// Whether Synapse answers, from every call's outcome and the probe ([`health`]).
    pub health: std::sync::Arc<health::Health>,
    /// Bridges Synapse does not know, spoken for by the umbrella registration ([`umbrella`]).
    pub umbrella: std::sync::Arc<umbrella::Umbrella>,
}

/// Marks a response relayed from Synapse (set by [`Synapse::forward`]): its headers are
/// Synapse's and stay as they are (the CORS layer, `crate::cors`, leaves it alone).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// What went wrong reaching Synapse, for the readiness endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("Synapse is unreachable: {0}")]
    Unreachable(String),
    #[error("Synapse did not answer its health check within {0:?}")]
    Timeout(Duration),
    #[error("Synapse's health check answered {0}")]
    Unhealthy(http::StatusCode),
}

/// The headers that tell Synapse who the client is (user agent, `X-Forwarded-*`), for calls
/// made on a client's behalf.
pub fn client_identity(
    headers: &http::HeaderMap,
    client_uri: &Uri,
    peer: SocketAddr,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    headers::client_identity(headers, client_uri, peer)
}

impl Synapse {
    pub fn new(config: &SynapseConfig, limits: &LimitsConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        // Small request/response exchanges dominate; Nagle would add up to 40 ms to each.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .build(connector);
        Self {
            client,
            base: config.base.clone(),
            response_timeout: config.response_timeout,
            max_body: limits.max_forward_body_bytes,
            last_versions: std::sync::Arc::default(),
            whoami_timeout: config.whoami_timeout,
            sync_grace: config.sync_grace,
            health: std::sync::Arc::default(),
            umbrella: std::sync::Arc::default(),
        }
    }

    /// How long a merged `/sync` waits for Synapse's half beyond the client's timeout.
    pub fn sync_grace(&self) -> Duration {
        self.sync_grace
    }

    /// Time allowed until Synapse's response headers (`synapse.response_timeout_s`).
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Forwards a client request to Synapse and returns Synapse's response, both streamed.
    ///
    /// The path and query go upstream byte for byte; hop-by-hop headers are dropped both ways
    /// and `X-Forwarded-*` added (see [`headers`]). Failures to reach Synapse become 502/504
    /// Matrix errors, never an empty reply.
    pub async fn forward(
        &self,
        request: Request<Body>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, MatrixError> {
        let (mut parts, body) = request.into_parts();
        let body = self.umbrella.swap_forward(&mut parts, body).await?;
        let client_version = parts.version;
        let body = match self.max_body {
            None => body,
            Some(limit) => {
                if headers::content_length(&parts.headers).is_some_and(|len| len > limit) {
                    return Err(MatrixError::too_large(limit));
                }
                // A chunked body that grows past the limit is cut off mid-stream; Synapse then
                // sees a truncated request and the client a 502.
                Body::new(Limited::new(
                    body,
                    usize::try_from(limit).unwrap_or(usize::MAX),
                ))
            }
        };
        // Headers first: an h2 client's host is in the URI we are about to replace.
        headers::prepare_request(&mut parts.headers, &parts.uri, peer);
        parts.uri = self.upstream_uri(&parts.uri)?;
        // The client's version (possibly h2) is not Synapse's: the pool speaks HTTP/1.1.
        parts.version = http::Version::HTTP_11;
        let upstream_request = Request::from_parts(parts, body);

        let response = match tokio::time::timeout(
            self.response_timeout,
            self.client.request(upstream_request),
        )
        .await
        {
            Ok(Ok(response)) => {
                self.health.set(!is_gateway_error(response.status()));
                response
            }
            Ok(Err(err)) if err.is_connect() => {
                self.health.failed();
                tracing::warn!(error = %error_chain(&err), "cannot connect to Synapse");
                return Err(MatrixError::bad_gateway("Synapse is unreachable"));
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %error_chain(&err), "Synapse request failed");
                return Err(MatrixError::bad_gateway(
                    "Synapse closed the connection before answering",
                ));
            }
            Err(_) => {
                self.health.failed();
                tracing::warn!(timeout = ?self.response_timeout, "Synapse did not answer in time");
                return Err(MatrixError::gateway_timeout(
                    "Synapse did not answer in time",
                ));
            }
        };
        let (mut parts, body) = response.into_parts();
        headers::prepare_response(&mut parts.headers);
        // Answer in the client's protocol version, whatever Synapse spoke.
        parts.version = client_version;
        parts.extensions.insert(Forwarded);
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// Checks that Synapse answers its `/health` endpoint within [`health::PROBE_TIMEOUT`],
    /// and records the outcome in [`Self::health`].
    pub async fn probe(&self) -> Result<(), ProbeError> {
        let outcome = self.probe_within(health::PROBE_TIMEOUT).await;
        self.health.set(outcome.is_ok());
        outcome
    }

    /// Checks that Synapse answers its `/health` endpoint within `timeout`.
    async fn probe_within(&self, timeout: Duration) -> Result<(), ProbeError> {
        let uri = self
            .upstream_uri(&Uri::from_static("/health"))
            .map_err(|err| ProbeError::Unreachable(err.message))?;
        let request = Request::get(uri)
            .header(header::HOST, self.base.as_str())
            .body(Body::empty())
            .map_err(|err| ProbeError::Unreachable(err.to_string()))?;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(ProbeError::Timeout(timeout)),
            Ok(Err(err)) => Err(ProbeError::Unreachable(error_chain(&err))),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(ProbeError::Unhealthy(response.status())),
        }
    }

    /// `http://{synapse}{path and query, exactly as the client sent them}`.
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, MatrixError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.base.clone());
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).map_err(|err| {
            tracing::warn!(error = %err, "cannot build upstream URI");
            MatrixError::bad_gateway("Cannot forward this request")
        })
    }
}

/// Whether Synapse's answer says Synapse itself cannot serve (what a proxy or worker setup in
/// front of it answers while it is down), as opposed to an answer about the request.
fn is_gateway_error(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// An error with its sources, `a: b: c`, for operators (hyper's own text is often just
/// "client error (Connect)"; the reason, such as an untrusted certificate, is in the sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
