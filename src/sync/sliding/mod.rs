//! Merged simplified sliding sync (MSC4186, `POST /unstable/org.matrix.simplified_msc3575/sync`
//! as Synapse serves it): Synapse's answer for its rooms, ours for local rooms, one `pos`.
//!
//! One request goes like this:
//!
//! 1. `pos` names a snapshot of the connection ([`conn`]): Synapse's own `pos`, our stream
//!    positions, which local rooms the client has and up to where. An unknown `pos` is
//!    answered 400 `M_UNKNOWN_POS` without asking Synapse (the client starts afresh); no `pos`
//!    starts the connection afresh.
//! 2. Synapse gets the client's body with its own token and `pos`, except that every list's
//!    `ranges` become `[[0, end]]` (`end` the largest range end): to place local rooms among
//!    Synapse's we need Synapse's order from the top, not only its slice. Room subscriptions
//!    and extensions go unchanged (Synapse ignores rooms it does not know). A new connection
//!    (no `pos`) takes the device's spare Synapse answer for the same body when there is one
//!    ([`spare`]) instead of waiting for Synapse, and continues on that Synapse connection.
//! 3. The local half ([`local`]) lists the user's local rooms from their `memberships` rows,
//!    and reads only the rooms of the local windows (the local top `end + 1` of each list) and
//!    subscribed local rooms — a user in 10,000 rooms costs one index scan, not 10,000 reads.
//! 4. **Merge** ([`merge`]): a list's `count` is Synapse's count plus the local count (the
//!    two sets are disjoint: local room IDs never reach Synapse). Its `ops` name the rooms of
//!    the requested ranges over one order, newest first by the `origin_server_ts` of the event
//!    each room is ordered by (Synapse: the newest timeline event it sent us for the room,
//!    remembered per connection; local: the room's latest event). Synapse's relative order is
//!    never changed. `rooms` holds everything Synapse sent (it has marked those sent) and the
//!    local window rooms with news; a local room outside the merged range may be among them,
//!    which clients take as they take Synapse's rooms beyond a range start. Per-room extension
//!    data (receipts, typing, room account data) of local rooms is added to Synapse's
//!    extensions, and the `e2ee` extension's `device_lists` get the device-list changes of
//!    local co-members over the same range as the local half ([`crate::devices`], merged as
//!    `/sync` merges them); `to_device`, one-time-key counts and global account data are
//!    Synapse's alone.
//! 5. **Long poll** (`timeout`), raced as `/sync` races: answered at once without `pos`, with
//!    `timeout=0` or when the local half has news (Synapse then asked with `timeout=0`).
//!    Otherwise Synapse's request waits while local commits that concern the user are watched
//!    from memory ([`crate::notify::Notifier::news_for`]); a woken request reads again only the
//!    rows of the rooms written into (all of the room list when the user's memberships
//!    changed), and the rest of the local half as always. Local news drops the Synapse request
//!    and answers with Synapse's `pos` unchanged (Synapse keeps a position until a newer one
//!    is used, so it stays valid) and Synapse's lists as last seen.
//!
//! Synapse's `M_UNKNOWN_POS` is passed on and our connection state is dropped with it. With
//! Synapse down, a connection that has a Synapse `pos` keeps serving local rooms; a new one
//! fails with 502.
//!
//! Room fields match Synapse's: `notification_count`/`highlight_count` are 0, as Synapse sends
//! them (clients count unread from receipts). `bump_stamp` is not: every room entry, Synapse's
//! too, gets a stamp on one scale for both sides, ordered like the merged list and kept stable
//! per connection ([`stamp`]).

pub mod conn;
pub mod local;
pub mod merge;
pub mod request;
pub mod spare;
pub mod stamp;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::{Since, Syncer};
use crate::auth::requester::Requester;
use crate::devices::{At, lists::Viewer};
use crate::rooms::RoomError;
use crate::store::StoreError;
use crate::upstream::client::{CallError, Refusal};
use conn::{ConnKey, Snapshot};
use local::{Listing, LocalInput, LocalPart};
pub use request::RequiredState;
use request::{Body, Toggle, parse};
use spare::SpareKey;

/// A client's sliding sync request.
pub struct SlidingRequest {
    pub requester: Requester,
    /// The client's access token, for its own call to Synapse.
    pub token: String,
    pub pos: Option<String>,
    pub timeout: Duration,
    /// The request body as it came.
    pub body: Value,
    /// What Synapse records about the client (user agent, address chain).
    pub client_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a sliding sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SlidingError {
    #[error("Unknown position")]
    UnknownPos,
    #[error("Invalid request body: {0}")]
    BadBody(String),
    /// Synapse refused the request; its answer is passed on.
    #[error("Synapse refused the sliding sync")]
    Refused(Refusal),
    #[error("Synapse is unreachable: {0}")]
    SynapseDown(String),
    #[error(transparent)]
    Room(#[from] RoomError),
}

/// Why there is no Synapse answer to merge.
enum Absent {
    /// The local side answered first; Synapse's `pos` stays.
    Pending,
    Refused(Refusal),
    Down(String),
}

impl From<CallError> for Absent {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Refused(refusal) => Absent::Refused(refusal),
            CallError::Unavailable(reason) => Absent::Down(reason),
        }
    }
}

impl Syncer {
    /// Answers one sliding sync.
    pub async fn sliding_sync(&self, request: &SlidingRequest) -> Result<Value, SlidingError> {
        let body = parse(&request.body).map_err(SlidingError::BadBody)?;
        let requester = &request.requester;
        let key = ConnKey {
            user: requester.user_id.to_string(),
            device: requester
                .device_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            conn_id: body.conn_id.clone().unwrap_or_default(),
        };
        let prev = match &request.pos {
            None => {
                self.sliding.reset(&key);
                None
            }
            Some(pos) => Some(
                self.sliding
                    .take(&key, pos)
                    .ok_or(SlidingError::UnknownPos)?,
            ),
        };
        let prev = prev.as_deref();
        let synapse_body =
            synapse_body(&request.body, prev.and_then(|p| p.synapse_conn.as_deref()));
        let synapse_pos = prev.and_then(|p| p.synapse_pos.clone());
        let user = requester.user_id.as_str();

        // Subscribe before reading, so no commit after the read goes unnoticed.
        let mut wake = self.notifier.subscribe();
        let mut side_wake = self.notifier.subscribe_side();
        let upto = self.upto();
        if prev.is_none() || request.timeout.is_zero() {
            // `m.direct` is needed before the local half only for an `is_dm` filter. Else it
            // comes with Synapse's answer when the account data extension is on (an answer
            // without `pos` carries all global account data), or is asked for meanwhile.
            let known = prev.and_then(|p| p.direct.clone());
            let first = known.is_none() && body.filters_on_dm();
            let from_answer = prev.is_none() && !first && body.global_account_data();
            let local = async {
                let direct = match &known {
                    Some(direct) => direct.clone(),
                    None if first => self.direct_rooms(request).await,
                    None => HashSet::new(),
                };
                let part = self
                    .sliding_local(request, &body, prev, upto, &direct, Listing::Read)
                    .await?;
                Ok::<_, SlidingError>((part, (known.is_some() || first).then_some(direct)))
            };
            let meanwhile = async {
                if known.is_none() && !first && !from_answer {
                    Some(self.direct_rooms(request).await)
                } else {
                    None
                }
            };
            // A new connection takes the device's spare Synapse connection when there is
            // one for this body ([`spare`]).
            let spare_key = prev
                .is_none()
                .then(|| SpareKey::of(user, &key.device, &synapse_body))
                .flatten();
            let synapse = async {
                if let Some(spare) = &spare_key
                    && let Some(taken) = self.sliding.spares.take(spare).await
                {
                    return (Ok(taken.answer), Some(taken.conn_id));
                }
                let answer = self
                    .synapse_sliding(
                        request,
                        &synapse_body,
                        synapse_pos.as_deref(),
                        Duration::ZERO,
                    )
                    .await;
                (answer, None)
            };
            let (local, (synapse, synapse_conn), fetched) = tokio::join!(local, synapse, meanwhile);
            let (local, direct) = local?;
            let synapse = synapse.map_err(Absent::from);
            let answered = synapse.is_ok();
            let answer = self.sliding_answer(
                &key,
                prev,
                &body,
                synapse,
                synapse_conn,
                local,
                upto,
                direct.or(fetched),
            );
            if let (Some(spare), true, Ok(_)) = (spare_key, answered, &answer) {
                self.make_spare(request, spare);
            }
            return answer;
        }
        let known = prev.and_then(|p| p.direct.clone());
        let direct = known.clone().unwrap_or_default();
        let mut local = self
            .sliding_local(request, &body, prev, upto, &direct, Listing::Read)
            .await?;
        if local.has_data() {
            let synapse = self
                .synapse_sliding(
                    request,
                    &synapse_body,
                    synapse_pos.as_deref(),
                    Duration::ZERO,
                )
                .await
                .map_err(Absent::from);
            return self.sliding_answer(&key, prev, &body, synapse, None, local, upto, known);
        }

        let synapse_call = self.synapse_sliding(
            request,
            &synapse_body,
            synapse_pos.as_deref(),
            request.timeout,
        );
        tokio::pin!(synapse_call);
        let deadline = tokio::time::Instant::now() + request.timeout;
        let mut synapse_down = false;
        let mut checked = upto;
        loop {
            let woken = tokio::select! {
                result = &mut synapse_call, if !synapse_down => match result {
                    Ok(value) => {
                        if self.news(user, &local.room_ids, checked) {
                            let listing = self.listing(user, &local, checked);
                            checked = self.upto();
                            local = self.sliding_local(request, &body, prev, checked, &direct, listing).await?;
                        }
                        return self.sliding_answer(&key, prev, &body, Ok(value), None, local, checked, known);
                    }
                    Err(CallError::Refused(refusal)) => {
                        return self.sliding_answer(&key, prev, &body, Err(Absent::Refused(refusal)), None, local, checked, known);
                    }
                    Err(CallError::Unavailable(reason)) => {
                        tracing::warn!(%reason, "sliding sync: Synapse unavailable; serving local rooms only");
                        synapse_down = true;
                        false
                    }
                },
                changed = wake.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    wake.borrow_and_update();
                    true
                },
                changed = side_wake.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    side_wake.borrow_and_update();
                    true
                },
                () = tokio::time::sleep_until(deadline), if synapse_down => break,
            };
            if !woken || !self.news(user, &local.room_ids, checked) {
                continue;
            }
            let woken_at = std::time::Instant::now();
            let now = self.upto();
            let listing = self.listing(user, &local, checked);
            let fresh = self
                .sliding_local(request, &body, prev, now, &direct, listing)
                .await?;
            local = fresh;
            checked = now;
            let read = woken_at.elapsed();
            if local.has_data() {
                let out = self.sliding_answer(
                    &key,
                    prev,
                    &body,
                    Err(Absent::Pending),
                    None,
                    local,
                    checked,
                    known,
                );
                tracing::debug!(?read, answered = ?woken_at.elapsed(), "sliding sync: woken by local news");
                return out;
            }
        }
        self.sliding_answer(
            &key,
            prev,
            &body,
            Err(Absent::Pending),
            None,
            local,
            checked,
            known,
        )
    }

    /// The local half up to `upto`.
    async fn sliding_local(
        &self,
        request: &SlidingRequest,
        body: &Body,
        prev: Option<&Snapshot>,
        upto: Since,
        direct: &HashSet<String>,
        listing: Listing,
    ) -> Result<LocalPart, SlidingError> {
        let input = LocalInput {
            requester: &request.requester,
            body,
            prev,
            upto: upto.stream,
            side_upto: upto.side,
            direct,
        };
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|err| RoomError::from(StoreError::from(err)))?;
        let mut part = local::build(&self.rooms, &mut conn, &input, listing).await?;
        drop(conn);
        let e2ee = body.extensions.as_ref().and_then(|e| e.e2ee.as_ref());
        // As Synapse: device lists only from a position (an initial answer has none).
        if let (true, Some(prev)) = (Toggle::on(e2ee), prev) {
            let viewer = Viewer {
                user_id: request.requester.user_id.as_str(),
                token: request
                    .requester
                    .appservice
                    .is_none()
                    .then_some(request.token.as_str()),
            };
            let from = At {
                events: prev.stream,
                devices: prev.side.devices,
            };
            let to = At {
                events: upto.stream,
                devices: upto.side.devices,
            };
            let lists = self
                .devices
                .between(&viewer, from, to)
                .await
                .map_err(RoomError::from)?;
            part.device_lists = Some(lists);
        }
        Ok(part)
    }

    /// How a woken request gets the user's room list: the rows read before, with those of
    /// the rooms written into since `checked` read again, unless the user's memberships
    /// changed (then all of it).
    fn listing(&self, user: &str, local: &LocalPart, checked: Since) -> Listing {
        if self.notifier.member_news_for(user, checked.stream) {
            return Listing::Read;
        }
        let rooms = self
            .notifier
            .rooms_touched_since(local.room_ids.iter().map(String::as_str), checked.stream);
        Listing::Refresh {
            listed: local.listed.clone(),
            rooms,
        }
    }

    /// The user's DM rooms from Synapse's `m.direct` (none when Synapse has none or cannot
    /// say: `is_dm` is then false everywhere, as for a user without DMs).
    async fn direct_rooms(&self, request: &SlidingRequest) -> HashSet<String> {
        let user = request.requester.user_id.as_str();
        match self
            .synapse
            .account_data(&request.token, user, "m.direct")
            .await
        {
            Ok(Some(content)) => merge::direct_rooms(&content),
            Ok(None) => HashSet::new(),
            Err(err) => {
                tracing::debug!(error = %err, "sliding sync: m.direct unavailable");
                HashSet::new()
            }
        }
    }

    /// The client's own sliding sync on Synapse, from Synapse's `pos`, waiting at most `wait`.
    async fn synapse_sliding(
        &self,
        request: &SlidingRequest,
        body: &Value,
        pos: Option<&str>,
        wait: Duration,
    ) -> Result<Value, CallError> {
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(pos) = pos {
                query.append_pair("pos", pos);
            }
            query.append_pair("timeout", &wait.as_millis().to_string());
            query.finish()
        };
        self.synapse
            .sliding_sync(&request.token, &query, body, wait, &request.client_headers)
            .await
    }

    /// Starts the device's spare Synapse connection for this body ([`spare`]).
    fn make_spare(&self, request: &SlidingRequest, key: SpareKey) {
        let synapse = self.synapse.clone();
        let token = request.token.clone();
        let headers = request.client_headers.clone();
        let body = request.body.clone();
        self.sliding.spares.make(key, move |conn_id| async move {
            let body = synapse_body(&body, Some(&conn_id));
            synapse
                .sliding_sync(&token, "timeout=0", &body, Duration::ZERO, &headers)
                .await
                .ok()
        });
    }

    /// Puts both halves together and records the connection's new position.
    #[allow(clippy::too_many_arguments)]
    fn sliding_answer(
        &self,
        key: &ConnKey,
        prev: Option<&Snapshot>,
        body: &Body,
        synapse: Result<Value, Absent>,
        synapse_conn: Option<String>,
        mut local: LocalPart,
        local_at: Since,
        direct: Option<HashSet<String>>,
    ) -> Result<Value, SlidingError> {
        let mut snapshot = prev.cloned().unwrap_or_default();
        if synapse_conn.is_some() {
            snapshot.synapse_conn = synapse_conn;
        }
        if direct.is_some() {
            snapshot.direct = direct;
        }
        let mut out = match synapse {
            Ok(Value::Object(answer)) => {
                snapshot.synapse_pos = merge::learn(&mut snapshot, &answer);
                // Without `m.direct` in a new connection's answer carrying global account
                // data: no DMs.
                if snapshot.direct.is_none() && prev.is_none() && body.global_account_data() {
                    snapshot.direct = Some(HashSet::new());
                }
                if snapshot.synapse_pos.is_none() {
                    return Err(SlidingError::SynapseDown(
                        "Synapse's sliding sync answer has no pos".into(),
                    ));
                }
                answer
            }
            Ok(_) => {
                return Err(SlidingError::SynapseDown(
                    "Synapse's sliding sync answer is not an object".into(),
                ));
            }
            Err(Absent::Pending) => Map::new(),
            Err(Absent::Refused(refusal)) => {
                if errcode(&refusal).as_deref() == Some("M_UNKNOWN_POS") {
                    self.sliding.expire(key);
                }
                return Err(SlidingError::Refused(refusal));
            }
            Err(Absent::Down(reason)) => {
                if snapshot.synapse_pos.is_none() {
                    return Err(SlidingError::SynapseDown(reason));
                }
                Map::new()
            }
        };
        snapshot.stream = local_at.stream;
        snapshot.side = local_at.side;
        snapshot.sent.extend(local.sent);
        snapshot.local_ts = std::mem::take(&mut local.stream_ts);

        let mut lists = Map::new();
        // Room → (lowest merge key, first position) over the lists, for the stamps.
        let mut ranked: HashMap<String, (i64, usize)> = HashMap::new();
        for (name, list) in body.lists.iter().flatten() {
            let ranges = list.ranges.clone().unwrap_or_default();
            let synapse_list = snapshot.synapse_lists.get(name);
            let local_list = local.lists.get(name);
            let merged =
                merge::merged_order(synapse_list, &snapshot.synapse_rooms, local_list, &local.ts);
            let count = merge::count(synapse_list, local_list);
            lists.insert(name.clone(), merge::list(&ranges, count, &merged));
            for (position, (room, key)) in merged.into_iter().enumerate() {
                let entry = ranked.entry(room).or_insert((key, position));
                *entry = (entry.0.min(key), entry.1.min(position));
            }
        }
        out.remove("lists");
        if !lists.is_empty() {
            out.insert("lists".into(), Value::Object(lists));
        }
        let mut rooms = match out.remove("rooms") {
            Some(Value::Object(rooms)) => rooms,
            _ => Map::new(),
        };
        if let Some(direct) = &snapshot.direct {
            for (room_id, entry) in &mut local.entries {
                if direct.contains(room_id) {
                    entry["is_dm"] = json!(true);
                }
            }
        }
        rooms.extend(local.entries);
        stamp_rooms(&mut rooms, &ranked, &local.ts, &mut snapshot);
        out.insert("rooms".into(), Value::Object(rooms));
        let mut extensions = match out.remove("extensions") {
            Some(Value::Object(extensions)) => extensions,
            _ => Map::new(),
        };
        merge::extend_rooms(&mut extensions, "receipts", local.receipts);
        merge::extend_rooms(&mut extensions, "typing", local.typing);
        merge::extend_rooms(&mut extensions, "account_data", local.account_data);
        if let Some(lists) = local.device_lists {
            merge::device_lists(&mut extensions, lists);
        }
        out.insert("extensions".into(), Value::Object(extensions));
        let pos = self.sliding.record(key, snapshot);
        out.insert("pos".into(), Value::String(pos));
        Ok(Value::Object(out))
    }
}

/// Gives every room entry its `bump_stamp` on the connection's scale ([`stamp`]),
/// replacing Synapse's.
fn stamp_rooms(
    rooms: &mut Map<String, Value>,
    ranked: &HashMap<String, (i64, usize)>,
    local_ts: &HashMap<String, i64>,
    snapshot: &mut Snapshot,
) {
    let mut keyed = Vec::with_capacity(rooms.len());
    for room in rooms.keys() {
        let key = ranked.get(room).copied().or_else(|| {
            let ts = local_ts
                .get(room)
                .copied()
                .or_else(|| snapshot.synapse_rooms.get(room).and_then(|r| r.ts));
            ts.map(|ts| (ts, usize::MAX))
        });
        if let Some((key, rank)) = key {
            keyed.push((room.as_str(), key, rank));
        }
    }
    let order = stamp::order(keyed);
    let stamps = stamp::stamp(&order, &mut snapshot.stamps);
    let stamped: HashMap<String, i64> = order
        .iter()
        .zip(stamps)
        .map(|((room, _), stamp)| ((*room).to_owned(), stamp))
        .collect();
    for (room, entry) in rooms.iter_mut() {
        let Some(entry) = entry.as_object_mut() else {
            continue;
        };
        // Without a key: the stamp last given, or none (never one off the scale).
        match stamped
            .get(room)
            .or_else(|| snapshot.stamps.get(room))
            .copied()
        {
            Some(stamp) => entry.insert("bump_stamp".into(), json!(stamp)),
            None => entry.remove("bump_stamp"),
        };
    }
}

/// The body for Synapse: each list's ranges widened to `[[0, end]]`, and the `conn_id` of the
/// Synapse connection when it is not the client's own.
fn synapse_body(body: &Value, conn_id: Option<&str>) -> Value {
    let mut body = body.clone();
    if let (Some(conn_id), Some(body)) = (conn_id, body.as_object_mut()) {
        body.insert("conn_id".into(), json!(conn_id));
    }
    if let Some(lists) = body.get_mut("lists").and_then(Value::as_object_mut) {
        for list in lists.values_mut() {
            let end = list
                .get("ranges")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get(1).and_then(Value::as_u64))
                .max();
            if let (Some(end), Some(list)) = (end, list.as_object_mut()) {
                list.insert("ranges".into(), json!([[0, end]]));
            }
        }
    }
    body
}

/// The `errcode` of a refusal, if its body is a Matrix error.
fn errcode(refusal: &Refusal) -> Option<String> {
    serde_json::from_slice::<Value>(&refusal.body)
        .ok()?
        .get("errcode")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_is_asked_for_its_order_from_the_top() {
        let body = json!({"lists": {
            "a": {"ranges": [[20, 39], [0, 9]], "timeline_limit": 1},
            "b": {"timeline_limit": 1}
        }, "room_subscriptions": {"!x:y": {"timeline_limit": 5}}});
        let out = synapse_body(&body, None);
        assert_eq!(out["lists"]["a"]["ranges"], json!([[0, 39]]));
        assert!(out["lists"]["b"].get("ranges").is_none());
        assert_eq!(out["room_subscriptions"], body["room_subscriptions"]);
        assert!(out.get("conn_id").is_none());
        let spare = synapse_body(&json!({"conn_id": "room-list"}), Some("hs.spare.x"));
        assert_eq!(spare["conn_id"], json!("hs.spare.x"));
    }
}
