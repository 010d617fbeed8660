-- 0007: a record's clearing outcome lives in a narrow table of its own,
-- written by INSERT when its chunk commits, instead of an UPDATE of the wide,
-- indexed `transactions` row (on PostgreSQL each such update wrote a new tuple
-- and an entry in every index: 65-90 ms of a 5,000-record chunk).
-- `transactions` is append-only after ingest: a record with no `clearings` row
-- is pending; releasing a quarantined record deletes its row. The view
-- `record_states` gives every record with its state, for readers.
CREATE TABLE clearings (
    transaction_id BIGINT PRIMARY KEY,            -- transactions.transaction_id
    business_day   TEXT NOT NULL,
    clear_chunk    BIGINT NOT NULL,               -- the day's chunk that decided it (day_runs.chunks_cleared)
    state          TEXT NOT NULL CHECK (state IN ('cleared', 'quarantined')),
    merchant_id    TEXT,                          -- the merchant credited, when cleared
    kind           TEXT NOT NULL CHECK (kind IN ('purchase', 'load')),
    amount_fen     BIGINT NOT NULL
);
-- Summary and settlement: a day's outcomes, by chunk.
CREATE INDEX clearings_day ON clearings (business_day, clear_chunk);

-- The states so far. Records quarantined before chunk numbers existed (none in
-- practice) take chunk 0, as their clear_chunk was NULL; settlement reads only
-- cleared purchases after the settled high-water mark, which is >= 0.
INSERT INTO clearings (transaction_id, business_day, clear_chunk, state, merchant_id, kind, amount_fen)
    SELECT transaction_id, business_day, COALESCE(clear_chunk, 0), state, merchant_id, kind, amount_fen
    FROM transactions WHERE state <> 'pending';

-- run-day reads a day's records without a clearings row in the clearing order
-- (card, card time, kind, counter, id); this index (of every record, as no
-- state is kept here any more) replaces the partial pending index and the
-- plain index on the day, which is its first column.
DROP INDEX transactions_pending;
DROP INDEX transactions_day;
CREATE INDEX transactions_clearing_order ON transactions (business_day, card_serial, occurred_at, kind, counter, transaction_id);

-- The columns that were updated after ingest go: a reader of them now fails
-- loudly instead of reading a state that no longer moves.
ALTER TABLE transactions DROP COLUMN state;
ALTER TABLE transactions DROP COLUMN merchant_id;
ALTER TABLE transactions DROP COLUMN clear_chunk;
ALTER TABLE transactions DROP COLUMN settlement_run;

CREATE VIEW record_states AS
    SELECT t.transaction_id, t.terminal_id, t.batch_id, t.record_index, t.kind, t.card_serial, t.card_type,
           t.counter, t.balance_before, t.amount_fen, t.transaction_type, t.terminal_number, t.terminal_serial,
           t.occurred_at, t.business_day, t.tac, t.received_at,
           COALESCE(c.state, 'pending') AS state, c.merchant_id, c.clear_chunk
    FROM transactions t LEFT JOIN clearings c ON c.transaction_id = t.transaction_id;
