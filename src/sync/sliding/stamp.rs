//! `bump_stamp`s of local and Synapse rooms on one scale.
//!
//! Synapse's `bump_stamp` is a position in its event stream, a local room's would be one in
//! ours: two counters that cannot be compared. Clients keep a room's stamp until the room is
//! sent again, and matrix-rust-sdk sorts its room list by it where it has no latest event. So
//! every room entry of a merged answer, Synapse's too, gets a stamp on the connection's own
//! scale, which replaces Synapse's:
//!
//! `stamp = key × SLOTS + slot`, `slot` in `0..SLOTS`,
//!
//! `key` being the room's merge key ([`super::merge::merged_order`]): the `origin_server_ts`
//! (ms) of the event the room is ordered by, capped so that it never exceeds the key of the
//! room before it in the merged order. `slot` separates rooms whose keys are equal.
//!
//! What holds, per connection:
//!
//! 1. **Ordered like the list.** Within an answer, stamps strictly decrease along the merged
//!    order of each list (a room in several lists takes its lowest key there). Between
//!    answers, a room's key changes only when it has a newer event — and then it is sent
//!    again, with its new stamp — so the stamps a client keeps from earlier answers compare
//!    with new ones as the rooms' recency does (keys are wall-clock milliseconds; rooms whose
//!    keys are equal are ordered within one answer, not across answers).
//! 2. **Unique.** No two rooms of the connection hold the same stamp, unless more than
//!    `SLOTS` rooms share one millisecond.
//! 3. **Stable.** A room sent again with the same key keeps the stamp it had (a room whose
//!    only news is, say, a state change or a receipt does not move).
//!
//! A room entry without a key (a subscribed Synapse room never seen with a timeline) keeps
//! the stamp it was last given, or goes without one — never a stamp off the scale.

use std::collections::{HashMap, HashSet};

/// Slots per millisecond.
pub const SLOTS: i64 = 1000;
/// The largest key whose stamps stay below 2^53 (JSON's safe integers; ruma's `UInt`).
const MAX_KEY: i64 = ((1 << 53) - 1) / SLOTS - 1;

/// Stamps the room entries of an answer. `rooms` holds each room with its key, newest first
/// in the merged order (keys non-increasing); `given` is the connection's stamps so far and
/// is updated. Returns the stamps in the order of `rooms`.
pub fn stamp(rooms: &[(&str, i64)], given: &mut HashMap<String, i64>) -> Vec<i64> {
    let sending: HashSet<&str> = rooms.iter().map(|(room, _)| *room).collect();
    // Stamps that rooms not sent now keep on the client.
    let mut taken: HashSet<i64> = given
        .iter()
        .filter(|(room, _)| !sending.contains(room.as_str()))
        .map(|(_, stamp)| *stamp)
        .collect();
    let mut out = Vec::with_capacity(rooms.len());
    let mut before: Option<i64> = None;
    for (room, key) in rooms {
        let base = (*key).clamp(0, MAX_KEY) * SLOTS;
        let top = base + SLOTS - 1;
        // Below the stamp of the room before it in this answer.
        let ceiling = before.map_or(top, |b| top.min(b - 1)).max(base);
        let kept = given
            .get(*room)
            .copied()
            .filter(|s| (base..=ceiling).contains(s) && !taken.contains(s));
        let stamp = kept.unwrap_or_else(|| {
            let mut s = ceiling;
            while s > base && taken.contains(&s) {
                s -= 1;
            }
            s
        });
        taken.insert(stamp);
        given.insert((*room).to_owned(), stamp);
        out.push(stamp);
        before = Some(stamp);
    }
    out
}

/// The order rooms are stamped in: by key, newest first, then by the position a list gave
/// them (`rank`, smaller first).
pub fn order(mut rooms: Vec<(&str, i64, usize)>) -> Vec<(&str, i64)> {
    rooms.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(b.0)));
    rooms
        .into_iter()
        .map(|(room, key, _)| (room, key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_strictly_decreasing(stamps: &[i64]) -> bool {
        stamps.windows(2).all(|w| w[0] > w[1])
    }

    #[test]
    fn stamps_follow_the_order_and_are_unique() {
        let mut given = HashMap::new();
        // Two rooms in the same millisecond, ordered by the list.
        let rooms = [("!a", 500), ("!b", 400), ("!c", 400), ("!d", 7)];
        let stamps = stamp(&rooms, &mut given);
        assert!(is_strictly_decreasing(&stamps), "{stamps:?}");
        assert_eq!(stamps[0] / SLOTS, 500);
        assert_eq!(stamps[3] / SLOTS, 7);
        assert_eq!(given.len(), 4);
    }

    #[test]
    fn a_room_with_the_same_key_keeps_its_stamp() {
        let mut given = HashMap::new();
        let first = stamp(&[("!a", 500), ("!b", 400)], &mut given);
        // !b is sent again without a newer event (a state change): same stamp.
        let again = stamp(&[("!b", 400)], &mut given);
        assert_eq!(again, [first[1]]);
        // !b gets a newer event: it moves above !a, whose kept stamp stands.
        let moved = stamp(&[("!b", 900)], &mut given);
        assert!(moved[0] > first[0]);
        assert_eq!(given["!a"], first[0]);
    }

    #[test]
    fn stamps_given_in_different_answers_stay_unique_and_ordered() {
        let mut given = HashMap::new();
        // The first window holds !a; later windows reach older rooms, one in !a's millisecond.
        let a = stamp(&[("!a", 400)], &mut given)[0];
        let later = stamp(&[("!b", 400), ("!c", 300)], &mut given);
        assert_ne!(later[0], a);
        assert!(later[0] > later[1]);
        let mut all: Vec<i64> = given.values().copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn a_room_moving_within_a_millisecond_is_restamped_below_its_predecessor() {
        let mut given = HashMap::new();
        stamp(&[("!b", 400), ("!a", 400)], &mut given);
        // Now !a comes first: both are sent, and stamps follow the new order.
        let stamps = stamp(&[("!a", 400), ("!b", 400)], &mut given);
        assert!(is_strictly_decreasing(&stamps), "{stamps:?}");
    }

    #[test]
    fn keys_are_clamped_to_safe_integers() {
        let mut given = HashMap::new();
        let stamps = stamp(&[("!future", i64::MAX), ("!past", -5)], &mut given);
        assert!(stamps[0] < 1 << 53);
        assert_eq!(stamps[1], SLOTS - 1);
    }

    #[test]
    fn order_sorts_by_key_then_rank() {
        let rooms = vec![("!x", 5, 2), ("!y", 9, 7), ("!z", 5, 1)];
        assert_eq!(order(rooms), [("!y", 9), ("!z", 5), ("!x", 5)]);
    }
}
