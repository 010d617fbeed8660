-- 0004: an operator may release a quarantined record back to pending (for
-- example once the record missing before a counter gap has arrived); the next
-- run-day of its day checks it again from the start. The quarantine row is
-- moved here, so the record's history keeps every reason it was ever held for.
CREATE TABLE quarantine_releases (
    release_id     BIGSERIAL PRIMARY KEY,
    transaction_id BIGINT NOT NULL,
    business_day   TEXT,
    reason         TEXT NOT NULL,
    detail         TEXT NOT NULL,
    released_by    TEXT NOT NULL,
    released_at    BIGINT NOT NULL
);
CREATE INDEX quarantine_releases_transaction ON quarantine_releases (transaction_id);
