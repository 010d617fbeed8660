//! Operators' reports beside the day's summary: the day's records hour by hour
//! (the operator screen's plot) and the blacklist as operators read it (every
//! version, with its reason and the card's status now). Amounts come as integer
//! fen and as yuan text with two decimals ([`crate::money::yuan`]), so a client
//! never has to do money arithmetic.
//!
//! The queries are plain SQL both databases speak (`substr`, `CAST … AS
//! BIGINT`); the HTTP handlers at the end are routed in [`crate::api::routes`].

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::Db;
use crate::error::Error;
use crate::money::{BusinessDay, yuan};

/// Hours in a business day (card time).
pub const HOURS: usize = 24;
/// The most blacklist versions in one answer.
pub const BLACKLIST_PAGE_MAX: i64 = 1_000;

/// One hour of a business day (card time `hh:00`–`hh:59`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HourEntry {
    /// 0–23.
    pub hour: u8,
    /// Every record of the hour, whatever its state (pending, cleared, quarantined).
    pub records: i64,
    /// Of which quarantined.
    pub quarantined: i64,
    /// Cleared purchases: how many, and their amount.
    pub purchases: i64,
    pub purchase_fen: i64,
    /// `purchase_fen` as yuan, two decimals (`"12.34"`).
    pub purchase_yuan: String,
    /// Cleared loads: how many, and their amount.
    pub loads: i64,
    pub load_fen: i64,
    pub load_yuan: String,
}

/// A business day hour by hour: always 24 entries, hour 0 first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DayHourly {
    pub business_day: String,
    pub hours: Vec<HourEntry>,
}

/// The day's records counted and summed by the hour of the card's time.
pub async fn hourly(db: &Db, day: &BusinessDay) -> Result<DayHourly, Error> {
    let day = day.to_string();
    let mut hours: Vec<HourEntry> = (0..HOURS as u8)
        .map(|hour| HourEntry {
            hour,
            records: 0,
            quarantined: 0,
            purchases: 0,
            purchase_fen: 0,
            purchase_yuan: String::new(),
            loads: 0,
            load_fen: 0,
            load_yuan: String::new(),
        })
        .collect();
    // occurred_at is the card's YYYYMMDDhhmmss: characters 9 and 10 are the hour.
    let rows = sqlx::query(
        "SELECT substr(t.occurred_at, 9, 2) AS hour, t.kind AS kind, COALESCE(c.state, 'pending') AS state,
         COUNT(*) AS n, CAST(COALESCE(SUM(t.amount_fen), 0) AS BIGINT) AS amount
         FROM transactions t LEFT JOIN clearings c ON c.transaction_id = t.transaction_id
         WHERE t.business_day = $1
         GROUP BY substr(t.occurred_at, 9, 2), t.kind, COALESCE(c.state, 'pending')",
    )
    .bind(&day)
    .fetch_all(&db.pool)
    .await?;
    for row in rows {
        let hour: String = row.try_get("hour")?;
        let entry = hour
            .parse::<usize>()
            .ok()
            .and_then(|h| hours.get_mut(h))
            .ok_or_else(|| Error::Inconsistent(format!("a transaction of {day} has the hour {hour:?}")))?;
        let kind: String = row.try_get("kind")?;
        let state: String = row.try_get("state")?;
        let count: i64 = row.try_get("n")?;
        let amount: i64 = row.try_get("amount")?;
        entry.records += count;
        match (state.as_str(), kind.as_str()) {
            ("quarantined", _) => entry.quarantined += count,
            ("cleared", "purchase") => {
                entry.purchases += count;
                entry.purchase_fen += amount;
            }
            ("cleared", "load") => {
                entry.loads += count;
                entry.load_fen += amount;
            }
            _ => {}
        }
    }
    for entry in &mut hours {
        entry.purchase_yuan = yuan(entry.purchase_fen);
        entry.load_yuan = yuan(entry.load_fen);
    }
    Ok(DayHourly { business_day: day, hours })
}

/// One blacklist version as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlacklistVersion {
    pub version: i64,
    pub card_serial: String,
    /// `add` or `remove`.
    pub action: String,
    /// Why (`lost`, `replaced`…).
    pub reason: String,
    /// The card date-time (YYYYMMDDhhmmss) from which it applies.
    pub listed_at: String,
    /// The card's status now (`active`, `lost`, `replaced`), if the card is known.
    pub card_status: Option<String>,
}

/// The blacklist, newest version first: the versions below `before` (all when
/// None), at most `limit` (capped at [`BLACKLIST_PAGE_MAX`]).
pub async fn blacklist(db: &Db, before: Option<i64>, limit: i64) -> Result<Vec<BlacklistVersion>, Error> {
    if before.is_some_and(|b| b < 1) {
        return Err(Error::invalid("before", "must be a version, at least 1"));
    }
    if limit < 1 {
        return Err(Error::invalid("limit", "must be at least 1"));
    }
    let rows = sqlx::query(
        "SELECT b.version AS version, b.card_serial AS card_serial, b.action AS action, b.reason AS reason,
         b.listed_at AS listed_at, c.status AS card_status
         FROM blacklist b LEFT JOIN cards c ON c.card_serial = b.card_serial
         WHERE b.version < $1 ORDER BY b.version DESC LIMIT $2",
    )
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit.min(BLACKLIST_PAGE_MAX))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(BlacklistVersion {
                version: row.try_get("version")?,
                card_serial: row.try_get("card_serial")?,
                action: row.try_get("action")?,
                reason: row.try_get("reason")?,
                listed_at: row.try_get("listed_at")?,
                card_status: row.try_get("card_status")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::Database)
}

// ---- HTTP (routed in crate::api::routes) ----

use axum::Json;
use axum::extract::State;

use crate::api::{AppState, DayPath, Fails, Operators, Params, QueryParams, Token, Unprocessable};

/// `GET /v1/operator/days/{date}/hourly`: the day's records hour by hour.
pub async fn day_hourly(
    State(state): State<AppState>,
    _token: Token<Operators>,
    Params(path): Params<DayPath>,
) -> Result<Json<DayHourly>, Fails<(Unprocessable,)>> {
    let day = BusinessDay::parse(&path.date)?;
    Ok(Json(hourly(&state.db, &day).await?))
}

/// `?before=N&limit=M`: blacklist versions below N (default: all), at most M
/// (default and cap [`BLACKLIST_PAGE_MAX`]).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlacklistQuery {
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// `GET /v1/operator/blacklist`: the blacklist's versions, newest first.
pub async fn operator_blacklist(
    State(state): State<AppState>,
    _token: Token<Operators>,
    QueryParams(query): QueryParams<BlacklistQuery>,
) -> Result<Json<Vec<BlacklistVersion>>, Fails<(Unprocessable,)>> {
    Ok(Json(blacklist(&state.db, query.before, query.limit.unwrap_or(BLACKLIST_PAGE_MAX)).await?))
}
