-- 0004: the journal file's identity (terminal/src/journal.rs, terminal/src/upload.rs).
-- Never edit this file once landed: add 0005.
--
-- A random 64-bit number, 16 lower-case hex digits, made once: when the
-- journal file is created, or when a journal created before this migration is
-- first opened. Batch ids carry it (IDENTITY-FIRST-LAST), so a reinstalled
-- terminal (a new journal file whose row ids start from 1 again) never reuses
-- a batch id clearing already holds with other records. SQLite's randomblob()
-- draws from its PRNG, seeded from the operating system's randomness.
CREATE TABLE journal_identity (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    identity TEXT NOT NULL CHECK (length(identity) = 16 AND identity NOT GLOB '*[^0-9a-f]*'),
    created_unix_ms INTEGER NOT NULL
);
INSERT INTO journal_identity (only_row, identity, created_unix_ms)
    VALUES (1, lower(hex(randomblob(8))), CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
