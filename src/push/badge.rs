//! Badge updates: when a user's read receipt in a local room moves, their pushers get a push
//! with only the new badge (`counts.unread`), as Synapse sends one after a receipt in its own
//! rooms, so a phone's badge goes down when the user reads elsewhere. Like Synapse, a badge is
//! sent only when it differs from the last one pushed to that user, by a notification or a
//! badge update ([`Push::badge_pushed`], in memory: after a restart the next one is sent in any
//! case). At most once, like the other pushes.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;

use super::Push;
use super::gateway::GatewayClient;
use super::task::{Payload, send};
use crate::notify::Notifier;
use crate::store::{self, StoreError};

/// Pause after a store error.
const PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Follows the room data stream from its position at start and sends badge updates; runs
/// until every notifier is dropped.
pub async fn run(db: PgPool, notifier: Notifier, client: GatewayClient, push: Arc<Push>) {
    let mut wake = notifier.subscribe_side();
    let mut position = notifier.side_current().room_data;
    let mut deliveries = JoinSet::new();
    while wake.changed().await.is_ok() {
        let now = wake.borrow_and_update().room_data;
        if now <= position {
            continue;
        }
        while deliveries.try_join_next().is_some() {}
        match updates(&db, &push, position, now).await {
            Ok(updates) => {
                position = now;
                for (pusher, badge) in updates {
                    let (client, db, push) = (client.clone(), db.clone(), push.clone());
                    deliveries.spawn(send(client, db, push, Payload::Badge(badge), pusher));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "badge updates paused after a store error");
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
}

/// The badge pushes for the receipts committed in `(after, upto]`: each pusher of each reader
/// whose badge changed, with the badge.
async fn updates(
    db: &PgPool,
    push: &Push,
    after: i64,
    upto: i64,
) -> Result<Vec<(store::push::StoredPusher, i64)>, StoreError> {
    let mut conn = db.acquire().await?;
    let readers = store::push::readers_with_pushers(&mut conn, after, upto).await?;
    if readers.is_empty() {
        return Ok(Vec::new());
    }
    let mut changed = Vec::new();
    for user in readers {
        let badge = store::push::badge(&mut conn, &user).await?;
        if push.badge_pushed(&user, badge) {
            changed.push((user, badge));
        }
    }
    let users: Vec<String> = changed.iter().map(|(user, _)| user.clone()).collect();
    let mut pushers = store::push::pushers_of(&mut conn, &users).await?;
    Ok(changed
        .into_iter()
        .flat_map(|(user, badge)| {
            pushers
                .remove(&user)
                .unwrap_or_default()
                .into_iter()
                .map(move |pusher| (pusher, badge))
        })
        .collect())
}
