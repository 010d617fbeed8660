-- 0001: the clearing schema (SQLite dialect; postgres/0001_schema.sql is the same
-- schema in PostgreSQL's). Money is integer fen (BIGINT) everywhere in storage;
-- rates are exact decimal text parsed into rust_decimal. Landed migrations are
-- never edited: add a new numbered file instead.

-- Merchants: who is paid, at what fee rate, into which account.
CREATE TABLE merchants (
    merchant_id        TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    category           TEXT NOT NULL,
    fee_rate           TEXT NOT NULL,          -- exact decimal, 0 <= rate < 1, e.g. "0.0060"
    settlement_account TEXT NOT NULL
);

-- Terminals: the device key that signs uploads, the merchant, the PSAM.
CREATE TABLE terminals (
    terminal_number   TEXT PRIMARY KEY,        -- 12 hex digits (6 bytes)
    merchant_id       TEXT NOT NULL REFERENCES merchants (merchant_id),
    device_public_key BLOB NOT NULL,           -- Ed25519, 32 bytes
    psam_serial       TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    last_upload_at    BIGINT                   -- unix seconds of the last batch
);

-- Cardholders: the citizen ID is kept only as a keyed hash (HMAC-SHA-256 under
-- the issuer's key, for look-up) and a masked form (for display). No query can
-- read it back whole.
CREATE TABLE cardholders (
    cardholder_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    citizen_id_hash   BLOB NOT NULL UNIQUE,
    citizen_id_masked TEXT NOT NULL,
    name              TEXT NOT NULL
);

-- Cards and their shadow accounts: what clearing believes the card holds.
CREATE TABLE cards (
    card_serial     TEXT PRIMARY KEY,          -- 16 hex digits (application serial)
    cardholder_id   BIGINT REFERENCES cardholders (cardholder_id),
    card_type       BIGINT NOT NULL,
    key_set         TEXT NOT NULL,             -- the HSM key set its keys derive from
    status          TEXT NOT NULL CHECK (status IN ('active', 'lost', 'replaced')),
    replaced_by     TEXT,
    issued_at       BIGINT NOT NULL,
    balance_fen     BIGINT NOT NULL CHECK (balance_fen >= 0),
    offline_counter BIGINT NOT NULL,           -- the next purchase's expected counter
    online_counter  BIGINT NOT NULL            -- the next load's expected counter
);

-- Batches: one row per uploaded batch; the primary key makes upload idempotent.
CREATE TABLE batches (
    terminal_id    TEXT NOT NULL,
    batch_id       TEXT NOT NULL,
    digest         BLOB NOT NULL,              -- SHA-256 of the records as received
    received_at    BIGINT NOT NULL,
    record_count   BIGINT NOT NULL,
    accepted_count BIGINT NOT NULL,
    rejected_count BIGINT NOT NULL,
    PRIMARY KEY (terminal_id, batch_id)
);

-- Transactions: every well-formed record uploaded, with its clearing state.
CREATE TABLE transactions (
    transaction_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal_id      TEXT NOT NULL,
    batch_id         TEXT NOT NULL,
    record_index     BIGINT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('purchase', 'load')),
    card_serial      TEXT NOT NULL,
    card_type        BIGINT NOT NULL,
    counter          BIGINT NOT NULL,          -- offline (purchase) or online (load) counter before
    balance_before   BIGINT NOT NULL,
    amount_fen       BIGINT NOT NULL,
    transaction_type BIGINT NOT NULL,
    terminal_number  TEXT NOT NULL,
    terminal_serial  BIGINT NOT NULL,          -- purchases; 0 for loads
    occurred_at      TEXT NOT NULL,            -- card date-time YYYYMMDDhhmmss
    business_day     TEXT NOT NULL,            -- YYYY-MM-DD of occurred_at
    tac              TEXT NOT NULL,            -- 8 hex digits
    received_at      BIGINT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'cleared', 'quarantined')),
    merchant_id      TEXT,                     -- set when cleared
    settlement_run   BIGINT,                   -- set when settled
    UNIQUE (terminal_id, batch_id, record_index),
    FOREIGN KEY (terminal_id, batch_id) REFERENCES batches (terminal_id, batch_id)
);
CREATE INDEX transactions_pending ON transactions (business_day, state, card_serial, occurred_at, kind, counter, transaction_id);
CREATE INDEX transactions_card ON transactions (card_serial, transaction_id);

-- The counters already cleared: a card's counter is spent once, whatever batch brings it.
CREATE TABLE card_counters (
    card_serial    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    counter        BIGINT NOT NULL,
    transaction_id BIGINT NOT NULL,
    PRIMARY KEY (card_serial, kind, counter)
);

-- Quarantine: every record that failed a check, with its reason. Records refused
-- at upload (malformed) have no transaction and keep their raw JSON.
CREATE TABLE quarantine (
    quarantine_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal_id    TEXT NOT NULL,
    batch_id       TEXT NOT NULL,
    record_index   BIGINT NOT NULL,
    transaction_id BIGINT,
    business_day   TEXT,
    reason         TEXT NOT NULL,
    detail         TEXT NOT NULL,
    raw_record     TEXT,
    UNIQUE (terminal_id, batch_id, record_index)
);
CREATE INDEX quarantine_day ON quarantine (business_day, reason);

-- The double-entry ledger: debits positive, credits negative, every entry sums to zero.
-- Accounts: card_float (liability to cardholders), merchant_payable:<id>,
-- fee_income, topup_funding, settlement_bank.
CREATE TABLE ledger_postings (
    posting_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id     TEXT NOT NULL,
    business_day TEXT NOT NULL,
    account      TEXT NOT NULL,
    amount_fen   BIGINT NOT NULL,
    UNIQUE (entry_id, account)
);

-- Settlements: per business day, merchant and settlement run.
CREATE TABLE settlements (
    business_day       TEXT NOT NULL,
    settlement_run     BIGINT NOT NULL,
    merchant_id        TEXT NOT NULL,
    settlement_account TEXT NOT NULL,
    record_count       BIGINT NOT NULL,
    gross_fen          BIGINT NOT NULL,
    fee_rate           TEXT NOT NULL,
    fee_fen            BIGINT NOT NULL,
    net_fen            BIGINT NOT NULL,
    PRIMARY KEY (business_day, settlement_run, merchant_id)
);

-- The blacklist, versioned: each change is a new version; terminals download since a version.
CREATE TABLE blacklist (
    version     INTEGER PRIMARY KEY AUTOINCREMENT,
    card_serial TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('add', 'remove')),
    reason      TEXT NOT NULL,
    listed_at   TEXT NOT NULL                  -- card date-time YYYYMMDDhhmmss from which it applies
);
CREATE INDEX blacklist_card ON blacklist (card_serial, version);

-- Day runs: one row per business day cleared, its settlement runs and files.
CREATE TABLE day_runs (
    business_day    TEXT PRIMARY KEY,
    settlement_runs BIGINT NOT NULL
);
