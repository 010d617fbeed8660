//! The database: SQLite (a file, WAL; the embedded default) or PostgreSQL, chosen
//! by the URL, through sqlx's `Any` driver so the same SQL (PostgreSQL's `$1`
//! placeholders, `ON CONFLICT DO NOTHING`, `RETURNING`, which SQLite speaks too)
//! runs on both. The schema is applied on connect from the numbered migrations
//! under `clearing/migrations/{sqlite,postgres}`.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::error::Error;

/// The most connections in a PostgreSQL pool.
pub const POOL_CONNECTIONS_MAX: u32 = 16;
/// How long SQLite waits for a lock before it answers "busy".
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;
/// How long a caller waits for a pooled connection.
pub const POOL_ACQUIRE_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection pool and the dialect behind it.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

/// The migrations of one dialect, embedded in the binary: (version, description, SQL).
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "schema", include_str!("../migrations/sqlite/0001_schema.sql")),
    (2, "topups", include_str!("../migrations/sqlite/0002_topups.sql")),
    (3, "settle_by_chunk", include_str!("../migrations/sqlite/0003_settle_by_chunk.sql")),
    (4, "quarantine_releases", include_str!("../migrations/sqlite/0004_quarantine_releases.sql")),
    (5, "topup_void", include_str!("../migrations/sqlite/0005_topup_void.sql")),
    (6, "pending_index", include_str!("../migrations/sqlite/0006_pending_index.sql")),
    (7, "clearings", include_str!("../migrations/sqlite/0007_clearings.sql")),
    (8, "grey_records", include_str!("../migrations/sqlite/0008_grey_records.sql")),
    (9, "chunk_totals", include_str!("../migrations/sqlite/0009_chunk_totals.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "schema", include_str!("../migrations/postgres/0001_schema.sql")),
    (2, "topups", include_str!("../migrations/postgres/0002_topups.sql")),
    (3, "settle_by_chunk", include_str!("../migrations/postgres/0003_settle_by_chunk.sql")),
    (4, "quarantine_releases", include_str!("../migrations/postgres/0004_quarantine_releases.sql")),
    (5, "topup_void", include_str!("../migrations/postgres/0005_topup_void.sql")),
    (6, "pending_index", include_str!("../migrations/postgres/0006_pending_index.sql")),
    (7, "clearings", include_str!("../migrations/postgres/0007_clearings.sql")),
    (8, "grey_records", include_str!("../migrations/postgres/0008_grey_records.sql")),
    (9, "chunk_totals", include_str!("../migrations/postgres/0009_chunk_totals.sql")),
];

/// The migrations of `dialect` up to version `through`.
fn migrator(dialect: Dialect, through: i64) -> Migrator {
    let list = match dialect {
        Dialect::Sqlite => SQLITE_MIGRATIONS,
        Dialect::Postgres => POSTGRES_MIGRATIONS,
    };
    let migrations = list
        .iter()
        .filter(|(version, _, _)| *version <= through)
        .map(|(version, description, sql)| {
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

impl Db {
    /// Connects by URL and applies the migrations: `sqlite://PATH` (created when
    /// missing, put in WAL mode) or `postgres://USER@HOST:PORT/DATABASE[?options=...]`.
    pub async fn connect(url: &str) -> Result<Db, Error> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() || path.contains('?') {
                return Err(Error::Config("a SQLite URL is sqlite://PATH, without parameters".into()));
            }
            (Dialect::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned())
        } else {
            return Err(Error::Config("the database URL must start with sqlite:// or postgres://".into()));
        };
        let options: AnyConnectOptions = url.parse().map_err(Error::Database)?;
        let options = options.disable_statement_logging();
        let pool = match dialect {
            // One writer at a time is how SQLite works; one connection also keeps
            // every transaction free of SQLITE_BUSY upgrades.
            Dialect::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA synchronous = NORMAL").await?;
                        connection.execute("PRAGMA foreign_keys = ON").await?;
                        connection.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str()).await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .map_err(Error::Database)?,
            Dialect::Postgres => AnyPoolOptions::new()
                .max_connections(POOL_CONNECTIONS_MAX)
                .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
                .connect_with(options)
                .await
                .map_err(Error::Database)?,
        };
        migrator(dialect, i64::MAX).run(&pool).await.map_err(|error| Error::Migration(error.to_string()))?;
        Ok(Db { pool, dialect })
    }

    /// A plain PostgreSQL pool of one connection, without migrations (to make or drop schemas).
    pub async fn connect_plain(url: &str) -> Result<AnyPool, Error> {
        sqlx::any::install_default_drivers();
        AnyPoolOptions::new().max_connections(1).connect(url).await.map_err(Error::Database)
    }

    /// A pool of one connection to read from while this one writes, to close
    /// after use. SQLite: a reading connection beside the one writer (WAL
    /// readers see the last commit and never block it). PostgreSQL: a
    /// connection that plans index walks: no parallel query, no hash or merge
    /// join. run-day reads a few thousand records at a time in the
    /// clearing-order index, each probed against `clearings`; with the day's
    /// outcomes growing under it, the planner chose a parallel scan of the card
    /// index with a sort (20-50 ms a chunk), or hashed all the day's outcomes
    /// for the last chunks (0.25-0.45 s each), over the index read in order
    /// (`docs/benchmarks.md`).
    pub async fn reader(&self) -> Result<Db, Error> {
        let options = (*self.pool.connect_options()).clone();
        let pool =
            AnyPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS));
        let pool = match self.dialect {
            Dialect::Postgres => pool.after_connect(|connection, _| {
                Box::pin(async move {
                    connection.execute("SET max_parallel_workers_per_gather = 0").await?;
                    connection.execute("SET enable_hashjoin = off").await?;
                    connection.execute("SET enable_mergejoin = off").await?;
                    Ok(())
                })
            }),
            Dialect::Sqlite => pool.after_connect(|connection, _| {
                Box::pin(async move {
                    connection.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str()).await?;
                    Ok(())
                })
            }),
        };
        let pool = pool.connect_with(options).await.map_err(Error::Database)?;
        Ok(Db { pool, dialect: self.dialect })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A native PostgreSQL connection with the pool's options (`None` on
    /// SQLite), for run-day's chunk writer: sqlx's `Any` binds no arrays, and a
    /// chunk's thousands of rows go into each table as one `unnest` of binary
    /// array parameters, a few values instead of one bound value a column a row
    /// (`docs/benchmarks.md`).
    pub async fn postgres_connection(&self) -> Result<Option<sqlx::PgConnection>, Error> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let options = sqlx::postgres::PgConnectOptions::from_url(&self.pool.connect_options().database_url)
            .map_err(Error::Database)?
            .disable_statement_logging();
        Ok(Some(options.connect().await.map_err(Error::Database)?))
    }
}

/// A connection inside a transaction, of the `Any` driver or a native
/// PostgreSQL one, for the statements both of run-day's chunk writers run
/// (through [`on_connection!`](crate::on_connection)).
pub enum Connection<'a> {
    Any(&'a mut sqlx::AnyConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl<'a, 't> From<&'a mut sqlx::Transaction<'t, sqlx::Any>> for Connection<'a> {
    fn from(tx: &'a mut sqlx::Transaction<'t, sqlx::Any>) -> Self {
        Connection::Any(tx)
    }
}

impl<'a, 't> From<&'a mut sqlx::Transaction<'t, sqlx::Postgres>> for Connection<'a> {
    fn from(tx: &'a mut sqlx::Transaction<'t, sqlx::Postgres>) -> Self {
        Connection::Postgres(tx)
    }
}

/// Runs `$body` with `$c` bound to the connection inside a
/// [`Connection`](crate::db::Connection), whichever driver it is: the same
/// statement text and binds, compiled once for each.
#[macro_export]
macro_rules! on_connection {
    ($connection:expr, $c:ident => $body:expr) => {
        match $connection {
            $crate::db::Connection::Any($c) => $body,
            $crate::db::Connection::Postgres($c) => $body,
        }
    };
}

/// Placeholder number `n` (from 1) in a statement that numbers from `first`:
/// `$n` for PostgreSQL; `?` for SQLite, whose binding of `$n` names costs time
/// quadratic in the count (sqlx looks each name up), so long statements use
/// SQLite's positional `?` throughout.
pub fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        Dialect::Sqlite => "?".to_owned(),
    }
}

/// `($1, $2), ($3, $4)`: placeholders for `rows` rows of `columns` values from
/// number `first` (sqlx's `QueryBuilder` for `Any` numbers nothing, which
/// PostgreSQL refuses).
pub fn row_placeholders(dialect: Dialect, rows: usize, columns: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            out.push_str(&placeholder(dialect, first + row * columns + column));
        }
        out.push(')');
    }
    out
}

/// `$first, $first+1, …`: `count` placeholders for an `IN (…)` list.
pub fn list_placeholders(dialect: Dialect, count: usize, first: usize) -> String {
    (first..first + count).map(|n| placeholder(dialect, n)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_file_is_embedded_in_order() {
        for (directory, list) in [("sqlite", super::SQLITE_MIGRATIONS), ("postgres", super::POSTGRES_MIGRATIONS)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(directory);
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .expect("migrations directory")
                .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            assert_eq!(files.len(), list.len(), "{directory}");
            let mut previous = 0;
            for (file, (version, description, sql)) in files.iter().zip(list) {
                assert_eq!(*version, previous + 1, "{file}: numbered in order, no gap");
                previous = *version;
                assert_eq!(file, &format!("{version:04}_{description}.sql"));
                assert_eq!(std::fs::read_to_string(path.join(file)).expect("read"), *sql);
            }
        }
    }

    const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// Migration 0007 on a database with records in each state: a decided
    /// record's outcome moves to `clearings` (a pending one gets no row), the
    /// view gives each its state back, and the columns that moved are gone.
    async fn check_migration_7(dialect: super::Dialect, plain_url: &str, url: &str) {
        use sqlx::Row;
        let pool = super::Db::connect_plain(plain_url).await.expect("connect");
        super::migrator(dialect, 6).run(&pool).await.expect("migrations through 0006");
        sqlx::query(
            "INSERT INTO batches (terminal_id, batch_id, digest, received_at, record_count, accepted_count,
             rejected_count) VALUES ('310000000901', 'b1', $1, 0, 3, 3, 0)",
        )
        .bind(vec![0u8; 32])
        .execute(&pool)
        .await
        .expect("batch");
        let rows: [(&str, &str, Option<&str>, Option<i64>); 3] = [
            ("pending", "purchase", None, None),
            ("cleared", "purchase", Some("M1"), Some(2)),
            ("quarantined", "load", None, None),
        ];
        for (index, (state, kind, merchant, chunk)) in rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO transactions (terminal_id, batch_id, record_index, kind, card_serial, card_type, counter,
                 balance_before, amount_fen, transaction_type, terminal_number, terminal_serial, occurred_at,
                 business_day, tac, received_at, state, merchant_id, clear_chunk)
                 VALUES ('310000000901', 'b1', $1, $2, '3100000000000001', 1, $1, 1000, $3, 6, '310000000901', 0,
                 '20261124083000', '2026-11-24', '00000000', 0, $4, $5, $6)",
            )
            .bind(index as i64)
            .bind(*kind)
            .bind(100 + index as i64)
            .bind(*state)
            .bind(merchant.map(str::to_owned))
            .bind(*chunk)
            .execute(&pool)
            .await
            .expect("transaction");
        }
        pool.close().await;
        let db = super::Db::connect(url).await.expect("migration 0007");
        let moved: Vec<(i64, String, Option<String>, i64, String, i64)> = sqlx::query(
            "SELECT transaction_id, state, merchant_id, clear_chunk, kind, amount_fen FROM clearings
             ORDER BY transaction_id",
        )
        .fetch_all(&db.pool)
        .await
        .expect("clearings")
        .iter()
        .map(|row| {
            (
                row.get("transaction_id"),
                row.get("state"),
                row.get("merchant_id"),
                row.get("clear_chunk"),
                row.get("kind"),
                row.get("amount_fen"),
            )
        })
        .collect();
        assert_eq!(
            moved,
            vec![
                (2, "cleared".into(), Some("M1".into()), 2, "purchase".into(), 101),
                (3, "quarantined".into(), None, 0, "load".into(), 102)
            ]
        );
        // Migration 0009: the cleared outcome's chunk has its total.
        let totals: Vec<(String, i64, String, String, i64, i64)> = sqlx::query(
            "SELECT business_day, clear_chunk, kind, merchant_id, record_count, amount_fen FROM chunk_totals",
        )
        .fetch_all(&db.pool)
        .await
        .expect("chunk_totals")
        .iter()
        .map(|row| {
            (
                row.get("business_day"),
                row.get("clear_chunk"),
                row.get("kind"),
                row.get("merchant_id"),
                row.get("record_count"),
                row.get("amount_fen"),
            )
        })
        .collect();
        assert_eq!(totals, vec![("2026-11-24".into(), 2, "purchase".into(), "M1".into(), 1, 101)]);
        let states: Vec<String> = sqlx::query_scalar("SELECT state FROM record_states ORDER BY transaction_id")
            .fetch_all(&db.pool)
            .await
            .expect("view");
        assert_eq!(states, ["pending", "cleared", "quarantined"]);
        for column in ["state", "merchant_id", "clear_chunk", "settlement_run"] {
            let read = sqlx::query(&format!("SELECT {column} FROM transactions")).fetch_all(&db.pool).await;
            assert!(read.is_err(), "transactions.{column} is still there");
        }
        db.close().await;
    }

    #[test]
    fn migration_7_moves_record_states_to_clearings() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let directory = tempfile::tempdir().expect("temporary directory");
            let sqlite = format!("sqlite://{}", directory.path().join("clearing.db").display());
            check_migration_7(super::Dialect::Sqlite, &format!("{sqlite}?mode=rwc"), &sqlite).await;
            let schema = format!("clearing_migration_{:016x}", rand::random::<u64>());
            let admin = super::Db::connect_plain(POSTGRES_URL).await.expect("postgres");
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.expect("schema");
            let url = format!("{POSTGRES_URL}?options=-c%20search_path%3D{schema}");
            check_migration_7(super::Dialect::Postgres, &url, &url).await;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.expect("drop schema");
            admin.close().await;
        });
    }

    #[test]
    fn placeholders_are_numbered() {
        use super::Dialect::{Postgres, Sqlite};
        assert_eq!(super::row_placeholders(Postgres, 2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(super::row_placeholders(Sqlite, 1, 2, 1), "(?, ?)");
        assert_eq!(super::list_placeholders(Postgres, 3, 2), "$2, $3, $4");
    }
}
