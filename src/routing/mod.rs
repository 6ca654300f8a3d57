//! Request classification: every request is put into exactly one [`Route`] once, up front,
//! before any body is read.
//!
//! Today hungryserv owns no rooms yet, so everything except its own operations endpoints is
//! [`Route::Forward`]; local rooms (by room-ID prefix, see `config::routing`) and merged
//! answers (`/sync`, `/versions`) join this enum as they are built. Unknown endpoints are always
//! forwarded.
//!
//! May import: `config`.

use http::Method;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Not ours: streamed to Synapse and back unchanged.
    Forward,
    /// hungryserv's own operations endpoints under `/_hungryserv/`.
    Ops,
}

impl Route {
    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Route::Forward => "forward",
            Route::Ops => "ops",
        }
    }
}

/// Decides where a request goes from its method and raw (still percent-encoded) path.
pub fn classify(_method: &Method, path: &str) -> Route {
    if path == "/_hungryserv" || path.starts_with("/_hungryserv/") {
        Route::Ops
    } else {
        Route::Forward
    }
}

/// The path with its variable parts replaced by placeholders, for logs and metric labels:
/// Matrix IDs (by their sigil, raw or percent-encoded) and the transaction ID of sends and
/// redactions. The query string is never part of it (it may hold `access_token`).
pub fn path_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous: [&str; 2] = ["", ""];
    for segment in path.split('/').skip(1) {
        out.push('/');
        let placeholder = match segment.as_bytes() {
            [b'!', ..] => Some("{roomId}"),
            [b'@', ..] => Some("{userId}"),
            [b'$', ..] => Some("{eventId}"),
            [b'#', ..] => Some("{roomAlias}"),
            _ if starts_with_encoded(segment, "21") => Some("{roomId}"),
            _ if starts_with_encoded(segment, "40") => Some("{userId}"),
            _ if starts_with_encoded(segment, "24") => Some("{eventId}"),
            _ if starts_with_encoded(segment, "23") => Some("{roomAlias}"),
            // `send/{type}/{txnId}`, `sendToDevice/{type}/{txnId}`, `redact/{eventId}/{txnId}`
            _ if matches!(previous[0], "send" | "sendToDevice" | "redact") => Some("{txnId}"),
            _ => None,
        };
        out.push_str(placeholder.unwrap_or(segment));
        previous = [previous[1], segment];
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn starts_with_encoded(segment: &str, hex: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.first() == Some(&b'%')
        && bytes
            .get(1..3)
            .is_some_and(|digits| digits.eq_ignore_ascii_case(hex.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let cases = [
            (Method::GET, "/_hungryserv/health", Route::Ops),
            (Method::GET, "/_hungryserv/ready", Route::Ops),
            (Method::GET, "/_hungryserv", Route::Ops),
            (Method::GET, "/_hungryservx/health", Route::Forward),
            (Method::GET, "/_matrix/client/versions", Route::Forward),
            (
                Method::PUT,
                "/_matrix/client/v3/rooms/!a:b/send/m.room.message/1",
                Route::Forward,
            ),
            (Method::GET, "/_synapse/admin/v1/rooms", Route::Forward),
            (Method::GET, "/", Route::Forward),
        ];
        for (method, path, want) in cases {
            assert_eq!(classify(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn templates() {
        let cases = [
            ("/", "/"),
            ("/_matrix/client/versions", "/_matrix/client/versions"),
            (
                "/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/txn1",
                "/_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}",
            ),
            (
                "/_matrix/client/v3/rooms/%21abc%3Aexample.org/redact/%24ev/t2",
                "/_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}",
            ),
            (
                "/_matrix/client/v3/profile/@alice:hs",
                "/_matrix/client/v3/profile/{userId}",
            ),
            (
                "/_matrix/client/v3/directory/room/%23a:hs",
                "/_matrix/client/v3/directory/room/{roomAlias}",
            ),
            (
                "/_matrix/client/v3/sendToDevice/m.x/abc",
                "/_matrix/client/v3/sendToDevice/m.x/{txnId}",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(path_template(path), want, "{path}");
        }
    }
}
