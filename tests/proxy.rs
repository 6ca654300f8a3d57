//! The forwarding path, against a small scripted upstream standing in for Synapse. These cover
//! what a real Synapse cannot be made to do on demand (hang, refuse, stream slowly) and what
//! needs the raw bytes Synapse received. Behaviour against a real Synapse is in compat-tests/.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, channel::Channel};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Everything the upstream received on one connection, as raw text.
type Received = mpsc::UnboundedReceiver<String>;

/// Starts a one-behaviour upstream. For each connection it reads the request head, reports
/// it, then runs `behaviour` on the socket.
async fn upstream<F, Fut>(behaviour: F) -> (SocketAddr, Received)
where
    F: Fn(TcpStream, String, mpsc::UnboundedSender<String>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let behaviour = std::sync::Arc::new(behaviour);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let behaviour = behaviour.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let _ = tx.send(head.clone());
                behaviour(stream, head, tx).await;
            });
        }
    });
    (addr, rx)
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn json_body(response: http::Response<hyper::body::Incoming>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn respond_ok(mut stream: TcpStream, body: &str) {
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-upstream: yes\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
}

#[tokio::test]
async fn path_and_query_reach_synapse_byte_exact_with_forwarding_headers() {
    let (upstream, mut received) = upstream(|stream, _, _| respond_ok(stream, "ok")).await;
    let server = support::start(support::config(upstream, support::NO_DATABASE, "", "")).await;
    let target = "/_matrix/client/v3/profile/%40a%2Fb%20c:hs/displayname?x=1+2&y=%F0%9F%90%88&access_token=abc";
    let request = Request::get(format!("http://{}{target}", server.addr))
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-upstream"], "yes");

    let head = received.recv().await.unwrap();
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next().unwrap(), format!("GET {target} HTTP/1.1"));
    let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
    assert!(headers.contains(&"x-custom: kept".to_owned()), "{head}");
    assert!(
        headers.contains(&"x-forwarded-for: 127.0.0.1".to_owned()),
        "{head}"
    );
    assert!(
        headers.contains(&"x-forwarded-proto: http".to_owned()),
        "{head}"
    );
    assert!(
        headers.contains(&format!("x-forwarded-host: {}", server.addr)),
        "{head}"
    );
    assert!(!headers.iter().any(|h| h.starts_with("x-hop")), "{head}");
}

#[tokio::test]
async fn unreachable_synapse_is_a_502_matrix_error() {
    // Bind and drop: the port is free and refuses connections.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let server = support::start(support::config(closed, support::NO_DATABASE, "", "")).await;
    let response = client()
        .request(
            Request::get(format!("http://{}/_matrix/client/versions", server.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        json_body(response).await,
        serde_json::json!({"errcode": "M_UNKNOWN", "error": "Synapse is unreachable"})
    );
}

#[tokio::test]
async fn silent_synapse_is_a_504_matrix_error() {
    let (upstream, _received) = upstream(|stream, _, _| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    })
    .await;
    let config = support::config(upstream, support::NO_DATABASE, "response_timeout_s = 1", "");
    let server = support::start(config).await;
    let response = client()
        .request(
            Request::get(format!("http://{}/slow", server.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({"errcode": "M_UNKNOWN", "error": "Synapse did not answer in time"})
    );
}

/// The upstream sees the first part of a chunked upload before the client has sent the rest:
/// the proxy does not wait for the whole body.
#[tokio::test]
async fn request_bodies_stream_through() {
    let (upstream, mut received) = upstream(|mut stream, _, tx| async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if text.contains("FIRST-PART") && !text.contains("SECOND-PART") {
                let _ = tx.send("got first part".to_owned());
            }
            // Chunked encoding ends with a zero-length chunk.
            if text.contains("SECOND-PART") && text.ends_with("0\r\n\r\n") {
                respond_ok(stream, "stored").await;
                return;
            }
        }
    })
    .await;
    let server = support::start(support::config(upstream, support::NO_DATABASE, "", "")).await;
    let (mut sender, body) = Channel::<Bytes>::new(1);
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/_matrix/media/v3/upload", server.addr))
        .body(body)
        .unwrap();
    let response = tokio::spawn(client.request(request));

    sender
        .send_data(Bytes::from_static(b"FIRST-PART"))
        .await
        .unwrap();
    // Head and first part must both arrive while the client still holds the second part.
    let progress = tokio::time::timeout(Duration::from_secs(5), async {
        received.recv().await;
        received.recv().await
    })
    .await;
    assert_eq!(
        progress
            .expect("upstream never saw the first part before the body ended: the proxy buffers")
            .as_deref(),
        Some("got first part")
    );
    sender
        .send_data(Bytes::from_static(b"SECOND-PART"))
        .await
        .unwrap();
    drop(sender);
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "stored"
    );
}

/// The client receives the first part of a response while the upstream is still holding back
/// the rest.
#[tokio::test]
async fn response_bodies_stream_through() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (upstream, _received) = upstream(move |mut stream, _, _| {
        let mut release = release_rx.clone();
        async move {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\nFIRST-PART\r\n",
                )
                .await;
            let _ = release.wait_for(|released| *released).await;
            let _ = stream.write_all(b"B\r\nSECOND-PART\r\n0\r\n\r\n").await;
        }
    })
    .await;
    let server = support::start(support::config(upstream, support::NO_DATABASE, "", "")).await;
    let response = client()
        .request(
            Request::get(format!(
                "http://{}/_matrix/media/v3/download/x/y",
                server.addr
            ))
            .body(Full::default())
            .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first part not delivered while upstream held the rest: the proxy buffers")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "FIRST-PART");
    release_tx.send(true).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "SECOND-PART");
}

#[tokio::test]
async fn declared_body_over_the_limit_is_refused_before_forwarding() {
    let (upstream, mut received) = upstream(|stream, _, _| respond_ok(stream, "ok")).await;
    let config = support::config(
        upstream,
        support::NO_DATABASE,
        "",
        "[limits]\nmax_forward_body_bytes = 1000",
    );
    let server = support::start(config).await;
    let response = client()
        .request(
            Request::post(format!("http://{}/_matrix/media/v3/upload", server.addr))
                .body(Full::new(Bytes::from(vec![b'x'; 5000])))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(response).await["errcode"], "M_TOO_LARGE");
    // A body within the limit still goes through, and is the first thing upstream ever saw.
    let response = client()
        .request(
            Request::post(format!("http://{}/_matrix/media/v3/upload", server.addr))
                .body(Full::new(Bytes::from(vec![b'x'; 10])))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The first request upstream saw, but for the health probe's.
    let mut first = received.recv().await.unwrap();
    while first.starts_with("GET /health") {
        first = received.recv().await.unwrap();
    }
    assert!(first.starts_with("POST /_matrix/media/v3/upload"));
    assert!(
        received.try_recv().is_err(),
        "the refused request reached upstream"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let (upstream, mut received) = upstream(|stream, _, _| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        respond_ok(stream, "late but complete").await;
    })
    .await;
    let mut server = support::start(support::config(upstream, support::NO_DATABASE, "", "")).await;
    let addr = server.addr;
    let in_flight = tokio::spawn(
        client().request(
            Request::get(format!(
                "http://{addr}/_matrix/client/v3/thirdparty/protocols"
            ))
            .body(Full::default())
            .unwrap(),
        ),
    );
    received.recv().await.unwrap(); // the request is at Synapse
    server.shutdown.take().unwrap().send(()).unwrap();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "late but complete"
    );
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server did not stop after its last request")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let (upstream, _received) = upstream(|stream, _, _| respond_ok(stream, "over h2")).await;
    let server = support::start(support::config(upstream, support::NO_DATABASE, "", "")).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = client
        .request(
            Request::get(format!(
                "http://{}/_matrix/client/v3/capabilities",
                server.addr
            ))
            .body(Full::default())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "over h2"
    );
}

/// A request whose connection the kernel completed before shutdown began is answered, not
/// reset: its client already sent it. The connection is made and the request written before
/// the server even starts, with shutdown already signalled.
#[tokio::test]
async fn a_request_sent_as_shutdown_begins_is_answered() {
    let (upstream, _received) = upstream(|stream, _, _| respond_ok(stream, "answered")).await;
    let config = support::config(upstream, support::NO_DATABASE, "", "");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /_matrix/client/v3/capabilities HTTP/1.1\r\nhost: hs\r\n\r\n")
        .await
        .unwrap();
    let db = hungryserv::store::pool(&config.database).unwrap();
    let (state, _background) = hungryserv::app::AppState::new(config, db, Default::default());
    let server = tokio::spawn(hungryserv::server::serve(state, listener, async {}));
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok_and(|r| r.is_ok()),
        "connection reset or hung: {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("answered"), "{answer:?}");
    server.await.unwrap().unwrap();
}

/// Synapse's four CORS headers (`set_cors_headers` in `synapse/http/server.py`), once each.
fn assert_synapse_cors(response: &http::Response<hyper::body::Incoming>) {
    for (name, value) in [
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
    ] {
        let values: Vec<_> = response.headers().get_all(name).iter().collect();
        assert_eq!(values, [value], "{name} on a {}", response.status());
    }
}

async fn send(
    server: &support::Running,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> http::Response<hyper::body::Incoming> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", server.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client()
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap()
}

/// Every answer hungryserv makes itself carries Synapse's CORS headers, errors included: the
/// proxy layer's 502 and 413, an operations endpoint, a local room's 405 and a preflight.
#[tokio::test]
async fn answers_of_our_own_carry_synapse_cors_headers() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = support::config(
        closed,
        support::NO_DATABASE,
        "",
        "[limits]\nmax_forward_body_bytes = 1000",
    );
    let server = support::start(config).await;
    let room = "/_matrix/client/v3/rooms/!hs_cors:test.local";

    let response = send(
        &server,
        "GET",
        "/_matrix/client/v3/profile/@a:hs",
        &[],
        vec![],
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_synapse_cors(&response);

    let response = send(
        &server,
        "POST",
        "/_matrix/media/v3/upload",
        &[],
        vec![b'x'; 5000],
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_synapse_cors(&response);

    let response = send(&server, "GET", "/_hungryserv/health", &[], vec![]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_synapse_cors(&response);

    // A wrong method on a local room's path: Synapse's 405 Matrix error, not an empty body.
    let response = send(&server, "POST", &format!("{room}/messages"), &[], vec![]).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_synapse_cors(&response);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
    );

    // The same on an operations path.
    let response = send(&server, "POST", "/_hungryserv/health", &[], vec![]).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_synapse_cors(&response);
    assert_eq!(json_body(response).await["errcode"], "M_UNRECOGNIZED");

    // Preflights, without a token, for a local room's send and for the merged /sync (answered
    // here, so a browser can sync local rooms while Synapse is down).
    for (path, method) in [
        (format!("{room}/send/m.room.message/t1"), "PUT"),
        ("/_matrix/client/v3/sync".to_owned(), "GET"),
        (format!("{room}/messages"), "GET"),
    ] {
        let response = send(
            &server,
            "OPTIONS",
            &path,
            &[
                ("origin", "http://127.0.0.1:1"),
                ("access-control-request-method", method),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            vec![],
        )
        .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{path}");
        assert_synapse_cors(&response);
        assert!(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    }
}

/// Synapse's own answers pass as Synapse sent them: its CORS headers are not doubled, a
/// response without them does not gain ours, and preflights for forwarded requests are
/// Synapse's to answer.
#[tokio::test]
async fn synapse_answers_keep_their_own_headers() {
    let (upstream, mut received) = upstream(|mut stream, head, _| async move {
        let reply = if head.starts_with("GET /with-cors") {
            "HTTP/1.1 200 OK\r\naccess-control-allow-origin: *\r\ncontent-length: 2\r\n\r\n{}"
        } else {
            "HTTP/1.1 204 No Content\r\nx-upstream: yes\r\ncontent-length: 0\r\n\r\n"
        };
        let _ = stream.write_all(reply.as_bytes()).await;
    })
    .await;
    let server = support::start(support::config(upstream, support::NO_DATABASE, "", "")).await;

    let response = send(&server, "GET", "/with-cors", &[], vec![]).await;
    let origins: Vec<_> = response
        .headers()
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(origins, ["*"]);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-methods")
    );

    let response = send(
        &server,
        "OPTIONS",
        "/_matrix/client/v3/profile/@a:hs",
        &[("access-control-request-method", "GET")],
        vec![],
    )
    .await;
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    assert!(received.recv().await.unwrap().starts_with("GET /with-cors"));
    assert!(
        received
            .recv()
            .await
            .unwrap()
            .starts_with("OPTIONS /_matrix/client/v3/profile/")
    );
}
