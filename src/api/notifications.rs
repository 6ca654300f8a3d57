//! `GET /notifications`: Synapse's list merged with the local rooms' ([`crate::push::notifications`]).

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::Query;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::push::notifications::{local_page, merge, parse_from};
use crate::rooms::RoomError;

/// Entries per page when the client gives no limit (Synapse's default).
const DEFAULT_LIMIT: i64 = 50;
/// The most entries asked of each side.
const MAX_LIMIT: i64 = 1000;

pub async fn notifications(state: &AppState, request: Request<Body>) -> Response {
    match handle(state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(state: &AppState, request: Request<Body>) -> Result<Response, ApiError> {
    let query = request.uri().query().unwrap_or_default();
    let params = Query::parse(Some(query));
    let param = |name: &str| params.get(name);
    let limit = params
        .int("limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let only_highlight = param("only") == Some("highlight");
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    let requester = state
        .identity
        .resolve(token.as_deref(), param("user_id"))
        .await?;
    let cursor = parse_from(param("from"));

    let (synapse, synapse_next) = if cursor.synapse_done {
        (Vec::new(), None)
    } else {
        let upstream_query = {
            let mut upstream = form_urlencoded::Serializer::new(String::new());
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                if key != "from" && key != "access_token" {
                    upstream.append_pair(&key, &value);
                }
            }
            if let Some(from) = &cursor.synapse_from {
                upstream.append_pair("from", from);
            }
            upstream.finish()
        };
        let answer = state
            .synapse
            .notifications(token.as_deref().unwrap_or_default(), &upstream_query)
            .await
            .map_err(|err| ApiError::from_upstream(err, "notifications"))?;
        let list = answer
            .get("notifications")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let next = answer.get("next_token").and_then(|t| {
            t.as_str()
                .map(str::to_owned)
                .or_else(|| t.as_i64().map(|n| n.to_string()))
        });
        (list, next)
    };

    let local = async {
        let mut conn = state.db.acquire().await?;
        let user = requester.user_id.as_str();
        local_page(&mut conn, user, cursor.local_before, limit, only_highlight).await
    };
    let local = local.await.map_err(RoomError::from)?;
    let local_more = i64::try_from(local.len()).unwrap_or(i64::MAX) >= limit;
    let classes = state.classes.current();
    let shown = |notification: &Value| {
        notification
            .get("room_id")
            .and_then(Value::as_str)
            .is_none_or(|room| classes.available(room))
    };
    let page = merge(synapse, synapse_next, local, local_more, &cursor, shown);
    let mut body = json!({ "notifications": page.notifications });
    if let Some(next) = page.next_token {
        body["next_token"] = json!(next);
    }
    Ok(Json(body).into_response())
}
