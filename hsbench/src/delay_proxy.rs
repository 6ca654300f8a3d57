//! A Synapse that answers late: an HTTP/1.1 proxy on 127.0.0.1 that waits a fixed delay
//! before forwarding each request to Synapse, then streams Synapse's answer back unchanged.
//! A hungryserv whose `synapse.url` points at it sees a slow Synapse; `sync-latency` uses it
//! to show that a local room's wake-up does not wait for Synapse.

use std::time::Duration;

use anyhow::Context;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

type Body = BoxBody<bytes::Bytes, hyper::Error>;

/// Binds 127.0.0.1:`port` and serves until the returned set is dropped (that aborts the
/// listener and every connection it accepted).
pub async fn start(port: u16, upstream: &str, delay: Duration) -> anyhow::Result<JoinSet<()>> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("delay proxy: cannot listen on 127.0.0.1:{port}"))?;
    let upstream: Uri = upstream.parse().context("delay proxy: upstream URL")?;
    let authority = upstream
        .authority()
        .context("delay proxy: upstream URL has no host")?
        .clone();
    let mut tasks = JoinSet::new();
    tasks.spawn(serve(listener, authority, delay));
    Ok(tasks)
}

async fn serve(listener: TcpListener, upstream: http::uri::Authority, delay: Duration) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    // Connections die with this task: the set aborts them when it is dropped.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let client = client.clone();
            let upstream = upstream.clone();
            async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::convert::Infallible>(forward(&client, &upstream, request).await)
            }
        });
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: &http::uri::Authority,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match format!("http://{upstream}{path}").parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return bad_gateway(),
    }
    match client.request(request).await {
        Ok(response) => response.map(|body| body.boxed()),
        Err(_) => bad_gateway(),
    }
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(
        Full::new(bytes::Bytes::from_static(b"{\"errcode\":\"M_UNKNOWN\"}"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
