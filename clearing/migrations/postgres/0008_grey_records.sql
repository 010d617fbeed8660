-- 0008: grey records (灰记录). A terminal that could not learn whether a
-- purchase's DEBIT reached the card (the card went away and never came back
-- to be asked with GET TRANSACTION PROVE) uploads the purchase it attempted,
-- without a TAC. Clearing keeps it apart from the proved transactions, open,
-- until the card's own later records decide it (run-day, crate::grey):
--   confirmed: the card's next record shows its counter and balance moved by
--              exactly this purchase; the merchant is paid, as for a cleared one;
--   proved:    the purchase's own record, with its TAC, cleared at that counter;
--   voided:    the card used that counter for another transaction: no debit.
CREATE TABLE grey_records (
    grey_id          BIGSERIAL PRIMARY KEY,
    terminal_id      TEXT NOT NULL,
    batch_id         TEXT NOT NULL,
    record_index     BIGINT NOT NULL,
    card_serial      TEXT NOT NULL,
    card_type        BIGINT NOT NULL,
    counter          BIGINT NOT NULL,          -- the offline counter before the attempted purchase
    balance_before   BIGINT NOT NULL,
    amount_fen       BIGINT NOT NULL,
    transaction_type BIGINT NOT NULL,
    terminal_number  TEXT NOT NULL,
    terminal_serial  BIGINT NOT NULL,
    occurred_at      TEXT NOT NULL,            -- card date-time YYYYMMDDhhmmss
    business_day     TEXT NOT NULL,            -- YYYY-MM-DD of occurred_at
    received_at      BIGINT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'confirmed', 'proved', 'voided')),
    resolved_day     TEXT,                     -- the business day whose run decided it
    resolved_chunk   BIGINT,                   -- that day's chunk (day_runs.chunks_cleared): settlement reads it
    merchant_id      TEXT,                     -- the merchant credited, when confirmed
    resolved_by      BIGINT,                   -- the transaction that decided it
    detail           TEXT,
    UNIQUE (terminal_id, batch_id, record_index),
    FOREIGN KEY (terminal_id, batch_id) REFERENCES batches (terminal_id, batch_id)
);
-- run-day looks up the open grey records of a chunk's cards.
CREATE INDEX grey_records_open ON grey_records (card_serial, counter) WHERE state = 'open';
-- Settlement and the day's summary read the grey records a day's chunks confirmed.
CREATE INDEX grey_records_resolved ON grey_records (resolved_day, resolved_chunk);
CREATE INDEX grey_records_day ON grey_records (business_day);
