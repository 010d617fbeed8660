//! The terminal's durable journal of card transactions: a local SQLite file
//! through sqlx, in WAL mode with `synchronous=FULL`, so every commit is
//! `fsync`'d before the call returns.
//!
//! A debit goes through the journal in states that are types:
//!
//! 1. [`Journal::write_intent`] after the PSAM's MAC1 and before DEBIT: an
//!    [`Intent`] row (card serial, offline counter from INITIALIZE, amount,
//!    terminal number and serial, date-time, kind) is on disk;
//! 2. [`Intent::complete`] with the card's TAC and MAC2, or [`Intent::void`] when
//!    the card refused DEBIT or proves it never debited. Both consume the intent.
//!
//! An intent left behind (the card went away, the process was killed) is found
//! again with [`Journal::unresolved`] / [`Journal::unresolved_for`] and settled
//! by the card when it returns ([`crate::transaction::recover`]); one unresolved
//! for longer than the configured time is flagged for clearing
//! ([`Journal::flag_unresolved_before`]). [`Journal::pending_upload`] is what
//! clearing has not taken yet; [`Journal::mark_uploaded`] records that it has.
//!
//! The API is blocking, like the card I/O around it: the journal runs its own
//! single-threaded tokio runtime and must not be called from inside another
//! runtime's task.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use card_host::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, migrate::Migrator};

/// The journal's schema history (`terminal/migrations`, numbered and commented).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Rows one query returns at most (unresolved intents, a batch for upload).
pub const ROWS_MAX: u32 = 10_000;
/// The longest purchase reference (a bill number) a row keeps.
pub const REFERENCE_BYTES_MAX: usize = 64;
/// The most rows [`Journal::prune`] deletes in one commit.
pub const PRUNE_ROWS_PER_COMMIT: i64 = 1_000;
/// How long a write waits for the database lock before it fails.
pub const BUSY_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("journal schema migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("journal runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A row's stored value does not parse back: the file was edited or is damaged.
    #[error("journal row {id}: bad {what}")]
    Corrupt { id: i64, what: &'static str },
    /// The intent was already resolved (by another process on the same file).
    #[error("journal row {0} is no longer an unresolved intent")]
    NotAnIntent(i64),
    #[error("more than {ROWS_MAX} rows asked for")]
    TooManyRows,
    #[error("a purchase reference longer than {REFERENCE_BYTES_MAX} bytes")]
    ReferenceTooLong,
    /// A batch id to re-seal under is already some row's batch.
    #[error("batch id {0} is already in the journal")]
    BatchIdTaken(String),
}

/// What a debit is, as written before DEBIT is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub card: ApplicationSerial,
    /// The card's offline counter from INITIALIZE: the debit is number counter + 1.
    pub offline_counter: u16,
    pub kind: TransactionType,
    pub amount: Fen,
    pub balance_before: Fen,
    pub terminal: TerminalNumber,
    /// The PSAM's terminal transaction serial used for MAC1.
    pub terminal_serial: u32,
    pub at: CardDateTime,
    /// Route and station, for bus validators.
    pub route: Option<u16>,
    pub station: Option<u16>,
    /// The card's type code (public information), for clearing; 0 for rows
    /// written before the journal recorded it.
    pub card_type: u8,
    /// What the purchase paid for (a utility bill's reference, at most
    /// [`REFERENCE_BYTES_MAX`] bytes); `None` on a bus.
    pub reference: Option<String>,
}

impl Entry {
    /// The number the card gives this debit (GET TRANSACTION PROVE asks for it).
    pub fn transaction_number(&self) -> u16 {
        self.offline_counter.wrapping_add(1)
    }
}

/// A durable intent: DEBIT may have reached the card; not yet known.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an intent must be completed or voided, or left for recovery on purpose"]
pub struct Intent {
    id: i64,
    entry: Entry,
    flagged: bool,
}

/// How a row left the intent state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// DEBIT answered with TAC and MAC2.
    Answer,
    /// The card proved the debit with GET TRANSACTION PROVE after a tear.
    Proof,
    /// The card refused DEBIT with a status word: nothing changed on it.
    Refused,
    /// The card has no such debit: it never happened.
    NoProof,
}

impl Resolution {
    fn as_str(self) -> &'static str {
        match self {
            Resolution::Answer => "answer",
            Resolution::Proof => "proof",
            Resolution::Refused => "refused",
            Resolution::NoProof => "no_proof",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "answer" => Resolution::Answer,
            "proof" => Resolution::Proof,
            "refused" => Resolution::Refused,
            "no_proof" => Resolution::NoProof,
            _ => return None,
        })
    }
}

/// A completed debit: the card's TAC and MAC2 are on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub id: i64,
    pub entry: Entry,
    pub tac: [u8; 4],
    pub mac2: [u8; 4],
    pub resolution: Resolution,
}

/// A voided intent: the card did not debit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voided {
    pub id: i64,
    pub entry: Entry,
    pub resolution: Resolution,
}

/// A row as clearing will take it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UploadRecord {
    Completed(Completed),
    /// An intent nobody could resolve in time (flagged): its grey record, which
    /// clearing settles against the card's next transactions. The row stays an
    /// intent; if the card settles it later, its completed record follows.
    Unresolved {
        id: i64,
        entry: Entry,
    },
}

impl UploadRecord {
    pub fn id(&self) -> i64 {
        match self {
            UploadRecord::Completed(completed) => completed.id,
            UploadRecord::Unresolved { id, .. } => *id,
        }
    }

    pub fn entry(&self) -> &Entry {
        match self {
            UploadRecord::Completed(completed) => &completed.entry,
            UploadRecord::Unresolved { entry, .. } => entry,
        }
    }
}

/// The journal file's identity: 64 random bits made when the file was created
/// (migration `0004`), shown as 16 lower-case hex digits. A reinstalled
/// terminal has a new journal and so a new identity; batch ids carry it
/// ([`crate::upload::batch_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JournalIdentity([u8; 8]);

impl JournalIdentity {
    /// Hex digits in [`JournalIdentity`]'s text form.
    pub const HEX_DIGITS: usize = 16;

    /// From its 16 hex digits.
    pub fn parse_hex(text: &str) -> Option<JournalIdentity> {
        let mut bytes = [0u8; 8];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(JournalIdentity(bytes))
    }
}

impl std::fmt::Display for JournalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Rows in each state, for the operator and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub intents: u64,
    pub completed: u64,
    pub voided: u64,
    /// Sum of the completed debits.
    pub completed_fen: u64,
}

/// What [`Journal::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub transactions: u64,
    pub loads: u64,
}

/// The journal file, open.
pub struct Journal {
    runtime: tokio::runtime::Runtime,
    identity: JournalIdentity,
    /// One connection, used by this process alone (no pool: each query is one
    /// hand-off to sqlx's SQLite worker thread).
    connection: std::sync::Mutex<SqliteConnection>,
    /// Unresolved intents per card, mirrored in memory so that a tap of a card
    /// with nothing open costs no query. Loaded at open; this process is the
    /// file's only writer.
    unresolved_cards: std::sync::Mutex<std::collections::HashMap<ApplicationSerial, u32>>,
}

/// Runs one statement that returns no rows (an INSERT, an UPDATE) in its own
/// implicit transaction, and answers its result as soon as sqlx's worker
/// thread sends it: the statement has run to its end, its commit (the WAL
/// written and, with `synchronous=FULL`, `fsync`'d) included, and a commit that
/// failed is an error here.
///
/// Two things this avoids. `execute` waits after the result for the worker to
/// close the result channel as well: one more wake-up of this thread per
/// statement. And `INSERT … RETURNING id` read with `fetch_one` (how intents
/// were written before) makes sqlx stop after the row and reset the
/// statement: SQLite then commits inside `sqlite3_reset`, whose error sqlx
/// drops, so a commit that failed would have been taken for a durable row.
async fn execute_one<'q>(
    connection: &mut SqliteConnection,
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
) -> Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error> {
    use sqlx::Executor;
    // A boxed `dyn Stream`: its `poll_next` needs no import of the trait.
    let mut results = connection.fetch_many(query);
    match std::future::poll_fn(|context| results.as_mut().poll_next(context)).await {
        Some(Ok(sqlx::Either::Left(done))) => Ok(done),
        Some(Err(error)) => Err(error),
        Some(Ok(sqlx::Either::Right(_))) | None => {
            Err(sqlx::Error::Protocol("a statement that returns no rows answered a row, or nothing".into()))
        }
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(0))
}

const COLUMNS: &str = "id, card_serial, offline_counter, kind, amount_fen, balance_before_fen, terminal_number, \
                       terminal_serial, card_date_time, route, station, state, tac, mac2, resolution, flagged_unix_ms, \
                       card_type, reference, upload_batch";

/// A row with a grey record: flagged for clearing, and a purchase (06 purse,
/// 09 compound); the journal holds no other kind, but a grey record of
/// anything else would be a debit clearing cannot take.
const GREY: &str = "flagged_unix_ms IS NOT NULL AND kind IN (6, 9)";
/// A completed row clearing has not taken.
const COMPLETED_WAITING: &str = "state = 'completed' AND uploaded_unix_ms IS NULL";
/// A grey record clearing has not taken (with [`GREY`]): the intent is open,
/// or its record was sealed into a batch before the card settled it.
const GREY_NOT_TAKEN: &str = "grey_uploaded_unix_ms IS NULL AND (state = 'intent' OR grey_batch IS NOT NULL)";

impl Journal {
    /// Opens (creating if needed) the journal at `path` and brings its schema up
    /// to date.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(JournalError::Runtime)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is fsync'd at every commit, so a committed row survives
            // kill -9 and power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT_MAX);
        let (connection, identity) = runtime.block_on(async {
            let mut connection = options.connect().await?;
            MIGRATOR.run(&mut connection).await?;
            let identity: String = sqlx::query_scalar("SELECT identity FROM journal_identity WHERE only_row = 1")
                .fetch_one(&mut connection)
                .await?;
            let identity = JournalIdentity::parse_hex(&identity)
                .ok_or(JournalError::Corrupt { id: 0, what: "journal identity" })?;
            Ok::<_, JournalError>((connection, identity))
        })?;
        tracing::debug!(journal = %identity, "journal open");
        let journal = Journal {
            runtime,
            identity,
            connection: std::sync::Mutex::new(connection),
            unresolved_cards: Default::default(),
        };
        let mut cards = std::collections::HashMap::new();
        for intent in journal.unresolved()? {
            *cards.entry(intent.entry.card).or_insert(0) += 1;
        }
        *journal.unresolved_cards.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = cards;
        Ok(journal)
    }

    /// This journal file's identity (made when it was created).
    pub fn identity(&self) -> JournalIdentity {
        self.identity
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, SqliteConnection> {
        self.connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unresolved_cards(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ApplicationSerial, u32>> {
        self.unresolved_cards.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One empty statement (`SELECT 1`) through the journal's connection: the
    /// floor under every journal call (sqlx's hand-off to its SQLite worker
    /// thread and back), which the bus benchmark reports beside the commits.
    pub fn round_trip(&self) -> Result<(), JournalError> {
        self.runtime.block_on(sqlx::query("SELECT 1").fetch_one(&mut *self.connection()))?;
        Ok(())
    }

    /// Whether `card` has an unresolved intent (from memory, no query).
    pub fn has_unresolved(&self, card: &ApplicationSerial) -> bool {
        self.unresolved_cards().contains_key(card)
    }

    /// The newest completed debits (at most `limit` ≤ [`ROWS_MAX`]), newest
    /// first: what a validator's dedup window starts from after a restart.
    pub fn recent_completed(&self, limit: u32) -> Result<Vec<Completed>, JournalError> {
        if limit > ROWS_MAX {
            return Err(JournalError::TooManyRows);
        }
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM card_transaction WHERE state = 'completed' ORDER BY id DESC LIMIT ?"
            ))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.connection()),
        )?;
        rows.iter().map(completed_from_row).collect()
    }

    /// Writes the intent durably: when this returns, the row is on disk.
    pub fn write_intent(&self, entry: Entry) -> Result<Intent, JournalError> {
        if entry.reference.as_ref().is_some_and(|reference| reference.len() > REFERENCE_BYTES_MAX) {
            return Err(JournalError::ReferenceTooLong);
        }
        let id = self.runtime.block_on(execute_one(
            &mut self.connection(),
            sqlx::query(
                "INSERT INTO card_transaction (card_serial, offline_counter, kind, amount_fen, balance_before_fen, \
                 terminal_number, terminal_serial, card_date_time, at_unix_seconds, route, station, state, \
                 written_unix_ms, card_type, reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'intent', ?, ?, ?)",
            )
            .bind(entry.card.to_hex())
            .bind(i64::from(entry.offline_counter))
            .bind(i64::from(entry.kind.code()))
            .bind(i64::from(entry.amount.0))
            .bind(i64::from(entry.balance_before.0))
            .bind(entry.terminal.to_string())
            .bind(i64::from(entry.terminal_serial))
            .bind(hex::encode(entry.at.to_bytes()))
            .bind(i64::try_from(entry.at.unix_seconds()).unwrap_or(i64::MAX))
            .bind(entry.route.map(i64::from))
            .bind(entry.station.map(i64::from))
            .bind(now_unix_ms())
            .bind(i64::from(entry.card_type))
            .bind(entry.reference.clone()),
        ))?;
        let id: i64 = id.last_insert_rowid();
        *self.unresolved_cards().entry(entry.card).or_insert(0) += 1;
        tracing::debug!(id, card = %entry.card.masked(), counter = entry.offline_counter, amount = %entry.amount, "intent written");
        Ok(Intent { id, entry, flagged: false })
    }

    fn resolve(
        &self,
        card: &ApplicationSerial,
        id: i64,
        state: &str,
        proof: Option<([u8; 4], [u8; 4])>,
        resolution: Resolution,
    ) -> Result<(), JournalError> {
        let (tac, mac2) = match proof {
            Some((tac, mac2)) => (Some(tac.to_vec()), Some(mac2.to_vec())),
            None => (None, None),
        };
        let done = self.runtime.block_on(execute_one(
            &mut self.connection(),
            sqlx::query(
                "UPDATE card_transaction SET state = ?, tac = ?, mac2 = ?, resolution = ?, resolved_unix_ms = ?, \
                 uploaded_unix_ms = NULL WHERE id = ? AND state = 'intent'",
            )
            .bind(state)
            .bind(tac)
            .bind(mac2)
            .bind(resolution.as_str())
            .bind(now_unix_ms())
            .bind(id),
        ))?;
        if done.rows_affected() != 1 {
            return Err(JournalError::NotAnIntent(id));
        }
        let mut cards = self.unresolved_cards();
        if let Some(open) = cards.get_mut(card) {
            *open -= 1;
            if *open == 0 {
                cards.remove(card);
            }
        }
        Ok(())
    }

    /// Every unresolved intent, oldest first (at most [`ROWS_MAX`]).
    pub fn unresolved(&self) -> Result<Vec<Intent>, JournalError> {
        let rows = self.runtime.block_on(
            sqlx::query(&format!("SELECT {COLUMNS} FROM card_transaction WHERE state = 'intent' ORDER BY id LIMIT ?"))
                .bind(i64::from(ROWS_MAX))
                .fetch_all(&mut *self.connection()),
        )?;
        rows.iter().map(intent_from_row).collect()
    }

    /// The unresolved intents of one card, in the order they were written.
    pub fn unresolved_for(&self, card: &ApplicationSerial) -> Result<Vec<Intent>, JournalError> {
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM card_transaction WHERE state = 'intent' AND card_serial = ? ORDER BY id LIMIT ?"
            ))
            .bind(card.to_hex())
            .bind(i64::from(ROWS_MAX))
            .fetch_all(&mut *self.connection()),
        )?;
        rows.iter().map(intent_from_row).collect()
    }

    /// Flags for clearing every intent written before `written_before_unix_ms`
    /// and still unresolved; returns how many were newly flagged. A flagged
    /// intent can still be resolved by the card later.
    pub fn flag_unresolved_before(&self, written_before_unix_ms: i64) -> Result<u64, JournalError> {
        let done = self.runtime.block_on(execute_one(
            &mut self.connection(),
            sqlx::query(
                "UPDATE card_transaction SET flagged_unix_ms = ? WHERE state = 'intent' AND flagged_unix_ms IS NULL \
                 AND written_unix_ms < ?",
            )
            .bind(now_unix_ms())
            .bind(written_before_unix_ms),
        ))?;
        Ok(done.rows_affected())
    }

    /// Flags the intents unresolved for longer than `age` (see
    /// [`Journal::flag_unresolved_before`]); logged when any are. Every
    /// terminal mode does this with `[journal] flag_unresolved_after_seconds`.
    pub fn flag_unresolved_older_than(&self, age: Duration) -> Result<u64, JournalError> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let flagged = self.flag_unresolved_before(now_unix_ms().saturating_sub(age_ms))?;
        if flagged > 0 {
            tracing::warn!(flagged, "unresolved intents flagged for clearing (grey records)");
        }
        Ok(flagged)
    }

    /// The newest completed debit of `card` at or after `since` (card time),
    /// for tests and the operator: the bus validator keeps its dedup window in
    /// memory. Like [`Journal::completed_for`] it reads the card's live rows
    /// through the index `card_transaction_once`, which SQLite uses only when
    /// the query names its `state <> 'voided'`.
    pub fn last_completed_since(
        &self,
        card: &ApplicationSerial,
        since: &CardDateTime,
    ) -> Result<Option<Completed>, JournalError> {
        let row = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM card_transaction WHERE card_serial = ? AND state <> 'voided' \
                 AND state = 'completed' AND at_unix_seconds >= ? ORDER BY at_unix_seconds DESC, id DESC LIMIT 1"
            ))
            .bind(card.to_hex())
            .bind(i64::try_from(since.unix_seconds()).unwrap_or(i64::MAX))
            .fetch_optional(&mut *self.connection()),
        )?;
        row.as_ref().map(completed_from_row).transpose()
    }

    /// What clearing has not taken, oldest first, at most `limit` (≤
    /// [`ROWS_MAX`]) records: completed debits, and the grey records of
    /// flagged purchase intents (a grey record already sealed into a batch is
    /// listed until acknowledged, even if the card settled its intent since).
    pub fn pending_upload(&self, limit: u32) -> Result<Vec<UploadRecord>, JournalError> {
        if limit > ROWS_MAX {
            return Err(JournalError::TooManyRows);
        }
        let grey_waiting = format!("{GREY} AND {GREY_NOT_TAKEN}");
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {COLUMNS}, ({COMPLETED_WAITING}) AS completed_waiting, ({grey_waiting}) AS grey_waiting \
                 FROM card_transaction WHERE ({COMPLETED_WAITING}) OR ({grey_waiting}) ORDER BY id LIMIT ?"
            ))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.connection()),
        )?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<bool, _>("grey_waiting")? {
                records.push(UploadRecord::Unresolved { id: row.try_get("id")?, entry: entry_from_row(row)? });
            }
            if row.try_get::<bool, _>("completed_waiting")? {
                records.push(UploadRecord::Completed(completed_from_row(row)?));
            }
        }
        records.truncate(limit as usize);
        Ok(records)
    }

    /// Records that clearing acknowledged the sealed batch `batch`: its
    /// completed rows and its grey records are taken (one transaction, one
    /// fsync). Returns how many records that was.
    pub fn mark_batch_uploaded(&self, batch: &str) -> Result<u64, JournalError> {
        let now = now_unix_ms();
        let mut connection = self.connection();
        self.runtime.block_on(async {
            let mut transaction = connection.begin().await?;
            let completed = sqlx::query(
                "UPDATE card_transaction SET uploaded_unix_ms = ? WHERE upload_batch = ? AND uploaded_unix_ms IS NULL",
            )
            .bind(now)
            .bind(batch)
            .execute(&mut *transaction)
            .await?;
            let grey = sqlx::query(
                "UPDATE card_transaction SET grey_uploaded_unix_ms = ? WHERE grey_batch = ? \
                 AND grey_uploaded_unix_ms IS NULL",
            )
            .bind(now)
            .bind(batch)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            Ok(completed.rows_affected() + grey.rows_affected())
        })
    }

    /// The batch sealed for upload and not yet acknowledged, if any: its id and
    /// records, in row order. It is sent again, unchanged, until clearing takes
    /// it: a grey record stays a grey record in it even if the card settled the
    /// intent since (the completed record then goes in a later batch).
    pub fn sealed_batch(&self) -> Result<Option<(String, Vec<UploadRecord>)>, JournalError> {
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "WITH sealed (batch) AS (SELECT batch FROM (\
                     SELECT upload_batch AS batch, id FROM card_transaction \
                     WHERE upload_batch IS NOT NULL AND uploaded_unix_ms IS NULL \
                     UNION ALL SELECT grey_batch, id FROM card_transaction \
                     WHERE grey_batch IS NOT NULL AND grey_uploaded_unix_ms IS NULL) ORDER BY id LIMIT 1) \
                 SELECT {COLUMNS}, sealed.batch AS batch, \
                 (grey_batch IS sealed.batch AND grey_uploaded_unix_ms IS NULL) AS sealed_grey \
                 FROM card_transaction, sealed \
                 WHERE (upload_batch IS sealed.batch AND uploaded_unix_ms IS NULL) \
                 OR (grey_batch IS sealed.batch AND grey_uploaded_unix_ms IS NULL) ORDER BY id LIMIT ?"
            ))
            .bind(i64::from(ROWS_MAX))
            .fetch_all(&mut *self.connection()),
        )?;
        let Some(first) = rows.first() else { return Ok(None) };
        let batch: String = first.try_get("batch")?;
        let records = rows
            .iter()
            .map(|row| {
                if row.try_get::<bool, _>("sealed_grey")? {
                    Ok(UploadRecord::Unresolved { id: row.try_get("id")?, entry: entry_from_row(row)? })
                } else {
                    Ok(UploadRecord::Completed(completed_from_row(row)?))
                }
            })
            .collect::<Result<_, JournalError>>()?;
        Ok(Some((batch, records)))
    }

    /// Re-seals, in one transaction, every record of the sealed,
    /// unacknowledged batch `batch` (completed rows and grey records) under a
    /// new id, which `name` makes from the batch's first and last row ids and
    /// a fresh 64-bit random number (SQLite's, seeded from the system's
    /// randomness): for a batch clearing refuses with 409 because it holds
    /// other records under its id. No record is dropped or added: the same rows
    /// move from one id to the other. Returns the new id and how many records
    /// moved, or `None` when no unacknowledged batch has that id.
    pub fn reseal_batch(
        &self,
        batch: &str,
        name: impl FnOnce(i64, i64, u64) -> String,
    ) -> Result<Option<(String, u64)>, JournalError> {
        let mut connection = self.connection();
        self.runtime.block_on(async {
            let mut transaction = connection.begin().await?;
            let sealed = sqlx::query(
                "SELECT MIN(id), MAX(id), COUNT(*), random() FROM card_transaction \
                 WHERE (upload_batch = ?1 AND uploaded_unix_ms IS NULL) \
                 OR (grey_batch = ?1 AND grey_uploaded_unix_ms IS NULL)",
            )
            .bind(batch)
            .fetch_one(&mut *transaction)
            .await?;
            let (Some(first), Some(last)) =
                (sealed.try_get::<Option<i64>, _>(0)?, sealed.try_get::<Option<i64>, _>(1)?)
            else {
                return Ok(None);
            };
            let fresh = u64::from_ne_bytes(sealed.try_get::<i64, _>(3)?.to_ne_bytes());
            let resealed = name(first, last, fresh);
            let taken: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM card_transaction WHERE upload_batch = ?1 OR grey_batch = ?1")
                    .bind(&resealed)
                    .fetch_one(&mut *transaction)
                    .await?;
            if taken > 0 {
                return Err(JournalError::BatchIdTaken(resealed));
            }
            let completed = sqlx::query(
                "UPDATE card_transaction SET upload_batch = ? WHERE upload_batch = ? AND uploaded_unix_ms IS NULL",
            )
            .bind(&resealed)
            .bind(batch)
            .execute(&mut *transaction)
            .await?;
            let grey = sqlx::query(
                "UPDATE card_transaction SET grey_batch = ? WHERE grey_batch = ? AND grey_uploaded_unix_ms IS NULL",
            )
            .bind(&resealed)
            .bind(batch)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            Ok(Some((resealed, completed.rows_affected() + grey.rows_affected())))
        })
    }

    /// Seals into a batch, in one transaction, the oldest records of
    /// `terminal` that clearing has not taken and no batch holds (at most
    /// `limit` ≤ [`ROWS_MAX`]): completed debits, and the grey records of
    /// flagged purchase intents. The batch id is what `name` makes from the
    /// first and last row ids. Returns the batch, or `None` when nothing waits.
    pub fn seal_batch(
        &self,
        terminal: &TerminalNumber,
        limit: u32,
        name: impl Fn(i64, i64) -> String,
    ) -> Result<Option<(String, Vec<UploadRecord>)>, JournalError> {
        if limit > ROWS_MAX {
            return Err(JournalError::TooManyRows);
        }
        let mut connection = self.connection();
        self.runtime.block_on(async {
            let mut transaction = connection.begin().await?;
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM card_transaction WHERE terminal_number = ? AND \
                 ((state = 'completed' AND uploaded_unix_ms IS NULL AND upload_batch IS NULL) \
                 OR (state = 'intent' AND {GREY} AND grey_batch IS NULL AND grey_uploaded_unix_ms IS NULL)) \
                 ORDER BY id LIMIT ?"
            ))
            .bind(terminal.to_string())
            .bind(i64::from(limit))
            .fetch_all(&mut *transaction)
            .await?;
            let records = rows
                .iter()
                .map(|row| {
                    let state: String = row.try_get("state")?;
                    if state == "completed" {
                        Ok(UploadRecord::Completed(completed_from_row(row)?))
                    } else {
                        Ok(UploadRecord::Unresolved { id: row.try_get("id")?, entry: entry_from_row(row)? })
                    }
                })
                .collect::<Result<Vec<_>, JournalError>>()?;
            let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok(None) };
            let batch = name(first.id(), last.id());
            for record in &records {
                let column = match record {
                    UploadRecord::Completed(_) => "upload_batch",
                    UploadRecord::Unresolved { .. } => "grey_batch",
                };
                sqlx::query(&format!("UPDATE card_transaction SET {column} = ? WHERE id = ?"))
                    .bind(&batch)
                    .bind(record.id())
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await?;
            Ok(Some((batch, records)))
        })
    }

    /// Every completed debit of `card`, oldest first (tests, the operator),
    /// read through the index `card_transaction_once` (see
    /// [`Journal::last_completed_since`]).
    pub fn completed_for(&self, card: &ApplicationSerial) -> Result<Vec<Completed>, JournalError> {
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM card_transaction WHERE card_serial = ? AND state <> 'voided' \
                 AND state = 'completed' ORDER BY id LIMIT ?"
            ))
            .bind(card.to_hex())
            .bind(i64::from(ROWS_MAX))
            .fetch_all(&mut *self.connection()),
        )?;
        rows.iter().map(completed_from_row).collect()
    }

    /// Deletes the rows written before `written_before_unix_ms` that clearing
    /// holds and nothing here needs: completed debits clearing acknowledged
    /// and voided attempts, each with no grey record still to acknowledge;
    /// loads clearing confirmed, and voided loads. Intents, anything not yet
    /// acknowledged and the newest row of each table stay: row ids are SQLite
    /// rowids, which start again after the largest left, and a batch id names
    /// its first and last row id, so ids once used must never come back. In
    /// transactions of at most [`PRUNE_ROWS_PER_COMMIT`] rows, so that a
    /// terminal writing beside it waits at most one short commit.
    pub fn prune(&self, written_before_unix_ms: i64) -> Result<Pruned, JournalError> {
        const TRANSACTIONS: &str = "DELETE FROM card_transaction WHERE id IN (SELECT id FROM card_transaction \
             WHERE written_unix_ms < ? AND id < (SELECT MAX(id) FROM card_transaction) \
             AND ((state = 'completed' AND uploaded_unix_ms IS NOT NULL) OR state = 'voided') \
             AND (grey_batch IS NULL OR grey_uploaded_unix_ms IS NOT NULL) ORDER BY id LIMIT ?)";
        const LOADS: &str = "DELETE FROM card_load WHERE id IN (SELECT id FROM card_load \
             WHERE written_unix_ms < ? AND id < (SELECT MAX(id) FROM card_load) \
             AND ((state = 'completed' AND confirmed_unix_ms IS NOT NULL) OR state = 'voided') ORDER BY id LIMIT ?)";
        let mut pruned = Pruned::default();
        for (sql, count) in [(TRANSACTIONS, &mut pruned.transactions), (LOADS, &mut pruned.loads)] {
            loop {
                let deleted = self.runtime.block_on(execute_one(
                    &mut self.connection(),
                    sqlx::query(sql).bind(written_before_unix_ms).bind(PRUNE_ROWS_PER_COMMIT),
                ))?;
                *count += deleted.rows_affected();
                if deleted.rows_affected() < PRUNE_ROWS_PER_COMMIT as u64 {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    /// Prunes the rows written more than `age` ago (see [`Journal::prune`]).
    pub fn prune_older_than(&self, age: Duration) -> Result<Pruned, JournalError> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        self.prune(now_unix_ms().saturating_sub(age_ms))
    }

    /// Rows in each state.
    pub fn counts(&self) -> Result<Counts, JournalError> {
        let row = self.runtime.block_on(
            sqlx::query(
                "SELECT COALESCE(SUM(state = 'intent'), 0), COALESCE(SUM(state = 'completed'), 0), \
                 COALESCE(SUM(state = 'voided'), 0), \
                 COALESCE(SUM(CASE WHEN state = 'completed' THEN amount_fen ELSE 0 END), 0) FROM card_transaction",
            )
            .fetch_one(&mut *self.connection()),
        )?;
        let count = |index: usize| -> Result<u64, JournalError> {
            let value: i64 = row.try_get(index)?;
            u64::try_from(value).map_err(|_| JournalError::Corrupt { id: 0, what: "count" })
        };
        Ok(Counts { intents: count(0)?, completed: count(1)?, voided: count(2)?, completed_fen: count(3)? })
    }

    /// Closes the connection, checkpointing the WAL.
    pub fn close(self) {
        let connection = self.connection.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = self.runtime.block_on(connection.close()) {
            tracing::warn!(%error, "journal close");
        }
    }
}

impl Intent {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Whether it has been flagged for clearing as unresolved.
    pub fn is_flagged(&self) -> bool {
        self.flagged
    }

    /// The card debited: TAC and MAC2 are written durably.
    pub fn complete(
        self,
        journal: &Journal,
        tac: [u8; 4],
        mac2: [u8; 4],
        resolution: Resolution,
    ) -> Result<Completed, JournalError> {
        journal.resolve(&self.entry.card, self.id, "completed", Some((tac, mac2)), resolution)?;
        tracing::debug!(id = self.id, card = %self.entry.card.masked(), ?resolution, "debit completed");
        Ok(Completed { id: self.id, entry: self.entry, tac, mac2, resolution })
    }

    /// The card did not debit: the row is voided durably and the purchase may be
    /// made again.
    pub fn void(self, journal: &Journal, resolution: Resolution) -> Result<Voided, JournalError> {
        journal.resolve(&self.entry.card, self.id, "voided", None, resolution)?;
        tracing::debug!(id = self.id, card = %self.entry.card.masked(), ?resolution, "intent voided");
        Ok(Voided { id: self.id, entry: self.entry, resolution })
    }
}

fn corrupt(row: &SqliteRow, what: &'static str) -> JournalError {
    JournalError::Corrupt { id: row.try_get("id").unwrap_or(0), what }
}

fn entry_from_row(row: &SqliteRow) -> Result<Entry, JournalError> {
    let serial: String = row.try_get("card_serial")?;
    let terminal: String = row.try_get("terminal_number")?;
    let at: String = row.try_get("card_date_time")?;
    let small = |name: &'static str| -> Result<Option<u16>, JournalError> {
        let value: Option<i64> = row.try_get(name)?;
        value.map(|value| u16::try_from(value).map_err(|_| corrupt(row, name))).transpose()
    };
    let number = |name: &'static str| -> Result<u32, JournalError> {
        let value: i64 = row.try_get(name)?;
        u32::try_from(value).map_err(|_| corrupt(row, name))
    };
    let kind = u8::try_from(number("kind")?).map_err(|_| corrupt(row, "kind"))?;
    Ok(Entry {
        card: ApplicationSerial::parse_hex(&serial).map_err(|_| corrupt(row, "card_serial"))?,
        offline_counter: small("offline_counter")?.ok_or_else(|| corrupt(row, "offline_counter"))?,
        kind: TransactionType::from_code(kind).map_err(|_| corrupt(row, "kind"))?,
        amount: Fen(number("amount_fen")?),
        balance_before: Fen(number("balance_before_fen")?),
        terminal: TerminalNumber::parse_hex(&terminal).map_err(|_| corrupt(row, "terminal_number"))?,
        terminal_serial: number("terminal_serial")?,
        at: hex::decode(&at)
            .ok()
            .and_then(|bytes| CardDateTime::from_slice(&bytes).ok())
            .ok_or_else(|| corrupt(row, "card_date_time"))?,
        route: small("route")?,
        station: small("station")?,
        card_type: {
            let value: Option<i64> = row.try_get("card_type")?;
            u8::try_from(value.unwrap_or(0)).map_err(|_| corrupt(row, "card_type"))?
        },
        reference: row.try_get("reference")?,
    })
}

fn intent_from_row(row: &SqliteRow) -> Result<Intent, JournalError> {
    let flagged: Option<i64> = row.try_get("flagged_unix_ms")?;
    Ok(Intent { id: row.try_get("id")?, entry: entry_from_row(row)?, flagged: flagged.is_some() })
}

fn four(row: &SqliteRow, name: &'static str) -> Result<[u8; 4], JournalError> {
    let bytes: Vec<u8> = row.try_get(name)?;
    bytes.as_slice().try_into().map_err(|_| corrupt(row, name))
}

fn completed_from_row(row: &SqliteRow) -> Result<Completed, JournalError> {
    let resolution: String = row.try_get("resolution")?;
    Ok(Completed {
        id: row.try_get("id")?,
        entry: entry_from_row(row)?,
        tac: four(row, "tac")?,
        mac2: four(row, "mac2")?,
        resolution: Resolution::from_str(&resolution).map_err(|()| corrupt(row, "resolution"))?,
    })
}

impl FromStr for Resolution {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        Resolution::parse(text).ok_or(())
    }
}

/// An online load (kiosk top-up) as written before CREDIT FOR LOAD is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadEntry {
    pub card: ApplicationSerial,
    pub card_type: u8,
    /// The online counter INITIALIZE FOR LOAD answered: the load is number counter + 1.
    pub online_counter: u16,
    pub amount: Fen,
    pub balance_before: Fen,
    pub terminal: TerminalNumber,
    /// The host date-time clearing authorised the load with.
    pub at: CardDateTime,
}

impl LoadEntry {
    /// The number GET TRANSACTION PROVE asks for.
    pub fn transaction_number(&self) -> u16 {
        self.online_counter.wrapping_add(1)
    }
}

/// A durable load intent: CREDIT FOR LOAD may have reached the card.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a load intent must be completed or voided, or left for recovery on purpose"]
pub struct LoadIntent {
    id: i64,
    entry: LoadEntry,
}

/// A load row after the intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRow {
    pub id: i64,
    pub entry: LoadEntry,
    /// The card's load TAC; `None` for a voided load.
    pub tac: Option<[u8; 4]>,
    /// Clearing took the TAC.
    pub confirmed: bool,
}

const LOAD_COLUMNS: &str = "id, card_serial, card_type, online_counter, amount_fen, balance_before_fen, \
                            terminal_number, card_date_time, state, tac, confirmed_unix_ms";

fn load_entry_from_row(row: &SqliteRow) -> Result<LoadEntry, JournalError> {
    let number = |name: &'static str| -> Result<i64, JournalError> { Ok(row.try_get::<i64, _>(name)?) };
    let serial: String = row.try_get("card_serial")?;
    let terminal: String = row.try_get("terminal_number")?;
    let at: String = row.try_get("card_date_time")?;
    Ok(LoadEntry {
        card: ApplicationSerial::parse_hex(&serial).map_err(|_| corrupt(row, "card_serial"))?,
        card_type: u8::try_from(number("card_type")?).map_err(|_| corrupt(row, "card_type"))?,
        online_counter: u16::try_from(number("online_counter")?).map_err(|_| corrupt(row, "online_counter"))?,
        amount: Fen(u32::try_from(number("amount_fen")?).map_err(|_| corrupt(row, "amount_fen"))?),
        balance_before: Fen(
            u32::try_from(number("balance_before_fen")?).map_err(|_| corrupt(row, "balance_before_fen"))?
        ),
        terminal: TerminalNumber::parse_hex(&terminal).map_err(|_| corrupt(row, "terminal_number"))?,
        at: hex::decode(&at)
            .ok()
            .and_then(|bytes| CardDateTime::from_slice(&bytes).ok())
            .ok_or_else(|| corrupt(row, "card_date_time"))?,
    })
}

fn load_row_from_row(row: &SqliteRow) -> Result<LoadRow, JournalError> {
    let tac: Option<Vec<u8>> = row.try_get("tac")?;
    let tac = tac.map(|tac| <[u8; 4]>::try_from(tac.as_slice()).map_err(|_| corrupt(row, "tac"))).transpose()?;
    let confirmed: Option<i64> = row.try_get("confirmed_unix_ms")?;
    Ok(LoadRow { id: row.try_get("id")?, entry: load_entry_from_row(row)?, tac, confirmed: confirmed.is_some() })
}

impl Journal {
    /// Writes a load intent durably, before CREDIT FOR LOAD.
    pub fn write_load_intent(&self, entry: LoadEntry) -> Result<LoadIntent, JournalError> {
        let done = self.runtime.block_on(execute_one(
            &mut self.connection(),
            sqlx::query(
                "INSERT INTO card_load (card_serial, card_type, online_counter, amount_fen, balance_before_fen, \
                 terminal_number, card_date_time, state, written_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'intent', ?)",
            )
            .bind(entry.card.to_hex())
            .bind(i64::from(entry.card_type))
            .bind(i64::from(entry.online_counter))
            .bind(i64::from(entry.amount.0))
            .bind(i64::from(entry.balance_before.0))
            .bind(entry.terminal.to_string())
            .bind(hex::encode(entry.at.to_bytes()))
            .bind(now_unix_ms()),
        ))?;
        let id = done.last_insert_rowid();
        tracing::debug!(id, card = %entry.card.masked(), counter = entry.online_counter, amount = %entry.amount, "load intent written");
        Ok(LoadIntent { id, entry })
    }

    fn resolve_load(&self, id: i64, state: &str, tac: Option<[u8; 4]>) -> Result<(), JournalError> {
        let done = self.runtime.block_on(execute_one(
            &mut self.connection(),
            sqlx::query(
                "UPDATE card_load SET state = ?, tac = ?, resolved_unix_ms = ? WHERE id = ? AND state = 'intent'",
            )
            .bind(state)
            .bind(tac.map(|tac| tac.to_vec()))
            .bind(now_unix_ms())
            .bind(id),
        ))?;
        if done.rows_affected() != 1 {
            return Err(JournalError::NotAnIntent(id));
        }
        Ok(())
    }

    /// The unresolved load intents of one card, oldest first.
    pub fn unresolved_loads_for(&self, card: &ApplicationSerial) -> Result<Vec<LoadIntent>, JournalError> {
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {LOAD_COLUMNS} FROM card_load WHERE state = 'intent' AND card_serial = ? ORDER BY id LIMIT ?"
            ))
            .bind(card.to_hex())
            .bind(i64::from(ROWS_MAX))
            .fetch_all(&mut *self.connection()),
        )?;
        rows.iter().map(|row| Ok(LoadIntent { id: row.try_get("id")?, entry: load_entry_from_row(row)? })).collect()
    }

    /// Completed loads clearing has not confirmed yet, oldest first.
    pub fn unconfirmed_loads(&self) -> Result<Vec<LoadRow>, JournalError> {
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {LOAD_COLUMNS} FROM card_load WHERE state = 'completed' AND confirmed_unix_ms IS NULL \
                 ORDER BY id LIMIT ?"
            ))
            .bind(i64::from(ROWS_MAX))
            .fetch_all(&mut *self.connection()),
        )?;
        rows.iter().map(load_row_from_row).collect()
    }

    /// Records that clearing took the load's TAC.
    pub fn mark_load_confirmed(&self, id: i64) -> Result<(), JournalError> {
        self.runtime.block_on(execute_one(
            &mut self.connection(),
            sqlx::query("UPDATE card_load SET confirmed_unix_ms = ? WHERE id = ? AND state = 'completed'")
                .bind(now_unix_ms())
                .bind(id),
        ))?;
        Ok(())
    }

    /// Every load row of `card` (completed and voided), oldest first.
    pub fn loads_for(&self, card: &ApplicationSerial) -> Result<Vec<LoadRow>, JournalError> {
        let rows = self.runtime.block_on(
            sqlx::query(&format!(
                "SELECT {LOAD_COLUMNS} FROM card_load WHERE card_serial = ? AND state <> 'intent' ORDER BY id LIMIT ?"
            ))
            .bind(card.to_hex())
            .bind(i64::from(ROWS_MAX))
            .fetch_all(&mut *self.connection()),
        )?;
        rows.iter().map(load_row_from_row).collect()
    }
}

impl LoadIntent {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn entry(&self) -> &LoadEntry {
        &self.entry
    }

    /// The card credited: its TAC is written durably.
    pub fn complete(self, journal: &Journal, tac: [u8; 4]) -> Result<LoadRow, JournalError> {
        journal.resolve_load(self.id, "completed", Some(tac))?;
        tracing::debug!(id = self.id, card = %self.entry.card.masked(), "load completed");
        Ok(LoadRow { id: self.id, entry: self.entry, tac: Some(tac), confirmed: false })
    }

    /// The card did not credit.
    pub fn void(self, journal: &Journal) -> Result<LoadRow, JournalError> {
        journal.resolve_load(self.id, "voided", None)?;
        tracing::debug!(id = self.id, card = %self.entry.card.masked(), "load voided");
        Ok(LoadRow { id: self.id, entry: self.entry, tac: None, confirmed: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement whose implicit transaction fails to commit is an error of
    /// [`execute_one`]; read as `INSERT … RETURNING` with `fetch_one` (how
    /// intents were written before) the same failure answered a row. The
    /// commit is made to fail by a deferred foreign key, which SQLite checks
    /// when the statement's transaction commits.
    #[test]
    fn a_commit_that_fails_is_an_error_of_execute_one() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut connection =
                SqliteConnectOptions::new().filename(":memory:").connect().await.expect("in-memory database");
            sqlx::raw_sql(
                "CREATE TABLE parent (id INTEGER PRIMARY KEY); CREATE TABLE child (id INTEGER PRIMARY KEY, \
                 parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .execute(&mut connection)
            .await
            .expect("schema");
            async fn children(connection: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar("SELECT COUNT(*) FROM child").fetch_one(connection).await
            }

            let refused = execute_one(&mut connection, sqlx::query("INSERT INTO child (parent) VALUES (?)").bind(7))
                .await
                .expect_err("the commit fails");
            assert!(refused.to_string().contains("FOREIGN KEY"), "{refused}");
            assert_eq!(children(&mut connection).await.expect("count"), 0);

            let answered = sqlx::query("INSERT INTO child (parent) VALUES (?) RETURNING id")
                .bind(7)
                .fetch_one(&mut connection)
                .await;
            let answered = answered.map(|_| ()).map_err(|error| error.to_string());
            assert_eq!(answered, Ok(()), "sqlx drops the error of the commit made by the reset");
            assert_eq!(children(&mut connection).await.expect("count"), 0, "yet nothing was committed");

            sqlx::query("INSERT INTO parent (id) VALUES (7)").execute(&mut connection).await.expect("parent");
            let done = execute_one(&mut connection, sqlx::query("INSERT INTO child (parent) VALUES (?)").bind(7))
                .await
                .expect("committed");
            assert_eq!((done.rows_affected(), done.last_insert_rowid()), (1, 1));
            assert_eq!(children(&mut connection).await.expect("count"), 1);
        });
    }
}
