-- 0003: online top-ups made at a kiosk (terminal/src/kiosk.rs).
--
-- One row per CREDIT FOR LOAD attempt, written as an intent after clearing
-- authorised the load (MAC2 and the host date-time) and before CREDIT is sent,
-- completed with the card's TAC (from CREDIT's answer, or GET TRANSACTION PROVE
-- of load number online_counter + 1 when the card went away), or voided when the
-- card proves the load did not happen. confirmed_unix_ms is set when clearing
-- took the TAC (POST /v1/topups/confirm). Money is integer fen. Never edit this
-- file once landed: add 0004.
CREATE TABLE card_load (
    id INTEGER PRIMARY KEY,
    card_serial TEXT NOT NULL CHECK (length(card_serial) = 16),
    card_type INTEGER NOT NULL CHECK (card_type BETWEEN 0 AND 255),
    -- The online counter INITIALIZE FOR LOAD answered: the load is number counter + 1.
    online_counter INTEGER NOT NULL CHECK (online_counter BETWEEN 0 AND 65535),
    amount_fen INTEGER NOT NULL CHECK (amount_fen BETWEEN 1 AND 4294967295),
    balance_before_fen INTEGER NOT NULL CHECK (balance_before_fen BETWEEN 0 AND 4294967295),
    terminal_number TEXT NOT NULL CHECK (length(terminal_number) = 12),
    -- The host date-time clearing authorised with, YYYYMMDDhhmmss.
    card_date_time TEXT NOT NULL CHECK (length(card_date_time) = 14),
    state TEXT NOT NULL CHECK (state IN ('intent', 'completed', 'voided')),
    tac BLOB CHECK (tac IS NULL OR length(tac) = 4),
    written_unix_ms INTEGER NOT NULL,
    resolved_unix_ms INTEGER,
    confirmed_unix_ms INTEGER,
    CHECK ((state = 'completed') = (tac IS NOT NULL)),
    CHECK (confirmed_unix_ms IS NULL OR state = 'completed')
);

-- A card's load number is used once: at most one live (not voided) row each.
CREATE UNIQUE INDEX card_load_once ON card_load (card_serial, online_counter) WHERE state <> 'voided';
CREATE INDEX card_load_unresolved ON card_load (card_serial) WHERE state = 'intent';
CREATE INDEX card_load_unconfirmed ON card_load (id) WHERE state = 'completed' AND confirmed_unix_ms IS NULL;
