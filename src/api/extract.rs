//! Request parts every handler needs: the authenticated requester, path and query
//! parameters and a JSON object body, with Synapse's error codes for bad input (axum's own
//! rejections are plain text, which no Matrix client reads).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::request::Parts;
use ruma::OwnedRoomId;
use serde_json::{Map, Value};

use super::ApiError;
use crate::app::AppState;
use crate::auth::requester::{Requester, access_token};
use crate::error::{ErrorCode, MatrixError};

/// The authenticated requester and the token it came with (needed to ask Synapse for
/// profiles on the requester's behalf).
pub struct Authed {
    pub requester: Requester,
    pub token: String,
    /// `?ts=` for appservices.
    pub ts: Option<i64>,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query();
        let token = access_token(&parts.headers, query).map(|t| t.into_owned());
        let params = Query::parse(query);
        let requester = state
            .identity
            .resolve(token.as_deref(), params.get("user_id"))
            .await?;
        let ts = params.get("ts").and_then(|ts| ts.parse().ok());
        Ok(Authed {
            requester,
            token: token.unwrap_or_default(),
            ts,
        })
    }
}

/// Path parameters, percent-decoded. A segment that does not decode (invalid UTF-8) or holds
/// a NUL (Postgres text cannot) is 400 `M_INVALID_PARAM`, as a Matrix error.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_encoded_nul(parts.uri.path()) {
            return Err(MatrixError::invalid_param("NUL in a path parameter").into());
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(MatrixError::invalid_param(rejection.body_text()).into()),
        }
    }
}

/// The room of a `/{version}/rooms/{roomId}` route with no other path parameter, parsed:
/// a room ID that does not parse is 400 `M_INVALID_PARAM`, as everywhere else. Put it after
/// [`Authed`]: the room ID is judged after the requester, as handlers that parse it do.
pub struct RoomPath(pub OwnedRoomId);

impl<S: Send + Sync> FromRequestParts<S> for RoomPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((_version, room)) =
            Path::<(String, String)>::from_request_parts(parts, state).await?;
        super::send::room_id(&room).map(RoomPath)
    }
}

/// Query parameters, decoded (a repeated key keeps its last value).
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Query(
            query
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// An integer parameter; present but malformed or negative is `M_INVALID_PARAM`, in the
    /// words of Synapse's `parse_integer` (which refuses negative values by default).
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|value| match value.parse::<i64>() {
                Ok(n) if n < 0 => Err(MatrixError::invalid_param(format!(
                    "Query parameter {key} must be a positive integer."
                ))
                .into()),
                Ok(n) => Ok(n),
                Err(_) => Err(MatrixError::invalid_param(format!(
                    "Query parameter {key} must be an integer"
                ))
                .into()),
            })
            .transpose()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    /// A parameter holding a NUL is 400 `M_INVALID_PARAM`: no ID, type or token has one, and
    /// Postgres text cannot store one.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = Query::parse(parts.uri.query());
        if query
            .0
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(MatrixError::invalid_param("NUL in a query parameter").into());
        }
        Ok(query)
    }
}

/// Whether a raw path holds `%00`.
fn has_encoded_nul(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Whether a JSON value holds a NUL in a string or a key: Postgres' `jsonb` cannot store
/// one (`\u0000`), so it is refused before anything is written.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A JSON object body. Not JSON → `M_NOT_JSON`; JSON but not an object → `M_BAD_JSON`.
pub struct JsonObject(pub Map<String, Value>);

/// Parses bytes as a JSON object with Synapse's error codes.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    // An empty body counts as `{}`, as Synapse treats it for endpoints with optional bodies.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) if map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) => {
            Err(MatrixError::bad_json("NUL is not allowed in JSON strings").into())
        }
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(MatrixError::bad_json("Content must be a JSON object.").into()),
        Err(_) => Err(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::NotJson,
            "Content not JSON.",
        )
        .into()),
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        // The limit is the router's `DefaultBodyLimit` (`limits.max_local_body_bytes`).
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    http::StatusCode::PAYLOAD_TOO_LARGE => MatrixError::new(
                        http::StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::TooLarge,
                        "Request body too large",
                    ),
                    _ => MatrixError::new(
                        http::StatusCode::BAD_REQUEST,
                        ErrorCode::Unknown,
                        "The request body could not be read",
                    ),
                })?;
        parse_object(&bytes).map(JsonObject)
    }
}

/// A string field of a body, required.
pub fn required_str<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match body.get(key) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(MatrixError::bad_json(format!("'{key}' must be a string")).into()),
        None => Err(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::MissingParam,
            // Synapse's `assert_params_in_dict`.
            format!("Missing params: ['{key}']"),
        )
        .into()),
    }
}

/// A string field of a body, optional.
pub fn optional_str(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(MatrixError::bad_json(format!("'{key}' must be a string")).into()),
    }
}

/// The longest long-poll wait honoured (`/sync`, sliding sync). Synapse does not cap it; a
/// day is enough for any client.
const MAX_LONG_POLL: Duration = Duration::from_secs(24 * 3600);

/// A long poll's `timeout` query parameter (milliseconds; absent means 0), capped at a day.
pub fn long_poll_timeout(value: Option<&str>) -> Result<Duration, MatrixError> {
    match value {
        None => Ok(Duration::ZERO),
        Some(text) => text
            .parse::<u64>()
            .map(|ms| Duration::from_millis(ms).min(MAX_LONG_POLL))
            .map_err(|_| MatrixError::invalid_param("Query parameter timeout must be an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_poll_timeouts() {
        assert_eq!(long_poll_timeout(None).unwrap(), Duration::ZERO);
        assert_eq!(
            long_poll_timeout(Some("30000")).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            long_poll_timeout(Some("999999999999")).unwrap(),
            MAX_LONG_POLL
        );
        for bad in ["", "-1", "1.5", "soon"] {
            assert!(long_poll_timeout(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
