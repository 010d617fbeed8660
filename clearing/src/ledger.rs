//! The double-entry ledger. Debits are positive, credits negative; every entry's
//! postings sum to zero (asserted before writing), so the whole ledger does.
//!
//! | account | what it is |
//! | --- | --- |
//! | `card_float` | what the issuer owes cardholders (their purses): credited by loads, debited by purchases |
//! | `merchant_payable:<id>` | what the issuer owes a merchant: credited by its cleared purchases, debited by its fee and its payout |
//! | `fee_income` | fees earned: credited at settlement |
//! | `topup_funding` | money received for loads (cash, bank): debited by loads and initial balances |
//! | `settlement_bank` | payouts to merchants in the settlement file: credited at settlement |

use crate::db::{Connection, Db};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Account {
    CardFloat,
    MerchantPayable(String),
    FeeIncome,
    TopupFunding,
    SettlementBank,
}

impl Account {
    pub fn name(&self) -> String {
        match self {
            Account::CardFloat => "card_float".into(),
            Account::MerchantPayable(merchant) => format!("merchant_payable:{merchant}"),
            Account::FeeIncome => "fee_income".into(),
            Account::TopupFunding => "topup_funding".into(),
            Account::SettlementBank => "settlement_bank".into(),
        }
    }
}

/// Posts one balanced entry inside the caller's transaction. Postings of zero
/// are skipped. An entry id already posted to an account fails with
/// [`Error::Inconsistent`]: every caller posts in the transaction that makes
/// its step durable, so a retried step has nothing posted to collide with, and
/// a collision is a wrong entry id (it was once skipped in silence, dropping
/// money from the ledger).
pub async fn post<'c>(
    connection: impl Into<Connection<'c>>,
    entry_id: &str,
    business_day: &str,
    postings: &[(Account, i64)],
) -> Result<(), Error> {
    let sum: i128 = postings.iter().map(|(_, amount)| i128::from(*amount)).sum();
    assert_eq!(sum, 0, "entry {entry_id} does not balance");
    let mut connection = connection.into();
    for (account, amount) in postings.iter().filter(|(_, amount)| *amount != 0) {
        // An entry is posted once: a second posting of the same entry and
        // account is a bug in the caller's entry id, never skipped in silence.
        let sql = "INSERT INTO ledger_postings (entry_id, business_day, account, amount_fen) VALUES ($1, $2, $3, $4)
             ON CONFLICT (entry_id, account) DO NOTHING";
        let posted = crate::on_connection!(&mut connection, c => sqlx::query(sql)
            .bind(entry_id)
            .bind(business_day)
            .bind(account.name())
            .bind(*amount)
            .execute(&mut **c)
            .await?
            .rows_affected());
        if posted != 1 {
            return Err(Error::Inconsistent(format!(
                "ledger entry {entry_id} is already posted to {}",
                account.name()
            )));
        }
    }
    Ok(())
}

/// The sum of every posting (zero when the ledger balances).
pub async fn total(db: &Db) -> Result<i64, Error> {
    Ok(sqlx::query_scalar("SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM ledger_postings")
        .fetch_one(&db.pool)
        .await?)
}

/// The balance of one account (debits positive).
pub async fn balance(db: &Db, account: &Account) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM ledger_postings WHERE account = $1",
    )
    .bind(account.name())
    .fetch_one(&db.pool)
    .await?)
}
