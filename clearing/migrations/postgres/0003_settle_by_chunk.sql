-- 0003: settle by the day's chunk high-water mark instead of stamping every
-- settled transaction (that stamp rewrote the whole day at settlement).
-- Each clearing chunk takes the next number of its day (day_runs.chunks_cleared)
-- and writes it on the records it clears; a settlement run covers the chunks
-- after day_runs.settled_through_chunk. transactions.settlement_run is no
-- longer written.
ALTER TABLE transactions ADD COLUMN clear_chunk BIGINT;
ALTER TABLE day_runs ADD COLUMN chunks_cleared BIGINT NOT NULL DEFAULT 0;
ALTER TABLE day_runs ADD COLUMN settled_through_chunk BIGINT NOT NULL DEFAULT 0;
