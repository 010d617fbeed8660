-- 0006: two indexes a tap paid for and nothing used (terminal/src/journal.rs).
-- Never edit this file once landed: add 0007.
--
-- Every index a row is in costs each commit that changes it one more page in
-- the WAL (written, checksummed, fsync'd): a tap's intent INSERT and its
-- completion UPDATE each touched card_transaction_pending_upload (its WHERE
-- names `state`), and the INSERT card_transaction_by_card_time.
--
-- card_transaction_pending_upload (id) WHERE uploaded_unix_ms IS NULL AND
-- state <> 'voided': SQLite never chose it. The upload queries ask for
-- `state = 'completed' AND uploaded_unix_ms IS NULL` (or a grey record's
-- terms), which SQLite does not see as implying `state <> 'voided'`, so a
-- partial index with that WHERE cannot serve them (EXPLAIN QUERY PLAN: a scan
-- of the table in id order, with or without it).
DROP INDEX card_transaction_pending_upload;
-- card_transaction_by_card_time (card_serial, at_unix_seconds): only the
-- per-card reads for tests and the operator used it (the validator's dedup
-- window is kept in memory); they now name `state <> 'voided'` and read the
-- card's live rows through card_transaction_once (card_serial, offline_counter).
DROP INDEX card_transaction_by_card_time;
