-- 0002: what clearing's batch format needs and how uploads are sealed
-- (terminal/src/upload.rs). Never edit this file once landed: add 0003.
--
-- The card's type code (PublicInformation), sent in each batch record. Rows
-- written before this migration have none (NULL, uploaded as 0).
ALTER TABLE card_transaction ADD COLUMN card_type INTEGER CHECK (card_type IS NULL OR card_type BETWEEN 0 AND 255);
-- What the purchase paid for (a utility bill's reference at a kiosk); NULL on a bus.
ALTER TABLE card_transaction ADD COLUMN reference TEXT CHECK (reference IS NULL OR length(reference) <= 64);
-- The batch a completed row was sealed into before its first upload attempt.
-- A sealed batch is sent again with exactly the same rows until clearing
-- acknowledges it (uploaded_unix_ms set), so a retry after a lost answer is the
-- same batch id with the same records, which clearing stores once.
ALTER TABLE card_transaction ADD COLUMN upload_batch TEXT;
CREATE INDEX card_transaction_sealed
    ON card_transaction (upload_batch) WHERE upload_batch IS NOT NULL AND uploaded_unix_ms IS NULL;
