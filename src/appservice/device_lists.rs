//! MSC3202 device lists for local rooms: which device-list changes an appservice that opted in
//! (`org.matrix.msc3202: true`) gets in hungryserv's transactions.
//!
//! A change of user P's devices ([`crate::devices`], migration 0021) goes to the appservice if
//! P is its bot or in its user namespaces, or if P is joined to a local room the appservice is
//! interested in ([`Interest::wants_room`]: a member in its namespaces, or the room named by
//! its room or alias namespaces). These are Synapse's rules
//! (`ApplicationServicesHandler._is_appservice_interested_in_device_lists_of_user`) applied to
//! the rooms Synapse does not know; Synapse's own changes arrive through relay mode and are
//! united with these ([`super::relay`]).
//!
//! `left` stays empty, as in Synapse (which never computes it for appservices): telling a
//! bridge to stop tracking someone it still shares a Synapse room with would break its
//! encryption, and hungryserv cannot ask Synapse about an appservice's mutual rooms.

use sqlx::PgConnection;

use super::interest::Interest;
use crate::store::{self, StoreError};

/// Device changes read at once for one transaction.
const CHUNK: i64 = 1_000;

/// The users whose device-list changes in `(after, upto]` the appservice gets, in the order
/// first changed, and the position the read went up to (below `upto` when the chunk was full:
/// the rest goes in the next transaction).
pub async fn changed(
    conn: &mut PgConnection,
    interest: &mut Interest,
    after: i64,
    upto: i64,
) -> Result<(Vec<String>, i64), StoreError> {
    let mut changes = store::devices::changes_between(conn, after, upto, CHUNK).await?;
    let mut last = upto;
    if changes.len() == usize::try_from(CHUNK).unwrap_or(usize::MAX)
        && let Some(cut) = changes.last().map(|c| c.position)
    {
        // The chunk may end inside a position: leave that position for the next one.
        changes.retain(|c| c.position < cut);
        last = cut - 1;
    }
    let mut users: Vec<String> = Vec::new();
    for change in changes {
        if users.contains(&change.user_id) {
            continue;
        }
        if interest.claims_user(&change.user_id)
            || shares_a_room(conn, interest, &change.user_id).await?
        {
            users.push(change.user_id);
        }
    }
    Ok((users, last))
}

async fn shares_a_room(
    conn: &mut PgConnection,
    interest: &mut Interest,
    user_id: &str,
) -> Result<bool, StoreError> {
    for room_id in store::devices::joined_rooms(conn, user_id).await? {
        if interest.wants_room(conn, &room_id).await? {
            return Ok(true);
        }
    }
    Ok(false)
}
