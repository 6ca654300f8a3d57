//! What a handler leaves of a request body is read to its end after the answer, so the
//! connection stays usable.
//!
//! Many endpoints we answer ignore their body (`POST /join` with `{}`, a `/leave` with a
//! reason we do not keep) or stop reading it early (a refusal before the body matters). If
//! the unread rest is simply dropped, hyper cannot reuse an HTTP/1.1 connection and closes
//! it with bytes still unread in the socket; the kernel then answers with a TCP reset, which
//! can reach the client before it has read our 200, and the client sees "connection reset"
//! for a request that succeeded.
//!
//! So the request body is [`watch`]ed: dropped before its end, it is handed over (not
//! dropped), and [`rest`] reads it to the end — at most `limit` bytes, the largest body a
//! handler would have read — after the handler has answered, before the answer is written.
//! (Reading it after the answer's last byte is not possible: hyper drops a response body as
//! soon as its `Content-Length` is written.) The draining thus happens in the request's own
//! task: no task is spawned, and graceful shutdown's deadline bounds it like any request.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// A request body that hands its unread rest to [`Leftover`] when dropped.
pub struct Watched {
    inner: Option<Incoming>,
    /// Whether the body was read to its end (or failed): nothing left to hand over.
    finished: bool,
    rest: Option<oneshot::Sender<Incoming>>,
}

/// Where a [`Watched`] body's unread rest arrives.
pub struct Leftover(oneshot::Receiver<Incoming>);

/// Wraps a request body; the [`Leftover`] goes to [`rest`] once the handler has answered.
pub fn watch(body: Incoming) -> (Watched, Leftover) {
    let (tx, rx) = oneshot::channel();
    (
        Watched {
            inner: Some(body),
            finished: false,
            rest: Some(tx),
        },
        Leftover(rx),
    )
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            self.finished = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let (Some(inner), Some(rest)) = (self.inner.take(), self.rest.take())
            && !self.finished
            && !inner.is_end_stream()
        {
            // Nobody may be left to drain it (the request is over): then hyper closes.
            let _ = rest.send(inner);
        }
    }
}

/// Reads what the handler left of the request body to its end — at most `limit` bytes; past
/// that the connection is given up, as before — so hyper can keep the connection. Called
/// after the handler answered and before the answer is written: a client sends its whole
/// body before it reads the answer (one waiting for `100 Continue` is not watched), so this
/// only waits for bytes already on their way. Nothing when the handler read the body to its
/// end or still holds it.
pub async fn rest(leftover: Leftover, limit: u64) {
    use http_body_util::BodyExt;
    let Leftover(mut receiver) = leftover;
    let Ok(mut body) = receiver.try_recv() else {
        return;
    };
    let mut read = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        read = read.saturating_add(frame.data_ref().map_or(0, |data| data.len() as u64));
        if read > limit {
            return;
        }
    }
}
