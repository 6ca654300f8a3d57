//! A request body that the handler never reads does not cost the client its answer or its
//! connection: hyper would otherwise close the connection with the body's rest unread, and
//! the kernel's reset can overtake the 200. Raw HTTP/1.1 over one TCP connection, against the
//! real router and a real Postgres (`HUNGRYSERV_TEST_DATABASE_URL`).

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use support::local::{AS_TOKEN, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn an_ignored_body_is_read_and_the_connection_kept() {
    let server = server("").await;
    let room = server.room().await;
    let leave = format!("/_matrix/client/v3/rooms/{room}/leave");
    let (status, answer) = server
        .call(Method::POST, &leave, Some(AS_TOKEN), "{}")
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // `/forget` answers `{}` without reading its body. 4 MiB is more than the socket buffers
    // hold, so most of it is still unsent when the answer is written.
    let body = format!("{{\"reason\": \"{}\"}}", "x".repeat(4 * 1024 * 1024));
    let addr = server.base.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let head = format!(
        "POST /_matrix/client/v3/rooms/{room}/forget HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer {AS_TOKEN}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        // A reset while writing shows up below as a missing answer.
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(body.as_bytes()).await;
        let _ = write
            .write_all(
                format!("GET /_hungryserv/health HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes(),
            )
            .await;
        write
    });
    let mut stream = read;
    let mut buffer = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(30), read_one(&mut stream, &mut buffer))
        .await
        .expect("an answer within 30 s");
    assert_eq!(
        first,
        Some((200, json!({}).to_string())),
        "the POST with an ignored body must get its 200, not a reset"
    );
    let second = tokio::time::timeout(Duration::from_secs(30), read_one(&mut stream, &mut buffer))
        .await
        .expect("an answer within 30 s");
    assert_eq!(
        second.map(|(status, _)| status),
        Some(200),
        "the connection must stay usable for the next request"
    );
    let _ = writer.await;
}

/// Reads one response (headers and a `Content-Length` body); `None` when the connection
/// ended or broke first.
async fn read_one(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    buffer: &mut Vec<u8>,
) -> Option<(u16, String)> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
            buffer.drain(..end + 4 + length);
            return Some((status, body));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}
