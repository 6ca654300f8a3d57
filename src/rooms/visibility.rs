//! Which events of a room a user may read, following Synapse's `synapse/visibility.py`:
//! a user sees an event when they were joined at it, or when the room's history visibility
//! at that event allows it (`world_readable`; `shared` for members; `invited` from their
//! invite on; `joined` only while joined). A user who left sees nothing after leaving.
//! Non-state events of users the reader ignores (`m.ignored_user_list`) are never shown.

/// A user's view of one room's history.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    /// The user's member events, oldest first: (stream, membership).
    pub memberships: Vec<(i64, String)>,
    /// The room's history visibility changes, oldest first: (stream, value).
    pub visibilities: Vec<(i64, String)>,
    /// The users the reader ignores (`m.ignored_user_list`): their non-state events are
    /// hidden, as Synapse's `filter_events_for_client` hides them.
    pub ignored: std::sync::Arc<std::collections::HashSet<String>>,
}

/// How far a reader may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Joined now (or the room is world-readable): up to the present.
    Everything,
    /// Left, kicked or banned after being in the room: up to and including this position.
    Until(i64),
}

const VISIBILITY_ORDER: [&str; 4] = ["world_readable", "shared", "invited", "joined"];
const MEMBERSHIP_ORDER: [&str; 5] = ["join", "invite", "knock", "leave", "ban"];

fn rank(order: &[&str], value: &str, default: usize) -> usize {
    order.iter().position(|v| *v == value).unwrap_or(default)
}

impl Reader {
    /// A reader who sees every event: a server admin reading through Synapse's admin API
    /// (Synapse's `use_admin_priviledge`), as if joined since before the room began.
    pub fn everything() -> Self {
        Self {
            memberships: vec![(i64::MIN, "join".into())],
            visibilities: Vec::new(),
            ignored: Default::default(),
        }
    }

    /// Whether the user may read the room at all, and how far. Synapse lets a user read a
    /// room they are joined to, or left after being joined; others only a world-readable room.
    pub fn reach(&self) -> Option<Reach> {
        match self.memberships.last() {
            Some((_, membership)) if membership == "join" => Some(Reach::Everything),
            Some((stream, membership))
                if matches!(membership.as_str(), "leave" | "ban")
                    && self.memberships.iter().any(|(_, m)| m == "join") =>
            {
                Some(Reach::Until(*stream))
            }
            _ if self.visibility_before(i64::MAX) == "world_readable" => Some(Reach::Everything),
            _ => None,
        }
    }

    /// Reading without ever having joined (only possible in a world-readable room).
    fn peeking(&self) -> bool {
        !self.memberships.iter().any(|(_, m)| m == "join")
    }

    fn membership_before(&self, stream: i64) -> Option<&str> {
        self.memberships
            .iter()
            .rev()
            .find(|(s, _)| *s < stream)
            .map(|(_, m)| m.as_str())
    }

    fn visibility_before(&self, stream: i64) -> &str {
        self.visibilities
            .iter()
            .rev()
            .find(|(s, _)| *s < stream)
            .map(|(_, v)| v.as_str())
            .unwrap_or("shared")
    }

    /// Whether the event at `stream` (of `kind`, for `state_key`, with `membership` if it is a
    /// member event) is visible to `user_id`.
    pub fn can_see(
        &self,
        user_id: &str,
        stream: i64,
        kind: &str,
        state_key: Option<&str>,
        content_value: Option<&str>,
    ) -> bool {
        if let Some(Reach::Until(end)) = self.reach()
            && stream > end
        {
            return false;
        }
        let mut visibility = self.visibility_before(stream);
        // A visibility change is judged by the more permissive of before and after.
        if kind == "m.room.history_visibility" && state_key == Some("") {
            let new = content_value.unwrap_or("shared");
            if rank(&VISIBILITY_ORDER, new, 1) < rank(&VISIBILITY_ORDER, visibility, 1) {
                visibility = new;
            }
        }
        let mut membership = self.membership_before(stream);
        // One's own member event: the "more joined" of before and after.
        if kind == "m.room.member" && state_key == Some(user_id) {
            let new = content_value.unwrap_or("leave");
            let before = membership.unwrap_or("leave");
            if new == "leave" && matches!(before, "join" | "invite") {
                return true;
            }
            membership = Some(
                if rank(&MEMBERSHIP_ORDER, new, 3) < rank(&MEMBERSHIP_ORDER, before, 3) {
                    new
                } else {
                    before
                },
            );
        }
        if membership == Some("join") {
            return true;
        }
        match visibility {
            "world_readable" => true,
            "joined" => false,
            "invited" => membership == Some("invite"),
            // shared: members (present or past) see everything before their time too, but a
            // reader who never joined (peeking into a world-readable room) does not.
            _ => !self.peeking(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(memberships: &[(i64, &str)], visibilities: &[(i64, &str)]) -> Reader {
        Reader {
            memberships: memberships
                .iter()
                .map(|(s, m)| (*s, m.to_string()))
                .collect(),
            visibilities: visibilities
                .iter()
                .map(|(s, v)| (*s, v.to_string()))
                .collect(),
            ignored: Default::default(),
        }
    }

    #[test]
    fn reach_depends_on_membership() {
        assert_eq!(reader(&[(5, "join")], &[]).reach(), Some(Reach::Everything));
        assert_eq!(
            reader(&[(5, "join"), (9, "leave")], &[]).reach(),
            Some(Reach::Until(9))
        );
        assert_eq!(reader(&[(5, "invite")], &[]).reach(), None);
        assert_eq!(
            reader(&[(5, "invite"), (6, "leave")], &[]).reach(),
            None,
            "rejected invite"
        );
        assert_eq!(reader(&[], &[]).reach(), None);
        assert_eq!(
            reader(&[], &[(2, "world_readable")]).reach(),
            Some(Reach::Everything)
        );
    }

    #[test]
    fn visibility_rules() {
        // Joined at 10 in a room whose visibility became `joined` at 3.
        let joined_only = reader(&[(10, "join")], &[(3, "joined")]);
        assert!(!joined_only.can_see("@u:hs", 5, "m.room.message", None, None));
        assert!(joined_only.can_see("@u:hs", 10, "m.room.member", Some("@u:hs"), Some("join")));
        assert!(joined_only.can_see("@u:hs", 11, "m.room.message", None, None));

        let shared = reader(&[(10, "join")], &[(3, "shared")]);
        assert!(shared.can_see("@u:hs", 5, "m.room.message", None, None));

        let invited = reader(&[(8, "invite"), (10, "join")], &[(3, "invited")]);
        assert!(!invited.can_see("@u:hs", 5, "m.room.message", None, None));
        assert!(invited.can_see("@u:hs", 9, "m.room.message", None, None));

        // A room that became world-readable: outsiders see from then on, not the shared past.
        let peeker = reader(&[], &[(3, "world_readable")]);
        assert!(!peeker.can_see("@u:hs", 2, "m.room.message", None, None));
        assert!(peeker.can_see(
            "@u:hs",
            3,
            "m.room.history_visibility",
            Some(""),
            Some("world_readable")
        ));
        assert!(peeker.can_see("@u:hs", 4, "m.room.message", None, None));

        let left = reader(&[(2, "join"), (6, "leave")], &[]);
        assert!(left.can_see("@u:hs", 4, "m.room.message", None, None));
        assert!(left.can_see("@u:hs", 6, "m.room.member", Some("@u:hs"), Some("leave")));
        assert!(!left.can_see("@u:hs", 7, "m.room.message", None, None));
    }

    #[test]
    fn the_admin_reader_sees_everything() {
        let mut admin = Reader::everything();
        admin.visibilities = vec![(3, "joined".into()), (8, "invited".into())];
        assert_eq!(admin.reach(), Some(Reach::Everything));
        for stream in [1, 3, 5, 8, 100] {
            assert!(admin.can_see("@admin:hs", stream, "m.room.message", None, None));
            assert!(admin.can_see(
                "@admin:hs",
                stream,
                "m.room.member",
                Some("@admin:hs"),
                Some("ban")
            ));
            assert!(admin.can_see(
                "@admin:hs",
                stream,
                "m.room.history_visibility",
                Some(""),
                Some("joined")
            ));
        }
    }
}
