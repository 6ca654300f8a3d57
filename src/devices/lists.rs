//! `changed` and `left` for one viewer between two positions, and their merge with Synapse's
//! (the rules are in the [module doc](super)). Used by `/sync` (`crate::sync`), `/keys/changes`,
//! and meant for sliding sync's `e2ee` extension: [`DeviceLists::between`] answers
//! "changed/left for user V between positions A and B". Positions come in as [`At`]; turning
//! a sync token into one is the token's business (`crate::sync::token`).

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Value, json};

use super::DeviceLists;
use crate::store::{self, StoreError};

/// At most this many users are checked against Synapse's mutual rooms for one answer; the rest
/// stay out of `left` (tracked a little longer: harmless).
const MAX_LEFT_CHECKS: usize = 50;

/// Mutual-rooms checks asked of Synapse at once.
const CONCURRENT_LEFT_CHECKS: usize = 8;

/// The longest the checks of one answer may take: a hung Synapse must not hold a sync that
/// local rooms answer (degraded mode); past it nobody is `left`.
const LEFT_CHECK_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// A position in the two streams device lists are read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct At {
    /// The local event stream (member events).
    pub events: i64,
    /// The device-change stream.
    pub devices: i64,
}

/// Who asks, for the Synapse side of `left`.
pub struct Viewer<'a> {
    /// The viewer's user ID.
    pub user_id: &'a str,
    /// Their access token, to ask Synapse for mutual rooms; `None` for an appservice
    /// (Synapse's mutual rooms take `user_id` for the other user, so a masquerading
    /// appservice cannot ask).
    pub token: Option<&'a str>,
}

/// The local side of one viewer's device lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LocalLists {
    pub changed: BTreeSet<String>,
    /// Users the viewer shares no room with any more (checked on both sides).
    pub left: BTreeSet<String>,
    /// Everyone the viewer shares a joined local room with now: never `left`.
    pub co_members: HashSet<String>,
}

impl DeviceLists {
    /// The local `changed` and `left` for `viewer` between `from` and `to`.
    pub async fn between(
        &self,
        viewer: &Viewer<'_>,
        from: At,
        to: At,
    ) -> Result<LocalLists, StoreError> {
        let me = viewer.user_id;
        let mut conn = self.db.acquire().await?;
        let co_members: HashSet<String> = store::devices::co_members(&mut conn, me)
            .await?
            .into_iter()
            .collect();
        let mut changed = BTreeSet::new();
        if to.devices > from.devices {
            changed.extend(
                store::devices::co_members_changed(&mut conn, me, from.devices, to.devices).await?,
            );
        }
        // Per user, whether the latest member event of the range brings them to the viewer
        // (true: fetch their keys) or takes them away (false: maybe stop tracking them).
        let mut latest: HashMap<String, bool> = HashMap::new();
        if to.events > from.events {
            let members =
                store::devices::member_changes(&mut conn, me, from.events, to.events).await?;
            let mut rooms_of_mine: Vec<(String, bool)> = Vec::new();
            for change in &members {
                let arrives = match change.membership.as_str() {
                    "join" | "invite" => true,
                    "leave" | "ban" => false,
                    _ => continue,
                };
                if change.user_id == me {
                    // Only joins and departures of the viewer move its room-mates.
                    if change.membership != "invite" {
                        rooms_of_mine.push((change.room_id.clone(), arrives));
                    }
                } else {
                    latest.insert(change.user_id.clone(), arrives);
                }
            }
            if !rooms_of_mine.is_empty() {
                let rooms: Vec<String> = rooms_of_mine.iter().map(|(r, _)| r.clone()).collect();
                let mut members_of: HashMap<String, Vec<String>> = HashMap::new();
                for (room, user) in store::devices::joined_members_of(&mut conn, &rooms).await? {
                    members_of.entry(room).or_default().push(user);
                }
                for (room, arrives) in &rooms_of_mine {
                    for user in members_of.get(room).into_iter().flatten() {
                        latest.insert(user.clone(), *arrives);
                    }
                }
            }
        }
        drop(conn);
        let mut candidates = BTreeSet::new();
        for (user, arrives) in latest {
            if arrives {
                changed.insert(user);
            } else if !co_members.contains(&user) {
                // Someone who still shares another local room stays tracked.
                candidates.insert(user);
            }
        }
        changed.remove(me);
        candidates.retain(|user| user != me && !changed.contains(user));
        let left = self.share_nothing_on_synapse(viewer, candidates).await;
        Ok(LocalLists {
            changed,
            left,
            co_members,
        })
    }

    /// The `candidates` who share no joined room with the viewer on Synapse either.
    async fn share_nothing_on_synapse(
        &self,
        viewer: &Viewer<'_>,
        candidates: BTreeSet<String>,
    ) -> BTreeSet<String> {
        let Some(token) = viewer.token else {
            return BTreeSet::new();
        };
        use futures_util::stream::{self, StreamExt};
        let checks = stream::iter(candidates.into_iter().take(MAX_LEFT_CHECKS))
            .map(|user| async move {
                let shares = self.synapse.shares_a_room(token, &user).await;
                (user, shares)
            })
            .buffer_unordered(CONCURRENT_LEFT_CHECKS)
            .collect::<Vec<_>>();
        let Ok(answers) = tokio::time::timeout(LEFT_CHECK_BUDGET, checks).await else {
            tracing::warn!("mutual rooms: Synapse too slow; not telling `left` this time");
            return BTreeSet::new();
        };
        let mut left = BTreeSet::new();
        for (user, shares) in answers {
            match shares {
                Ok(false) => {
                    left.insert(user);
                }
                Ok(true) => {}
                Err(err) => {
                    tracing::debug!(error = ?err, "mutual rooms unknown; not telling `left`");
                }
            }
        }
        left
    }
}

/// Synapse's `device_lists` (or `/keys/changes` answer) merged with the local lists:
/// `changed` is the union, `left` the union minus local co-members and minus `changed`.
pub fn merge(synapse: Option<&Value>, local: LocalLists) -> Value {
    let strings = |key: &str| -> Vec<String> {
        synapse
            .and_then(|lists| lists.get(key))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut changed = local.changed;
    changed.extend(strings("changed"));
    let mut left = local.left;
    left.extend(strings("left"));
    left.retain(|user| !local.co_members.contains(user) && !changed.contains(user));
    json!({ "changed": changed, "left": left })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(users: &[&str]) -> BTreeSet<String> {
        users.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn merges_as_a_union_and_keeps_co_members_out_of_left() {
        let synapse = json!({"changed": ["@s:x", "@both:x"], "left": ["@gone:x", "@local:x"]});
        let local = LocalLists {
            changed: set(&["@both:x", "@l:x"]),
            left: set(&["@lgone:x"]),
            co_members: set(&["@local:x", "@l:x"]).into_iter().collect(),
        };
        let merged = merge(Some(&synapse), local);
        assert_eq!(
            merged,
            json!({"changed": ["@both:x", "@l:x", "@s:x"], "left": ["@gone:x", "@lgone:x"]})
        );
    }

    #[test]
    fn never_changed_and_left_at_once() {
        let synapse = json!({"changed": [], "left": ["@p:x"]});
        let local = LocalLists {
            changed: set(&["@p:x"]),
            ..LocalLists::default()
        };
        assert_eq!(
            merge(Some(&synapse), local),
            json!({"changed": ["@p:x"], "left": []})
        );
    }

    #[test]
    fn no_synapse_answer_gives_the_local_lists() {
        let local = LocalLists {
            changed: set(&["@a:x"]),
            left: set(&["@b:x"]),
            ..LocalLists::default()
        };
        assert_eq!(
            merge(None, local),
            json!({"changed": ["@a:x"], "left": ["@b:x"]})
        );
    }
}
