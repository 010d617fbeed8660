-- 0001: the terminal's journal of card transactions (terminal/src/journal.rs).
--
-- One row per debit attempt. The row is written as an intent (state 'intent')
-- after the PSAM made MAC1 and before DEBIT is sent, durably (WAL with
-- synchronous=FULL: every commit is fsync'd). It is then completed with the card's
-- TAC and MAC2 (from DEBIT's answer, or from GET TRANSACTION PROVE when the card
-- went away and came back), or voided when the card proves the debit did not
-- happen. Money is integer fen. Never edit this file once landed: add 0002.
CREATE TABLE card_transaction (
    id INTEGER PRIMARY KEY,
    -- The card's application serial, 16 hex digits.
    card_serial TEXT NOT NULL CHECK (length(card_serial) = 16),
    -- The offline counter INITIALIZE answered: the debit is transaction number counter + 1.
    offline_counter INTEGER NOT NULL CHECK (offline_counter BETWEEN 0 AND 65535),
    -- Transaction type code: 6 purse purchase, 9 compound (transit) purchase.
    kind INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen BETWEEN 0 AND 4294967295),
    balance_before_fen INTEGER NOT NULL CHECK (balance_before_fen BETWEEN 0 AND 4294967295),
    -- The PSAM's terminal number (12 hex digits) and the serial it used up for MAC1.
    terminal_number TEXT NOT NULL CHECK (length(terminal_number) = 12),
    terminal_serial INTEGER NOT NULL,
    -- The date and time sent to the card, YYYYMMDDhhmmss, and the same as Unix seconds.
    card_date_time TEXT NOT NULL CHECK (length(card_date_time) = 14),
    at_unix_seconds INTEGER NOT NULL,
    -- Where (bus validators): route and station; NULL elsewhere.
    route INTEGER,
    station INTEGER,
    state TEXT NOT NULL CHECK (state IN ('intent', 'completed', 'voided')),
    tac BLOB CHECK (tac IS NULL OR length(tac) = 4),
    mac2 BLOB CHECK (mac2 IS NULL OR length(mac2) = 4),
    -- How the row left 'intent': 'answer' (DEBIT answered), 'proof' (the card proved
    -- it), 'refused' (the card refused DEBIT), 'no_proof' (the card has no such debit).
    resolution TEXT CHECK (resolution IS NULL OR resolution IN ('answer', 'proof', 'refused', 'no_proof')),
    written_unix_ms INTEGER NOT NULL,
    resolved_unix_ms INTEGER,
    -- Set when an intent stayed unresolved too long and is handed to clearing as such.
    flagged_unix_ms INTEGER,
    -- Set when clearing took the row; cleared again if a flagged intent resolves later.
    uploaded_unix_ms INTEGER,
    CHECK ((state = 'completed') = (tac IS NOT NULL AND mac2 IS NOT NULL)),
    CHECK ((state = 'intent') = (resolution IS NULL))
);

-- A card's transaction number is used once: at most one live (not voided) row each.
CREATE UNIQUE INDEX card_transaction_once
    ON card_transaction (card_serial, offline_counter) WHERE state <> 'voided';
-- Recovery looks up a card's unresolved intents when it is presented.
CREATE INDEX card_transaction_unresolved ON card_transaction (card_serial) WHERE state = 'intent';
-- The dedup window and a card's recent trips.
CREATE INDEX card_transaction_by_card_time ON card_transaction (card_serial, at_unix_seconds);
-- What clearing has not yet taken.
CREATE INDEX card_transaction_pending_upload
    ON card_transaction (id) WHERE uploaded_unix_ms IS NULL AND state <> 'voided';
