//! The Matrix error of request handling and the one place one is rendered as a response
//! (`{"errcode", "error"}` with the right status). The domain errors (`rooms::RoomError`,
//! the auth failures) are mapped to it in `api` (`ApiError`); the one response that is not
//! built here is a refusal relayed from Synapse as it wrote it (e.g. whoami's 401 for an
//! unknown token), so a client sees Synapse's exact answer.
//!
//! Internal details (I/O errors, SQL errors, upstream failures) are logged where the error is
//! turned into a response and never copied into the body: the client sees a stable message.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// A Matrix error code, as the client-server API spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unknown,
    NotFound,
    TooLarge,
    Unrecognized,
    Forbidden,
    NotJson,
    BadJson,
    InvalidParam,
    MissingToken,
    RoomInUse,
    MissingParam,
    Unavailable,
    Exclusive,
    BadState,
    UnknownPos,
    UnsupportedRoomVersion,
    BadAlias,
}

impl ErrorCode {
    /// The spec's string for this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unknown => "M_UNKNOWN",
            ErrorCode::NotFound => "M_NOT_FOUND",
            ErrorCode::TooLarge => "M_TOO_LARGE",
            ErrorCode::Unrecognized => "M_UNRECOGNIZED",
            ErrorCode::Forbidden => "M_FORBIDDEN",
            ErrorCode::NotJson => "M_NOT_JSON",
            ErrorCode::BadJson => "M_BAD_JSON",
            ErrorCode::InvalidParam => "M_INVALID_PARAM",
            ErrorCode::MissingToken => "M_MISSING_TOKEN",
            ErrorCode::RoomInUse => "M_ROOM_IN_USE",
            ErrorCode::MissingParam => "M_MISSING_PARAM",
            ErrorCode::Exclusive => "M_EXCLUSIVE",
            ErrorCode::BadState => "M_BAD_STATE",
            ErrorCode::UnknownPos => "M_UNKNOWN_POS",
            ErrorCode::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            ErrorCode::BadAlias => "M_BAD_ALIAS",
            // Not a spec code: what a switched-off room class answers (503).
            ErrorCode::Unavailable => "M_UNAVAILABLE",
        }
    }
}

/// An error that ends a request with a Matrix error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// The `errcode` field.
    pub code: ErrorCode,
    /// The `error` field: what the client is told, never internal detail.
    pub message: String,
}

impl MatrixError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// Synapse could not be reached or broke off the exchange.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message)
    }

    /// Synapse did not answer within the configured time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unknown, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadJson, message)
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidParam, message)
    }

    /// The request body is larger than the configured limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("Request body is larger than {limit} bytes"),
        )
    }

    /// The Matrix JSON body of this error.
    pub fn body_json(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            errcode: &'static str,
            error: &'a str,
        }
        // Serialising two strings cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_string(&Body {
            errcode: self.code.as_str(),
            error: &self.message,
        })
        .unwrap_or_else(|_| r#"{"errcode":"M_UNKNOWN","error":"Internal error"}"#.to_owned())
    }

    /// The HTTP response for this error.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.body_json()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl axum::response::IntoResponse for MatrixError {
    fn into_response(self) -> axum::response::Response {
        MatrixError::into_response(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_gateway_is_matrix_json() {
        let err = MatrixError::bad_gateway("Synapse is unreachable");
        let value: serde_json::Value = serde_json::from_str(&err.body_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"errcode": "M_UNKNOWN", "error": "Synapse is unreachable"})
        );
        assert_eq!(err.status, StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn message_is_escaped() {
        let err = MatrixError::bad_gateway("quote \" and newline \n");
        let value: serde_json::Value = serde_json::from_str(&err.body_json()).unwrap();
        assert_eq!(value["error"], "quote \" and newline \n");
    }
}
