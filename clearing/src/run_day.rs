//! `run-day`: clear, settle and report one business day.
//!
//! 1. **Clear** the day's pending records in chunks of at most
//!    [`CHUNK_RECORDS_MAX`], in the order (card, card time, kind, counter, id).
//!    For each chunk: verify the TACs through the HSM (`verify_tacs`, batched),
//!    check every record against its terminal, its card's shadow account and the
//!    blacklist, then in **one database transaction** mark each record cleared or
//!    quarantined (with its reason), move the shadow accounts, record the spent
//!    counters, and post the chunk's ledger entry. A record's state is the
//!    durable cursor: a chunk either committed all of this or none of it, so a
//!    job killed at any point and run again picks up exactly the records still
//!    pending and never posts twice.
//! 2. **Settle** the cleared purchases not yet settled, per merchant, with its
//!    fee rate and the rounding rule of [`crate::money`], in one transaction (a
//!    new settlement run only when there is something new to settle: re-running
//!    a settled day changes nothing).
//! 3. **Write** the settlement file (CSV) and its manifest, signed by the HSM
//!    (Ed25519, deterministic), and the reconciliation report: all derived from
//!    the database alone, so a re-run writes the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use hsm_sim::command::{LoadTac, PurchaseTac, TacRecord};
use hsm_sim::{HsmClient, TacVerdict};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use crate::batch::RecordKind;
use crate::db::{Connection, Db, Dialect};
use crate::error::Error;
use crate::grey::{self, CardPosition, Evidence, GreyDecision, GreyState, OpenGrey};
use crate::ledger::{self, Account};
use crate::money::{BusinessDay, FeeRate, fee_fen};
use crate::on_connection;

/// The most records cleared in one chunk (one HSM round, one database transaction).
pub const CHUNK_RECORDS_MAX: i64 = 5_000;
/// An upload later than this after the card's transaction time is quarantined as late.
pub const LATE_UPLOAD_SECONDS_MAX: i64 = 7 * 86_400;
/// The most chunks in one run (a bound on the loop: 5 × 10⁹ records).
pub const CHUNKS_MAX: u64 = 1_000_000;
/// Chunks read and decided that wait for the writer, beside the one it writes
/// and the one being read.
const PIPELINE_CHUNKS_AHEAD: usize = 1;
/// The most rows in one statement of a chunk's write (multi-row VALUES, at most
/// 7 values a row: SQLite allows 32,766 parameters a statement, PostgreSQL
/// 65,535). 4,096 rather than 1,000: a chunk's outcomes in 2-5 statements
/// instead of 5-10 (PostgreSQL write of a chunk 76 -> 70 ms, run-day 6 % faster).
const WRITE_ROWS_PER_STATEMENT: usize = 4_096;
const _: () = assert!(WRITE_ROWS_PER_STATEMENT * 7 <= 32_766, "SQLite's parameters a statement");
/// SQLite: WAL pages between checkpoints while run-day clears (64 MiB), and SQLite's default.
const CLEARING_WAL_CHECKPOINT_PAGES: u32 = 16_384;
const SQLITE_WAL_CHECKPOINT_PAGES_DEFAULT: u32 = 1_000;
/// The kind of a chunk's totals (`chunk_totals`) of the grey records it confirmed.
const GREY_KIND: &str = "grey";
/// The HSM key label that signs settlement files.
pub const SIGNING_KEY_DEFAULT: &str = "settlement.signing";

/// Why a record was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Refused at upload (a field did not parse).
    Malformed,
    UnknownTerminal,
    RevokedTerminal,
    UnknownCard,
    /// The HSM says the TAC is wrong.
    ForgedTac,
    /// The HSM refused the record's fields.
    TacRejected,
    BlacklistedCard,
    LateUpload,
    /// The card's counter was already cleared (a replayed or repeated record).
    Duplicate,
    /// The counter is behind the shadow account but was never cleared (out of order).
    StaleCounter,
    /// The counter is ahead of the shadow account: records are missing before it.
    CounterGap,
    /// The balance before differs from the shadow account (a cloned or tampered card).
    BalanceDiscontinuity,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownTerminal => "unknown_terminal",
            Reason::RevokedTerminal => "revoked_terminal",
            Reason::UnknownCard => "unknown_card",
            Reason::ForgedTac => "forged_tac",
            Reason::TacRejected => "tac_rejected",
            Reason::BlacklistedCard => "blacklisted_card",
            Reason::LateUpload => "late_upload",
            Reason::Duplicate => "duplicate",
            Reason::StaleCounter => "stale_counter",
            Reason::CounterGap => "counter_gap",
            Reason::BalanceDiscontinuity => "balance_discontinuity",
        }
    }
}

/// The moments a test can stop the job at (to kill it there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// A chunk's records are verified and decided; nothing of it is written yet.
    ChunkDecided(u64),
    /// A chunk's transaction is written but not committed.
    ChunkBeforeCommit(u64),
    ChunkCommitted(u64),
    SettlementCommitted,
    FileWritten,
}

impl Step {
    pub fn name(&self) -> String {
        match self {
            Step::ChunkDecided(n) => format!("chunk-decided:{n}"),
            Step::ChunkBeforeCommit(n) => format!("chunk-before-commit:{n}"),
            Step::ChunkCommitted(n) => format!("chunk-committed:{n}"),
            Step::SettlementCommitted => "settlement-committed".into(),
            Step::FileWritten => "file-written".into(),
        }
    }
}

pub type StepHook = Arc<dyn Fn(Step) + Send + Sync>;

#[derive(Clone)]
pub struct RunOptions {
    pub day: BusinessDay,
    /// Where the settlement file, its manifest and the reconciliation report go.
    pub out_dir: PathBuf,
    pub signing_key: String,
    /// Records per chunk, 1..=[`CHUNK_RECORDS_MAX`].
    pub chunk_records: i64,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Called at each [`Step`] (tests kill the process there).
    pub on_step: Option<StepHook>,
}

impl RunOptions {
    pub fn new(day: BusinessDay, out_dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            day,
            out_dir: out_dir.into(),
            signing_key: SIGNING_KEY_DEFAULT.into(),
            chunk_records: CHUNK_RECORDS_MAX,
            progress: false,
            on_step: None,
        }
    }

    fn step(&self, step: Step) {
        if let Some(hook) = &self.on_step {
            hook(step);
        }
    }
}

/// One merchant's line of a settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SettlementLine {
    pub settlement_run: i64,
    pub merchant_id: String,
    pub settlement_account: String,
    pub record_count: i64,
    pub gross_fen: i64,
    pub fee_rate: String,
    pub fee_fen: i64,
    pub net_fen: i64,
}

/// The day's result: derived from the database alone, so identical on every re-run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DaySummary {
    pub business_day: String,
    pub records: i64,
    pub cleared: i64,
    pub quarantined: i64,
    pub pending: i64,
    /// Quarantined records by reason, with the records refused at upload
    /// (`malformed`: they never became transactions, so `records` and
    /// `quarantined` do not count them) listed under the day of their own
    /// date-time, or the day they were received.
    pub quarantined_by_reason: BTreeMap<String, i64>,
    pub purchases_fen: i64,
    pub loads_fen: i64,
    /// Grey records (purchases a terminal could not settle with the card,
    /// `crate::grey`) confirmed by the card's later records in this day's runs:
    /// paid to their merchants and settled with this day.
    pub grey_confirmed: i64,
    pub grey_confirmed_fen: i64,
    /// The grey records of this day (by card time) by state: open, confirmed, proved, voided.
    pub grey_by_state: BTreeMap<String, i64>,
    pub settlements: Vec<SettlementLine>,
    pub gross_fen: i64,
    pub fee_fen: i64,
    pub net_fen: i64,
    /// The sum of every posting in the ledger: always 0.
    pub ledger_total_fen: i64,
    /// −(card float) equals the sum of the shadow balances.
    pub card_float_matches_shadows: bool,
    /// Settled gross equals the cleared purchases of the day and the grey records its runs confirmed.
    pub settled_equals_cleared: bool,
    pub settlement_file: String,
    pub settlement_sha256: String,
    pub settlement_signature: String,
}

/// What this run did (differs between a first run and a re-run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    pub chunks: u64,
    pub records_processed: u64,
    pub tacs_verified: u64,
    pub hsm_micros: u64,
    pub settlement_runs_added: u64,
}

/// A pending record as read back, with its fields as types.
struct Pending {
    transaction_id: i64,
    kind: RecordKind,
    serial: ApplicationSerial,
    counter: i64,
    balance_before: i64,
    amount: i64,
    transaction_type: TransactionType,
    terminal: TerminalNumber,
    terminal_serial: u32,
    occurred_at: String,
    at: CardDateTime,
    tac: [u8; 4],
    received_at: i64,
}

fn inconsistent(what: &str) -> impl Fn(card_host::model::ValueError) -> Error + '_ {
    move |error| Error::Inconsistent(format!("{what}: {error}"))
}

impl Pending {
    /// The columns of a pending record, in the order of a chunk line.
    const COLUMNS: [&'static str; 12] = [
        "transaction_id",
        "kind",
        "card_serial",
        "counter",
        "balance_before",
        "amount_fen",
        "transaction_type",
        "terminal_number",
        "terminal_serial",
        "occurred_at",
        "tac",
        "received_at",
    ];

    /// One record of a chunk as the database joined it: [`Pending::COLUMNS`]
    /// separated by commas (none of them holds one).
    fn from_line(line: &str) -> Result<Pending, Error> {
        let mut fields = line.split(',');
        let mut next = |name: &str| fields.next().ok_or_else(|| Error::Inconsistent(format!("chunk line: no {name}")));
        let number = |name: &str, text: &str| {
            text.parse::<i64>().map_err(|_| Error::Inconsistent(format!("{name} {text:?} is not a number")))
        };
        let transaction_id = number("transaction_id", next("transaction_id")?)?;
        let kind = next("kind")?;
        let kind = RecordKind::parse(kind).ok_or_else(|| Error::Inconsistent(format!("kind {kind}")))?;
        let serial = ApplicationSerial::parse_hex(next("card_serial")?).map_err(inconsistent("card_serial"))?;
        let counter = number("counter", next("counter")?)?;
        let balance_before = number("balance_before", next("balance_before")?)?;
        let amount = number("amount_fen", next("amount_fen")?)?;
        let transaction_type = TransactionType::from_code(number("transaction_type", next("transaction_type")?)? as u8)
            .map_err(inconsistent("transaction_type"))?;
        let terminal = TerminalNumber::parse_hex(next("terminal_number")?).map_err(inconsistent("terminal_number"))?;
        let terminal_serial = number("terminal_serial", next("terminal_serial")?)? as u32;
        let occurred_at = next("occurred_at")?.to_owned();
        let date_time = hex::decode(&occurred_at).map_err(|_| Error::Inconsistent("occurred_at".into()))?;
        let tac: [u8; 4] = hex::decode(next("tac")?)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| Error::Inconsistent("tac".into()))?;
        let received_at = number("received_at", next("received_at")?)?;
        Ok(Pending {
            transaction_id,
            kind,
            serial,
            counter,
            balance_before,
            amount,
            transaction_type,
            terminal,
            terminal_serial,
            at: CardDateTime::from_slice(&date_time).map_err(inconsistent("occurred_at"))?,
            occurred_at,
            tac,
            received_at,
        })
    }

    /// The clearing order's key: (card, card time, kind, counter, id).
    fn clearing_order(&self) -> ([u8; 8], &str, &'static str, i64, i64) {
        (self.serial.0, self.occurred_at.as_str(), self.kind.as_str(), self.counter, self.transaction_id)
    }

    fn tac_record(&self) -> TacRecord {
        match self.kind {
            RecordKind::Purchase => TacRecord::Purchase(PurchaseTac {
                serial: self.serial,
                amount: Fen(self.amount as u32),
                kind: self.transaction_type,
                terminal: self.terminal,
                terminal_serial: self.terminal_serial,
                at: self.at,
                tac: self.tac,
            }),
            RecordKind::Load => TacRecord::Load(LoadTac {
                serial: self.serial,
                new_balance: Fen((self.balance_before + self.amount) as u32),
                online_counter: self.counter as u16,
                amount: Fen(self.amount as u32),
                kind: self.transaction_type,
                terminal: self.terminal,
                at: self.at,
                tac: self.tac,
            }),
        }
    }
}

struct TerminalInfo {
    merchant_id: String,
    active: bool,
}

#[derive(Clone)]
struct CardState {
    key_set: String,
    balance_fen: i64,
    offline_counter: i64,
    online_counter: i64,
    changed: bool,
    /// (balance, offline counter, online counter) as read: the update is refused
    /// if the account moved meanwhile (a replacement, another job).
    read: (i64, i64, i64),
}

/// Reference data read once per run: terminals and the blacklist's latest state per card.
struct Reference {
    terminals: HashMap<String, TerminalInfo>,
    /// card serial → the date-time (YYYYMMDDhhmmss) from which it is blacklisted.
    blacklisted_from: HashMap<String, String>,
}

async fn load_reference(db: &Db) -> Result<Reference, Error> {
    let mut terminals = HashMap::new();
    for row in sqlx::query("SELECT terminal_number, merchant_id, status FROM terminals").fetch_all(&db.pool).await? {
        let status: String = row.try_get("status")?;
        terminals.insert(
            row.try_get("terminal_number")?,
            TerminalInfo { merchant_id: row.try_get("merchant_id")?, active: status == "active" },
        );
    }
    let mut blacklisted_from = HashMap::new();
    for row in
        sqlx::query("SELECT card_serial, action, listed_at FROM blacklist ORDER BY version").fetch_all(&db.pool).await?
    {
        let card: String = row.try_get("card_serial")?;
        if row.try_get::<String, _>("action")? == "add" {
            blacklisted_from.insert(card, row.try_get("listed_at")?);
        } else {
            blacklisted_from.remove(&card);
        }
    }
    Ok(Reference { terminals, blacklisted_from })
}

async fn load_cards(reader: &Db, serials: &[String]) -> Result<HashMap<String, CardState>, Error> {
    // The serials as one parameter (a JSON array or an array literal: sqlx's
    // `Any` binds no arrays), one statement. On
    // PostgreSQL a join on `unnest`: `= ANY(array)` on a small cards table was
    // planned as a scan testing each row against every element (0.5 s for 1,250).
    // The accounts come back as one text, as the chunk does (decoding 5 values
    // × 1,250 rows through sqlx's `Any` took 3.1 ms against 1.0 ms, SQLite,
    // idle): per card `serial,balance,offline,online,N,KEY_SET` with N the key
    // set's length in bytes (it is free text), cards separated by `;`.
    let (list, chosen, bytes) = match reader.dialect {
        crate::db::Dialect::Sqlite => {
            (Value::from(serials).to_string(), "SELECT value FROM json_each(?)", "length(CAST(key_set AS BLOB))")
        }
        crate::db::Dialect::Postgres => (
            format!("{{{}}}", serials.join(",")),
            "SELECT serial FROM unnest(CAST($1 AS TEXT[])) AS chosen(serial)",
            "octet_length(key_set)",
        ),
    };
    let sql = format!(
        "SELECT string_agg(card_serial || ',' || balance_fen || ',' || offline_counter || ',' || online_counter
         || ',' || {bytes} || ',' || key_set, ';') AS cards FROM cards WHERE card_serial IN ({chosen})"
    );
    let text: Option<String> = sqlx::query(&sql).bind(list).fetch_one(&reader.pool).await?.try_get("cards")?;
    parse_cards(text.as_deref().unwrap_or(""))
}

/// The shadow accounts as [`load_cards`] reads them: per card
/// `serial,balance,offline,online,N,KEY_SET` (N: the key set's length in bytes),
/// cards separated by `;`.
fn parse_cards(text: &str) -> Result<HashMap<String, CardState>, Error> {
    let mut cards = HashMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut fields = rest.splitn(6, ',');
        let mut next = |name: &str| fields.next().ok_or_else(|| Error::Inconsistent(format!("card line: no {name}")));
        let serial = next("card_serial")?.to_owned();
        let mut number = |name: &str| {
            let text = next(name)?;
            text.parse::<i64>().map_err(|_| Error::Inconsistent(format!("{name} {text:?} is not a number")))
        };
        let (balance_fen, offline_counter, online_counter) =
            (number("balance_fen")?, number("offline_counter")?, number("online_counter")?);
        let key_set_bytes =
            usize::try_from(number("key_set length")?).map_err(|_| Error::Inconsistent("key_set length".into()))?;
        let tail = fields.next().ok_or_else(|| Error::Inconsistent("card line: no key_set".into()))?;
        let key_set = tail.get(..key_set_bytes).ok_or_else(|| Error::Inconsistent("card line: key_set".into()))?;
        rest = match &tail[key_set_bytes..] {
            "" => "",
            more => more.strip_prefix(';').ok_or_else(|| Error::Inconsistent("card line: after key_set".into()))?,
        };
        cards.insert(
            serial,
            CardState {
                key_set: key_set.to_owned(),
                balance_fen,
                offline_counter,
                online_counter,
                changed: false,
                read: (balance_fen, offline_counter, online_counter),
            },
        );
    }
    Ok(cards)
}

/// Clears the day's pending records, chunk after chunk in the clearing order.
/// While a chunk is written, the next ones (of other cards) are read, verified
/// by the HSM and decided: pipelined, on a reading connection of its own. A
/// pass ends when nothing is left after the cursor; a last pass from the start
/// takes records that arrived behind it meanwhile.
async fn clear_pending(
    db: &Db,
    hsm: &HsmClient,
    options: &RunOptions,
    reference: &Reference,
    stats: &mut RunStats,
    bar: &indicatif::ProgressBar,
) -> Result<(), Error> {
    let reader = db.reader().await?;
    if db.dialect == crate::db::Dialect::Postgres {
        // Fresh statistics for the day's records: right after a bulk upload,
        // before autovacuum has analysed them, the planner took the day for a
        // few thousand rows and read each chunk by sorting the whole day
        // against `clearings` (0.5-0.9 s a chunk instead of 10-20 ms). ANALYZE
        // samples a fixed number of rows (0.17 s for 1,000,000).
        sqlx::query("ANALYZE transactions").execute(&db.pool).await?;
    }
    if db.dialect == crate::db::Dialect::Sqlite {
        // Checkpoint the WAL every 64 MiB instead of every 4 MiB while clearing:
        // each checkpoint syncs, and at 4 MiB one came every few chunks
        // (200,000 records: 119k -> 129k records/s). Back to SQLite's default after.
        sqlx::query(&format!("PRAGMA wal_autocheckpoint = {CLEARING_WAL_CHECKPOINT_PAGES}")).execute(&db.pool).await?;
    }
    // The last pass looks only at records stored after the run began (above
    // this id): every record pending then is taken by the first pass. Reading
    // the whole day again against `clearings` cost 0.7 s of 1,000,000 records
    // on PostgreSQL. (A record released from quarantine during the run, or an
    // upload still uncommitted when it began, waits for the next run of its day.)
    let high_water: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(MAX(transaction_id), 0) AS BIGINT) FROM transactions")
            .fetch_one(&db.pool)
            .await?;
    // Two loops in one task: the reader prepares chunks (read, HSM, decide)
    // and queues them; the writer commits them in order. The reader runs up
    // to PIPELINE_CHUNKS_AHEAD + 1 chunks ahead of the commits, which is safe
    // while each chunk holds whole cards (its successors' cards are others);
    // after a chunk that does not, and before a last pass, it waits for every
    // chunk queued to be committed.
    let (queue, queued) = tokio::sync::mpsc::channel::<Prepared>(PIPELINE_CHUNKS_AHEAD);
    let (committed, commits) = tokio::sync::watch::channel(0u64);
    let writer_stopped = || Error::Inconsistent("the chunk writer stopped".into());
    // Each loop owns its end of the channels, so that either one stopping (done
    // or failed) closes them and the other stops waiting.
    let reading = async {
        let (queue, mut commits) = (queue, commits);
        let (mut number, mut sent, mut tacs_verified, mut hsm_micros) = (1u64, 0u64, 0u64, 0u64);
        let (mut after, mut since, mut in_pass): (Option<Cursor>, Option<i64>, u64) = (None, None, 0);
        while sent < CHUNKS_MAX {
            let Some(chunk) = prepare_chunk(&reader, hsm, options, reference, after.as_ref(), since, number).await?
            else {
                if in_pass == 0 {
                    break;
                }
                // The pass is done: once more from the start, for late arrivals
                // behind the cursor, once every chunk of it is committed.
                commits.wait_for(|&n| n >= sent).await.map_err(|_| writer_stopped())?;
                (after, since, in_pass) = (None, Some(high_water), 0);
                continue;
            };
            tracing::debug!(
                chunk = number,
                records = chunk.records.len(),
                select_micros = chunk.select_micros,
                cards_micros = chunk.cards_micros,
                decided_micros = chunk.decided_micros,
                hsm_micros = chunk.hsm_micros,
                "chunk decided"
            );
            (number, in_pass) = (number + 1, in_pass + 1);
            tacs_verified += chunk.tacs_verified;
            hsm_micros += chunk.hsm_micros;
            after = Some(chunk.cursor.clone());
            let whole_cards = chunk.whole_cards;
            queue.send(chunk).await.map_err(|_| writer_stopped())?;
            sent += 1;
            if !whole_cards {
                // The next chunk may hold this one's last card: its shadow account as committed.
                commits.wait_for(|&n| n >= sent).await.map_err(|_| writer_stopped())?;
            }
        }
        Ok::<_, Error>((tacs_verified, hsm_micros))
    };
    // The writer is a task of its own, so that building a chunk's statements
    // runs beside the reader's parsing and deciding (on another thread of the
    // runtime), not between them: with both loops in one task the writing
    // connection waited on the other loop's CPU work half of the time.
    let writing = {
        let mut writer = ChunkWriter::new(db).await?;
        let (dialect, options, bar, mut stats) = (db.dialect, options.clone(), bar.clone(), std::mem::take(stats));
        AbortOnDrop(tokio::spawn(async move {
            let (mut queued, committed) = (queued, committed);
            while let Some(chunk) = queued.recv().await {
                match write_chunk(&mut writer, dialect, &options, chunk, &mut stats).await {
                    Ok(processed) => {
                        committed.send_modify(|n| *n += 1);
                        bar.inc(processed);
                    }
                    Err(error) => return (stats, Err(error)),
                }
            }
            writer.close().await;
            (stats, Ok(()))
        }))
    };
    let (read, written) = tokio::join!(reading, writing.join());
    let (written_stats, written) = written?;
    *stats = written_stats;
    // The writer's error first: the reader's is then only that the writer stopped.
    written?;
    let (tacs_verified, hsm_micros) = read?;
    stats.tacs_verified += tacs_verified;
    stats.hsm_micros += hsm_micros;
    // Its own reading connection (see Db::reader).
    reader.close().await;
    if db.dialect == crate::db::Dialect::Sqlite {
        sqlx::query(&format!("PRAGMA wal_autocheckpoint = {SQLITE_WAL_CHECKPOINT_PAGES_DEFAULT}"))
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// A task that is aborted if its handle is dropped before it ends (the run
/// that spawned it was cancelled or failed).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, Error> {
        (&mut self.0).await.map_err(|error| Error::Inconsistent(format!("the chunk writer failed: {error}")))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Clears, settles and reports one day. Safe to run again, and to run again
/// after being killed at any point: the totals come out the same.
pub async fn run_day(db: &Db, hsm: &HsmClient, options: &RunOptions) -> Result<(DaySummary, RunStats), Error> {
    assert!((1..=CHUNK_RECORDS_MAX).contains(&options.chunk_records), "chunk size out of range");
    let day = options.day.to_string();
    let mut stats = RunStats::default();
    let reference = load_reference(db).await?;
    // Pending: the day's records less those with an outcome (two index counts, no join).
    let pending_total: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM transactions WHERE business_day = $1)
         - (SELECT COUNT(*) FROM clearings WHERE business_day = $1)",
    )
    .bind(&day)
    .fetch_one(&db.pool)
    .await?;
    let bar = if options.progress {
        let bar = indicatif::ProgressBar::new(pending_total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} records, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("clearing {day}"));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    sqlx::query(
        "INSERT INTO day_runs (business_day, settlement_runs) VALUES ($1, 0) ON CONFLICT (business_day) DO NOTHING",
    )
    .bind(&day)
    .execute(&db.pool)
    .await?;
    tracing::info!(day = %day, pending = pending_total, "clearing");
    clear_pending(db, hsm, options, &reference, &mut stats, &bar).await?;
    bar.finish_and_clear();
    let greys_behind = grey::resolve_behind(db, &day).await?;
    if greys_behind > 0 {
        tracing::info!(day = %day, decided = greys_behind, "grey records decided by counters cleared before them");
    }
    stats.settlement_runs_added = settle(db, &day).await?;
    options.step(Step::SettlementCommitted);
    let summary = write_outputs(db, hsm, options).await?;
    options.step(Step::FileWritten);
    tracing::info!(
        day = %day, cleared = summary.cleared, quarantined = summary.quarantined,
        gross_fen = summary.gross_fen, fee_fen = summary.fee_fen, "day cleared"
    );
    Ok((summary, stats))
}

/// Where a chunk ends in the clearing order (card, card time, kind, counter, id):
/// the next chunk starts after it.
#[derive(Debug, Clone)]
struct Cursor {
    card_serial: String,
    occurred_at: String,
    kind: &'static str,
    counter: i64,
    transaction_id: i64,
}

/// A chunk read, verified by the HSM and decided; nothing of it written yet.
struct Prepared {
    records: Vec<Pending>,
    outcomes: Vec<Result<String, (Reason, String)>>,
    /// Records whose counter is behind the shadow account: a duplicate if the counter was cleared before.
    possibly_spent: Vec<usize>,
    cards: HashMap<String, CardState>,
    /// Grey records the chunk's records decided.
    greys: Vec<GreyDecision>,
    cursor: Cursor,
    /// The chunk holds every pending record of its cards up to the cursor's card,
    /// and no record after the cursor is of those cards: the next chunk's cards
    /// are others, so it may be read and decided while this one is written.
    whole_cards: bool,
    tacs_verified: u64,
    hsm_micros: u64,
    select_micros: u128,
    cards_micros: u128,
    decided_micros: u128,
}

/// Reads the next chunk after `after` (from the start with `None`), verifies
/// its TACs and decides its records against the shadow accounts as read now.
async fn prepare_chunk(
    reader: &Db,
    hsm: &HsmClient,
    options: &RunOptions,
    reference: &Reference,
    after: Option<&Cursor>,
    since: Option<i64>,
    number: u64,
) -> Result<Option<Prepared>, Error> {
    let day = options.day.to_string();
    let phase = std::time::Instant::now();
    // The chunk comes back as one text: each record's columns joined by commas,
    // records by semicolons. Read as rows, sqlx's `Any` decoding of 12 values ×
    // 5,000 rows cost more than the query (15 ms against 4.6 ms on SQLite,
    // idle). The aggregate takes the rows as the ordered subquery gives them;
    // an ORDER BY inside it made SQLite sort them again (8.2 against 6.0 ms,
    // idle), and the order is checked (sorted if need be) once parsed.
    let line = Pending::COLUMNS.join(" || ',' || ");
    let order = "card_serial, occurred_at, kind, counter, transaction_id";
    // Numbered placeholders in both dialects (SQLite: `?N`).
    let p = |n: usize| match reader.dialect {
        crate::db::Dialect::Sqlite => format!("?{n}"),
        crate::db::Dialect::Postgres => format!("${n}"),
    };
    let (after_clause, mut n) = match after {
        None => (String::new(), 2),
        Some(_) => (format!("AND ({order}) > ({}, {}, {}, {}, {})", p(2), p(3), p(4), p(5), p(6)), 7),
    };
    // Records stored after `since` only: by the primary key (SQLite: NOT
    // INDEXED keeps it off the day's index, whose scan this is to avoid).
    let (table, since_clause) = match since {
        None => ("transactions t", String::new()),
        Some(_) => {
            n += 1;
            let table = match reader.dialect {
                crate::db::Dialect::Sqlite => "transactions t NOT INDEXED",
                crate::db::Dialect::Postgres => "transactions t",
            };
            (table, format!("AND transaction_id > {}", p(n - 1)))
        }
    };
    let sql = format!(
        "SELECT string_agg({line}, ';') AS chunk FROM (
         SELECT * FROM {table} WHERE business_day = {} {after_clause} {since_clause}
         AND NOT EXISTS (SELECT 1 FROM clearings c WHERE c.transaction_id = t.transaction_id)
         ORDER BY {order} LIMIT {}) AS pending",
        p(1),
        p(n)
    );
    let mut query = sqlx::query(&sql).bind(&day);
    if let Some(cursor) = after {
        query = query
            .bind(&cursor.card_serial)
            .bind(&cursor.occurred_at)
            .bind(cursor.kind)
            .bind(cursor.counter)
            .bind(cursor.transaction_id);
    }
    if let Some(since) = since {
        query = query.bind(since);
    }
    let text: Option<String> = query.bind(options.chunk_records).fetch_one(&reader.pool).await?.try_get("chunk")?;
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut records = text.split(';').map(Pending::from_line).collect::<Result<Vec<_>, _>>()?;
    drop(text);
    // In the clearing order: one pass when it is (as the subquery gave it), a
    // stable sort otherwise. The key compares as the database's text columns do
    // (upper-case hex serials, digit date-times, `load` < `purchase`).
    if !records.is_sorted_by(|a, b| a.clearing_order() <= b.clearing_order()) {
        records.sort_by(|a, b| a.clearing_order().cmp(&b.clearing_order()));
    }
    let full = records.len() as i64 == options.chunk_records;
    // A full chunk may stop inside its last card: leave that card to the next
    // chunk, unless it is the only card (then the next chunk waits for this one).
    let mut whole_cards = !full;
    if full {
        let last = records[records.len() - 1].serial;
        let keep = records.iter().rposition(|r| r.serial != last).map_or(0, |i| i + 1);
        if keep > 0 {
            records.truncate(keep);
            whole_cards = true;
        }
    }
    let last = &records[records.len() - 1];
    let cursor = Cursor {
        card_serial: last.serial.to_hex(),
        occurred_at: last.occurred_at.clone(),
        kind: last.kind.as_str(),
        counter: last.counter,
        transaction_id: last.transaction_id,
    };
    let select_micros = phase.elapsed().as_micros();
    let mut serials: Vec<String> = records.iter().map(|r| r.serial.to_hex()).collect();
    serials.dedup();

    // The shadow accounts, read before the HSM round; the transaction that
    // writes them re-reads nothing, and the state and account guards refuse to
    // commit if another job cleared these records or moved these accounts meanwhile.
    let mut cards = load_cards(reader, &serials).await?;
    let mut open_greys = grey::load_open(reader, &serials).await?;
    let cards_micros = phase.elapsed().as_micros();

    // TACs, batched per key set, for every record of a known card.
    let mut verdicts: Vec<Option<TacVerdict>> = vec![None; records.len()];
    let mut by_key_set: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        if let Some(card) = cards.get(&record.serial.to_hex()) {
            by_key_set.entry(card.key_set.as_str()).or_default().push(index);
        }
    }
    let started = std::time::Instant::now();
    let mut tacs_verified = 0;
    for (key_set, indices) in &by_key_set {
        let batch: Vec<TacRecord> = indices.iter().map(|&i| records[i].tac_record()).collect();
        let answers = hsm.verify_tacs(key_set, &batch).await?;
        if answers.len() != batch.len() {
            return Err(Error::Inconsistent("the HSM answered a different number of verdicts".into()));
        }
        for (&index, verdict) in indices.iter().zip(answers) {
            verdicts[index] = Some(verdict);
        }
        tacs_verified += batch.len() as u64;
    }
    let hsm_micros = started.elapsed().as_micros() as u64;

    // Decide each record in order, moving the in-memory shadow accounts.
    let mut outcomes: Vec<Result<String, (Reason, String)>> = Vec::with_capacity(records.len());
    let mut possibly_spent: Vec<usize> = Vec::new();
    let mut spent_in_chunk: HashMap<(ApplicationSerial, RecordKind, i64), i64> = HashMap::new();
    let mut greys: Vec<GreyDecision> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let mut outcome = decide(record, verdicts[index], reference, &mut cards);
        if let Some(open) = open_greys.get_mut(&record.serial.to_hex())
            && !open.is_empty()
        {
            outcome = decide_with_greys(record, outcome, verdicts[index], reference, &mut cards, open, &mut greys);
        }
        let key = (record.serial, record.kind, record.counter);
        match &outcome {
            Ok(_) => {
                spent_in_chunk.insert(key, record.transaction_id);
            }
            Err((Reason::StaleCounter, _)) => match spent_in_chunk.get(&key) {
                Some(original) => {
                    outcome = Err((
                        Reason::Duplicate,
                        format!("counter {} already cleared in transaction {original}", record.counter),
                    ))
                }
                None => possibly_spent.push(index),
            },
            Err(_) => {}
        }
        outcomes.push(outcome);
    }
    let decided_micros = phase.elapsed().as_micros();
    options.step(Step::ChunkDecided(number));
    Ok(Some(Prepared {
        records,
        outcomes,
        possibly_spent,
        cards,
        greys,
        cursor,
        whole_cards,
        tacs_verified,
        hsm_micros,
        select_micros,
        cards_micros,
        decided_micros,
    }))
}

/// Where run-day writes its chunks: the pool's connection, or on PostgreSQL a
/// native connection of the writer's own (see [`Db::postgres_connection`]).
enum ChunkWriter {
    Pool(Db),
    Postgres(sqlx::PgConnection),
}

/// A chunk's transaction on the writer's connection.
enum ChunkTx<'c> {
    Any(sqlx::Transaction<'static, sqlx::Any>),
    Postgres(sqlx::Transaction<'c, sqlx::Postgres>),
}

impl ChunkWriter {
    async fn new(db: &Db) -> Result<ChunkWriter, Error> {
        Ok(match db.postgres_connection().await? {
            Some(connection) => ChunkWriter::Postgres(connection),
            None => ChunkWriter::Pool(db.clone()),
        })
    }

    async fn begin(&mut self) -> Result<ChunkTx<'_>, Error> {
        Ok(match self {
            ChunkWriter::Pool(db) => ChunkTx::Any(db.pool.begin().await?),
            ChunkWriter::Postgres(connection) => ChunkTx::Postgres(sqlx::Connection::begin(connection).await?),
        })
    }

    async fn close(self) {
        if let ChunkWriter::Postgres(connection) = self {
            // A connection that will not close cleanly is dropped all the same.
            let _ = sqlx::Connection::close(connection).await;
        }
    }
}

impl ChunkTx<'_> {
    fn connection(&mut self) -> Connection<'_> {
        match self {
            ChunkTx::Any(tx) => tx.into(),
            ChunkTx::Postgres(tx) => tx.into(),
        }
    }

    async fn commit(self) -> Result<(), Error> {
        match self {
            ChunkTx::Any(tx) => tx.commit().await?,
            ChunkTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// The outcomes' insert failed: a unique violation is another job deciding
/// the same records.
fn outcome_insert_error(error: sqlx::Error) -> Error {
    match error {
        sqlx::Error::Database(error) if error.is_unique_violation() => {
            Error::Conflict(format!("another job is clearing this day ({error})"))
        }
        error => error.into(),
    }
}

/// Writes a decided chunk in one transaction; returns how many records it cleared or quarantined.
async fn write_chunk(
    writer: &mut ChunkWriter,
    dialect: Dialect,
    options: &RunOptions,
    chunk: Prepared,
    stats: &mut RunStats,
) -> Result<u64, Error> {
    let phase = std::time::Instant::now();
    let day = options.day.to_string();
    let Prepared { records, mut outcomes, possibly_spent, cards, greys, .. } = chunk;
    let mut tx = writer.begin().await?;
    // The day's next chunk number (also a row lock: one clearing job per day at a time on PostgreSQL).
    let chunk_number: i64 = on_connection!(tx.connection(), c => sqlx::query_scalar(
        "UPDATE day_runs SET chunks_cleared = chunks_cleared + 1 WHERE business_day = $1 RETURNING chunks_cleared",
    )
    .bind(&day)
    .fetch_one(&mut *c)
    .await?);
    // A counter behind the shadow account: a duplicate if that counter was cleared.
    for &index in &possibly_spent {
        let record = &records[index];
        let spent: Option<i64> = on_connection!(tx.connection(), c => sqlx::query_scalar(
            "SELECT transaction_id FROM card_counters WHERE card_serial = $1 AND kind = $2 AND counter = $3",
        )
        .bind(record.serial.to_hex())
        .bind(record.kind.as_str())
        .bind(record.counter)
        .fetch_optional(&mut *c)
        .await?);
        if let Some(original) = spent {
            outcomes[index] = Err((
                Reason::Duplicate,
                format!("counter {} already cleared in transaction {original}", record.counter),
            ));
        } else if record.kind == RecordKind::Purchase
            && let Some(confirmed) =
                grey::confirmed_at(tx.connection(), &record.serial.to_hex(), record.counter).await?
        {
            // The purchase's own record after its grey record was confirmed
            // (paid once already), or another purchase at that counter.
            let same = confirmed.terminal_number == record.terminal.to_string()
                && confirmed.terminal_serial == i64::from(record.terminal_serial)
                && confirmed.amount == record.amount;
            let detail = if same {
                format!(
                    "counter {} was settled from grey record {} on {}: this record proves it, nothing to pay again",
                    record.counter, confirmed.grey_id, confirmed.resolved_day
                )
            } else {
                format!(
                    "counter {} was settled from grey record {} on {}, a purchase of terminal {} this record \
                     contradicts: an operator must reverse the grey record",
                    record.counter, confirmed.grey_id, confirmed.resolved_day, confirmed.terminal_number
                )
            };
            outcomes[index] = Err((Reason::Duplicate, detail));
        }
    }
    let mut purchases_by_merchant: BTreeMap<String, i64> = BTreeMap::new();
    let mut loads_fen: i64 = 0;
    let mut spent_counters: Vec<&Pending> = Vec::new();
    // The chunk's cleared records by (kind, merchant): count and amount.
    let mut totals: BTreeMap<(&'static str, &str), (i64, i64)> = BTreeMap::new();
    for (record, outcome) in records.iter().zip(&outcomes) {
        if let Ok(merchant) = outcome {
            let total = totals.entry((record.kind.as_str(), merchant.as_str())).or_default();
            *total = (total.0 + 1, total.1 + record.amount);
            match record.kind {
                RecordKind::Purchase => *purchases_by_merchant.entry(merchant.clone()).or_default() += record.amount,
                RecordKind::Load => loads_fen += record.amount,
            }
            spent_counters.push(record);
        }
    }
    // Grey records the chunk confirmed count in its totals apart (kind `grey`):
    // paid to their merchants and settled like purchases, not records of the day.
    for decision in greys.iter().filter(|d| d.state == GreyState::Confirmed) {
        let merchant = decision.merchant_id.as_deref().ok_or_else(|| {
            Error::Inconsistent(format!("grey record {} confirmed without a merchant", decision.grey_id))
        })?;
        let total = totals.entry((GREY_KIND, merchant)).or_default();
        *total = (total.0 + 1, total.1 + decision.amount);
    }
    // Every record's outcome INSERTed into the narrow `clearings` table
    // (migration 0007), not an UPDATE of its wide indexed row. Its primary key
    // is the guard: a record another job decided meanwhile fails the insert
    // (a unique violation, or PostgreSQL waits for the other job's commit
    // first), and the chunk fails whole with a conflict. A record with a
    // merchant is cleared, one without quarantined.
    let merchants: Vec<Option<&str>> = outcomes.iter().map(|o| o.as_ref().ok().map(String::as_str)).collect();
    let inserted = match tx.connection() {
        Connection::Postgres(c) => sqlx::query(
            "INSERT INTO clearings (transaction_id, business_day, clear_chunk, state, merchant_id, kind, amount_fen)
             SELECT id, $1, $2, CASE WHEN merchant IS NULL THEN 'quarantined' ELSE 'cleared' END, merchant, kind, amount
             FROM unnest($3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[]) AS r (id, merchant, kind, amount)",
        )
        .bind(&day)
        .bind(chunk_number)
        .bind(records.iter().map(|r| r.transaction_id).collect::<Vec<i64>>())
        .bind(&merchants)
        .bind(records.iter().map(|r| r.kind.as_str()).collect::<Vec<&str>>())
        .bind(records.iter().map(|r| r.amount).collect::<Vec<i64>>())
        .execute(&mut *c)
        .await
        .map_err(outcome_insert_error)?
        .rows_affected(),
        Connection::Any(c) => {
            let mut inserted = 0;
            for (records, merchants) in statement_parts(&records).zip(statement_parts(&merchants)) {
                let sql = format!(
                    "INSERT INTO clearings (transaction_id, business_day, clear_chunk, state, merchant_id, kind,
                     amount_fen) VALUES {}",
                    crate::db::row_placeholders(dialect, records.len(), 7, 1)
                );
                let mut insert = sqlx::query(&sql);
                for (record, merchant) in records.iter().zip(merchants) {
                    insert = insert
                        .bind(record.transaction_id)
                        .bind(&day)
                        .bind(chunk_number)
                        .bind(if merchant.is_some() { "cleared" } else { "quarantined" })
                        .bind(*merchant)
                        .bind(record.kind.as_str())
                        .bind(record.amount);
                }
                inserted += insert.execute(&mut *c).await.map_err(outcome_insert_error)?.rows_affected();
            }
            inserted
        }
    };
    if inserted != records.len() as u64 {
        return Err(Error::Conflict("another job is clearing this day".into()));
    }
    for (record, outcome) in records.iter().zip(&outcomes) {
        if let Err((reason, detail)) = outcome {
            // The record's batch and place are copied from its row.
            let copied = on_connection!(tx.connection(), c => sqlx::query(
                "INSERT INTO quarantine (terminal_id, batch_id, record_index, transaction_id, business_day, reason, detail)
                 SELECT terminal_id, batch_id, record_index, transaction_id, $2, $3, $4 FROM transactions
                 WHERE transaction_id = $1",
            )
            .bind(record.transaction_id)
            .bind(&day)
            .bind(reason.as_str())
            .bind(detail)
            .execute(&mut *c)
            .await?
            .rows_affected());
            if copied != 1 {
                return Err(Error::Inconsistent(format!("transaction {} vanished", record.transaction_id)));
            }
        }
    }
    let states_micros = phase.elapsed().as_micros();
    if !spent_counters.is_empty() {
        // The spent counters of the records just cleared, from the records as
        // read (not looked up again in the wide rows). No ON CONFLICT: a
        // counter cleared twice is a bug, and fails the chunk.
        let inserted = match tx.connection() {
            Connection::Postgres(c) => sqlx::query(
                "INSERT INTO card_counters (card_serial, kind, counter, transaction_id)
                 SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[])",
            )
            .bind(spent_counters.iter().map(|r| r.serial.to_hex()).collect::<Vec<String>>())
            .bind(spent_counters.iter().map(|r| r.kind.as_str()).collect::<Vec<&str>>())
            .bind(spent_counters.iter().map(|r| r.counter).collect::<Vec<i64>>())
            .bind(spent_counters.iter().map(|r| r.transaction_id).collect::<Vec<i64>>())
            .execute(&mut *c)
            .await?
            .rows_affected(),
            Connection::Any(c) => {
                let mut inserted = 0;
                for records in statement_parts(&spent_counters) {
                    let sql = format!(
                        "INSERT INTO card_counters (card_serial, kind, counter, transaction_id) VALUES {}",
                        crate::db::row_placeholders(dialect, records.len(), 4, 1)
                    );
                    let mut insert = sqlx::query(&sql);
                    for record in records {
                        insert = insert
                            .bind(record.serial.to_hex())
                            .bind(record.kind.as_str())
                            .bind(record.counter)
                            .bind(record.transaction_id);
                    }
                    inserted += insert.execute(&mut *c).await?.rows_affected();
                }
                inserted
            }
        };
        if inserted != spent_counters.len() as u64 {
            return Err(Error::Inconsistent("a cleared record's counter was not recorded".into()));
        }
    }
    let counters_micros = phase.elapsed().as_micros();
    let changed: Vec<(&String, &CardState)> = cards.iter().filter(|(_, card)| card.changed).collect();
    assert!(changed.iter().all(|(_, card)| card.balance_fen >= 0), "a shadow balance is never negative");
    // The new shadow accounts, joined to the cards, guarded by the values read:
    // an account that moved meanwhile is not updated, and the chunk fails.
    const SET_SHADOW: &str = "UPDATE cards SET balance_fen = shadow.balance_fen,
        offline_counter = shadow.offline_counter, online_counter = shadow.online_counter";
    const GUARD_SHADOW: &str = "WHERE cards.card_serial = shadow.card_serial
        AND cards.balance_fen = shadow.read_balance AND cards.offline_counter = shadow.read_offline
        AND cards.online_counter = shadow.read_online";
    let updated = match tx.connection() {
        Connection::Postgres(c) => {
            let column = |value: fn(&CardState) -> i64| changed.iter().map(|(_, card)| value(card)).collect::<Vec<_>>();
            sqlx::query(&format!(
                "{SET_SHADOW} FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[],
                 $6::BIGINT[], $7::BIGINT[]) AS shadow (card_serial, balance_fen, offline_counter, online_counter,
                 read_balance, read_offline, read_online) {GUARD_SHADOW}"
            ))
            .bind(changed.iter().map(|(serial, _)| serial.as_str()).collect::<Vec<&str>>())
            .bind(column(|card| card.balance_fen))
            .bind(column(|card| card.offline_counter))
            .bind(column(|card| card.online_counter))
            .bind(column(|card| card.read.0))
            .bind(column(|card| card.read.1))
            .bind(column(|card| card.read.2))
            .execute(&mut *c)
            .await?
            .rows_affected()
        }
        Connection::Any(c) => {
            let mut updated = 0;
            for rows in statement_parts(&changed) {
                let sql = format!(
                    "WITH shadow (card_serial, balance_fen, offline_counter, online_counter, read_balance,
                     read_offline, read_online) AS (VALUES {}) {SET_SHADOW} FROM shadow {GUARD_SHADOW}",
                    crate::db::row_placeholders(dialect, rows.len(), 7, 1)
                );
                let mut update = sqlx::query(&sql);
                for (serial, card) in rows {
                    update = update
                        .bind(serial.as_str())
                        .bind(card.balance_fen)
                        .bind(card.offline_counter)
                        .bind(card.online_counter)
                        .bind(card.read.0)
                        .bind(card.read.1)
                        .bind(card.read.2);
                }
                updated += update.execute(&mut *c).await?.rows_affected();
            }
            updated
        }
    };
    if updated != changed.len() as u64 {
        return Err(Error::Conflict("a shadow account moved while its records were cleared: run again".into()));
    }
    // The chunk's totals, which settlement and the summary add up (migration 0009): a few rows.
    let totals: Vec<_> = totals.into_iter().collect();
    for rows in statement_parts(&totals) {
        let sql = format!(
            "INSERT INTO chunk_totals (business_day, clear_chunk, kind, merchant_id, record_count, amount_fen) VALUES {}",
            crate::db::row_placeholders(dialect, rows.len(), 6, 1)
        );
        on_connection!(tx.connection(), c => {
            let mut insert = sqlx::query(&sql);
            for ((kind, merchant), (count, amount)) in rows {
                insert = insert.bind(&day).bind(chunk_number).bind(*kind).bind(*merchant).bind(*count).bind(*amount);
            }
            insert.execute(&mut *c).await?;
        });
    }
    let accounts_micros = phase.elapsed().as_micros();
    // Grey records the chunk decided; those confirmed are paid like cleared purchases.
    grey::write_decisions(tx.connection(), &day, chunk_number, &greys).await?;
    for decision in greys.iter().filter(|d| d.state == GreyState::Confirmed) {
        let merchant = decision.merchant_id.clone().ok_or_else(|| {
            Error::Inconsistent(format!("grey record {} confirmed without a merchant", decision.grey_id))
        })?;
        *purchases_by_merchant.entry(merchant).or_default() += decision.amount;
    }
    let purchases_fen: i64 = purchases_by_merchant.values().sum();
    let mut postings = vec![(Account::CardFloat, purchases_fen - loads_fen), (Account::TopupFunding, loads_fen)];
    postings.extend(
        purchases_by_merchant.iter().map(|(merchant, amount)| (Account::MerchantPayable(merchant.clone()), -amount)),
    );
    // One entry per chunk, keyed by the day's chunk number (never by a record:
    // a record quarantined in one chunk and released may clear in another).
    ledger::post(tx.connection(), &format!("clear:{day}:chunk:{chunk_number}"), &day, &postings).await?;
    let ledger_micros = phase.elapsed().as_micros();
    stats.chunks += 1;
    options.step(Step::ChunkBeforeCommit(stats.chunks));
    tx.commit().await?;
    options.step(Step::ChunkCommitted(stats.chunks));
    // Where the write's time goes (micros since it began, after each step).
    tracing::debug!(
        states_micros,
        counters_micros,
        accounts_micros,
        ledger_micros,
        chunk = stats.chunks,
        records = records.len(),
        written_micros = phase.elapsed().as_micros(),
        "chunk written"
    );
    stats.records_processed += records.len() as u64;
    Ok(records.len() as u64)
}

/// `rows` in the parts a chunk's write puts in one statement each:
/// [`WRITE_ROWS_PER_STATEMENT`] while that many are left, then powers of two
/// (4,996 = 4,096 + 512 + 256 + 128 + 4), so that the statements have a few
/// texts, each prepared once and cached (preparing a statement of 1,000 rows
/// anew every chunk took 5 % of the writing connection's time).
fn statement_parts<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size =
            if rest.len() >= WRITE_ROWS_PER_STATEMENT { WRITE_ROWS_PER_STATEMENT } else { 1 << rest.len().ilog2() };
        let (part, more) = rest.split_at(size);
        rest = more;
        Some(part)
    })
}

/// The checks of one record, in order; on success the shadow account moves and
/// the merchant to credit is returned.
fn decide(
    record: &Pending,
    verdict: Option<TacVerdict>,
    reference: &Reference,
    cards: &mut HashMap<String, CardState>,
) -> Result<String, (Reason, String)> {
    let terminal_key = record.terminal.to_string();
    let terminal = reference
        .terminals
        .get(&terminal_key)
        .ok_or((Reason::UnknownTerminal, format!("terminal {terminal_key} is not registered")))?;
    if !terminal.active {
        return Err((Reason::RevokedTerminal, format!("terminal {terminal_key} is revoked")));
    }
    let serial = record.serial.to_hex();
    let card = cards.get_mut(&serial).ok_or((Reason::UnknownCard, "the card was never issued".to_owned()))?;
    match verdict {
        Some(TacVerdict::Valid) => {}
        Some(TacVerdict::Invalid) => return Err((Reason::ForgedTac, "the HSM found the TAC wrong".to_owned())),
        Some(TacVerdict::Rejected(code)) => {
            return Err((Reason::TacRejected, format!("the HSM refused the record's fields ({code:?})")));
        }
        None => return Err((Reason::TacRejected, "no TAC verdict".to_owned())),
    }
    if let Some(from) = reference.blacklisted_from.get(&serial)
        && record.occurred_at.as_str() >= from.as_str()
    {
        return Err((Reason::BlacklistedCard, format!("blacklisted from {from}")));
    }
    let delay = record.received_at - record.at.unix_seconds() as i64;
    if delay > LATE_UPLOAD_SECONDS_MAX {
        return Err((Reason::LateUpload, format!("uploaded {delay} s after the transaction")));
    }
    let expected = match record.kind {
        RecordKind::Purchase => card.offline_counter,
        RecordKind::Load => card.online_counter,
    };
    if record.counter < expected {
        return Err((Reason::StaleCounter, format!("counter {} behind the expected {expected}", record.counter)));
    }
    if record.counter > expected {
        return Err((Reason::CounterGap, format!("counter {} but {expected} expected", record.counter)));
    }
    if record.balance_before != card.balance_fen {
        return Err((
            Reason::BalanceDiscontinuity,
            format!("balance before {} but the shadow account holds {}", record.balance_before, card.balance_fen),
        ));
    }
    match record.kind {
        RecordKind::Purchase => {
            assert!(record.amount <= card.balance_fen, "checked at upload: amount within the balance before");
            card.balance_fen -= record.amount;
            card.offline_counter += 1;
        }
        RecordKind::Load => {
            card.balance_fen += record.amount;
            card.online_counter += 1;
        }
    }
    card.changed = true;
    Ok(terminal.merchant_id.clone())
}

/// A record's decision in the light of its card's open grey records: a
/// counter gap or a balance discontinuity that a chain of grey records
/// explains exactly confirms them (the shadow account moves by them, and the
/// record is decided again); a purchase cleared at a grey record's counter
/// proves it (the same purchase: terminal, terminal serial, amount) or voids it.
fn decide_with_greys(
    record: &Pending,
    outcome: Result<String, (Reason, String)>,
    verdict: Option<TacVerdict>,
    reference: &Reference,
    cards: &mut HashMap<String, CardState>,
    open: &mut Vec<OpenGrey>,
    decisions: &mut Vec<GreyDecision>,
) -> Result<String, (Reason, String)> {
    let serial = record.serial.to_hex();
    let outcome = match outcome {
        Err((Reason::CounterGap | Reason::BalanceDiscontinuity, _)) if verdict == Some(TacVerdict::Valid) => {
            let Some(card) = cards.get(&serial) else {
                return outcome;
            };
            let evidence = match record.kind {
                RecordKind::Purchase => {
                    Evidence::Purchase { counter: record.counter, balance_before: record.balance_before }
                }
                RecordKind::Load => Evidence::Load { balance_before: record.balance_before },
            };
            let position = CardPosition { balance_fen: card.balance_fen, offline_counter: card.offline_counter };
            let merchant_of = |terminal: &str| {
                reference.terminals.get(terminal).filter(|info| info.active).map(|info| info.merchant_id.clone())
            };
            let chain = grey::explaining_chain(&position, &evidence, open, merchant_of);
            if chain.is_empty() {
                return outcome;
            }
            // Tried on the card as it would be after the chain: kept only if
            // the record then passes every check (a load may still fail on its
            // online counter, and then proves nothing here).
            let before = card.clone();
            let mut moved = card.clone();
            let mut confirmed = Vec::with_capacity(chain.len());
            let mut chained = Vec::with_capacity(chain.len());
            for (grey, merchant) in chain {
                moved.balance_fen -= grey.amount;
                moved.offline_counter += 1;
                moved.changed = true;
                chained.push(GreyDecision {
                    grey_id: grey.grey_id,
                    state: GreyState::Confirmed,
                    merchant_id: Some(merchant),
                    amount: grey.amount,
                    resolved_by: record.transaction_id,
                    detail: format!(
                        "the card's {} of transaction {} shows counter {} spent and {} fen debited",
                        record.kind.as_str(),
                        record.transaction_id,
                        grey.counter,
                        grey.amount
                    ),
                });
                confirmed.push(grey.grey_id);
            }
            cards.insert(serial.clone(), moved);
            match decide(record, verdict, reference, cards) {
                Ok(merchant) => {
                    decisions.extend(chained);
                    open.retain(|grey| !confirmed.contains(&grey.grey_id));
                    Ok(merchant)
                }
                Err(_) => {
                    cards.insert(serial.clone(), before);
                    outcome
                }
            }
        }
        other => other,
    };
    if outcome.is_ok() && record.kind == RecordKind::Purchase {
        for grey in open.iter().filter(|grey| grey.counter == record.counter) {
            let same = grey.terminal_number == record.terminal.to_string()
                && grey.terminal_serial == i64::from(record.terminal_serial)
                && grey.amount == record.amount;
            let (state, detail) = if same {
                (GreyState::Proved, format!("proved by transaction {} (its TAC)", record.transaction_id))
            } else {
                let detail =
                    format!("counter {} was spent by transaction {}: no debit", record.counter, record.transaction_id);
                (GreyState::Voided, detail)
            };
            decisions.push(GreyDecision {
                grey_id: grey.grey_id,
                state,
                merchant_id: None,
                amount: grey.amount,
                resolved_by: record.transaction_id,
                detail,
            });
        }
        open.retain(|grey| grey.counter != record.counter);
    }
    outcome
}

/// Settles the cleared purchases not yet settled (those of the chunks after the
/// day's settled high-water mark); returns the settlement runs added (0 or 1).
async fn settle(db: &Db, day: &str) -> Result<u64, Error> {
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO day_runs (business_day, settlement_runs) VALUES ($1, 0) ON CONFLICT (business_day) DO NOTHING",
    )
    .bind(day)
    .execute(&mut *tx)
    .await?;
    let marks = sqlx::query(
        "SELECT settlement_runs, chunks_cleared, settled_through_chunk FROM day_runs WHERE business_day = $1",
    )
    .bind(day)
    .fetch_one(&mut *tx)
    .await?;
    let runs: i64 = marks.try_get("settlement_runs")?;
    let cleared_through: i64 = marks.try_get("chunks_cleared")?;
    let settled_through: i64 = marks.try_get("settled_through_chunk")?;
    if cleared_through == settled_through {
        tx.commit().await?;
        return Ok(0);
    }
    // Added up from the chunks' totals (migration 0009), not from the day's outcomes:
    // their cleared purchases and the grey records they confirmed.
    let rows = sqlx::query(
        "SELECT c.merchant_id AS merchant_id, CAST(SUM(c.record_count) AS BIGINT) AS record_count,
         CAST(SUM(c.amount_fen) AS BIGINT) AS gross_fen, m.fee_rate AS fee_rate, m.settlement_account AS account
         FROM chunk_totals c JOIN merchants m ON m.merchant_id = c.merchant_id
         WHERE c.business_day = $1 AND c.kind IN ('purchase', 'grey') AND c.clear_chunk > $2 AND c.clear_chunk <= $3
         GROUP BY c.merchant_id, m.fee_rate, m.settlement_account ORDER BY c.merchant_id",
    )
    .bind(day)
    .bind(settled_through)
    .bind(cleared_through)
    .fetch_all(&mut *tx)
    .await?;
    let run = if rows.is_empty() { runs } else { runs + 1 };
    for row in &rows {
        let merchant: String = row.try_get("merchant_id")?;
        let gross: i64 = row.try_get("gross_fen")?;
        let count: i64 = row.try_get("record_count")?;
        let rate_text: String = row.try_get("fee_rate")?;
        let account: String = row.try_get("account")?;
        let rate = FeeRate::parse(&rate_text).map_err(|error| Error::Inconsistent(error.to_string()))?;
        let fee = fee_fen(gross, rate);
        let net = gross - fee;
        assert!(fee >= 0 && net >= 0 && fee + net == gross, "fee and net split the gross");
        sqlx::query(
            "INSERT INTO settlements (business_day, settlement_run, merchant_id, settlement_account, record_count,
             gross_fen, fee_rate, fee_fen, net_fen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(day)
        .bind(run)
        .bind(&merchant)
        .bind(&account)
        .bind(count)
        .bind(gross)
        .bind(rate.to_string())
        .bind(fee)
        .bind(net)
        .execute(&mut *tx)
        .await?;
        ledger::post(
            &mut tx,
            &format!("settle:{day}:{run}:{merchant}"),
            day,
            &[
                (Account::MerchantPayable(merchant.clone()), gross),
                (Account::FeeIncome, -fee),
                (Account::SettlementBank, -net),
            ],
        )
        .await?;
    }
    // Guarded by the marks read above: a concurrent settlement of the day fails here.
    let updated = sqlx::query(
        "UPDATE day_runs SET settlement_runs = $1, settled_through_chunk = $2
         WHERE business_day = $3 AND settlement_runs = $4 AND settled_through_chunk = $5",
    )
    .bind(run)
    .bind(cleared_through)
    .bind(day)
    .bind(runs)
    .bind(settled_through)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(Error::Conflict("another job is settling this day".into()));
    }
    tx.commit().await?;
    Ok(u64::from(run > runs))
}

/// The day's settlements, in file order.
pub async fn settlements(db: &Db, day: &str) -> Result<Vec<SettlementLine>, Error> {
    let rows = sqlx::query(
        "SELECT settlement_run, merchant_id, settlement_account, record_count, gross_fen, fee_rate, fee_fen, net_fen
         FROM settlements WHERE business_day = $1 ORDER BY settlement_run, merchant_id",
    )
    .bind(day)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(SettlementLine {
                settlement_run: row.try_get("settlement_run")?,
                merchant_id: row.try_get("merchant_id")?,
                settlement_account: row.try_get("settlement_account")?,
                record_count: row.try_get("record_count")?,
                gross_fen: row.try_get("gross_fen")?,
                fee_rate: row.try_get("fee_rate")?,
                fee_fen: row.try_get("fee_fen")?,
                net_fen: row.try_get("net_fen")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::Database)
}

/// The settlement file: a CSV, one line per merchant and settlement run.
pub fn settlement_csv(day: &str, lines: &[SettlementLine]) -> String {
    let mut csv = String::from(
        "business_day,settlement_run,merchant_id,settlement_account,record_count,gross_fen,fee_rate,fee_fen,net_fen\n",
    );
    for line in lines {
        csv.push_str(&format!(
            "{day},{},{},{},{},{},{},{},{}\n",
            line.settlement_run,
            csv_field(&line.merchant_id),
            csv_field(&line.settlement_account),
            line.record_count,
            line.gross_fen,
            line.fee_rate,
            line.fee_fen,
            line.net_fen
        ));
    }
    csv
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

/// The signed manifest beside the settlement file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub business_day: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub merchants: u64,
    pub gross_fen: i64,
    pub fee_fen: i64,
    pub net_fen: i64,
    pub signing_key: String,
    /// Ed25519 over the file's SHA-256 (`hsm_sim::settlement_digest`), 128 hex digits.
    pub signature: String,
    pub public_key: String,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let file_error = |source| Error::File { path: path.display().to_string(), source };
    let temporary = path.with_extension("partial");
    let mut file = std::fs::File::create(&temporary).map_err(file_error)?;
    file.write_all(bytes).map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    std::fs::rename(&temporary, path).map_err(file_error)?;
    Ok(())
}

/// The day's summary, from the database.
pub async fn summary(db: &Db, day: &str) -> Result<DaySummary, Error> {
    // The day's records (one without an outcome is pending).
    let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM transactions WHERE business_day = $1")
        .bind(day)
        .fetch_one(&db.pool)
        .await?;
    // Cleared: the chunks' totals (migration 0009; a cleared outcome never
    // changes). Quarantined: the day's other outcomes (an index count; releasing
    // a record deletes its outcome).
    let (mut cleared, mut purchases_fen, mut loads_fen) = (0i64, 0i64, 0i64);
    let (mut grey_confirmed, mut grey_confirmed_fen) = (0i64, 0i64);
    for row in sqlx::query(
        "SELECT kind, CAST(SUM(record_count) AS BIGINT) AS n, CAST(SUM(amount_fen) AS BIGINT) AS amount
         FROM chunk_totals WHERE business_day = $1 GROUP BY kind",
    )
    .bind(day)
    .fetch_all(&db.pool)
    .await?
    {
        let (kind, n, amount): (String, i64, i64) = (row.try_get("kind")?, row.try_get("n")?, row.try_get("amount")?);
        match kind.as_str() {
            "purchase" => (cleared, purchases_fen) = (cleared + n, purchases_fen + amount),
            GREY_KIND => (grey_confirmed, grey_confirmed_fen) = (n, amount),
            _ => (cleared, loads_fen) = (cleared + n, loads_fen + amount),
        }
    }
    let outcomes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM clearings WHERE business_day = $1")
        .bind(day)
        .fetch_one(&db.pool)
        .await?;
    let quarantined = outcomes - cleared;
    let pending = records - cleared - quarantined;
    let mut quarantined_by_reason = BTreeMap::new();
    for row in sqlx::query("SELECT reason, COUNT(*) AS n FROM quarantine WHERE business_day = $1 GROUP BY reason")
        .bind(day)
        .fetch_all(&db.pool)
        .await?
    {
        quarantined_by_reason.insert(row.try_get("reason")?, row.try_get("n")?);
    }
    let grey_by_state = grey::counts_of_day(db, day)
        .await?
        .into_iter()
        .map(|(state, count, _)| (state.as_str().to_owned(), count))
        .collect();
    let settlements = settlements(db, day).await?;
    let gross_fen = settlements.iter().map(|l| l.gross_fen).sum();
    let fee_fen = settlements.iter().map(|l| l.fee_fen).sum();
    let net_fen = settlements.iter().map(|l| l.net_fen).sum();
    let ledger_total_fen = ledger::total(db).await?;
    let card_float = ledger::balance(db, &Account::CardFloat).await?;
    let shadows: i64 = sqlx::query_scalar("SELECT CAST(COALESCE(SUM(balance_fen), 0) AS BIGINT) FROM cards")
        .fetch_one(&db.pool)
        .await?;
    Ok(DaySummary {
        business_day: day.to_owned(),
        records,
        cleared,
        quarantined,
        pending,
        quarantined_by_reason,
        purchases_fen,
        loads_fen,
        grey_confirmed,
        grey_confirmed_fen,
        grey_by_state,
        settled_equals_cleared: gross_fen == purchases_fen + grey_confirmed_fen,
        settlements,
        gross_fen,
        fee_fen,
        net_fen,
        ledger_total_fen,
        card_float_matches_shadows: -card_float == shadows,
        settlement_file: String::new(),
        settlement_sha256: String::new(),
        settlement_signature: String::new(),
    })
}

/// Writes the settlement file, its signed manifest and the reconciliation report.
async fn write_outputs(db: &Db, hsm: &HsmClient, options: &RunOptions) -> Result<DaySummary, Error> {
    let day = options.day.to_string();
    let mut summary = summary(db, &day).await?;
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|source| Error::File { path: options.out_dir.display().to_string(), source })?;
    let csv = settlement_csv(&day, &summary.settlements);
    let file_name = format!("settlement-{day}.csv");
    let digest = hsm_sim::settlement_digest(csv.as_bytes());
    let signature = hsm.sign_settlement(&options.signing_key, csv.as_bytes()).await?;
    let public_key = hsm.settlement_public_key(&options.signing_key).await?;
    write_atomically(&options.out_dir.join(&file_name), csv.as_bytes())?;
    let manifest = Manifest {
        format: "clearing-settlement-manifest/1".into(),
        business_day: day.clone(),
        file: file_name.clone(),
        bytes: csv.len() as u64,
        sha256: hex::encode(digest),
        merchants: summary.settlements.len() as u64,
        gross_fen: summary.gross_fen,
        fee_fen: summary.fee_fen,
        net_fen: summary.net_fen,
        signing_key: options.signing_key.clone(),
        signature: hex::encode(signature),
        public_key: hex::encode(public_key),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Inconsistent(e.to_string()))?;
    write_atomically(&options.out_dir.join(format!("settlement-{day}.manifest.json")), &manifest_json)?;
    summary.settlement_file = file_name;
    summary.settlement_sha256 = manifest.sha256;
    summary.settlement_signature = manifest.signature;
    let report = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Inconsistent(e.to_string()))?;
    write_atomically(&options.out_dir.join(format!("reconciliation-{day}.json")), &report)?;
    if summary.ledger_total_fen != 0 || !summary.card_float_matches_shadows || !summary.settled_equals_cleared {
        tracing::error!(day = %day, "reconciliation failed: see the report");
        return Err(Error::Inconsistent(format!("day {day} does not reconcile: {summary:?}")));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chunk_is_written_in_statements_of_few_sizes() {
        let sizes = |n: usize| super::statement_parts(&vec![0u8; n]).map(<[u8]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(996), [512, 256, 128, 64, 32, 4]);
        assert_eq!(sizes(4_996), [4_096, 512, 256, 128, 4]);
        assert_eq!(sizes(8_192), [4_096, 4_096]);
    }

    #[test]
    fn shadow_accounts_parse_whatever_the_key_set_holds() {
        let cards =
            super::parse_cards("3100000000000001,100,2,0,4,card;3100000000000002,0,0,7,10,a,b;c,1 ñ").expect("parses");
        assert_eq!(cards.len(), 2);
        let first = &cards["3100000000000001"];
        assert_eq!(
            (first.key_set.as_str(), first.balance_fen, first.offline_counter, first.online_counter),
            ("card", 100, 2, 0)
        );
        let second = &cards["3100000000000002"];
        assert_eq!((second.key_set.as_str(), second.read), ("a,b;c,1 ñ", (0, 0, 7)));
        assert!(super::parse_cards("").expect("none").is_empty());
        for bad in
            ["3100000000000001,100,2,0,5,card", "3100000000000001,100,2,0,4,cardX", "3100000000000001,x,2,0,4,card"]
        {
            assert!(super::parse_cards(bad).is_err(), "{bad}");
        }
    }
}
