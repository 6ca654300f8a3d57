//! `POST /search`: Synapse's answer for its rooms and the local rooms' ([`crate::rooms::search`])
//! merged into one ([`crate::search`]). Parses the request as Synapse's `SearchHandler` does;
//! a request we cannot read, or a `batch` that is not ours (one Synapse handed out before the
//! client searched through hungryserv), goes to Synapse alone so the client gets Synapse's own
//! answer, error texts included.
//!
//! Degraded mode: while Synapse is taken to be down (or does not answer, or its proxy answers
//! 502–504), a search answers the local rooms' results alone instead of failing, as `/sync`
//! keeps serving local rooms; a `next_batch` keeps Synapse's position unchanged, so paging on
//! once Synapse is back loses none of its results (they may then come after local results
//! that are older).

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use super::ApiError;
use super::extract::Query;
use crate::app::AppState;
use crate::auth::requester::{Requester, access_token};
use crate::error::{ErrorCode, MatrixError};
use crate::rooms::read::EventFilter;
use crate::rooms::search::{ContextRequest, LocalQuery, LocalResults, Order};
use crate::search::{Batch, MergeRequest, Side, SynapseHalf, merge};
use crate::store::search::types_of_keys;
use crate::upstream::client::CallError;

/// The largest body read.
const MAX_BODY: usize = 1024 * 1024;
/// Synapse's default `filter.limit`.
const DEFAULT_LIMIT: i64 = 10;
/// The most results a page holds (each side is asked for at most this many).
const MAX_LIMIT: i64 = 1000;

pub async fn search(state: &AppState, request: Request<Body>) -> Response {
    match handle(state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// The parts of `search_categories.room_events` the search needs.
struct Parsed {
    term: String,
    keys: Vec<String>,
    filter: EventFilter,
    rooms: Option<Vec<String>>,
    not_rooms: Vec<String>,
    limit: usize,
    order: Order,
    include_state: bool,
    context: Option<ContextRequest>,
    group_by_room: bool,
    group_by_sender: bool,
}

/// `None` when Synapse would refuse the request (it then answers it itself).
fn parse(body: &Value) -> Option<Parsed> {
    let category = body.get("search_categories")?.get("room_events")?;
    let term = category.get("search_term")?.as_str()?.to_owned();
    let keys = match category.get("keys") {
        None => vec![
            "content.body".to_owned(),
            "content.name".to_owned(),
            "content.topic".to_owned(),
        ],
        Some(keys) => keys
            .as_array()?
            .iter()
            .map(|k| k.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?,
    };
    let filter_json = match category.get("filter") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(filter @ Value::Object(_)) => filter.clone(),
        Some(_) => return None,
    };
    let filter: EventFilter = serde_json::from_value(filter_json.clone()).ok()?;
    let strings = |key: &str| -> Option<Option<Vec<String>>> {
        match filter_json.get(key) {
            None => Some(None),
            Some(list) => list
                .as_array()?
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some),
        }
    };
    let rooms = strings("rooms")?;
    let not_rooms = strings("not_rooms")?.unwrap_or_default();
    let limit = match filter_json.get("limit") {
        None => DEFAULT_LIMIT,
        Some(limit) => limit.as_i64()?,
    };
    let order = match category.get("order_by").map(Value::as_str) {
        None => Order::Rank,
        Some(Some("rank")) => Order::Rank,
        Some(Some("recent")) => Order::Recent,
        Some(_) => return None,
    };
    let include_state = match category.get("include_state") {
        None => false,
        Some(value) => value.as_bool()?,
    };
    let context = match category.get("event_context") {
        None | Some(Value::Null) => None,
        Some(context) => {
            let int = |key: &str| match context.get(key) {
                None => Some(5),
                Some(value) => value.as_i64(),
            };
            Some(ContextRequest {
                before_limit: int("before_limit")?.clamp(0, 100),
                after_limit: int("after_limit")?.clamp(0, 100),
                include_profile: context
                    .get("include_profile")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        }
    };
    let mut group_by_room = false;
    let mut group_by_sender = false;
    if let Some(groups) = category.get("groupings").and_then(|g| g.get("group_by")) {
        for group in groups.as_array()? {
            match group.get("key")?.as_str()? {
                "room_id" => group_by_room = true,
                "sender" => group_by_sender = true,
                _ => return None,
            }
        }
    }
    Some(Parsed {
        term,
        keys,
        filter,
        rooms,
        not_rooms,
        limit: usize::try_from(limit.clamp(0, MAX_LIMIT)).unwrap_or(0),
        order,
        include_state,
        context,
        group_by_room,
        group_by_sender,
    })
}

async fn handle(state: &AppState, request: Request<Body>) -> Result<Response, ApiError> {
    let params = Query::parse(request.uri().query());
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    let requester = state
        .identity
        .resolve(token.as_deref(), params.get("user_id"))
        .await?;
    let token = token.unwrap_or_default();
    let batch_text = params.get("next_batch").map(str::to_owned);
    let bytes = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            MatrixError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "Request body too large",
            )
        })?
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).map_err(|_| {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NotJson,
            "Content not JSON.",
        )
    })?;
    let batch = match batch_text.as_deref() {
        None => Some(Batch::start()),
        Some(text) => Batch::decode(text),
    };
    let (Some(parsed), Some(batch)) = (parse(&body), batch) else {
        // Synapse's own answer: its error for what it refuses, its results for its token.
        let answer = state
            .synapse
            .search(&token, batch_text.as_deref(), &body)
            .await
            .map_err(|err| ApiError::from_upstream(err, "search"))?;
        return Ok(Json(answer).into_response());
    };
    answer(state, &requester, &token, body, parsed, batch).await
}

async fn answer(
    state: &AppState,
    requester: &Requester,
    token: &str,
    mut body: Value,
    parsed: Parsed,
    batch: Batch,
) -> Result<Response, ApiError> {
    let classes = state.classes.current();
    let recent = parsed.order == Order::Recent;
    // Rank searches are not paged: only a room group's token (its room) carries over.
    let batch = if recent {
        batch
    } else {
        Batch {
            room: batch.room,
            ..Batch::start()
        }
    };
    let room_is_local = |room: &str| classes.class_of(room).is_some();

    // Synapse is asked unless its side is done, or every room asked about is local.
    let only_local = batch.room.as_deref().is_some_and(room_is_local)
        || parsed
            .rooms
            .as_ref()
            .is_some_and(|rooms| rooms.iter().all(|r| room_is_local(r)));
    let synapse_batch = if only_local {
        None
    } else {
        batch.synapse_batch()
    };
    if recent
        && batch.synapse_extra() > 0
        && let Some(filter) = body
            .pointer_mut("/search_categories/room_events")
            .and_then(Value::as_object_mut)
            .map(|c| c.entry("filter").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
    {
        filter.insert("limit".into(), json!(parsed.limit + batch.synapse_extra()));
    }
    let synapse = async {
        let Some(asked) = &synapse_batch else {
            return Ok(None);
        };
        // Degraded mode: Synapse taken to be down is not asked, and a call in flight is
        // given up as soon as it is taken to be down (as `/sync` does).
        let mut health = state.synapse.health.subscribe();
        if !*health.borrow_and_update() {
            return Err(CallError::Unavailable("Synapse does not answer".into()));
        }
        tokio::select! {
            result = state.synapse.search(token, asked.as_deref(), &body) => result.map(Some),
            Ok(_) = health.wait_for(|up| !*up) => {
                Err(CallError::Unavailable("Synapse stopped answering".into()))
            }
        }
    };

    let local_rooms: Vec<String> = if batch.room.as_deref().is_some_and(|r| !room_is_local(r)) {
        Vec::new()
    } else {
        state
            .rooms
            .joined_rooms(requester)
            .await?
            .into_iter()
            .filter(|room| classes.available(room))
            .filter(|room| parsed.rooms.as_ref().is_none_or(|rs| rs.contains(room)))
            .filter(|room| !parsed.not_rooms.contains(room))
            .filter(|room| batch.room.as_ref().is_none_or(|only| only == room))
            .collect()
    };
    let local = state.rooms.search(
        requester,
        LocalQuery {
            rooms: local_rooms,
            term: &parsed.term,
            types: types_of_keys(parsed.keys.iter().map(String::as_str)),
            filter: &parsed.filter,
            limit: parsed.limit,
            order: parsed.order,
            before: match batch.local {
                Side::At(position) => Some(position),
                _ => None,
            },
            context: parsed.context,
            include_state: parsed.include_state,
            count_only: matches!(batch.local, Side::Done),
        },
    );
    let (synapse, local) = tokio::join!(synapse, local);
    let (synapse, degraded) = match synapse {
        Ok(answer) => (answer, false),
        // Synapse unreachable, or its proxy answering for it: the local rooms' results alone.
        Err(CallError::Unavailable(reason)) => {
            tracing::warn!(%reason, "search: Synapse unavailable, local results only");
            (None, true)
        }
        Err(CallError::Refused(refusal)) if (502..=504).contains(&refusal.status.as_u16()) => {
            tracing::warn!(status = %refusal.status, "search: Synapse failed, local results only");
            (None, true)
        }
        Err(err) => return Err(ApiError::from_upstream(err, "search")),
    };
    let LocalResults {
        hits,
        count,
        highlights,
        exhausted,
        state: local_state,
    } = local?;
    let synapse_done = synapse.is_none() && !degraded;
    let mut half = SynapseHalf::from_answer(
        synapse
            .as_ref()
            .and_then(|a| a.pointer("/search_categories/room_events")),
    );
    if synapse.is_none() && !only_local {
        // Paged past Synapse's last result, or Synapse not answering: its count is the one
        // it last gave.
        half.count = batch.synapse_count;
    }
    if degraded {
        // Synapse's position stays where it was, so a later page asks it again from there.
        half.more = true;
    }
    let from = Batch {
        synapse: if synapse_done {
            Side::Done
        } else {
            batch.synapse.clone()
        },
        ..batch
    };
    let merged = merge(
        &MergeRequest {
            recent,
            limit: parsed.limit,
            group_by_room: parsed.group_by_room,
            group_by_sender: parsed.group_by_sender,
            from,
            local_exhausted: exhausted,
        },
        half,
        hits,
        count,
        highlights,
        local_state,
    );
    Ok(Json(json!({"search_categories": {"room_events": merged}})).into_response())
}
