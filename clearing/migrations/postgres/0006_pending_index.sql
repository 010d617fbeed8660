-- 0006: the index run-day reads pending records by holds only pending ones
-- (partial), so clearing a record removes its entry instead of moving it, and
-- the index stays as small as what is left to clear; a plain index on the
-- business day serves the day's summary and settlement. The columns it is
-- ordered by are the clearing order (card, card time, kind, counter, id).
DROP INDEX transactions_pending;
CREATE INDEX transactions_day ON transactions (business_day);
CREATE INDEX transactions_pending ON transactions (business_day, card_serial, occurred_at, kind, counter, transaction_id)
    WHERE state = 'pending';
