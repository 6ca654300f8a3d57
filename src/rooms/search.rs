//! The local half of `POST /search`: full-text matches in the user's joined local rooms,
//! filtered and checked for visibility as Synapse's `SearchHandler` does, served in client
//! format with their context. Merging with Synapse's half is [`crate::search`]'s.
//!
//! What Synapse does, and so do we: `rank` reads the 500 best matches and keeps the first
//! `limit` the filter and the reader's visibility let through; `recent` reads `2 × limit`
//! matches at a time, newest first by `(origin_server_ts, stream)`, at most 5 times, until
//! `limit` pass. `count` is every match in the searched rooms, before filter and visibility.
//! Highlights are the words `ts_headline` marks in the results' body, name and topic.

use std::collections::{BTreeMap, HashMap};

use ruma::OwnedRoomId;
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::RoomError;
use super::read::{EventFilter, PageRequest, Token};
use super::service::Rooms;
use super::visibility::Reader;
use crate::auth::requester::Requester;
use crate::store::{self, events::EventWithPrev};

/// The most matches `rank` reads (Synapse's `LIMIT 500`).
const RANK_CANDIDATES: i64 = 500;
/// How many times `recent` reads another batch of matches (Synapse's loop).
const RECENT_ROUNDS: usize = 5;

/// How to order results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Rank,
    Recent,
}

/// `event_context` of a search request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextRequest {
    pub before_limit: i64,
    pub after_limit: i64,
    pub include_profile: bool,
}

/// What to search for in which local rooms.
#[derive(Debug, Clone)]
pub struct LocalQuery<'a> {
    /// The rooms searched (the caller has kept the user's joined rooms the filter allows).
    pub rooms: Vec<String>,
    pub term: &'a str,
    /// The event types of the requested keys ([`store::search::types_of_keys`]).
    pub types: Vec<String>,
    pub filter: &'a EventFilter,
    pub limit: usize,
    pub order: Order,
    /// `recent` only: start strictly before this `(origin_server_ts, stream)`.
    pub before: Option<(i64, i64)>,
    pub context: Option<ContextRequest>,
    pub include_state: bool,
    /// Only `count`: the local side's pages are done, but `count` still covers it.
    pub count_only: bool,
}

/// One local result.
#[derive(Debug, Clone)]
pub struct LocalHit {
    pub rank: f64,
    /// `(origin_server_ts, stream)`: the `recent` order and paging position.
    pub position: (i64, i64),
    pub room_id: String,
    pub sender: String,
    pub event_id: String,
    /// The event in client format, with bundled aggregations.
    pub event: Value,
    /// `context` of the result (`{}` when not asked for).
    pub context: Value,
}

/// The local half of an answer.
#[derive(Debug, Clone, Default)]
pub struct LocalResults {
    pub hits: Vec<LocalHit>,
    pub count: i64,
    pub highlights: Vec<String>,
    /// `recent`: nothing is left after the last hit.
    pub exhausted: bool,
    /// `include_state`: the current state of each room with a result.
    pub state: BTreeMap<String, Vec<Value>>,
}

/// Postgres' `real` rank as the JSON number Synapse writes for it (psycopg2 reads a `real`
/// through its shortest decimal text, so 0.1 is 0.1, not 0.10000000149011612).
fn rank_value(rank: f32) -> f64 {
    rank.to_string().parse().unwrap_or(f64::from(rank))
}

/// The `StartSel`/`StopSel` pair for a text: `<` and `>`, longer until neither occurs in it.
fn selectors(text: &str) -> (String, String) {
    let mut start = String::from("<");
    let mut stop = String::from(">");
    while text.contains(start.as_str()) {
        start.push('<');
    }
    while text.contains(stop.as_str()) {
        stop.push('>');
    }
    (start, stop)
}

/// The words between the selectors of a headline, lowercased.
fn marked_words(headline: &str, start: &str, stop: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = headline;
    while let Some(begin) = rest.find(start) {
        let after = &rest[begin + start.len()..];
        let Some(end) = after.find(stop) else { break };
        words.push(after[..end].to_lowercase());
        rest = &after[end + stop.len()..];
    }
    words
}

/// What highlights are computed from: the event's `body`, `name` and `topic`, joined.
fn searchable_text(content: &serde_json::Map<String, Value>) -> Option<String> {
    let values: Vec<&str> = ["body", "name", "topic"]
        .iter()
        .filter_map(|key| content.get(*key).and_then(Value::as_str))
        .filter(|v| !v.is_empty())
        .collect();
    (!values.is_empty()).then(|| values.join(" "))
}

/// `contains_url` of a filter: whether `content.url` is a string, as Synapse checks it.
pub fn has_url(content: &serde_json::Map<String, Value>) -> bool {
    content.get("url").is_some_and(Value::is_string)
}

impl Rooms {
    /// The local half of `/search`.
    pub async fn search(
        &self,
        requester: &Requester,
        query: LocalQuery<'_>,
    ) -> Result<LocalResults, RoomError> {
        if query.rooms.is_empty() || query.types.is_empty() || query.limit == 0 {
            return Ok(LocalResults {
                exhausted: true,
                ..LocalResults::default()
            });
        }
        let mut conn = self.conn().await?;
        let count = store::search::count(&mut conn, &query.rooms, query.term, &query.types).await?;
        if query.count_only {
            return Ok(LocalResults {
                count,
                exhausted: true,
                ..LocalResults::default()
            });
        }
        // Synapse takes its highlights from every match it read, before the filter and the
        // visibility check.
        let mut read_texts: Vec<String> = Vec::new();
        let mut readers: HashMap<String, Reader> = HashMap::new();
        let mut found: Vec<(store::search::Hit, EventWithPrev)> = Vec::new();
        let mut exhausted = true;
        match query.order {
            Order::Rank => {
                let hits = store::search::by_rank(
                    &mut conn,
                    &query.rooms,
                    query.term,
                    &query.types,
                    RANK_CANDIDATES,
                )
                .await?;
                found = self
                    .admit(
                        &mut conn,
                        requester,
                        &mut readers,
                        query.filter,
                        hits,
                        &mut read_texts,
                    )
                    .await?;
                found.truncate(query.limit);
            }
            Order::Recent => {
                let batch = i64::try_from(query.limit * 2).unwrap_or(i64::MAX);
                let mut before = query.before;
                for _ in 0..RECENT_ROUNDS {
                    let hits = store::search::by_recent(
                        &mut conn,
                        &query.rooms,
                        query.term,
                        &query.types,
                        before,
                        batch,
                    )
                    .await?;
                    let short = i64::try_from(hits.len()).unwrap_or(i64::MAX) < batch;
                    before = hits.last().map(|h| (h.origin_server_ts, h.stream));
                    let admitted = self
                        .admit(
                            &mut conn,
                            requester,
                            &mut readers,
                            query.filter,
                            hits,
                            &mut read_texts,
                        )
                        .await?;
                    found.extend(admitted);
                    exhausted = short && found.len() <= query.limit;
                    if found.len() >= query.limit || short {
                        break;
                    }
                }
                if found.len() > query.limit {
                    found.truncate(query.limit);
                    exhausted = false;
                }
            }
        }

        let highlights = self.highlights(&mut conn, query.term, read_texts).await?;

        // Serve each room's results together (one aggregation query per room).
        let mut served: HashMap<String, Value> = HashMap::new();
        let mut by_room: BTreeMap<String, Vec<EventWithPrev>> = BTreeMap::new();
        for (_, event) in &found {
            by_room
                .entry(event.event.room_id.to_string())
                .or_default()
                .push(event.clone());
        }
        for (room, events) in by_room {
            let Some(reader) = readers.get(&room) else {
                continue;
            };
            let ids: Vec<String> = events
                .iter()
                .map(|e| e.event.event_id.to_string())
                .collect();
            let values = self.serve(&mut conn, requester, reader, events).await?;
            served.extend(ids.into_iter().zip(values));
        }
        drop(conn);

        let mut hits = Vec::with_capacity(found.len());
        for (hit, event) in found {
            let Some(value) = served.remove(hit.event_id.as_str()) else {
                continue;
            };
            let context = match query.context {
                Some(request) => self.search_context(requester, &event, request).await?,
                None => json!({}),
            };
            hits.push(LocalHit {
                rank: rank_value(hit.rank),
                position: (hit.origin_server_ts, hit.stream),
                room_id: hit.room_id,
                sender: event.event.sender.to_string(),
                event_id: hit.event_id,
                event: value,
                context,
            });
        }

        let mut state = BTreeMap::new();
        if query.include_state {
            for hit in &hits {
                if state.contains_key(&hit.room_id) {
                    continue;
                }
                if let Ok(room_id) = OwnedRoomId::try_from(hit.room_id.as_str()) {
                    let events = self.state(requester, &room_id).await?;
                    state.insert(hit.room_id.clone(), events);
                }
            }
        }
        Ok(LocalResults {
            hits,
            count,
            highlights,
            exhausted,
            state,
        })
    }

    /// The hits the filter and the reader's visibility let through, in their order.
    async fn admit(
        &self,
        conn: &mut PgConnection,
        requester: &Requester,
        readers: &mut HashMap<String, Reader>,
        filter: &EventFilter,
        hits: Vec<store::search::Hit>,
        read_texts: &mut Vec<String>,
    ) -> Result<Vec<(store::search::Hit, EventWithPrev)>, RoomError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = hits.iter().map(|h| h.event_id.clone()).collect();
        let mut events: HashMap<String, EventWithPrev> = store::events::by_ids(conn, &ids)
            .await?
            .into_iter()
            .map(|e| (e.event.event_id.to_string(), e))
            .collect();
        let mut admitted = Vec::new();
        for hit in hits {
            let Some(event) = events.remove(hit.event_id.as_str()) else {
                continue;
            };
            read_texts.extend(searchable_text(&event.event.content));
            if !filter.allows(&event.event) {
                continue;
            }
            if !readers.contains_key(&hit.room_id) {
                let Ok(room_id) = OwnedRoomId::try_from(hit.room_id.as_str()) else {
                    continue;
                };
                match self.reader(conn, requester, &room_id).await {
                    Ok((reader, _)) => {
                        readers.insert(hit.room_id.clone(), reader);
                    }
                    // Not (or no longer) readable: nothing of it is shown.
                    Err(RoomError::Forbidden(_)) => continue,
                    Err(err) => return Err(err),
                }
            }
            let visible = readers
                .get(&hit.room_id)
                .is_some_and(|reader| Self::visible(reader, requester, &event.event));
            if visible {
                admitted.push((hit, event));
            }
        }
        Ok(admitted)
    }

    /// Synapse's highlights: the words `ts_headline` marks in each text read.
    async fn highlights(
        &self,
        conn: &mut PgConnection,
        term: &str,
        texts: Vec<String>,
    ) -> Result<Vec<String>, RoomError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let sels: Vec<(String, String)> = texts.iter().map(|t| selectors(t)).collect();
        let options: Vec<String> = sels
            .iter()
            .map(|(start, stop)| format!("StartSel={start},StopSel={stop},MaxFragments=50"))
            .collect();
        let headlines = store::search::headlines(conn, term, &texts, &options).await?;
        let mut words: Vec<String> = Vec::new();
        for (headline, (start, stop)) in headlines.iter().zip(&sels) {
            for word in marked_words(headline, start, stop) {
                if !words.contains(&word) {
                    words.push(word);
                }
            }
        }
        Ok(words)
    }

    /// A result's `context`: the events around it (unfiltered, as Synapse's
    /// `get_events_around`), the positions around them, and with `include_profile` the
    /// senders' profiles at the last event.
    async fn search_context(
        &self,
        requester: &Requester,
        event: &EventWithPrev,
        request: ContextRequest,
    ) -> Result<Value, RoomError> {
        let room_id = event.event.room_id.clone();
        let topo = event.event.topo;
        let unfiltered = EventFilter::default();
        let read = |from: i64, forwards: bool, limit: i64| PageRequest {
            from: Some(Token(from)),
            to: None,
            forwards,
            limit,
        };
        let before = if request.before_limit > 0 {
            Some(
                self.messages(
                    requester,
                    &room_id,
                    read(topo - 1, false, request.before_limit),
                    &unfiltered,
                )
                .await?,
            )
        } else {
            None
        };
        let after = if request.after_limit > 0 {
            Some(
                self.messages(
                    requester,
                    &room_id,
                    read(topo, true, request.after_limit),
                    &unfiltered,
                )
                .await?,
            )
        } else {
            None
        };
        let start = before
            .as_ref()
            .and_then(|page| page.end)
            .unwrap_or(Token(topo - 1));
        let end = after
            .as_ref()
            .and_then(|page| page.end)
            .unwrap_or(Token(topo));
        let last_stream = after
            .as_ref()
            .and_then(|page| page.last_stream)
            .unwrap_or(event.event.stream);
        let events_before = before.map(|page| page.chunk).unwrap_or_default();
        let events_after = after.map(|page| page.chunk).unwrap_or_default();
        let mut context = json!({
            "events_before": events_before,
            "events_after": events_after,
            "start": start.to_string(),
            "end": end.to_string(),
        });
        if request.include_profile {
            let senders: Vec<&str> = events_before
                .iter()
                .chain(&events_after)
                .filter_map(|e| e.get("sender").and_then(Value::as_str))
                .chain([event.event.sender.as_str()])
                .collect();
            let mut conn = self.conn().await?;
            let state = store::events::state_at(&mut conn, room_id.as_str(), last_stream).await?;
            let mut profiles = serde_json::Map::new();
            for member in state {
                let member = member.event;
                if member.kind != "m.room.member" {
                    continue;
                }
                let Some(user) = member.state_key else {
                    continue;
                };
                if !senders.contains(&user.as_str()) {
                    continue;
                }
                profiles.insert(
                    user,
                    json!({
                        "displayname": member.content.get("displayname").cloned().unwrap_or(Value::Null),
                        "avatar_url": member.content.get("avatar_url").cloned().unwrap_or(Value::Null),
                    }),
                );
            }
            context["profile_info"] = Value::Object(profiles);
        }
        Ok(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_read_as_synapse_writes_them() {
        assert_eq!(rank_value(0.1), 0.1);
        assert_eq!(rank_value(0.0), 0.0);
        assert_eq!(rank_value(1.5), 1.5);
    }

    #[test]
    fn highlights_are_picked_out_of_headlines() {
        let (start, stop) = selectors("a < b");
        assert_eq!((start.as_str(), stop.as_str()), ("<<", ">"));
        assert_eq!(
            marked_words("<Hello> there, <worlds>!", "<", ">"),
            vec!["hello".to_owned(), "worlds".to_owned()]
        );
        assert_eq!(marked_words("<<x>> <y", "<<", ">>"), vec!["x".to_owned()]);
        assert!(marked_words("none here", "<", ">").is_empty());
    }

    #[test]
    fn searchable_text_joins_body_name_and_topic() {
        let content = json!({"body": "hi", "name": "room", "topic": 5})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(searchable_text(&content).as_deref(), Some("hi room"));
        assert_eq!(searchable_text(&serde_json::Map::new()), None);
    }
}
