//! The self-service kiosk: read a card's balance and recent transactions, top
//! the purse up online through clearing, and pay a utility bill from it.
//!
//! An online top-up ([`Kiosk::top_up`]):
//!
//! 1. INITIALIZE FOR LOAD: the card's balance, online counter, random and MAC1;
//! 2. clearing authorises (`POST /v1/topups/authorise`): its HSM checks MAC1 and
//!    makes MAC2 with the host date-time;
//! 3. the journal writes a load intent durably ([`Journal::write_load_intent`]);
//! 4. CREDIT FOR LOAD with MAC2: the card's TAC completes the intent; a refusal
//!    (a status word) voids it, and the void is told to clearing; no answer
//!    (the card left) leaves it open;
//! 5. clearing is given the TAC (`POST /v1/topups/confirm`); until it answers
//!    the completed row stays unconfirmed and [`Kiosk::confirm_pending`] tries
//!    again.
//!
//! An open load intent is settled by the card when it is presented again
//! ([`Kiosk::settle`], done first by every operation on a card): GET
//! TRANSACTION PROVE of load number online counter + 1 returns the TAC (the
//! load happened: complete and confirm) or nothing (it did not: void, told to
//! clearing; clearing never clears a top-up it was not given the TAC of).
//!
//! A bill is paid as a journaled purchase with the kiosk's PSAM
//! ([`crate::transaction::purchase_for`]) whose journal row keeps the bill's
//! reference (`water:ACCOUNT`), uploaded to clearing like a bus fare.

use card_host::responses::TransactionRecord;
use card_host::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};

use crate::journal::{Completed, Journal, JournalError, LoadEntry, LoadIntent, LoadRow, REFERENCE_BYTES_MAX};
use crate::psam::PsamSession;
use crate::purse::{PurchaseRequest, Purse};
use crate::reader::Channel;
use crate::session::{CardError, CardSession};
use crate::transaction::{self, Place, TransactionError};
use crate::upload::{ClearingClient, TopupConfirm, TopupRequest, UploadError};

/// The load key the kiosk asks the card to use (clearing's HSM holds it).
pub const LOAD_KEY_INDEX: u8 = 1;
/// The largest top-up clearing authorises.
pub const TOPUP_FEN_MAX: u32 = 100_000;
/// The largest bill the kiosk pays in one purchase.
pub const BILL_FEN_MAX: u32 = 1_000_000;
/// The longest bill account number.
pub const BILL_ACCOUNT_BYTES_MAX: usize = 48;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KioskError {
    #[error(transparent)]
    Card(#[from] CardError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Clearing(#[from] UploadError),
    #[error(transparent)]
    Purchase(#[from] TransactionError),
    #[error("the card is blocked")]
    Blocked,
    /// The card is on the blacklist (lost, stolen, replaced): nothing is done.
    #[error("the card is blacklisted")]
    Blacklisted,
    #[error("amount must be 1 to {max} fen")]
    Amount { max: u32 },
    #[error("bill account: 1 to {BILL_ACCOUNT_BYTES_MAX} of A-Z a-z 0-9 -")]
    Account,
    #[error("the balance would overflow")]
    Overflow,
    /// The card refused CREDIT FOR LOAD: nothing was loaded (the intent is voided).
    #[error("the card refused the load: {source}")]
    LoadRefused { voided: Box<LoadRow>, source: CardError },
    /// The card left during CREDIT FOR LOAD: present it again to settle.
    #[error("the card left during the load (journal row {intent_id}); present it again")]
    LoadTorn { intent_id: i64, source: CardError },
}

/// A finished top-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub row: LoadRow,
    /// The balance after the load.
    pub balance: Fen,
    /// Clearing took the TAC (otherwise [`Kiosk::confirm_pending`] will).
    pub confirmed: bool,
}

/// How an open load intent was settled by the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The card proved the load; `confirmed` as in [`Loaded`].
    Completed { row: LoadRow, confirmed: bool },
    /// The card has no such load.
    Voided(LoadRow),
}

/// A utility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Utility {
    Water,
    Electricity,
    Gas,
}

impl Utility {
    pub fn name(self) -> &'static str {
        match self {
            Utility::Water => "water",
            Utility::Electricity => "electricity",
            Utility::Gas => "gas",
        }
    }

    pub fn parse(text: &str) -> Option<Utility> {
        Some(match text {
            "water" => Utility::Water,
            "electricity" => Utility::Electricity,
            "gas" => Utility::Gas,
            _ => return None,
        })
    }
}

/// A bill to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    pub utility: Utility,
    pub account: String,
    pub amount: Fen,
}

impl Bill {
    /// What the journal row keeps: `utility:account`.
    pub fn reference(&self) -> Result<String, KioskError> {
        let valid = !self.account.is_empty()
            && self.account.len() <= BILL_ACCOUNT_BYTES_MAX
            && self.account.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(KioskError::Account);
        }
        let reference = format!("{}:{}", self.utility.name(), self.account);
        debug_assert!(reference.len() <= REFERENCE_BYTES_MAX);
        Ok(reference)
    }
}

/// What the kiosk shows of a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardView {
    /// The application serial (`Debug` masks it).
    pub serial: ApplicationSerial,
    /// Masked card number.
    pub card: String,
    /// The card type code of the purse's public information (`docs/card.md`).
    pub card_type: u8,
    pub balance: Fen,
    /// Newest first.
    pub recent: Vec<TransactionRecord>,
    /// What an earlier operation left open on this card and the card has now
    /// settled (a load or a payment interrupted by the card leaving).
    pub settled: Settlement,
}

/// How the card settled what earlier operations left open, when it was
/// presented again: the truth about an interrupted load or payment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    pub loads: Vec<Settled>,
    /// Purchases (bills) of this kiosk: proved by the card, or voided.
    pub purchases: Vec<transaction::Recovered>,
}

impl Settlement {
    pub fn is_empty(&self) -> bool {
        self.loads.is_empty() && self.purchases.is_empty()
    }
}

/// A kiosk: its journal and its way to clearing.
pub struct Kiosk {
    journal: Journal,
    client: ClearingClient,
    blacklist: crate::blacklist::Blacklist,
}

fn decode<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], UploadError> {
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| UploadError::BadAnswer { what: "top-up authorisation", detail: format!("{what}: {text:?}") })?;
    Ok(bytes)
}

impl Kiosk {
    pub fn new(journal: Journal, client: ClearingClient) -> Kiosk {
        Kiosk { journal, client, blacklist: crate::blacklist::Blacklist::empty() }
    }

    pub fn blacklist(&self) -> &crate::blacklist::Blacklist {
        &self.blacklist
    }

    /// Keeps `newer` if its version is higher (see [`crate::blacklist::Blacklist::update`]);
    /// a blacklisted card is neither loaded nor charged.
    pub fn update_blacklist(&mut self, newer: crate::blacklist::Blacklist) -> bool {
        self.blacklist.update(newer)
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn client(&self) -> &ClearingClient {
        &self.client
    }

    fn terminal(&self) -> TerminalNumber {
        self.client.terminal()
    }

    /// Gives clearing the TAC of a completed load; whether it took it. A
    /// failure is logged and the row stays unconfirmed.
    fn confirm(&self, row: &LoadRow) -> Result<bool, KioskError> {
        let Some(tac) = row.tac else { return Ok(false) };
        let confirm = TopupConfirm {
            card_serial: row.entry.card.to_hex(),
            online_counter: row.entry.online_counter,
            tac: hex::encode_upper(tac),
        };
        match self.client.confirm_topup(&confirm) {
            Ok(_) => {
                self.journal.mark_load_confirmed(row.id)?;
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(id = row.id, card = %row.entry.card.masked(), %error, "load not confirmed yet");
                Ok(false)
            }
        }
    }

    /// Tells clearing a load did not happen on the card (POST /v1/topups/void):
    /// GET TRANSACTION PROVE found no such load, or the card refused CREDIT FOR
    /// LOAD with a status word. Its authorisation then no longer holds the
    /// card's online counter. Best effort: a failure is logged (clearing keeps
    /// the authorisation, which a retry of the same top-up gets again).
    fn void_at_clearing(&self, row: &LoadRow) {
        let void = crate::upload::TopupVoid {
            card_serial: row.entry.card.to_hex(),
            online_counter: row.entry.online_counter,
            date_time: hex::encode(row.entry.at.to_bytes()),
        };
        if let Err(error) = self.client.void_load(&void) {
            tracing::warn!(id = row.id, card = %row.entry.card.masked(), %error, "clearing did not take the void");
        }
    }

    /// Confirms every completed load clearing has not taken; how many it took.
    pub fn confirm_pending(&self) -> Result<u64, KioskError> {
        let mut confirmed = 0;
        for row in self.journal.unconfirmed_loads()? {
            confirmed += u64::from(self.confirm(&row)?);
        }
        Ok(confirmed)
    }

    /// Settles this card's open load intents by asking it (see the module).
    pub fn settle(&self, purse: &mut Purse<'_>) -> Result<Vec<Settled>, KioskError> {
        let card = purse.public_information().application_serial;
        let mut settled = Vec::new();
        for intent in self.journal.unresolved_loads_for(&card)? {
            let number = intent.entry().transaction_number();
            match purse.prove(TransactionType::PurseLoad, number)? {
                Some(proof) => {
                    let row = intent.complete(&self.journal, proof.tac)?;
                    tracing::info!(id = row.id, card = %card.masked(), "load proved by the card");
                    let confirmed = self.confirm(&row)?;
                    settled.push(Settled::Completed { row, confirmed });
                }
                None => {
                    let row = intent.void(&self.journal)?;
                    tracing::info!(id = row.id, card = %card.masked(), "load never reached the card; voided");
                    self.void_at_clearing(&row);
                    settled.push(Settled::Voided(row));
                }
            }
        }
        Ok(settled)
    }

    /// Selects the purse and settles what an earlier operation left open
    /// (loads, and purchases of this kiosk).
    fn open<'a>(&self, card: &'a mut dyn Channel) -> Result<(Purse<'a>, Settlement), KioskError> {
        let mut purse = Purse::select(CardSession::new(card))?;
        if !purse.public_information().enabled {
            return Err(KioskError::Blocked);
        }
        let loads = self.settle(&mut purse)?;
        let purchases = transaction::recover_card(&mut purse, &self.journal)?;
        Ok((purse, Settlement { loads, purchases }))
    }

    /// [`Kiosk::open`] for an operation that moves money: not for a blacklisted card.
    fn open_for_money<'a>(&self, card: &'a mut dyn Channel) -> Result<Purse<'a>, KioskError> {
        let (purse, _) = self.open(card)?;
        if self.blacklist.contains(&purse.public_information().application_serial) {
            tracing::warn!(card = %purse.public_information().application_serial.masked(), "blacklisted card refused");
            return Err(KioskError::Blacklisted);
        }
        Ok(purse)
    }

    /// Balance and recent transactions, and what the card settled of earlier
    /// operations left open.
    pub fn read(&self, card: &mut dyn Channel) -> Result<CardView, KioskError> {
        let (mut purse, settled) = self.open(card)?;
        let public = purse.public_information();
        let (serial, card_type) = (public.application_serial, public.card_type);
        let card = serial.masked();
        Ok(CardView { serial, card, card_type, balance: purse.balance()?, recent: purse.history()?, settled })
    }

    /// An online top-up of `amount` (see the module).
    pub fn top_up(&self, card: &mut dyn Channel, amount: Fen) -> Result<Loaded, KioskError> {
        if amount.0 == 0 || amount.0 > TOPUP_FEN_MAX {
            return Err(KioskError::Amount { max: TOPUP_FEN_MAX });
        }
        let mut purse = self.open_for_money(card)?;
        let public = purse.public_information().clone();
        let terminal = self.terminal();
        let init = purse.initialize_load(LOAD_KEY_INDEX, amount, &terminal)?;
        let balance = init.balance.0.checked_add(amount.0).map(Fen).ok_or(KioskError::Overflow)?;
        let request = TopupRequest {
            card_serial: public.application_serial.to_hex(),
            key_index: LOAD_KEY_INDEX,
            card_random: hex::encode_upper(init.card_random),
            online_counter: init.online_counter,
            balance_before_fen: init.balance.0,
            amount_fen: amount.0,
            transaction_type: format!("{:02X}", TransactionType::PurseLoad.code()),
            mac1: hex::encode_upper(init.mac1),
        };
        let authorised = self.client.authorise_topup(&request)?;
        let mac2 = decode::<4>("mac2", &authorised.mac2)?;
        let at = CardDateTime::from_slice(&decode::<7>("date_time", &authorised.date_time)?).map_err(|_| {
            UploadError::BadAnswer { what: "top-up authorisation", detail: "date_time is not a date".into() }
        })?;
        let intent: LoadIntent = self.journal.write_load_intent(LoadEntry {
            card: public.application_serial,
            card_type: public.card_type,
            online_counter: init.online_counter,
            amount,
            balance_before: init.balance,
            terminal,
            at,
        })?;
        let tac = match purse.credit_load(&at, mac2) {
            Ok(tac) => tac,
            Err(source @ CardError::Refused { .. }) => {
                // A status word is an answer: the card did not load. Certain,
                // so clearing is told too, and the authorisation no longer
                // holds the card's online counter (a top-up of another amount
                // may take it).
                let voided = intent.void(&self.journal)?;
                tracing::warn!(id = voided.id, card = %public.application_serial.masked(), error = %source, "the card refused the load; voided");
                self.void_at_clearing(&voided);
                return Err(KioskError::LoadRefused { voided: Box::new(voided), source });
            }
            Err(source) => {
                tracing::warn!(card = %public.application_serial.masked(), intent = intent.id(), error = %source, "load torn; intent kept");
                return Err(KioskError::LoadTorn { intent_id: intent.id(), source });
            }
        };
        let row = intent.complete(&self.journal, tac)?;
        let confirmed = self.confirm(&row)?;
        let row = LoadRow { confirmed, ..row };
        tracing::info!(card = %public.application_serial.masked(), %amount, confirmed, "card topped up");
        Ok(Loaded { row, balance, confirmed })
    }

    /// Pays `bill` from the purse with the kiosk's PSAM, at `at`.
    pub fn pay_bill(
        &self,
        card: &mut dyn Channel,
        psam: &mut PsamSession<'_>,
        bill: &Bill,
        at: CardDateTime,
    ) -> Result<Completed, KioskError> {
        if bill.amount.0 == 0 || bill.amount.0 > BILL_FEN_MAX {
            return Err(KioskError::Amount { max: BILL_FEN_MAX });
        }
        let reference = bill.reference()?;
        let mut purse = self.open_for_money(card)?;
        let request = PurchaseRequest { amount: bill.amount, at, compound_records: vec![] };
        Ok(transaction::purchase_for(&mut purse, psam, &self.journal, &request, Place::default(), Some(reference))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bill_references_are_checked() {
        let bill = |account: &str| Bill { utility: Utility::Gas, account: account.into(), amount: Fen(100) };
        assert_eq!(bill("GAS-0042").reference().expect("valid"), "gas:GAS-0042");
        assert!(bill("").reference().is_err());
        assert!(bill("no spaces").reference().is_err());
        assert!(bill(&"9".repeat(BILL_ACCOUNT_BYTES_MAX + 1)).reference().is_err());
        assert_eq!(Utility::parse("electricity"), Some(Utility::Electricity));
        assert_eq!(Utility::parse("coal"), None);
    }
}
