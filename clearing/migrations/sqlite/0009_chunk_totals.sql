-- 0009: per clearing chunk, its cleared records' count and amount by kind and
-- merchant, written in the chunk's own transaction. Settlement adds up the
-- chunks after the day's settled high-water mark, and the day's summary its
-- cleared purchases and loads, from these few rows instead of grouping the
-- day's outcomes in `clearings` (1,000,000 records on SQLite: settlement 0.90 s,
-- summary 0.64 s, most of it sorting; docs/benchmarks.md). A cleared outcome
-- never changes (releasing from quarantine deletes only quarantined ones), so
-- neither does its chunk's total. Kind `grey`: the grey records (0008) the
-- chunk confirmed, paid to their merchants and settled like purchases.
CREATE TABLE chunk_totals (
    business_day TEXT NOT NULL,
    clear_chunk  BIGINT NOT NULL,                 -- day_runs.chunks_cleared of the chunk
    kind         TEXT NOT NULL CHECK (kind IN ('purchase', 'load', 'grey')),
    merchant_id  TEXT NOT NULL,                   -- the merchant credited
    record_count BIGINT NOT NULL,
    amount_fen   BIGINT NOT NULL,
    PRIMARY KEY (business_day, clear_chunk, kind, merchant_id)
);

-- The chunks cleared so far. (A cleared outcome without a merchant, which
-- run-day never wrote, would count under '' and, as before, settle with no
-- merchant.)
INSERT INTO chunk_totals (business_day, clear_chunk, kind, merchant_id, record_count, amount_fen)
    SELECT business_day, clear_chunk, kind, COALESCE(merchant_id, ''), COUNT(*), SUM(amount_fen)
    FROM clearings WHERE state = 'cleared'
    GROUP BY business_day, clear_chunk, kind, COALESCE(merchant_id, '');
INSERT INTO chunk_totals (business_day, clear_chunk, kind, merchant_id, record_count, amount_fen)
    SELECT resolved_day, resolved_chunk, 'grey', merchant_id, COUNT(*), SUM(amount_fen)
    FROM grey_records WHERE state = 'confirmed'
    GROUP BY resolved_day, resolved_chunk, merchant_id;
