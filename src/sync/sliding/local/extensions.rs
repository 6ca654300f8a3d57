//! Receipts, typing and room account data of the local window rooms, for the extensions of
//! the same names (only the rooms an extension covers: Synapse's
//! `find_relevant_room_ids_for_extension`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sqlx::PgConnection;

use super::{LocalInput, LocalPart, Wanted};
use crate::rooms::RoomError;
use crate::rooms::room_data::receipt_content;
use crate::rooms::service::Rooms;
use crate::store;
use crate::sync::sliding::request::RoomExtension;

/// Receipts, typing and room account data of the window rooms the extensions cover.
pub(super) async fn extensions(
    rooms: &Rooms,
    conn: &mut PgConnection,
    input: &LocalInput<'_>,
    wanted: &BTreeMap<&str, Wanted<'_>>,
    part: &mut LocalPart,
) -> Result<(), RoomError> {
    let Some(ext) = input.body.extensions.as_ref() else {
        return Ok(());
    };
    let user = input.requester.user_id.as_str();
    let prev_side = input.prev.map(|p| p.side).unwrap_or_default();
    // A room the client had before this answer continues from the connection's position;
    // one new to it gets everything.
    let had = |room: &str| {
        input.prev.and_then(|p| p.sent.get(room)).is_some_and(|_| {
            part.entries
                .get(room)
                .is_none_or(|e| e.get("initial").is_none())
        })
    };
    let covered = |e: Option<&RoomExtension>| -> Vec<(String, bool)> {
        let Some(e) = e.filter(|e| e.enabled == Some(true)) else {
            return Vec::new();
        };
        wanted
            .values()
            .filter(|w| w.room.membership == "join")
            .filter(|w| e.covers(&w.room.room_id, &w.lists, w.subscribed))
            .map(|w| (w.room.room_id.clone(), had(&w.room.room_id)))
            .collect()
    };
    let windows = |rooms: &[(String, bool)]| -> Vec<(String, i64)> {
        rooms
            .iter()
            .map(|(room, had)| (room.clone(), if *had { prev_side.room_data } else { 0 }))
            .filter(|(_, after)| *after < input.side_upto.room_data)
            .collect()
    };
    let receipt_rooms = covered(ext.receipts.as_ref());
    let receipts =
        store::receipts::of_rooms(conn, &windows(&receipt_rooms), input.side_upto.room_data)
            .await?;
    for (room, list) in receipts {
        let visible = list
            .iter()
            .filter(|r| r.kind != "m.read.private" || r.user_id == user);
        let content = receipt_content(visible);
        if !content.is_empty() {
            part.receipts
                .insert(room, json!({ "type": "m.receipt", "content": content }));
        }
    }
    let data_rooms = covered(ext.account_data.as_ref());
    let data = store::room_data::account_data_of_rooms(
        conn,
        user,
        &windows(&data_rooms),
        input.side_upto.room_data,
    )
    .await?;
    for (room, entries) in data {
        let events: Vec<Value> = entries
            .into_iter()
            .map(|(kind, content)| json!({ "type": kind, "content": content }))
            .collect();
        if !events.is_empty() {
            part.account_data.insert(room, Value::Array(events));
        }
    }
    for (room, had) in covered(ext.typing.as_ref()) {
        let Some((serial, users)) = rooms.typing.of_room(&room) else {
            continue;
        };
        let news = if had {
            serial > prev_side.typing
        } else {
            !users.is_empty()
        };
        if news {
            part.typing.insert(
                room,
                json!({ "type": "m.typing", "content": { "user_ids": users } }),
            );
        }
    }
    Ok(())
}
