//! `GET /notifications`: Synapse's list merged with the notifications of local rooms (those
//! the push task recorded), newest first by `ts`.
//!
//! Paging: `next_token` is an envelope `hsn1.{local}.{synapse}` — the local stream position
//! to continue below, and Synapse's own `next_token` (`-` once Synapse's list is exhausted).
//! A page holds all of Synapse's page plus the local notifications at least as new as its
//! oldest entry (all of them once Synapse is exhausted), so nothing is skipped between pages;
//! such a page may hold up to twice `limit` entries.

use serde_json::{Value, json};
use sqlx::PgConnection;

use super::counts::covered;
use crate::rooms::event::{Related, Viewer, to_client};
use crate::rooms::service::now_ms;
use crate::store::{self, StoreError};

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Synapse's `from` (`None`: its first page).
    pub synapse_from: Option<String>,
    /// Synapse's list is exhausted.
    pub synapse_done: bool,
    /// Local notifications below this stream position.
    pub local_before: i64,
}

const PREFIX: &str = "hsn1.";

/// Reads a `from` parameter: our envelope, or a bare token of Synapse's (local from the top).
pub fn parse_from(from: Option<&str>) -> Cursor {
    let start = Cursor {
        synapse_from: None,
        synapse_done: false,
        local_before: i64::MAX,
    };
    let Some(from) = from.filter(|f| !f.is_empty()) else {
        return start;
    };
    let Some((local, synapse)) = from
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('.'))
    else {
        return Cursor {
            synapse_from: Some(from.to_owned()),
            ..start
        };
    };
    Cursor {
        synapse_from: (synapse != "-" && !synapse.is_empty()).then(|| synapse.to_owned()),
        synapse_done: synapse == "-",
        local_before: local.parse().unwrap_or(i64::MAX),
    }
}

/// One merged page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub notifications: Vec<Value>,
    pub next_token: Option<String>,
}

/// Merges a page of Synapse's (`synapse_next`: its `next_token`, `None` when exhausted) with
/// local notifications `(stream, notification)`, newest first; `local_more` when the local
/// list may go on beyond those given.
pub fn merge(
    synapse: Vec<Value>,
    synapse_next: Option<String>,
    local: Vec<(i64, Value)>,
    local_more: bool,
    cursor: &Cursor,
    shown: impl Fn(&Value) -> bool,
) -> Page {
    let ts = |n: &Value| n.get("ts").and_then(Value::as_i64).unwrap_or(0);
    // While Synapse has more, local entries older than its oldest wait for a later page.
    let floor = match &synapse_next {
        Some(_) => synapse.iter().map(ts).min().unwrap_or(i64::MIN),
        None => i64::MIN,
    };
    let local_total = local.len();
    let taken: Vec<(i64, Value)> = local.into_iter().filter(|(_, n)| ts(n) >= floor).collect();
    let local_left = local_more || taken.len() < local_total;
    let local_before = taken.last().map_or(cursor.local_before, |(s, _)| *s);
    let mut notifications: Vec<Value> = synapse;
    // Entries of rooms not shown (an `off` class) still move the cursor: the next page goes
    // on below them, and they are listed again once the class is on.
    notifications.extend(taken.into_iter().map(|(_, n)| n).filter(|n| shown(n)));
    // Stable: equal timestamps keep Synapse's entries first.
    notifications.sort_by_key(|n| std::cmp::Reverse(ts(n)));
    let next_token = (synapse_next.is_some() || local_left).then(|| {
        let synapse = synapse_next.unwrap_or_else(|| "-".to_owned());
        format!("{PREFIX}{local_before}.{synapse}")
    });
    Page {
        notifications,
        next_token,
    }
}

/// The user's local notifications below `before`, newest first, in `/notifications` form.
pub async fn local_page(
    conn: &mut PgConnection,
    user_id: &str,
    before: i64,
    limit: i64,
    only_highlight: bool,
) -> Result<Vec<(i64, Value)>, StoreError> {
    let recorded = store::push::notifications(conn, user_id, before, limit, only_highlight).await?;
    if recorded.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = recorded.iter().map(|n| n.event_id.clone()).collect();
    let events = store::events::by_ids(conn, &ids).await?;
    let mut rooms: Vec<String> = recorded.iter().map(|n| n.room_id.clone()).collect();
    rooms.sort();
    rooms.dedup();
    let reads = store::push::read_positions(conn, user_id, &rooms).await?;
    let viewer = Viewer {
        txn_scope: None,
        now_ms: now_ms(),
    };
    Ok(recorded
        .into_iter()
        .filter_map(|n| {
            let event = events
                .iter()
                .find(|e| e.event.event_id.as_str() == n.event_id)?;
            let related = Related {
                prev: event.prev.clone(),
                redacted_because: None,
            };
            let read = covered(&reads, &n.room_id, &n.thread_id, n.stream);
            let value = json!({
                "actions": n.actions,
                "event": to_client(&event.event, &related, viewer),
                "profile_tag": null,
                "read": read,
                "room_id": n.room_id,
                "ts": n.ts,
            });
            Some((n.stream, value))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(ts: i64) -> Value {
        json!({ "ts": ts })
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_from(None).local_before, i64::MAX);
        let bare = parse_from(Some("123"));
        assert_eq!(bare.synapse_from.as_deref(), Some("123"));
        assert_eq!(bare.local_before, i64::MAX);
        let ours = parse_from(Some("hsn1.40.77"));
        assert_eq!(ours.synapse_from.as_deref(), Some("77"));
        assert_eq!(ours.local_before, 40);
        let done = parse_from(Some("hsn1.40.-"));
        assert!(done.synapse_done && done.synapse_from.is_none());
    }

    #[test]
    fn local_entries_older_than_synapses_page_wait_for_the_next() {
        let start = parse_from(None);
        let page = merge(
            vec![n(50), n(30)],
            Some("9".into()),
            vec![(8, n(60)), (7, n(40)), (6, n(10))],
            false,
            &start,
            |_| true,
        );
        let ts: Vec<i64> = page
            .notifications
            .iter()
            .map(|v| v["ts"].as_i64().unwrap())
            .collect();
        assert_eq!(ts, [60, 50, 40, 30]);
        let next = parse_from(page.next_token.as_deref());
        assert_eq!(next.synapse_from.as_deref(), Some("9"));
        assert_eq!(
            next.local_before, 7,
            "the entry at 10 comes on the next page"
        );

        let last = merge(vec![], None, vec![(6, n(10))], false, &next, |_| true);
        assert_eq!(last.notifications, vec![n(10)]);
        assert_eq!(last.next_token, None, "both lists are exhausted");
    }

    #[test]
    fn hidden_entries_are_left_out_but_move_the_cursor() {
        let start = parse_from(None);
        let page = merge(
            vec![],
            None,
            vec![(8, n(60)), (7, n(40))],
            true,
            &start,
            |v| v["ts"] != 40,
        );
        assert_eq!(page.notifications, vec![n(60)]);
        assert_eq!(parse_from(page.next_token.as_deref()).local_before, 7);
    }
}
