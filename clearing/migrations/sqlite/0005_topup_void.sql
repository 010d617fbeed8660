-- 0005: a terminal may void an authorised top-up whose CREDIT FOR LOAD never
-- happened on the card (POST /v1/topups/void): state 'voided'. SQLite cannot
-- change a CHECK constraint, so the table is copied into one with the new check.
CREATE TABLE topups_0005 (
    card_serial      TEXT NOT NULL,
    online_counter   BIGINT NOT NULL,
    terminal_number  TEXT NOT NULL,
    balance_before   BIGINT NOT NULL,
    amount_fen       BIGINT NOT NULL,
    transaction_type BIGINT NOT NULL,
    host_date_time   TEXT NOT NULL,            -- YYYYMMDDhhmmss in MAC2 and the load TAC
    state            TEXT NOT NULL CHECK (state IN ('authorised', 'confirmed', 'voided')),
    PRIMARY KEY (card_serial, online_counter)
);
INSERT INTO topups_0005 SELECT card_serial, online_counter, terminal_number, balance_before, amount_fen,
    transaction_type, host_date_time, state FROM topups;
DROP TABLE topups;
ALTER TABLE topups_0005 RENAME TO topups;
