-- A user's membership rows by position (src/store/rooms.rs).
--
-- An incremental sync finds the rooms where the user's membership changed since its token
-- (`stream > since`) and a waiting sync checks whether the user's room list moved
-- (`max(stream)`), both on every wake-up. With only `memberships_user (user_id, membership)`
-- each read walks every room of the user (10,000 index entries and heap rows for a heavy
-- bridge user); this index answers both with a short range scan.
CREATE INDEX memberships_user_stream ON memberships (user_id, stream);
