//! Header rules for forwarding, as RFC 9110 §7.6.1 asks of a proxy: hop-by-hop headers
//! describe one connection and are dropped on both legs; everything else passes unchanged;
//! the client's address, scheme and host are added in `X-Forwarded-*` for Synapse (which
//! reads them with `x_forwarded: true` on its listener).

use std::net::SocketAddr;

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only concern one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Rewrites the headers of a request on its way to Synapse.
pub(super) fn prepare_request(headers: &mut HeaderMap, client_uri: &Uri, peer: SocketAddr) {
    remove_hop_by_hop(headers);
    // hyper already answered `Expect: 100-continue` towards the client; Synapse must not be
    // asked again.
    headers.remove(header::EXPECT);

    // HTTP/2 clients name the host in `:authority`, which hyper keeps in the URI. Give
    // Synapse a Host header as an HTTP/1.1 client would have sent.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = client_uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }

    // Append, never replace: a load balancer in front of us may have started the chain.
    let peer_ip = peer.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::to_str) {
        Some(Ok(existing)) if !existing.trim().is_empty() => format!("{existing}, {peer_ip}"),
        _ => peer_ip,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    // Proto and Host describe the original request: if a TLS terminator in front of us set
    // them, they are more accurate than what we see.
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// What Synapse records about a client (its address chain and user agent), for a call
/// hungryserv makes on the client's behalf rather than forwards.
pub(super) fn client_identity(
    headers: &HeaderMap,
    client_uri: &Uri,
    peer: SocketAddr,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut prepared = headers.clone();
    prepare_request(&mut prepared, client_uri, peer);
    [
        header::USER_AGENT,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
    ]
    .into_iter()
    .filter_map(|name| prepared.get(&name).cloned().map(|value| (name, value)))
    .collect()
}

/// Rewrites the headers of Synapse's response on its way to the client.
pub(super) fn prepare_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
}

/// The declared body length, when there is a valid one.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:5555".parse().unwrap()
    }

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("authorization", "Bearer secret"),
            ("content-type", "application/json"),
            ("host", "matrix.example.org"),
        ]);
        prepare_request(&mut headers, &Uri::from_static("/x"), peer());
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        for gone in [
            "connection",
            "keep-alive",
            "x-private",
            "transfer-encoding",
            "te",
            "upgrade",
            "expect",
        ] {
            assert!(!names.contains(&gone), "{gone} was forwarded");
        }
        assert_eq!(headers["authorization"], "Bearer secret");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["host"], "matrix.example.org");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "matrix.example.org");
    }

    #[test]
    fn appends_to_an_existing_forwarding_chain() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example.org"),
            ("host", "internal:8008"),
        ]);
        prepare_request(&mut headers, &Uri::from_static("/x"), peer());
        assert_eq!(headers["x-forwarded-for"], "203.0.113.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "public.example.org");
    }

    #[test]
    fn h2_authority_becomes_host() {
        let mut headers = HeaderMap::new();
        let uri = Uri::from_static("http://matrix.example.org:8008/_matrix/client/versions");
        prepare_request(&mut headers, &uri, peer());
        assert_eq!(headers["host"], "matrix.example.org:8008");
        assert_eq!(headers["x-forwarded-host"], "matrix.example.org:8008");
    }

    #[test]
    fn response_keeps_end_to_end_headers() {
        let mut headers = map(&[
            ("connection", "close"),
            ("content-type", "text/html"),
            ("access-control-allow-origin", "*"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        prepare_response(&mut headers);
        assert!(headers.get("connection").is_none());
        assert_eq!(headers["content-type"], "text/html");
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn content_length_parsing() {
        assert_eq!(
            content_length(&map(&[("content-length", "20971520")])),
            Some(20_971_520)
        );
        assert_eq!(content_length(&map(&[("content-length", "nope")])), None);
        assert_eq!(content_length(&HeaderMap::new()), None);
    }
}
