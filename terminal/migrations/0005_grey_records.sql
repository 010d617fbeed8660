-- 0005: grey records (灰记录) — purchase intents flagged for clearing, uploaded
-- as records of kind "unresolved" (terminal/src/journal.rs, terminal/src/upload.rs).
-- Never edit this file once landed: add 0006.
--
-- A flagged intent's grey record is sealed into a batch beside completed rows
-- and marked taken on clearing's acknowledgement in columns of its own, apart
-- from upload_batch / uploaded_unix_ms (the completed record's): the row stays
-- an intent, and if the card settles it later its completed record goes to
-- clearing in a later batch, while a sealed grey record is sent again
-- unchanged until acknowledged even if the card settled the intent meanwhile.
ALTER TABLE card_transaction ADD COLUMN grey_batch TEXT;
ALTER TABLE card_transaction ADD COLUMN grey_uploaded_unix_ms INTEGER CHECK (grey_uploaded_unix_ms IS NULL OR grey_batch IS NOT NULL);
CREATE INDEX card_transaction_grey_sealed
    ON card_transaction (grey_batch) WHERE grey_batch IS NOT NULL AND grey_uploaded_unix_ms IS NULL;
-- Flagged intents whose grey record is not sealed yet.
CREATE INDEX card_transaction_grey_waiting
    ON card_transaction (id) WHERE state = 'intent' AND flagged_unix_ms IS NOT NULL AND grey_batch IS NULL;
