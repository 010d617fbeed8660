//! The software PSAM: the terminal's security module, a second card in the
//! reader's second slot. It holds the terminal number and the issuer's purchase
//! master key, diversifies the card's purchase key itself, makes MAC1, checks
//! MAC2, and keeps the terminal transaction serial (TSN), which it never reuses.
//!
//! Command set (the China financial PSAM specification as seen in public terminal
//! code; see `docs/card.md`): READ BINARY of `0015`/`0016`/`0017` by SFI, INIT SAM
//! FOR PURCHASE `80 70`, CREDIT SAM FOR PURCHASE `80 72`, and the generic key
//! functions `80 1A` (diversify) and `80 FA` (MAC with the diversified key) used
//! for card maintenance commands such as APPLICATION BLOCK.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::apdu::{Command, Response};
use crate::card::IndexedKey;
use crate::crypto::{self, Algorithm, Key16, SessionKey};
use crate::icc::SmartCard;
use crate::model::{CardDateTime, Fen, TerminalNumber, TransactionType};
use crate::status::StatusWord;
use crate::storage::{Storage, StorageError};

pub const IMAGE_FORMAT: &str = "psam-image/1";
/// AID of the PSAM's purchase application (ours: unregistered `F0` range, "CITYPSAM").
pub const PSAM_AID: [u8; 8] = [0xF0, 0x43, 0x49, 0x54, 0x59, 0x50, 0x53, 0x4D];
/// Diversification levels `80 1A` and `80 70` accept.
pub const DIVERSIFICATION_LEVELS_MAX: usize = 3;

/// Key usage in P1 bits 5..1 of `80 1A`.
const USAGE_PURCHASE: u8 = 0x02;
const USAGE_MAINTENANCE: u8 = 0x05;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PsamImage {
    pub format: String,
    #[serde(with = "crate::hexser::bytes")]
    pub atr: Vec<u8>,
    /// PSAM serial number, 10 bytes BCD.
    #[serde(with = "crate::hexser::array")]
    pub serial: [u8; 10],
    #[serde(with = "crate::hexser::array")]
    pub terminal_number: [u8; 6],
    #[serde(with = "crate::hexser::array")]
    pub issuer_id: [u8; 8],
    pub algorithm: Algorithm,
    /// The purchase key index the terminal asks the card for (first byte of `0017`).
    pub key_index: u8,
    /// Purchase master keys (MPK), by index.
    pub purchase_keys: Vec<IndexedKey>,
    /// Maintenance master key, for APPLICATION BLOCK/UNBLOCK MACs.
    #[serde(with = "crate::hexser::key")]
    pub maintenance_key: Key16,
    /// The next terminal transaction serial.
    pub terminal_serial: u32,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PsamError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("PSAM image format {0:?} is not {IMAGE_FORMAT:?}")]
    Format(String),
}

/// A purchase between `80 70` and `80 72`.
#[derive(Debug, Clone)]
struct PurchaseSession {
    session_key: SessionKey,
    amount: Fen,
}

pub struct Psam {
    image: PsamImage,
    storage: Storage,
    purchase: Option<PurchaseSession>,
    diversified: Option<Key16>,
    selected_application: bool,
}

impl std::fmt::Debug for Psam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psam {{ terminal: {} }}", hex::encode_upper(self.image.terminal_number))
    }
}

type Outcome = Result<Response, StatusWord>;

impl Psam {
    pub fn new(image: PsamImage, storage: Storage) -> Self {
        Psam { image, storage, purchase: None, diversified: None, selected_application: false }
    }

    pub fn open(path: &Path) -> Result<Self, PsamError> {
        let image: PsamImage = crate::storage::load(path)?;
        if image.format != IMAGE_FORMAT {
            return Err(PsamError::Format(image.format));
        }
        Ok(Self::new(image, Storage::file(path)))
    }

    /// A new PSAM for a terminal, holding the master keys of `keys`.
    pub fn issue(keys: &crate::issue::MasterKeySet, terminal: TerminalNumber, key_index: u8) -> PsamImage {
        let mut serial = [0u8; 10];
        serial[4..].copy_from_slice(&terminal.0);
        PsamImage {
            format: IMAGE_FORMAT.to_owned(),
            atr: crate::card::contactless_atr(b"CITYPSAM\x01"),
            serial,
            terminal_number: terminal.0,
            issuer_id: [0x31, 0x00, 0, 0, 0, 0, 0, 0],
            algorithm: keys.algorithm,
            key_index,
            purchase_keys: keys.purchase.clone(),
            maintenance_key: keys.maintenance.clone(),
            terminal_serial: 1,
        }
    }

    pub fn image(&self) -> &PsamImage {
        &self.image
    }

    pub fn terminal_number(&self) -> TerminalNumber {
        TerminalNumber(self.image.terminal_number)
    }

    pub fn process(&mut self, command: &Command) -> Response {
        let purchase = self.purchase.take();
        let result = match (command.cla, command.ins) {
            (0x00, 0xA4) => self.select(command),
            (0x00, 0xB0) => self.read_binary(command),
            (0x80, 0x70) => self.init_for_purchase(command),
            (0x80, 0x72) => match purchase {
                Some(session) => self.credit_for_purchase(command, session),
                None => Err(StatusWord::ConditionsNotSatisfied),
            },
            (0x80, 0x1A) => self.diversify(command),
            (0x80, 0xFA) => self.cipher(command),
            (0x00 | 0x80, _) => Err(StatusWord::InsNotSupported),
            _ => Err(StatusWord::ClaNotSupported),
        };
        result.unwrap_or_else(Response::status_only)
    }

    fn select(&mut self, command: &Command) -> Outcome {
        match (command.p1, command.data()) {
            (0x00, [0x3F, 0x00]) | (0x00, []) => self.selected_application = false,
            (0x00, [0xDF, 0x01]) => self.selected_application = true,
            (0x04, name) if !name.is_empty() && PSAM_AID.starts_with(name) => self.selected_application = true,
            _ => return Err(StatusWord::FileNotFound),
        }
        Ok(Response::ok(Vec::new()))
    }

    /// READ BINARY by SFI: `0015` PSAM information, `0016` terminal number,
    /// `0017` purchase application information.
    fn read_binary(&mut self, command: &Command) -> Outcome {
        if command.p1 & 0x80 == 0 {
            return Err(StatusWord::NoCurrentFile);
        }
        let content = match command.p1 & 0x1F {
            0x15 => {
                let mut info = self.image.serial.to_vec();
                info.extend_from_slice(&[0x01, 0x00, 0x01, 0x00]);
                info
            }
            0x16 => self.image.terminal_number.to_vec(),
            0x17 => {
                let mut info = vec![self.image.key_index];
                info.extend_from_slice(&self.image.issuer_id);
                info.extend_from_slice(&[0; 8]);
                info.extend_from_slice(&[0x20, 0x26, 0x01, 0x01, 0x20, 0x36, 0x12, 0x31]);
                info
            }
            _ => return Err(StatusWord::FileNotFound),
        };
        let offset = usize::from(command.p2);
        if offset >= content.len() {
            return Err(StatusWord::WrongP1P2);
        }
        let end = content.len().min(offset + command.expected().unwrap_or(256));
        Ok(Response::ok(content[offset..end].to_vec()))
    }

    /// INIT SAM FOR PURCHASE (`80 70 00 00 Lc`): card random (4) ‖ offline counter
    /// (2) ‖ amount (4) ‖ type (1) ‖ date (4) ‖ time (3) ‖ key version (1) ‖
    /// algorithm id (1) ‖ card application serial (8) ‖ up to two higher-level
    /// factors (8 each). Answers TSN (4) ‖ MAC1 (4), and uses up the TSN.
    fn init_for_purchase(&mut self, command: &Command) -> Outcome {
        let data = command.data();
        if data.len() < 28
            || !(data.len() - 28).is_multiple_of(8)
            || (data.len() - 28) / 8 > DIVERSIFICATION_LEVELS_MAX - 1
        {
            return Err(StatusWord::WrongLength);
        }
        let card_random: [u8; 4] = data[0..4].try_into().map_err(|_| StatusWord::WrongLength)?;
        let counter = u16::from_be_bytes([data[4], data[5]]);
        let amount = Fen::from_bytes([data[6], data[7], data[8], data[9]]);
        let kind = TransactionType::from_code(data[10]).map_err(|_| StatusWord::WrongData)?;
        if kind.is_load() {
            return Err(StatusWord::WrongData);
        }
        let at = CardDateTime::from_slice(&data[11..18]).map_err(|_| StatusWord::WrongData)?;
        let key_version = data[18];
        let algorithm = Algorithm::from_id(data[19]).map_err(|_| StatusWord::WrongData)?;
        if algorithm != self.image.algorithm {
            return Err(StatusWord::KeyIndexNotSupported);
        }
        let master = self
            .image
            .purchase_keys
            .iter()
            .find(|k| k.index == self.image.key_index && k.version == key_version)
            .ok_or(StatusWord::KeyIndexNotSupported)?;
        // The card's factor comes first in the data; diversify from the highest level down.
        let factors: Vec<[u8; 8]> = data[20..].chunks(8).rev().filter_map(|chunk| chunk.try_into().ok()).collect();
        let dpk = crypto::diversify_levels(algorithm, &master.key, &factors);
        let terminal_serial = self.image.terminal_serial;
        let session_key = crypto::purchase_session_key(algorithm, &dpk, card_random, counter, terminal_serial);
        let terminal = TerminalNumber(self.image.terminal_number);
        let mac1 = crypto::purse::purchase_mac1(&session_key, amount, kind, &terminal, &at);
        // The serial is used up before MAC1 leaves the PSAM, so it is never reused.
        let mut next = self.image.clone();
        next.terminal_serial = terminal_serial.checked_add(1).ok_or(StatusWord::CounterAtMaximum)?;
        self.storage.save(&next).map_err(|error| {
            tracing::error!(%error, "PSAM image could not be saved");
            StatusWord::MemoryFailure
        })?;
        self.image = next;
        self.purchase = Some(PurchaseSession { session_key, amount });
        let mut out = terminal_serial.to_be_bytes().to_vec();
        out.extend_from_slice(&mac1);
        Ok(Response::ok(out))
    }

    /// CREDIT SAM FOR PURCHASE (`80 72 00 00 04`): checks the card's MAC2.
    fn credit_for_purchase(&mut self, command: &Command, session: PurchaseSession) -> Outcome {
        let mac2: [u8; 4] = command.data().try_into().map_err(|_| StatusWord::WrongLength)?;
        let expected = crypto::purse::purchase_mac2(&session.session_key, session.amount);
        if crypto::constant_time_eq(&expected, &mac2) {
            Ok(Response::ok(Vec::new()))
        } else {
            Err(StatusWord::MacInvalid)
        }
    }

    /// DIVERSIFY (`80 1A P1 P2 Lc`): P1 bits 5..1 = key usage (`02` purchase, `05`
    /// maintenance), P2 = key index; the data is the factors, the card's first.
    /// The derived key stays in the PSAM for `80 FA`.
    fn diversify(&mut self, command: &Command) -> Outcome {
        let data = command.data();
        if data.is_empty() || !data.len().is_multiple_of(8) || data.len() / 8 > DIVERSIFICATION_LEVELS_MAX {
            return Err(StatusWord::WrongLength);
        }
        let master = match command.p1 & 0x1F {
            USAGE_PURCHASE => {
                &self
                    .image
                    .purchase_keys
                    .iter()
                    .find(|k| k.index == command.p2)
                    .ok_or(StatusWord::ReferencedDataNotFound)?
                    .key
            }
            USAGE_MAINTENANCE => &self.image.maintenance_key,
            _ => return Err(StatusWord::ReferencedDataNotFound),
        };
        let factors: Vec<[u8; 8]> = data.chunks(8).rev().filter_map(|chunk| chunk.try_into().ok()).collect();
        self.diversified = Some(crypto::diversify_levels(self.image.algorithm, master, &factors));
        Ok(Response::ok(Vec::new()))
    }

    /// CIPHER DATA (`80 FA 05 00 Lc`): a MAC with the key of the last `80 1A`; the
    /// data is the initial value (8) ‖ the message. Answers the 4-byte MAC.
    fn cipher(&mut self, command: &Command) -> Outcome {
        if command.p1 != 0x05 || command.p2 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let key = self.diversified.as_ref().ok_or(StatusWord::ConditionsNotSatisfied)?;
        let data = command.data();
        if data.len() < 8 {
            return Err(StatusWord::WrongLength);
        }
        let challenge: [u8; 4] = data[..4].try_into().map_err(|_| StatusWord::WrongLength)?;
        if data[4..8] != [0, 0, 0, 0] {
            return Err(StatusWord::WrongData);
        }
        let mac = crypto::secure_messaging_mac(self.image.algorithm, key, challenge, &data[8..]);
        Ok(Response::ok(mac.to_vec()))
    }
}

impl SmartCard for Psam {
    fn atr(&self) -> Vec<u8> {
        self.image.atr.clone()
    }

    fn power_on(&mut self) {
        self.purchase = None;
        self.diversified = None;
        self.selected_application = false;
    }

    fn power_off(&mut self) {
        self.power_on();
    }

    fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        match Command::parse(command) {
            Ok(command) => self.process(&command),
            Err(_) => Response::status_only(StatusWord::WrongLength),
        }
        .to_bytes()
    }
}
