-- Transaction IDs are kept for a day (src/rooms/txn_ids.rs), as Synapse keeps its own
-- (`_cleanup_old_transaction_ids` in synapse/storage/databases/main/events_worker.py deletes
-- mappings older than 24 hours, every 5 minutes). Before, every send added a row forever:
-- the bench database held 4.3 million rows, 1.9 GB with the primary key. The pruner finds the
-- old rows through this index; new rows go to its right edge.
CREATE INDEX transaction_ids_created ON transaction_ids (created_at);
