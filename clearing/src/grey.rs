//! Grey records (灰记录): purchases a terminal attempted without learning
//! whether the card debited them. The card went away after DEBIT FOR PURCHASE
//! was sent and never came back to be asked (GET TRANSACTION PROVE), so the
//! terminal uploads what it attempted, with no TAC (`batch::GreyRecord`).
//!
//! Clearing cannot prove such a debit, and does not guess. A grey record stays
//! **open** until the card's own later records decide it, in `run-day`:
//!
//! - **confirmed**: a genuine record of the card (its TAC verified) shows the
//!   card's offline counter and balance moved by exactly this purchase — the
//!   record's counter is one past the grey record's and its balance before is
//!   the grey record's balance less its amount (several grey records in a row
//!   are confirmed together only if the whole chain adds up). The shadow
//!   account moves, and the merchant is paid as for a cleared purchase (ledger,
//!   settlement of the day whose run confirmed it). A load whose balance before
//!   shows the same drop confirms it too.
//! - **proved**: the purchase's own record, with its TAC (the terminal settled
//!   it with the card later), cleared at that counter: the money came with it.
//! - **voided**: the card used that counter for another transaction: the debit
//!   never happened, nothing is paid.
//!
//! A grey record whose counter the shadow account has already passed (its
//! counter was cleared before the grey record arrived) is decided after the
//! day's chunks from the record that spent the counter ([`resolve_behind`]).
//! A proof that arrives after its grey record was confirmed is quarantined as
//! a duplicate naming the grey record (the money was paid once).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::{Connection, Db, Dialect};
use crate::error::Error;

/// An open grey record, as a chunk's decisions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenGrey {
    pub grey_id: i64,
    pub counter: i64,
    pub balance_before: i64,
    pub amount: i64,
    pub terminal_number: String,
    pub terminal_serial: i64,
}

/// What became of a grey record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GreyState {
    Open,
    Confirmed,
    Proved,
    Voided,
}

impl GreyState {
    pub fn as_str(self) -> &'static str {
        match self {
            GreyState::Open => "open",
            GreyState::Confirmed => "confirmed",
            GreyState::Proved => "proved",
            GreyState::Voided => "voided",
        }
    }

    fn parse(text: &str) -> Option<GreyState> {
        [GreyState::Open, GreyState::Confirmed, GreyState::Proved, GreyState::Voided]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// A decision on an open grey record, written with its chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GreyDecision {
    pub grey_id: i64,
    pub state: GreyState,
    /// The merchant paid (confirmed only).
    pub merchant_id: Option<String>,
    pub amount: i64,
    /// The transaction whose record decided it.
    pub resolved_by: i64,
    pub detail: String,
}

/// The card as a chunk's decisions see it: balance and next offline counter.
pub(crate) struct CardPosition {
    pub balance_fen: i64,
    pub offline_counter: i64,
}

/// What a genuine record of the card shows about its purse before it.
pub(crate) enum Evidence {
    /// A purchase: the card's offline counter and balance before it.
    Purchase { counter: i64, balance_before: i64 },
    /// A load: the card's balance before it (its offline counter is not shown).
    Load { balance_before: i64 },
}

/// The open grey records that explain the gap between the shadow account and a
/// genuine record of the card, in counter order; none if they do not add up
/// exactly (the record then fails its checks as it would without them).
/// `merchant_of` names the merchant of a grey record's terminal, `None` when
/// the terminal cannot be paid (unknown, revoked): the chain stops there.
pub(crate) fn explaining_chain<'a>(
    card: &CardPosition,
    evidence: &Evidence,
    open: &'a [OpenGrey],
    merchant_of: impl Fn(&str) -> Option<String>,
) -> Vec<(&'a OpenGrey, String)> {
    let (target_balance, target_counter) = match *evidence {
        Evidence::Purchase { counter, balance_before } => (balance_before, Some(counter)),
        Evidence::Load { balance_before } => (balance_before, None),
    };
    let mut chain = Vec::new();
    let (mut counter, mut balance) = (card.offline_counter, card.balance_fen);
    loop {
        let done = balance == target_balance && target_counter.is_none_or(|target| counter == target);
        if done {
            return chain;
        }
        if balance < target_balance || target_counter.is_some_and(|target| counter >= target) {
            return Vec::new();
        }
        let Some(grey) = open.iter().find(|g| g.counter == counter && g.balance_before == balance) else {
            return Vec::new();
        };
        let Some(merchant) = merchant_of(&grey.terminal_number) else {
            return Vec::new();
        };
        chain.push((grey, merchant));
        counter += 1;
        balance -= grey.amount;
    }
}

/// The open grey records of some cards (serials as one parameter, as run-day
/// reads their shadow accounts), by card.
pub(crate) async fn load_open(reader: &Db, serials: &[String]) -> Result<HashMap<String, Vec<OpenGrey>>, Error> {
    let (list, chosen) = match reader.dialect {
        Dialect::Sqlite => (serde_json::Value::from(serials).to_string(), "SELECT value FROM json_each(?)"),
        Dialect::Postgres => {
            (format!("{{{}}}", serials.join(",")), "SELECT serial FROM unnest(CAST($1 AS TEXT[])) AS chosen(serial)")
        }
    };
    let sql = format!(
        "SELECT grey_id, card_serial, counter, balance_before, amount_fen, terminal_number, terminal_serial
         FROM grey_records WHERE state = 'open' AND card_serial IN ({chosen}) ORDER BY card_serial, counter, grey_id"
    );
    let mut open: HashMap<String, Vec<OpenGrey>> = HashMap::new();
    for row in sqlx::query(&sql).bind(list).fetch_all(&reader.pool).await? {
        open.entry(row.try_get("card_serial")?).or_default().push(OpenGrey {
            grey_id: row.try_get("grey_id")?,
            counter: row.try_get("counter")?,
            balance_before: row.try_get("balance_before")?,
            amount: row.try_get("amount_fen")?,
            terminal_number: row.try_get("terminal_number")?,
            terminal_serial: row.try_get("terminal_serial")?,
        });
    }
    Ok(open)
}

/// Writes a chunk's decisions on grey records, in the chunk's transaction.
/// Each is guarded by `state = 'open'`: a grey record another job decided
/// meanwhile fails the chunk.
pub(crate) async fn write_decisions(
    mut connection: Connection<'_>,
    day: &str,
    chunk_number: i64,
    decisions: &[GreyDecision],
) -> Result<(), Error> {
    for decision in decisions {
        let sql = "UPDATE grey_records SET state = $1, resolved_day = $2, resolved_chunk = $3, merchant_id = $4,
             resolved_by = $5, detail = $6 WHERE grey_id = $7 AND state = 'open'";
        let done = crate::on_connection!(&mut connection, c => sqlx::query(sql)
            .bind(decision.state.as_str())
            .bind(day)
            .bind(chunk_number)
            .bind(decision.merchant_id.clone())
            .bind(decision.resolved_by)
            .bind(&decision.detail)
            .bind(decision.grey_id)
            .execute(&mut **c)
            .await?
            .rows_affected());
        if done != 1 {
            return Err(Error::Conflict(format!("grey record {} was decided meanwhile: run again", decision.grey_id)));
        }
    }
    Ok(())
}

/// A confirmed grey record, as a later record at its counter is checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfirmedGrey {
    pub grey_id: i64,
    pub resolved_day: String,
    pub terminal_number: String,
    pub terminal_serial: i64,
    pub amount: i64,
}

/// The confirmed grey record that spent a card's offline counter, if any.
pub(crate) async fn confirmed_at(
    mut connection: Connection<'_>,
    card_serial: &str,
    counter: i64,
) -> Result<Option<ConfirmedGrey>, Error> {
    let sql = "SELECT grey_id, resolved_day, terminal_number, terminal_serial, amount_fen FROM grey_records
         WHERE card_serial = $1 AND counter = $2 AND state = 'confirmed'";
    crate::on_connection!(&mut connection, c => {
        let row = sqlx::query(sql).bind(card_serial).bind(counter).fetch_optional(&mut **c).await?;
        row.map(|row| {
            Ok(ConfirmedGrey {
                grey_id: row.try_get("grey_id")?,
                resolved_day: row.try_get::<Option<String>, _>("resolved_day")?.unwrap_or_default(),
                terminal_number: row.try_get("terminal_number")?,
                terminal_serial: row.try_get("terminal_serial")?,
                amount: row.try_get("amount_fen")?,
            })
        })
        .transpose()
    })
}

/// Decides the open grey records whose counter the card's shadow account has
/// passed: proved by the record that spent the counter if it is the same
/// purchase (terminal, terminal serial, amount), voided otherwise (another
/// transaction, or a grey record confirmed at that counter). Run after a
/// day's chunks, in one transaction; returns how many it decided.
pub async fn resolve_behind(db: &Db, day: &str) -> Result<u64, Error> {
    let mut tx = db.pool.begin().await?;
    let rows = sqlx::query(
        "SELECT g.grey_id, g.card_serial, g.counter, g.amount_fen, g.terminal_number, g.terminal_serial,
         t.transaction_id, t.terminal_number AS spent_terminal, t.terminal_serial AS spent_serial,
         t.amount_fen AS spent_amount, other.grey_id AS other_grey
         FROM grey_records g JOIN cards c ON c.card_serial = g.card_serial
         LEFT JOIN card_counters k ON k.card_serial = g.card_serial AND k.kind = 'purchase' AND k.counter = g.counter
         LEFT JOIN transactions t ON t.transaction_id = k.transaction_id
         LEFT JOIN grey_records other ON other.card_serial = g.card_serial AND other.counter = g.counter
              AND other.state = 'confirmed'
         WHERE g.state = 'open' AND g.counter < c.offline_counter ORDER BY g.grey_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut decided = 0;
    for row in &rows {
        let grey_id: i64 = row.try_get("grey_id")?;
        let counter: i64 = row.try_get("counter")?;
        let spent_by: Option<i64> = row.try_get("transaction_id")?;
        let other_grey: Option<i64> = row.try_get("other_grey")?;
        let (state, resolved_by, detail) = match (spent_by, other_grey) {
            (Some(transaction), _) => {
                let same = row.try_get::<String, _>("terminal_number")?
                    == row.try_get::<String, _>("spent_terminal")?
                    && row.try_get::<i64, _>("terminal_serial")? == row.try_get::<i64, _>("spent_serial")?
                    && row.try_get::<i64, _>("amount_fen")? == row.try_get::<i64, _>("spent_amount")?;
                if same {
                    (GreyState::Proved, Some(transaction), format!("proved by transaction {transaction} (its TAC)"))
                } else {
                    let detail = format!("counter {counter} was spent by transaction {transaction}: no debit");
                    (GreyState::Voided, Some(transaction), detail)
                }
            }
            (None, Some(other)) => {
                (GreyState::Voided, None, format!("counter {counter} was spent by grey record {other}: no debit"))
            }
            // Passed by a record cleared before counters were recorded: left open for an operator.
            (None, None) => continue,
        };
        let done = sqlx::query(
            "UPDATE grey_records SET state = $1, resolved_day = $2, resolved_by = $3, detail = $4
             WHERE grey_id = $5 AND state = 'open'",
        )
        .bind(state.as_str())
        .bind(day)
        .bind(resolved_by)
        .bind(&detail)
        .bind(grey_id)
        .execute(&mut *tx)
        .await?;
        decided += done.rows_affected();
    }
    tx.commit().await?;
    Ok(decided)
}

/// One grey record, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GreyRecordView {
    pub grey_id: i64,
    pub terminal_id: String,
    pub batch_id: String,
    pub record_index: i64,
    /// The card's application serial (operators look its history up by it).
    pub card_serial: String,
    pub counter: i64,
    pub balance_before_fen: i64,
    pub amount_fen: i64,
    pub occurred_at: String,
    pub business_day: String,
    pub state: GreyState,
    pub resolved_day: Option<String>,
    pub merchant_id: Option<String>,
    pub resolved_by: Option<i64>,
    pub detail: Option<String>,
}

/// The grey records of a business day (by the card's transaction time), at most `limit`.
pub async fn of_day(db: &Db, day: &str, limit: i64) -> Result<Vec<GreyRecordView>, Error> {
    let rows = sqlx::query(
        "SELECT grey_id, terminal_id, batch_id, record_index, card_serial, counter, balance_before, amount_fen,
         occurred_at, business_day, state, resolved_day, merchant_id, resolved_by, detail
         FROM grey_records WHERE business_day = $1 ORDER BY grey_id LIMIT $2",
    )
    .bind(day)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get("state")?;
            Ok(GreyRecordView {
                grey_id: row.try_get("grey_id")?,
                terminal_id: row.try_get("terminal_id")?,
                batch_id: row.try_get("batch_id")?,
                record_index: row.try_get("record_index")?,
                card_serial: row.try_get("card_serial")?,
                counter: row.try_get("counter")?,
                balance_before_fen: row.try_get("balance_before")?,
                amount_fen: row.try_get("amount_fen")?,
                occurred_at: row.try_get("occurred_at")?,
                business_day: row.try_get("business_day")?,
                state: GreyState::parse(&state)
                    .ok_or_else(|| Error::Inconsistent(format!("grey record state {state:?}")))?,
                resolved_day: row.try_get("resolved_day")?,
                merchant_id: row.try_get("merchant_id")?,
                resolved_by: row.try_get("resolved_by")?,
                detail: row.try_get("detail")?,
            })
        })
        .collect()
}

/// A day's grey records by state: (state, count, fen). Open and voided ones
/// count by the day they happened; confirmed and proved ones by that too.
pub async fn counts_of_day(db: &Db, day: &str) -> Result<Vec<(GreyState, i64, i64)>, Error> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n, CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) AS amount
         FROM grey_records WHERE business_day = $1 GROUP BY state ORDER BY state",
    )
    .bind(day)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get("state")?;
            Ok((
                GreyState::parse(&state).ok_or_else(|| Error::Inconsistent(format!("grey record state {state:?}")))?,
                row.try_get("n")?,
                row.try_get("amount")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(grey_id: i64, counter: i64, balance_before: i64, amount: i64) -> OpenGrey {
        OpenGrey {
            grey_id,
            counter,
            balance_before,
            amount,
            terminal_number: "310000000901".into(),
            terminal_serial: 7,
        }
    }

    fn ids(chain: &[(&OpenGrey, String)]) -> Vec<i64> {
        chain.iter().map(|(g, _)| g.grey_id).collect()
    }

    const CARD: CardPosition = CardPosition { balance_fen: 1_000, offline_counter: 5 };

    fn bus(_: &str) -> Option<String> {
        Some("bus".into())
    }

    #[test]
    fn a_chain_must_add_up_exactly() {
        let open = [grey(1, 5, 1_000, 200), grey(2, 6, 800, 300)];
        let next = |counter, balance_before| Evidence::Purchase { counter, balance_before };
        assert_eq!(ids(&explaining_chain(&CARD, &next(6, 800), &open, bus)), vec![1]);
        assert_eq!(ids(&explaining_chain(&CARD, &next(7, 500), &open, bus)), vec![1, 2]);
        // Nothing to explain, or a gap the grey records do not account for.
        assert!(explaining_chain(&CARD, &next(5, 1_000), &open, bus).is_empty());
        assert!(explaining_chain(&CARD, &next(6, 900), &open, bus).is_empty());
        assert!(explaining_chain(&CARD, &next(8, 500), &open, bus).is_empty());
        assert!(explaining_chain(&CARD, &next(7, 800), &open, bus).is_empty());
        // A grey record of another balance (a different purse state) does not fit.
        assert!(explaining_chain(&CARD, &next(6, 800), &[grey(1, 5, 999, 199)], bus).is_empty());
        // A load shows the balance only.
        let load = |balance_before| Evidence::Load { balance_before };
        assert_eq!(ids(&explaining_chain(&CARD, &load(500), &open, bus)), vec![1, 2]);
        assert!(explaining_chain(&CARD, &load(600), &open, bus).is_empty());
        // A grey record of a terminal that cannot be paid stops the chain.
        assert!(explaining_chain(&CARD, &next(6, 800), &open, |_| None).is_empty());
    }
}
