-- MSC3202 device lists in appservice transactions (src/appservice/pusher.rs): an appservice
-- whose registration says `org.matrix.msc3202: true` gets, in the transactions hungryserv
-- sends, the users whose devices changed (the device-change stream of 0021) whom it cares
-- about: its own users, and users who share a local room it is interested in. Synapse cannot
-- tell it about the latter, since it does not know local rooms.
--
-- Each appservice has a device-change cursor next to its event cursor; a stored transaction
-- records how far its device lists go, and the acknowledgement moves the cursors in one
-- database transaction (at least once, like events: a change is never lost across a restart,
-- and an extra one costs the bridge a key query).
-- NULL: the appservice has not opted in (yet); it starts from the position current when it
-- first does.
ALTER TABLE appservice_cursors ADD COLUMN devices BIGINT;
ALTER TABLE appservice_transactions ADD COLUMN last_devices BIGINT;
