-- 0002: online top-ups. A kiosk asks clearing to authorise a load (the HSM
-- checks the card's MAC1 and makes MAC2), loads the card, then confirms with the
-- card's TAC; the confirmed load becomes a pending transaction that run-day
-- clears like any other. (card, online counter) is the idempotency key.
CREATE TABLE topups (
    card_serial      TEXT NOT NULL,
    online_counter   BIGINT NOT NULL,
    terminal_number  TEXT NOT NULL,
    balance_before   BIGINT NOT NULL,
    amount_fen       BIGINT NOT NULL,
    transaction_type BIGINT NOT NULL,
    host_date_time   TEXT NOT NULL,            -- YYYYMMDDhhmmss in MAC2 and the load TAC
    state            TEXT NOT NULL CHECK (state IN ('authorised', 'confirmed')),
    PRIMARY KEY (card_serial, online_counter)
);
