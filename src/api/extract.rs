//! Request parts every handler needs: the authenticated requester, query parameters and a
//! JSON object body with Synapse's error codes for bad input.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::request::Parts;
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

    /// An integer parameter; present but malformed is `M_INVALID_PARAM`.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|value| {
                value.parse().map_err(|_| {
                    MatrixError::invalid_param(format!(
                        "Query parameter {key:?} must be an integer"
                    ))
                    .into()
                })
            })
            .transpose()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Query::parse(parts.uri.query()))
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
            format!("Missing parameter: {key}"),
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
