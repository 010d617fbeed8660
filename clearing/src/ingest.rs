//! Idempotent batch ingest: the batch's key (terminal id, batch id) is inserted
//! with `ON CONFLICT DO NOTHING` in the same transaction as its records, so the
//! same batch uploaded twice, or twice at once, counts once. A batch id that
//! comes back with other records is refused as a conflict.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use card_host::model::CardDateTime;

use crate::batch::{Batch, Entry, GreyRecord, Record, RecordRejection, raw_for_quarantine};
use crate::db::Db;
use crate::error::Error;
use crate::money::BusinessDay;

/// Rows per multi-row INSERT (each transaction row binds 17 values; SQLite allows 32,766).
pub const INSERT_ROWS_MAX: usize = 500;

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IngestReport {
    pub terminal_id: String,
    pub batch_id: String,
    /// The batch had been uploaded before: nothing new was stored.
    pub duplicate: bool,
    pub record_count: u64,
    pub accepted_count: u64,
    pub rejected_count: u64,
    /// The records refused this time (empty for a duplicate).
    pub rejected: Vec<RecordRejection>,
}

/// Stores a parsed batch received at `received_at` (unix seconds).
pub async fn ingest(db: &Db, batch: &Batch, received_at: i64) -> Result<IngestReport, Error> {
    let terminal_id = batch.terminal_id.to_string();
    let rejected: Vec<RecordRejection> = batch.records.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    let record_count = batch.records.len() as u64;
    let accepted_count = record_count - rejected.len() as u64;
    let mut tx = db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO batches (terminal_id, batch_id, digest, received_at, record_count, accepted_count, rejected_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (terminal_id, batch_id) DO NOTHING RETURNING batch_id",
    )
    .bind(&terminal_id)
    .bind(&batch.batch_id)
    .bind(batch.digest.to_vec())
    .bind(received_at)
    .bind(record_count as i64)
    .bind(accepted_count as i64)
    .bind(rejected.len() as i64)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        tx.rollback().await?;
        let row = sqlx::query(
            "SELECT digest, record_count, accepted_count, rejected_count FROM batches
             WHERE terminal_id = $1 AND batch_id = $2",
        )
        .bind(&terminal_id)
        .bind(&batch.batch_id)
        .fetch_one(&db.pool)
        .await?;
        let digest: Vec<u8> = row.try_get("digest")?;
        if digest != batch.digest {
            return Err(Error::BatchConflict { terminal_id, batch_id: batch.batch_id.clone() });
        }
        tracing::info!(terminal = %terminal_id, batch = %batch.batch_id, "batch uploaded again: counted once");
        return Ok(IngestReport {
            terminal_id,
            batch_id: batch.batch_id.clone(),
            duplicate: true,
            record_count: row.try_get::<i64, _>("record_count")? as u64,
            accepted_count: row.try_get::<i64, _>("accepted_count")? as u64,
            rejected_count: row.try_get::<i64, _>("rejected_count")? as u64,
            rejected: Vec::new(),
        });
    }
    let mut accepted: Vec<(usize, &Record)> = Vec::new();
    let mut grey: Vec<(usize, &GreyRecord)> = Vec::new();
    for (index, entry) in batch.records.iter().enumerate() {
        match entry {
            Ok(Entry::Proved(record)) => accepted.push((index, record)),
            Ok(Entry::Grey(record)) => grey.push((index, record)),
            Err(_) => {}
        }
    }
    for rows in grey.chunks(INSERT_ROWS_MAX) {
        let sql = format!(
            "INSERT INTO grey_records (terminal_id, batch_id, record_index, card_serial, card_type, counter,
             balance_before, amount_fen, transaction_type, terminal_number, terminal_serial, occurred_at,
             business_day, received_at) VALUES {}",
            crate::db::row_placeholders(db.dialect, rows.len(), 14, 1)
        );
        let mut insert = sqlx::query(&sql);
        for (index, record) in rows {
            insert = insert
                .bind(terminal_id.clone())
                .bind(batch.batch_id.clone())
                .bind(*index as i64)
                .bind(record.card_serial.to_hex())
                .bind(i64::from(record.card_type))
                .bind(i64::from(record.counter))
                .bind(i64::from(record.balance_before.0))
                .bind(i64::from(record.amount.0))
                .bind(i64::from(record.transaction_type.code()))
                .bind(record.terminal_number.to_string())
                .bind(i64::from(record.terminal_serial))
                .bind(hex::encode(record.at.to_bytes()))
                .bind(BusinessDay::of(&record.at).to_string())
                .bind(received_at);
        }
        insert.execute(&mut *tx).await?;
    }
    for rows in accepted.chunks(INSERT_ROWS_MAX) {
        let sql = format!(
            "INSERT INTO transactions (terminal_id, batch_id, record_index, kind, card_serial, card_type, counter,
             balance_before, amount_fen, transaction_type, terminal_number, terminal_serial, occurred_at,
             business_day, tac, received_at) VALUES {}",
            crate::db::row_placeholders(db.dialect, rows.len(), 16, 1)
        );
        let mut insert = sqlx::query(&sql);
        for (index, record) in rows {
            insert = insert
                .bind(terminal_id.clone())
                .bind(batch.batch_id.clone())
                .bind(*index as i64)
                .bind(record.kind.as_str())
                .bind(record.card_serial.to_hex())
                .bind(i64::from(record.card_type))
                .bind(i64::from(record.counter))
                .bind(i64::from(record.balance_before.0))
                .bind(i64::from(record.amount.0))
                .bind(i64::from(record.transaction_type.code()))
                .bind(record.terminal_number.to_string())
                .bind(i64::from(record.terminal_serial))
                .bind(hex::encode(record.at.to_bytes()))
                .bind(BusinessDay::of(&record.at).to_string())
                .bind(hex::encode_upper(record.tac))
                .bind(received_at);
        }
        insert.execute(&mut *tx).await?;
    }
    for rejection in &rejected {
        let raw = &batch.raw_records[rejection.index];
        sqlx::query(
            "INSERT INTO quarantine (terminal_id, batch_id, record_index, business_day, reason, detail, raw_record)
             VALUES ($1, $2, $3, $4, 'malformed', $5, $6)",
        )
        .bind(&terminal_id)
        .bind(&batch.batch_id)
        .bind(rejection.index as i64)
        .bind(malformed_record_day(raw, received_at).map(|day| day.to_string()))
        .bind(format!("{}: {}", rejection.field, rejection.message))
        .bind(raw_for_quarantine(raw))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE terminals SET last_upload_at = $1 WHERE terminal_number = $2")
        .bind(received_at)
        .bind(&terminal_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        terminal = %terminal_id, batch = %batch.batch_id, accepted = accepted_count, grey = grey.len(),
        rejected = rejected.len(), "batch stored"
    );
    if !grey.is_empty() {
        tracing::warn!(terminal = %terminal_id, batch = %batch.batch_id, grey = grey.len(),
            "grey records: purchases the terminal could not settle with the card");
    }
    Ok(IngestReport {
        terminal_id,
        batch_id: batch.batch_id.clone(),
        duplicate: false,
        record_count,
        accepted_count,
        rejected_count: rejected.len() as u64,
        rejected,
    })
}

/// The business day a record refused at upload is listed under, so that the
/// operator finds it with the day it belongs to: the day of its own
/// `date_time` when that field is readable, else the day the batch was
/// received (local time at clearing's default offset, as cards keep it).
fn malformed_record_day(raw: &serde_json::Value, received_at: i64) -> Option<BusinessDay> {
    let own = raw
        .get("date_time")
        .and_then(serde_json::Value::as_str)
        .filter(|text| text.len() == 14)
        .and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| CardDateTime::from_slice(&bytes).ok());
    let received = || {
        let local = received_at.checked_add(i64::from(crate::clock::UTC_OFFSET_MINUTES_DEFAULT) * 60)?;
        CardDateTime::from_unix_seconds(u64::try_from(local).ok()?).ok()
    };
    own.or_else(received).map(|at| BusinessDay::of(&at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_record_is_listed_under_its_own_day_or_the_day_it_came() {
        let received = CardDateTime::new(2026, 11, 24, 23, 30, 0).expect("valid").unix_seconds() as i64;
        let day = |raw: serde_json::Value| malformed_record_day(&raw, received).map(|day| day.to_string());
        assert_eq!(day(serde_json::json!({"date_time": "20261123083000", "tac": "x"})), Some("2026-11-23".into()));
        // Unreadable: received 23:30 UTC is 07:30 the next day in China Standard Time.
        assert_eq!(day(serde_json::json!({"date_time": "20261332083000"})), Some("2026-11-25".into()));
        assert_eq!(day(serde_json::json!(5)), Some("2026-11-25".into()));
    }
}
