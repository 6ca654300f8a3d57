//! Abuse reports: `POST /rooms/{roomId}/report[/{eventId}]` for local rooms
//! ([`crate::rooms::reports`]), and Synapse's admin list `GET /_synapse/admin/v1/event_reports`
//! with the local reports merged in: both halves are read from the start up to `from + limit`
//! in the requested order by `received_ts`, interleaved, and the page `[from, from + limit)`
//! cut from that (Synapse's `from` is an offset, so the merged list pages by offset too);
//! `total` is the sum. Synapse answers first, so a requester who is not a server admin gets
//! Synapse's own refusal.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::Request;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject, Path, Query};
use super::send::room_id;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::{ErrorCode, MatrixError};
use crate::rooms::RoomError;
use crate::store::reports::{ListedReport, ReportFilter};

/// `POST /rooms/{roomId}/report/{eventId}`.
pub async fn report_event(
    State(state): State<AppState>,
    Path((_, room, event_id)): Path<(String, String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let bad = |message: &str| {
        ApiError::from(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::BadJson,
            message,
        ))
    };
    if body.get("reason").is_some_and(|r| !r.is_string()) {
        return Err(bad("Param 'reason' must be a string"));
    }
    if body.get("score").is_some_and(|s| !s.is_i64()) {
        return Err(bad("Param 'score' must be an integer"));
    }
    state
        .rooms
        .report_event(&auth.requester, &room_id(&room)?, &event_id, body)
        .await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/report`: `reason` is required (Synapse's request model).
pub async fn report_room(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    // Synapse's request model: a missing `reason` is M_MISSING_PARAM, another type M_BAD_JSON.
    let reason = match body.get("reason") {
        Some(Value::String(reason)) => reason.as_str(),
        missing_or_not_a_string => {
            let (code, message) = match missing_or_not_a_string {
                None => (ErrorCode::MissingParam, "reason: Field required"),
                Some(_) => (ErrorCode::BadJson, "reason: Input should be a valid string"),
            };
            return Err(MatrixError::new(http::StatusCode::BAD_REQUEST, code, message).into());
        }
    };
    state
        .rooms
        .report_room(&auth.requester, &room_id(&room)?, reason)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/event_reports`, merged.
pub async fn event_reports(state: &AppState, request: Request<Body>) -> Response {
    match list(state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

fn report_json(report: ListedReport) -> Value {
    json!({
        "id": report.id,
        "received_ts": report.received_ts,
        "room_id": report.room_id,
        "event_id": report.event_id,
        "user_id": report.user_id,
        "score": report.content.get("score").cloned().unwrap_or(Value::Null),
        "reason": report.content.get("reason").cloned().unwrap_or(Value::Null),
        "sender": report.sender,
        "canonical_alias": report.canonical_alias,
        "name": report.name,
    })
}

async fn list(state: &AppState, request: Request<Body>) -> Result<Response, ApiError> {
    let raw_query = request.uri().query().unwrap_or_default().to_owned();
    let query = Query::parse(Some(&raw_query));
    let from = query.int("from")?.unwrap_or(0);
    let limit = query.int("limit")?.unwrap_or(100);
    if from < 0 || limit < 0 {
        // Synapse's own wording for these.
        let which = if from < 0 { "from" } else { "limit" };
        return Err(MatrixError::invalid_param(format!(
            "Query parameter {which} must be a string representing a positive integer."
        ))
        .into());
    }
    let newest_first = match query.get("dir") {
        None | Some("b") => true,
        Some("f") => false,
        Some(_) => return Err(MatrixError::invalid_param("Unknown direction").into()),
    };
    let token = access_token(request.headers(), request.uri().query())
        .map(|t| t.into_owned())
        .unwrap_or_default();
    let wanted = from.saturating_add(limit);
    let upstream_query = {
        let mut upstream = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(raw_query.as_bytes()) {
            if !matches!(key.as_ref(), "from" | "limit" | "access_token") {
                upstream.append_pair(&key, &value);
            }
        }
        upstream.append_pair("from", "0");
        upstream.append_pair("limit", &wanted.to_string());
        upstream.finish()
    };
    let synapse = state
        .synapse
        .event_reports(&token, &upstream_query)
        .await
        .map_err(|err| ApiError::from_upstream(err, "event_reports"))?;
    let theirs = synapse
        .get("event_reports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let their_total = synapse.get("total").and_then(Value::as_i64).unwrap_or(0);
    let filter = ReportFilter {
        user_id: query.get("user_id").map(str::to_owned),
        room_id: query.get("room_id").map(str::to_owned),
        event_sender_user_id: query.get("event_sender_user_id").map(str::to_owned),
        newest_first,
    };
    let (ours, our_total) = {
        let mut conn = state
            .db
            .acquire()
            .await
            .map_err(|e| ApiError::from(RoomError::from(crate::store::StoreError::from(e))))?;
        crate::store::reports::list_event_reports(&mut conn, &filter, wanted)
            .await
            .map_err(RoomError::from)?
    };
    let ts = |report: &Value| {
        report
            .get("received_ts")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let mut merged: Vec<Value> = theirs;
    merged.extend(ours.into_iter().map(report_json));
    // Stable: each half keeps its own order among equal timestamps.
    if newest_first {
        merged.sort_by_key(|r| std::cmp::Reverse(ts(r)));
    } else {
        merged.sort_by_key(ts);
    }
    let page: Vec<Value> = merged
        .into_iter()
        .skip(usize::try_from(from).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .collect();
    let total = their_total + our_total;
    let mut answer = json!({"event_reports": page, "total": total});
    if from.saturating_add(limit) < total {
        answer["next_token"] = json!(from + i64::try_from(page.len()).unwrap_or(0));
    }
    Ok(Json(answer).into_response())
}
