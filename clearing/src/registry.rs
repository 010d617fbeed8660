//! The issuer's and operators' records: merchants, terminals, cardholders, cards
//! with their shadow accounts, and the versioned blacklist.

use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::Db;
use crate::error::Error;
use crate::ledger::{self, Account};
use crate::money::FeeRate;

/// The longest merchant id, name, category or account.
pub const NAME_LENGTH_MAX: usize = 100;
/// The most blacklist entries in one download.
pub const BLACKLIST_DOWNLOAD_MAX: i64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merchant {
    pub merchant_id: String,
    pub name: String,
    pub category: String,
    pub fee_rate: String,
    pub settlement_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalEntry {
    pub terminal_number: String,
    pub merchant_id: String,
    /// Ed25519 public key, 64 hex digits.
    pub device_public_key: String,
    pub psam_serial: String,
}

/// `fixtures/merchants/*.json`: merchants and their terminals.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantFile {
    #[serde(default)]
    pub comment: String,
    pub merchants: Vec<Merchant>,
    pub terminals: Vec<TerminalEntry>,
}

fn check_name(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > NAME_LENGTH_MAX || value.chars().any(char::is_control) {
        return Err(Error::invalid(field, format!("1 to {NAME_LENGTH_MAX} printable characters")));
    }
    Ok(())
}

/// Adds or updates a merchant.
pub async fn put_merchant(db: &Db, merchant: &Merchant) -> Result<(), Error> {
    check_name("merchant_id", &merchant.merchant_id)?;
    check_name("name", &merchant.name)?;
    check_name("category", &merchant.category)?;
    check_name("settlement_account", &merchant.settlement_account)?;
    let rate = FeeRate::parse(&merchant.fee_rate)?;
    sqlx::query(
        "INSERT INTO merchants (merchant_id, name, category, fee_rate, settlement_account) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (merchant_id) DO UPDATE SET name = excluded.name, category = excluded.category,
         fee_rate = excluded.fee_rate, settlement_account = excluded.settlement_account",
    )
    .bind(&merchant.merchant_id)
    .bind(&merchant.name)
    .bind(&merchant.category)
    .bind(rate.to_string())
    .bind(&merchant.settlement_account)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Adds or updates a terminal (active).
pub async fn put_terminal(db: &Db, terminal: &TerminalEntry) -> Result<(), Error> {
    let number = TerminalNumber::parse_hex(&terminal.terminal_number)
        .map_err(|error| Error::invalid("terminal_number", error.to_string()))?;
    let key = hex::decode(&terminal.device_public_key)
        .ok()
        .filter(|key| key.len() == 32)
        .ok_or_else(|| Error::invalid("device_public_key", "must be 64 hex digits (Ed25519)"))?;
    check_name("psam_serial", &terminal.psam_serial)?;
    sqlx::query(
        "INSERT INTO terminals (terminal_number, merchant_id, device_public_key, psam_serial, status)
         VALUES ($1, $2, $3, $4, 'active')
         ON CONFLICT (terminal_number) DO UPDATE SET merchant_id = excluded.merchant_id,
         device_public_key = excluded.device_public_key, psam_serial = excluded.psam_serial",
    )
    .bind(number.to_string())
    .bind(&terminal.merchant_id)
    .bind(key)
    .bind(&terminal.psam_serial)
    .execute(&db.pool)
    .await
    .map_err(|error| match &error {
        sqlx::Error::Database(inner) if inner.is_foreign_key_violation() => {
            Error::invalid("merchant_id", "no such merchant")
        }
        _ => Error::Database(error),
    })?;
    Ok(())
}

pub async fn revoke_terminal(db: &Db, terminal: &TerminalNumber) -> Result<(), Error> {
    let done = sqlx::query("UPDATE terminals SET status = 'revoked' WHERE terminal_number = $1")
        .bind(terminal.to_string())
        .execute(&db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("terminal {terminal}")));
    }
    Ok(())
}

/// Loads a merchant file (merchants first, then terminals).
pub async fn load_merchant_file(db: &Db, file: &MerchantFile) -> Result<(), Error> {
    for merchant in &file.merchants {
        put_merchant(db, merchant).await?;
    }
    for terminal in &file.terminals {
        put_terminal(db, terminal).await?;
    }
    Ok(())
}

/// The key that hides citizen IDs (HMAC-SHA-256). From the issuer's configuration;
/// tests use a fixed one.
pub struct CitizenIdKey(ring::hmac::Key);

impl CitizenIdKey {
    pub fn new(secret: &[u8]) -> Self {
        CitizenIdKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn hash(&self, citizen_id: &str) -> Vec<u8> {
        ring::hmac::sign(&self.0, citizen_id.as_bytes()).as_ref().to_vec()
    }
}

impl std::fmt::Debug for CitizenIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CitizenIdKey(REDACTED)")
    }
}

/// The name of the cardholder of `card`, when `citizen_id` is theirs (checked
/// against the stored hash): a replacement card is personalised only for the
/// person the old card was issued to.
pub async fn cardholder_name(
    db: &Db,
    key: &CitizenIdKey,
    card: &ApplicationSerial,
    citizen_id: &str,
) -> Result<String, Error> {
    let row = sqlx::query(
        "SELECT h.citizen_id_hash, h.name FROM cards c JOIN cardholders h ON h.cardholder_id = c.cardholder_id
         WHERE c.card_serial = $1",
    )
    .bind(card.to_hex())
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::NotFound(format!("card {} with a cardholder", card.masked())))?;
    let stored: Vec<u8> = row.try_get("citizen_id_hash")?;
    if ring::hmac::verify(&key.0, citizen_id.as_bytes(), &stored).is_err() {
        return Err(Error::invalid("citizen_id", format!("not the cardholder of card {}", card.masked())));
    }
    Ok(row.try_get("name")?)
}

/// A citizen ID shown to operators: the first 3 and the last 2 characters.
pub fn mask_citizen_id(citizen_id: &str) -> String {
    let characters: Vec<char> = citizen_id.chars().collect();
    if characters.len() < 8 {
        return "*".repeat(characters.len());
    }
    let middle = "*".repeat(characters.len() - 5);
    format!(
        "{}{middle}{}",
        characters[..3].iter().collect::<String>(),
        characters[characters.len() - 2..].iter().collect::<String>()
    )
}

/// A new card for the issuer's records: the cardholder and the card's state at
/// issue. Its `Debug` masks the citizen ID.
#[derive(Clone)]
pub struct NewCard {
    pub serial: ApplicationSerial,
    pub card_type: u8,
    /// The HSM key set the card's keys derive from (`card`, `sm4`).
    pub key_set: String,
    pub citizen_id: String,
    pub name: String,
    pub initial_balance: Fen,
    pub issued_at: CardDateTime,
}

impl std::fmt::Debug for NewCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCard")
            .field("serial", &self.serial)
            .field("card_type", &self.card_type)
            .field("key_set", &self.key_set)
            .field("citizen_id", &mask_citizen_id(&self.citizen_id))
            .field("name", &self.name)
            .field("initial_balance", &self.initial_balance)
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

/// Records an issued card and opens its shadow account; an initial balance is
/// funded (top-up funding → card float).
pub async fn issue_card(db: &Db, key: &CitizenIdKey, card: &NewCard) -> Result<(), Error> {
    if card.citizen_id.len() < 8
        || card.citizen_id.len() > 32
        || !card.citizen_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Error::invalid("citizen_id", "8 to 32 letters and digits"));
    }
    check_name("name", &card.name)?;
    check_name("key_set", &card.key_set)?;
    let mut tx = db.pool.begin().await?;
    let hash = key.hash(&card.citizen_id);
    sqlx::query(
        "INSERT INTO cardholders (citizen_id_hash, citizen_id_masked, name) VALUES ($1, $2, $3)
         ON CONFLICT (citizen_id_hash) DO NOTHING",
    )
    .bind(hash.clone())
    .bind(mask_citizen_id(&card.citizen_id))
    .bind(&card.name)
    .execute(&mut *tx)
    .await?;
    let cardholder: i64 = sqlx::query_scalar("SELECT cardholder_id FROM cardholders WHERE citizen_id_hash = $1")
        .bind(hash)
        .fetch_one(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO cards (card_serial, cardholder_id, card_type, key_set, status, issued_at, balance_fen,
         offline_counter, online_counter) VALUES ($1, $2, $3, $4, 'active', $5, $6, 0, 0)
         ON CONFLICT (card_serial) DO NOTHING",
    )
    .bind(card.serial.to_hex())
    .bind(cardholder)
    .bind(i64::from(card.card_type))
    .bind(&card.key_set)
    .bind(card.issued_at.unix_seconds() as i64)
    .bind(i64::from(card.initial_balance.0))
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(Error::Conflict(format!("card {} is already issued", card.serial.masked())));
    }
    if card.initial_balance.0 > 0 {
        let day = crate::money::BusinessDay::of(&card.issued_at);
        let amount = i64::from(card.initial_balance.0);
        ledger::post(
            &mut tx,
            &format!("issue:{}", card.serial.to_hex()),
            &day.to_string(),
            &[(Account::TopupFunding, amount), (Account::CardFloat, -amount)],
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(card = %card.serial.masked(), "card issued");
    Ok(())
}

/// Reports a card lost: the card's status becomes `lost` and the blacklist gains
/// a version listing it from `from` on. Returns the new blacklist version.
pub async fn report_loss(db: &Db, serial: &ApplicationSerial, from: &CardDateTime) -> Result<i64, Error> {
    let mut tx = db.pool.begin().await?;
    let updated = sqlx::query("UPDATE cards SET status = 'lost' WHERE card_serial = $1 AND status = 'active'")
        .bind(serial.to_hex())
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(Error::NotFound(format!("active card {}", serial.masked())));
    }
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO blacklist (card_serial, action, reason, listed_at) VALUES ($1, 'add', 'lost', $2) RETURNING version",
    )
    .bind(serial.to_hex())
    .bind(hex::encode(from.to_bytes()))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(card = %serial.masked(), version, "card reported lost");
    Ok(version)
}

/// The new card of a replacement.
#[derive(Debug, Clone)]
pub struct ReplacementCard {
    pub serial: ApplicationSerial,
    pub card_type: u8,
    pub key_set: String,
    pub issued_at: CardDateTime,
}

/// What a replacement did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Replacement {
    pub balance_moved_fen: i64,
    /// The blacklist version that lists the old card (its loss report's, or a new one).
    pub blacklist_version: i64,
}

/// Replaces a lost or damaged card: the new card gets the old card's cardholder
/// and its shadow balance (the float does not change, so no ledger entry); the
/// old card becomes `replaced` and stays blacklisted (listed now if it was not).
/// Records of the old card that arrive later are quarantined (blacklisted from
/// the listing time, or a balance discontinuity against its emptied account).
pub async fn replace_card(db: &Db, old: &ApplicationSerial, new: &ReplacementCard) -> Result<Replacement, Error> {
    check_name("key_set", &new.key_set)?;
    let mut tx = db.pool.begin().await?;
    let row = sqlx::query("SELECT status, cardholder_id, balance_fen FROM cards WHERE card_serial = $1")
        .bind(old.to_hex())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("card {}", old.masked())))?;
    let status: String = row.try_get("status")?;
    if status == "replaced" {
        return Err(Error::Conflict(format!("card {} was replaced already", old.masked())));
    }
    let cardholder: Option<i64> = row.try_get("cardholder_id")?;
    let balance: i64 = row.try_get("balance_fen")?;
    let inserted = sqlx::query(
        "INSERT INTO cards (card_serial, cardholder_id, card_type, key_set, status, issued_at, balance_fen,
         offline_counter, online_counter) VALUES ($1, $2, $3, $4, 'active', $5, $6, 0, 0)
         ON CONFLICT (card_serial) DO NOTHING",
    )
    .bind(new.serial.to_hex())
    .bind(cardholder)
    .bind(i64::from(new.card_type))
    .bind(&new.key_set)
    .bind(new.issued_at.unix_seconds() as i64)
    .bind(balance)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(Error::Conflict(format!("card {} is already issued", new.serial.masked())));
    }
    sqlx::query("UPDATE cards SET status = 'replaced', replaced_by = $1, balance_fen = 0 WHERE card_serial = $2")
        .bind(new.serial.to_hex())
        .bind(old.to_hex())
        .execute(&mut *tx)
        .await?;
    let listed: Option<(i64, String)> =
        sqlx::query_as("SELECT version, action FROM blacklist WHERE card_serial = $1 ORDER BY version DESC LIMIT 1")
            .bind(old.to_hex())
            .fetch_optional(&mut *tx)
            .await?;
    let blacklist_version = match listed {
        Some((version, action)) if action == "add" => version,
        _ => {
            sqlx::query_scalar(
                "INSERT INTO blacklist (card_serial, action, reason, listed_at) VALUES ($1, 'add', 'replaced', $2)
                 RETURNING version",
            )
            .bind(old.to_hex())
            .bind(hex::encode(new.issued_at.to_bytes()))
            .fetch_one(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    tracing::info!(old = %old.masked(), new = %new.serial.masked(), balance_fen = balance, "card replaced");
    Ok(Replacement { balance_moved_fen: balance, blacklist_version })
}

/// Releases a quarantined record back to `pending`, for the next run-day of its
/// day to check again; the quarantine row moves to `quarantine_releases` with
/// who released it. Records refused at upload (malformed) cannot be released.
pub async fn release_quarantined(db: &Db, transaction_id: i64, released_by: &str, now_unix: i64) -> Result<(), Error> {
    check_name("released_by", released_by)?;
    let mut tx = db.pool.begin().await?;
    let row = sqlx::query("SELECT business_day, reason, detail FROM quarantine WHERE transaction_id = $1")
        .bind(transaction_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("quarantined transaction {transaction_id}")))?;
    let business_day: Option<String> = row.try_get("business_day")?;
    sqlx::query(
        "INSERT INTO quarantine_releases (transaction_id, business_day, reason, detail, released_by, released_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(transaction_id)
    .bind(business_day)
    .bind(row.try_get::<String, _>("reason")?)
    .bind(row.try_get::<String, _>("detail")?)
    .bind(released_by)
    .bind(now_unix)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM quarantine WHERE transaction_id = $1").bind(transaction_id).execute(&mut *tx).await?;
    // Pending again: its outcome row goes (migration 0007: no row is pending).
    let updated = sqlx::query("DELETE FROM clearings WHERE transaction_id = $1 AND state = 'quarantined'")
        .bind(transaction_id)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() != 1 {
        return Err(Error::Inconsistent(format!("transaction {transaction_id} is quarantined but not marked so")));
    }
    tx.commit().await?;
    tracing::info!(transaction_id, released_by, "quarantined record released");
    Ok(())
}

/// One blacklist change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlacklistEntry {
    pub version: i64,
    pub card_serial: String,
    pub action: String,
    pub listed_at: String,
}

/// The blacklist changes after `since` (at most [`BLACKLIST_DOWNLOAD_MAX`]).
pub async fn blacklist_since(db: &Db, since: i64) -> Result<Vec<BlacklistEntry>, Error> {
    let rows = sqlx::query(
        "SELECT version, card_serial, action, listed_at FROM blacklist WHERE version > $1 ORDER BY version LIMIT $2",
    )
    .bind(since)
    .bind(BLACKLIST_DOWNLOAD_MAX)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(BlacklistEntry {
                version: row.try_get("version")?,
                card_serial: row.try_get("card_serial")?,
                action: row.try_get("action")?,
                listed_at: row.try_get("listed_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::Database)
}

/// A card's shadow account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    pub status: String,
    pub key_set: String,
    pub balance_fen: i64,
    pub offline_counter: i64,
    pub online_counter: i64,
}

pub async fn shadow(db: &Db, serial: &ApplicationSerial) -> Result<Shadow, Error> {
    let row = sqlx::query(
        "SELECT status, key_set, balance_fen, offline_counter, online_counter FROM cards WHERE card_serial = $1",
    )
    .bind(serial.to_hex())
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::NotFound(format!("card {}", serial.masked())))?;
    Ok(Shadow {
        status: row.try_get("status")?,
        key_set: row.try_get("key_set")?,
        balance_fen: row.try_get("balance_fen")?,
        offline_counter: row.try_get("offline_counter")?,
        online_counter: row.try_get("online_counter")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn citizen_ids_are_masked() {
        assert_eq!(super::mask_citizen_id("310101199001011234"), "310*************34");
        assert_eq!(super::mask_citizen_id("1234"), "****");
    }
}
