//! Self-service kiosks (`terminal::kiosk::Kiosk`): online top-ups authorised by
//! clearing's HSM, and utility bills paid from the purse as journaled purchases.

use std::path::Path;

use card_host::psam::Psam;
use card_host::{CardDateTime, Fen};
use terminal::CardSession;
use terminal::kiosk::{Bill, Kiosk, KioskError, Utility};
use terminal::psam::PsamSession;
use terminal::reader::InProcess;

use super::CityError;
use super::fleet::{self, Device, SHOP_MERCHANT, TerminalSpec, terminal};
use super::population::Person;

/// The kiosks: the fixture shop terminal 0902 and a second one.
pub const KIOSKS: [TerminalSpec; 2] = [
    TerminalSpec { number: terminal([0x09, 0x02]), merchant: SHOP_MERCHANT, seed: 0x02, fixture: true },
    TerminalSpec { number: terminal([0x09, 0x22]), merchant: SHOP_MERCHANT, seed: 0x22, fixture: false },
];

/// The largest top-up clearing authorises.
pub const TOPUP_FEN_MAX: u32 = terminal::kiosk::TOPUP_FEN_MAX;

/// What the kiosks did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KioskStats {
    pub top_ups: u64,
    pub top_up_fen: u64,
    /// Top-ups clearing had not confirmed when the card left (confirmed later).
    pub unconfirmed: u64,
    pub bills: u64,
    pub bill_fen: u64,
    /// Refusals: blacklisted, blocked, balance too low, ...
    pub refused: std::collections::BTreeMap<String, u64>,
}

pub struct KioskDesk {
    pub kiosk: Kiosk,
    pub device: Device,
    psam: InProcess<Psam>,
}

fn refusal(error: &KioskError) -> String {
    match error {
        KioskError::Blacklisted => "blacklisted".into(),
        KioskError::Blocked => "card blocked".into(),
        KioskError::Purchase(terminal::transaction::TransactionError::Card(card))
            if card.status() == Some(card_host::status::StatusWord::InsufficientBalance) =>
        {
            "balance below the bill".into()
        }
        other => other.to_string(),
    }
}

impl KioskDesk {
    pub fn open(
        spec: TerminalSpec,
        directory: &Path,
        clearing: &crate::clearing::Clearing,
        base_url: &str,
    ) -> Result<KioskDesk, CityError> {
        let device = Device::register(spec, clearing, base_url)?;
        let kiosk = Kiosk::new(fleet::journal(directory, spec.number)?, fleet::client(spec, base_url)?);
        Ok(KioskDesk { kiosk, device, psam: fleet::psam_reader(directory, spec.number)? })
    }

    pub fn take_blacklist(&mut self) {
        self.kiosk.update_blacklist(self.device.blacklist.clone());
    }

    /// An online top-up of `amount`; `Err` with the refusal's reason if refused.
    pub fn top_up(&mut self, person: &Person, amount: Fen, stats: &mut KioskStats) -> Result<bool, CityError> {
        let mut reader = InProcess::new(person.card()?);
        match self.kiosk.top_up(&mut reader, amount) {
            Ok(loaded) => {
                stats.top_ups += 1;
                stats.top_up_fen += u64::from(amount.0);
                stats.unconfirmed += u64::from(!loaded.confirmed);
                Ok(true)
            }
            Err(error @ (KioskError::Blacklisted | KioskError::Blocked)) => {
                *stats.refused.entry(refusal(&error)).or_default() += 1;
                Ok(false)
            }
            Err(error) => Err(CityError::step("a kiosk top-up", error)),
        }
    }

    /// Pays a utility bill; whether it was paid.
    pub fn pay_bill(
        &mut self,
        person: &Person,
        utility: Utility,
        amount: Fen,
        at: CardDateTime,
        stats: &mut KioskStats,
    ) -> Result<bool, CityError> {
        let mut reader = InProcess::new(person.card()?);
        let mut psam = PsamSession::open(CardSession::new(&mut self.psam))
            .map_err(|error| CityError::step("open the kiosk's PSAM", error))?;
        let account = format!("{}-{}", &utility.name()[..3].to_uppercase(), &person.serial.to_hex()[10..]);
        let bill = Bill { utility, account, amount };
        match self.kiosk.pay_bill(&mut reader, &mut psam, &bill, at) {
            Ok(_) => {
                stats.bills += 1;
                stats.bill_fen += u64::from(amount.0);
                Ok(true)
            }
            Err(error) => {
                let reason = refusal(&error);
                if matches!(error, KioskError::Blacklisted | KioskError::Blocked) || reason.starts_with("balance") {
                    *stats.refused.entry(reason).or_default() += 1;
                    Ok(false)
                } else {
                    Err(CityError::step("a kiosk bill", error))
                }
            }
        }
    }
}
