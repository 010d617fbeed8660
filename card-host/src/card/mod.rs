//! The software citizen card: one multi-application CPU card with the social
//! security application, the e-purse with transit compound records, and the
//! medical application, over an ISO/IEC 7816-4 file system.
//!
//! The card's non-volatile state is a [`CardImage`]; every command that changes it
//! works on a copy and saves the copy atomically before it answers, so a command
//! either happens entirely (balance, counter, transaction record and proof
//! together) or not at all, even if the process is killed in the middle.
//! Volatile state (selected file, verified PIN, challenge, a purchase in progress)
//! lives in [`Session`] and is lost at power-off, as on a real card.

pub mod fs;
pub mod purse;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::apdu::{Command, Response};
use crate::crypto::{self, Algorithm, Key16};
use crate::icc::SmartCard;
use crate::model::{ApplicationSerial, Fen, TransactionType};
use crate::status::StatusWord;
use crate::storage::{Storage, StorageError};
use crate::tlv::{constructed, primitive};
use fs::{Access, Application, ApplicationState, DfRef, FileSystem, RecordSelector};

/// The format name written into every citizen card image.
pub const IMAGE_FORMAT: &str = "citizen-card-image/1";
/// Transactions whose proof (MAC and TAC) the card keeps for GET TRANSACTION PROVE.
pub const PROOFS_MAX: usize = 10;
/// PIN length in bytes of packed BCD (4 to 12 digits).
pub const PIN_BYTES_MIN: usize = 2;
pub const PIN_BYTES_MAX: usize = 6;

/// The cardholder category, which decides concession fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CardType {
    Ordinary,
    Student,
    Senior,
    Disabled,
    Staff,
}

impl CardType {
    /// The code in the public-information file (ours; see `docs/card.md`).
    pub fn code(self) -> u8 {
        match self {
            CardType::Ordinary => 0x01,
            CardType::Student => 0x02,
            CardType::Senior => 0x03,
            CardType::Disabled => 0x04,
            CardType::Staff => 0x05,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => CardType::Ordinary,
            0x02 => CardType::Student,
            0x03 => CardType::Senior,
            0x04 => CardType::Disabled,
            0x05 => CardType::Staff,
            _ => return None,
        })
    }
}

/// A key with its index and version, as the card selects it by the key index in
/// INITIALIZE FOR LOAD/PURCHASE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexedKey {
    pub index: u8,
    pub version: u8,
    #[serde(with = "crate::hexser::key")]
    pub key: Key16,
}

/// The card's own keys, diversified from the issuer's master keys by the
/// application serial number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CardKeys {
    pub algorithm: Algorithm,
    /// DPK, by key index.
    pub purchase: Vec<IndexedKey>,
    /// DLK, by key index.
    pub load: Vec<IndexedKey>,
    /// DTK.
    #[serde(with = "crate::hexser::key")]
    pub tac: Key16,
    /// Secure messaging for updates, APPLICATION BLOCK and UNBLOCK.
    #[serde(with = "crate::hexser::key")]
    pub maintenance: Key16,
    /// PIN RELOAD.
    #[serde(with = "crate::hexser::key")]
    pub pin_reload: Key16,
    /// EXTERNAL AUTHENTICATE of a terminal.
    #[serde(with = "crate::hexser::key")]
    pub external_auth: Key16,
}

/// The cardholder PIN and its try counter.
#[derive(Clone, Serialize, Deserialize)]
pub struct PinState {
    /// Packed BCD, padded with `F` to a whole byte.
    #[serde(with = "crate::hexser::bytes")]
    pub value: Vec<u8>,
    pub tries_left: u8,
    pub tries_max: u8,
}

impl std::fmt::Debug for PinState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinState {{ value: REDACTED, tries_left: {}, tries_max: {} }}", self.tries_left, self.tries_max)
    }
}

impl PinState {
    /// A PIN from its digits ("123456"); 4 to 12 digits.
    pub fn from_digits(digits: &str, tries_max: u8) -> Option<Self> {
        let value = pin_from_digits(digits)?;
        Some(PinState { value, tries_left: tries_max, tries_max })
    }
}

/// Packs PIN digits into BCD, padding an odd count with `F`.
pub fn pin_from_digits(digits: &str) -> Option<Vec<u8>> {
    if !(4..=12).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nibbles: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
    if nibbles.len() % 2 == 1 {
        nibbles.push(0x0F);
    }
    Some(nibbles.chunks(2).map(|pair| (pair[0] << 4) | pair[1]).collect())
}

/// What GET TRANSACTION PROVE returns for a past transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub kind: TransactionType,
    /// The transaction's number: the counter after the transaction.
    pub counter: u16,
    #[serde(with = "crate::hexser::array")]
    pub mac: [u8; 4],
    #[serde(with = "crate::hexser::array")]
    pub tac: [u8; 4],
}

/// The e-purse's values that are not files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurseState {
    pub balance: Fen,
    pub balance_max: Fen,
    pub offline_counter: u16,
    pub online_counter: u16,
    /// Always 0 on our cards: no overdraft.
    pub overdraft_limit: u32,
    /// Newest first, at most [`PROOFS_MAX`].
    pub proofs: Vec<Proof>,
    /// Balance at issue, and the sums of every load and purchase since: saved
    /// with the balance, so `issued + loaded - spent == balance` always holds in
    /// a consistent image (checked on load).
    pub issued: Fen,
    pub loaded_total: u64,
    pub spent_total: u64,
}

impl PurseState {
    /// Whether the balance agrees with the issue balance and the running totals.
    pub fn is_consistent(&self) -> bool {
        u64::from(self.issued.0) + self.loaded_total >= self.spent_total
            && u64::from(self.issued.0) + self.loaded_total - self.spent_total == u64::from(self.balance.0)
    }
}

/// Everything the card keeps across power cycles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CardImage {
    pub format: String,
    pub card_type: CardType,
    #[serde(with = "serial_hex")]
    pub serial: ApplicationSerial,
    #[serde(with = "crate::hexser::bytes")]
    pub atr: Vec<u8>,
    pub pin: PinState,
    pub keys: CardKeys,
    pub purse: PurseState,
    pub files: FileSystem,
}

mod serial_hex {
    use crate::model::ApplicationSerial;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &ApplicationSerial, serializer: S) -> Result<S::Ok, S::Error> {
        crate::hexser::array::serialize(&value.0, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ApplicationSerial, D::Error> {
        crate::hexser::array::deserialize(deserializer).map(ApplicationSerial)
    }
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("image format {0:?} is not {IMAGE_FORMAT:?}")]
    Format(String),
    #[error("image is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl CardImage {
    /// Checks the invariants a saved image must hold.
    pub fn check(&self) -> Result<(), ImageError> {
        if self.format != IMAGE_FORMAT {
            return Err(ImageError::Format(self.format.clone()));
        }
        if !self.purse.is_consistent() {
            return Err(ImageError::Inconsistent("balance differs from issue balance + loads - purchases"));
        }
        if self.purse.balance > self.purse.balance_max {
            return Err(ImageError::Inconsistent("balance above the card's maximum"));
        }
        if self.purse.proofs.len() > PROOFS_MAX {
            return Err(ImageError::Inconsistent("too many proofs"));
        }
        if self.files.application(Application::Purse).is_none() {
            return Err(ImageError::Inconsistent("no e-purse application"));
        }
        Ok(())
    }
}

/// A purchase or load between its INITIALIZE and its DEBIT or CREDIT.
#[derive(Debug, Clone)]
enum Pending {
    None,
    Load(purse::LoadContext),
    Purchase(purse::PurchaseContext),
}

/// Volatile state, lost at power-off and reset.
#[derive(Debug, Clone)]
pub struct Session {
    df: DfRef,
    ef: Option<usize>,
    pin_verified: bool,
    terminal_authenticated: Option<DfRef>,
    challenge: Option<Vec<u8>>,
    pending: Pending,
}

impl Session {
    fn new() -> Self {
        Session {
            df: DfRef::Master,
            ef: None,
            pin_verified: false,
            terminal_authenticated: None,
            challenge: None,
            pending: Pending::None,
        }
    }
}

/// The software citizen card.
pub struct CitizenCard {
    image: CardImage,
    storage: Storage,
    session: Session,
    rng: StdRng,
    /// Bytes handed out as card randoms before `rng` is used: lets a test replay
    /// a published card log byte for byte.
    scripted_random: std::collections::VecDeque<u8>,
}

impl std::fmt::Debug for CitizenCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CitizenCard {{ serial: {}, storage: {:?} }}", self.image.serial.masked(), self.storage.path())
    }
}

type Outcome = Result<Response, StatusWord>;

impl CitizenCard {
    /// A card on an image, with card randoms from the operating system.
    pub fn new(image: CardImage, storage: Storage) -> Self {
        Self::with_rng(image, storage, StdRng::from_os_rng())
    }

    /// A card whose randoms come from a seed, so a test can be replayed.
    pub fn with_seed(image: CardImage, storage: Storage, seed: u64) -> Self {
        Self::with_rng(image, storage, StdRng::seed_from_u64(seed))
    }

    fn with_rng(image: CardImage, storage: Storage, rng: StdRng) -> Self {
        CitizenCard { image, storage, session: Session::new(), rng, scripted_random: Default::default() }
    }

    /// Makes the next card randoms (challenges, INITIALIZE randoms) these bytes,
    /// in order, to replay a recorded card log. Test use only.
    pub fn script_randoms(&mut self, bytes: &[u8]) {
        self.scripted_random.extend(bytes);
    }

    /// Opens a card image file; changes are saved back to it.
    pub fn open(path: &std::path::Path) -> Result<Self, ImageError> {
        let image: CardImage = crate::storage::load(path)?;
        image.check()?;
        Ok(Self::new(image, Storage::file(path)))
    }

    pub fn image(&self) -> &CardImage {
        &self.image
    }

    /// Processes one command. Errors become status words; a rejected command
    /// leaves the image as it was.
    pub fn process(&mut self, command: &Command) -> Response {
        match self.dispatch(command) {
            Ok(response) => response,
            Err(status) => Response::status_only(status),
        }
    }

    fn dispatch(&mut self, command: &Command) -> Outcome {
        // A purchase or load context lives only until the next command.
        let pending = std::mem::replace(&mut self.session.pending, Pending::None);
        let secure = match command.cla {
            0x00 | 0x80 => false,
            0x04 | 0x84 => true,
            _ => return Err(StatusWord::ClaNotSupported),
        };
        let proprietary = command.cla & 0x80 != 0;
        if self.current_state() != ApplicationState::Active
            && !matches!((command.cla, command.ins), (0x00, 0xA4) | (0x00, 0x84) | (0x84, 0x18))
        {
            return Err(StatusWord::FunctionNotSupported);
        }
        match (proprietary, command.ins) {
            (false, 0xA4) if !secure => self.select(command),
            (false, 0xB0) if !secure => self.read_binary(command),
            (false, 0xB2) if !secure => self.read_record(command),
            (false, 0xD6) => self.update_binary(command, secure),
            (false, 0xDC) => self.update_record(command, secure),
            (false, 0xE2) => self.append_record(command, secure),
            (false, 0x84) if !secure => self.get_challenge(command),
            (false, 0x82) if !secure => self.external_authenticate(command),
            (false, 0x20) if !secure => self.verify(command),
            (true, 0x5E) if !secure && command.p1 == 0x01 => self.change_pin(command),
            (true, 0x5E) if secure && command.p1 == 0x00 => self.reload_pin(command),
            (true, 0x1E) if secure => self.application_block(command),
            (true, 0x18) if secure => self.application_unblock(command),
            (true, 0x5C | 0x50 | 0x52 | 0x54 | 0xDC | 0x5A) if !secure => {
                if self.image.files.df(self.session.df).application != Application::Purse {
                    return Err(StatusWord::InsNotSupported);
                }
                self.purse_command(command, pending)
            }
            _ => Err(StatusWord::InsNotSupported),
        }
    }

    fn current_state(&self) -> ApplicationState {
        self.image.files.df(self.session.df).state
    }

    /// Saves `next` as the new image: durable before the card answers.
    fn commit(&mut self, next: CardImage) -> Result<(), StatusWord> {
        debug_assert!(next.check().is_ok(), "a command produced an inconsistent image");
        match self.storage.save(&next) {
            Ok(()) => {
                self.image = next;
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "card image could not be saved; command refused");
                Err(StatusWord::MemoryFailure)
            }
        }
    }

    fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0; N];
        self.rng.fill_bytes(&mut bytes);
        for byte in bytes.iter_mut() {
            match self.scripted_random.pop_front() {
                Some(scripted) => *byte = scripted,
                None => break,
            }
        }
        bytes
    }

    // ----- SELECT -----

    /// SELECT (ISO 7816-4 11.1.1): by FID (P1 `00`, `01`, `02`) or DF name (P1 `04`);
    /// P2 `00` returns the FCI, `04` the FCP, `0C` nothing.
    fn select(&mut self, command: &Command) -> Outcome {
        let data = command.data();
        let target = match command.p1 {
            0x00 if data.is_empty() => Target::Df(DfRef::Master),
            0x00..=0x02 => {
                let fid = u16::from_be_bytes(data.try_into().map_err(|_| StatusWord::WrongLength)?);
                let in_current = self.image.files.df(self.session.df).find_ef(fid);
                match (command.p1, in_current) {
                    (0x00 | 0x02, Some(index)) => Target::Ef(index),
                    (0x00 | 0x01, None) => {
                        self.image.files.find_df_by_fid(fid).map(Target::Df).ok_or(StatusWord::FileNotFound)?
                    }
                    _ => return Err(StatusWord::FileNotFound),
                }
            }
            0x04 => self.image.files.find_by_name(data).map(Target::Df).ok_or(StatusWord::FileNotFound)?,
            _ => return Err(StatusWord::IncorrectP1P2),
        };
        match target {
            Target::Df(df) => {
                let state = self.image.files.df(df).state;
                if state == ApplicationState::PermanentlyBlocked {
                    return Err(StatusWord::FunctionNotSupported);
                }
                if df != self.session.df {
                    self.session.terminal_authenticated = None;
                }
                self.session.df = df;
                self.session.ef = None;
                let fci = match command.p2 & 0x0C {
                    0x0C => Vec::new(),
                    _ => self.control_information(df),
                };
                let status = if state == ApplicationState::Blocked {
                    StatusWord::SelectedFileInvalidated
                } else {
                    StatusWord::Ok
                };
                Ok(Response::new(fci, status))
            }
            Target::Ef(index) => {
                self.session.ef = Some(index);
                let ef = &self.image.files.df(self.session.df).files[index];
                Ok(match command.p2 & 0x0C {
                    0x04 => Response::ok(ef.control_parameters()),
                    _ => Response::ok(Vec::new()),
                })
            }
        }
    }

    /// The FCI of a DF: `6F { 84 name, A5 { proprietary } }`; the e-purse puts its
    /// public information (`9F0C`) in the proprietary template.
    fn control_information(&self, df: DfRef) -> Vec<u8> {
        let dedicated = self.image.files.df(df);
        let mut proprietary = vec![primitive(0x9F08, vec![0x02])];
        if dedicated.application == Application::Purse
            && let Some(public) = dedicated.ef(purse::PUBLIC_INFO_FID)
            && let Ok(bytes) = public.read_binary(0, 256)
        {
            proprietary.push(primitive(0x9F0C, bytes));
        }
        let name =
            if dedicated.name.is_empty() { dedicated.fid.to_be_bytes().to_vec() } else { dedicated.name.clone() };
        crate::tlv::encode(&constructed(0x6F, vec![primitive(0x84, name), constructed(0xA5, proprietary)]))
    }

    // ----- Reading and writing files -----

    /// The EF a READ/UPDATE command addresses: by SFI when given, else the current EF.
    /// Selecting by SFI makes that EF current.
    fn addressed_ef(&mut self, sfi: Option<u8>) -> Result<usize, StatusWord> {
        match sfi {
            Some(sfi) => {
                let index = self.image.files.df(self.session.df).find_sfi(sfi).ok_or(StatusWord::FileNotFound)?;
                self.session.ef = Some(index);
                Ok(index)
            }
            None => self.session.ef.ok_or(StatusWord::NoCurrentFile),
        }
    }

    fn check_read(&self, access: Access) -> Result<(), StatusWord> {
        let allowed = match access {
            Access::Always => true,
            Access::Never | Access::SecureMessaging => false,
            Access::Pin => self.session.pin_verified,
            Access::PinOrTerminal => {
                self.session.pin_verified || self.session.terminal_authenticated == Some(self.session.df)
            }
        };
        if allowed { Ok(()) } else { Err(StatusWord::SecurityStatusNotSatisfied) }
    }

    /// Checks the access condition of an update; for secure messaging, checks and
    /// strips the MAC. Returns the plain data.
    fn check_update<'a>(&mut self, access: Access, command: &'a Command, secure: bool) -> Result<&'a [u8], StatusWord> {
        if secure {
            return self.verify_secure_messaging(command, &self.image.keys.maintenance.clone());
        }
        match access {
            Access::Always => Ok(command.data()),
            Access::Never => Err(StatusWord::SecurityStatusNotSatisfied),
            Access::SecureMessaging => Err(StatusWord::SecureMessagingMissing),
            Access::Pin | Access::PinOrTerminal => {
                self.check_read(access)?;
                Ok(command.data())
            }
        }
    }

    /// Checks the 4-byte MAC at the end of a secure-messaging command: computed
    /// with `key` over the header (CLA as sent, Lc counting the MAC) and the data,
    /// with the last GET CHALLENGE as initial value. The challenge is used up.
    fn verify_secure_messaging<'a>(&mut self, command: &'a Command, key: &Key16) -> Result<&'a [u8], StatusWord> {
        let data = command.data();
        if data.len() < 4 {
            return Err(StatusWord::SecureMessagingMissing);
        }
        let challenge = self.session.challenge.take().ok_or(StatusWord::ReferencedDataInvalidated)?;
        let challenge: [u8; 4] =
            challenge.get(..4).and_then(|c| c.try_into().ok()).ok_or(StatusWord::ReferencedDataInvalidated)?;
        let (plain, mac) = data.split_at(data.len() - 4);
        let mut input = vec![command.cla, command.ins, command.p1, command.p2, data.len() as u8];
        input.extend_from_slice(plain);
        let expected = crypto::secure_messaging_mac(self.image.keys.algorithm, key, challenge, &input);
        if crypto::constant_time_eq(&expected, mac) { Ok(plain) } else { Err(StatusWord::SecureMessagingIncorrect) }
    }

    /// READ BINARY (ISO 7816-4 11.2.3): P1 bit 8 set means SFI in P1, offset in P2.
    fn read_binary(&mut self, command: &Command) -> Outcome {
        let (sfi, offset) = if command.p1 & 0x80 != 0 {
            (Some(command.p1 & 0x1F), usize::from(command.p2))
        } else {
            (None, usize::from(u16::from_be_bytes([command.p1, command.p2])))
        };
        let index = self.addressed_ef(sfi)?;
        let ef = &self.image.files.df(self.session.df).files[index];
        self.check_read(ef.read)?;
        let length = command.expected().unwrap_or(crate::apdu::SHORT_EXPECTED_MAX);
        ef.read_binary(offset, length).map(Response::ok)
    }

    /// READ RECORD (ISO 7816-4 11.3.3): SFI in P2 bits 8..4 (0 = current EF).
    fn read_record(&mut self, command: &Command) -> Outcome {
        let selector = RecordSelector::from_p1_p2(command.p1, command.p2)?;
        let sfi = command.p2 >> 3;
        let index = self.addressed_ef((sfi != 0).then_some(sfi))?;
        let ef = &self.image.files.df(self.session.df).files[index];
        self.check_read(ef.read)?;
        ef.read_record(selector).map(Response::ok)
    }

    /// UPDATE BINARY (ISO 7816-4 11.2.5), plain or with secure messaging (CLA `04`).
    fn update_binary(&mut self, command: &Command, secure: bool) -> Outcome {
        let (sfi, offset) = if command.p1 & 0x80 != 0 {
            (Some(command.p1 & 0x1F), usize::from(command.p2))
        } else {
            (None, usize::from(u16::from_be_bytes([command.p1, command.p2])))
        };
        let index = self.addressed_ef(sfi)?;
        let access = self.image.files.df(self.session.df).files[index].update;
        let data = self.check_update(access, command, secure)?.to_vec();
        let mut next = self.image.clone();
        next.files.df_mut(self.session.df).files[index].update_binary(offset, &data)?;
        self.commit(next)?;
        Ok(Response::ok(Vec::new()))
    }

    /// UPDATE RECORD (ISO 7816-4 11.3.5), plain or with secure messaging.
    fn update_record(&mut self, command: &Command, secure: bool) -> Outcome {
        let selector = RecordSelector::from_p1_p2(command.p1, command.p2)?;
        let sfi = command.p2 >> 3;
        let index = self.addressed_ef((sfi != 0).then_some(sfi))?;
        let access = self.image.files.df(self.session.df).files[index].update;
        let data = self.check_update(access, command, secure)?.to_vec();
        let mut next = self.image.clone();
        next.files.df_mut(self.session.df).files[index].update_record(selector, &data)?;
        self.commit(next)?;
        Ok(Response::ok(Vec::new()))
    }

    /// APPEND RECORD (ISO 7816-4 11.3.6), plain or with secure messaging.
    fn append_record(&mut self, command: &Command, secure: bool) -> Outcome {
        if command.p1 != 0 || command.p2 & 0x07 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let sfi = command.p2 >> 3;
        let index = self.addressed_ef((sfi != 0).then_some(sfi))?;
        let access = self.image.files.df(self.session.df).files[index].update;
        let data = self.check_update(access, command, secure)?.to_vec();
        let mut next = self.image.clone();
        next.files.df_mut(self.session.df).files[index].append_record(&data)?;
        self.commit(next)?;
        Ok(Response::ok(Vec::new()))
    }

    // ----- Security -----

    /// GET CHALLENGE (ISO 7816-4 11.5.3): 4 or 8 random bytes, kept for the next
    /// secure-messaging command or EXTERNAL AUTHENTICATE.
    fn get_challenge(&mut self, command: &Command) -> Outcome {
        if command.p1 != 0 || command.p2 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let challenge = match command.expected() {
            Some(4) => self.random::<4>().to_vec(),
            Some(8) => self.random::<8>().to_vec(),
            _ => return Err(StatusWord::WrongLength),
        };
        self.session.challenge = Some(challenge.clone());
        Ok(Response::ok(challenge))
    }

    /// EXTERNAL AUTHENTICATE (ISO 7816-4 11.5.4): the terminal proves it holds the
    /// card's external-authentication key by encrypting the last 8-byte challenge.
    /// Success authenticates the terminal in the current DF.
    fn external_authenticate(&mut self, command: &Command) -> Outcome {
        let challenge = self.session.challenge.take().ok_or(StatusWord::ReferencedDataInvalidated)?;
        let challenge: [u8; 8] = challenge.try_into().map_err(|_| StatusWord::ReferencedDataInvalidated)?;
        let cryptogram: [u8; 8] = command.data().try_into().map_err(|_| StatusWord::WrongLength)?;
        let expected =
            crypto::external_auth_cryptogram(self.image.keys.algorithm, &self.image.keys.external_auth, &challenge);
        if crypto::constant_time_eq(&expected, &cryptogram) {
            self.session.terminal_authenticated = Some(self.session.df);
            Ok(Response::ok(Vec::new()))
        } else {
            Err(StatusWord::Other(0x6300))
        }
    }

    /// VERIFY (ISO 7816-4 11.5.6) of the cardholder PIN (P2 `00`). Without data it
    /// answers the tries left. A wrong PIN uses a try, durably, before answering.
    fn verify(&mut self, command: &Command) -> Outcome {
        if command.p1 != 0 || command.p2 != 0 {
            return Err(StatusWord::ReferencedDataNotFound);
        }
        if self.image.pin.tries_left == 0 {
            return Err(StatusWord::AuthenticationBlocked);
        }
        if command.data().is_empty() {
            return if self.session.pin_verified {
                Ok(Response::ok(Vec::new()))
            } else {
                Err(StatusWord::PinTriesLeft(self.image.pin.tries_left))
            };
        }
        self.check_pin(command.data())?;
        Ok(Response::ok(Vec::new()))
    }

    /// Compares `candidate` with the PIN, counting the try durably.
    fn check_pin(&mut self, candidate: &[u8]) -> Result<(), StatusWord> {
        if !(PIN_BYTES_MIN..=PIN_BYTES_MAX).contains(&candidate.len()) {
            return Err(StatusWord::WrongLength);
        }
        let mut next = self.image.clone();
        if crypto::constant_time_eq(candidate, &self.image.pin.value) {
            if next.pin.tries_left != next.pin.tries_max {
                next.pin.tries_left = next.pin.tries_max;
                self.commit(next)?;
            }
            self.session.pin_verified = true;
            Ok(())
        } else {
            next.pin.tries_left = next.pin.tries_left.saturating_sub(1);
            let left = next.pin.tries_left;
            self.commit(next)?;
            self.session.pin_verified = false;
            Err(if left == 0 { StatusWord::AuthenticationBlocked } else { StatusWord::PinTriesLeft(left) })
        }
    }

    /// CHANGE PIN (PBOC `80 5E 01 00`): data is old PIN ‖ `FF` ‖ new PIN.
    fn change_pin(&mut self, command: &Command) -> Outcome {
        if command.p2 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        if self.image.pin.tries_left == 0 {
            return Err(StatusWord::AuthenticationBlocked);
        }
        let data = command.data();
        let separator = data.iter().position(|b| *b == 0xFF).ok_or(StatusWord::WrongData)?;
        let (old, new) = (&data[..separator], &data[separator + 1..]);
        if !(PIN_BYTES_MIN..=PIN_BYTES_MAX).contains(&new.len()) || !is_pin_bcd(new) {
            return Err(StatusWord::WrongData);
        }
        self.check_pin(old)?;
        let mut next = self.image.clone();
        next.pin.value = new.to_vec();
        next.pin.tries_left = next.pin.tries_max;
        self.commit(next)?;
        Ok(Response::ok(Vec::new()))
    }

    /// PIN RELOAD (ours: `84 5E 00 00 Lc` new PIN ‖ MAC under the PIN-reload key,
    /// secure messaging over a fresh challenge): sets a new PIN and unblocks it.
    fn reload_pin(&mut self, command: &Command) -> Outcome {
        if command.p2 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let key = self.image.keys.pin_reload.clone();
        let new = self.verify_secure_messaging(command, &key)?;
        if !(PIN_BYTES_MIN..=PIN_BYTES_MAX).contains(&new.len()) || !is_pin_bcd(new) {
            return Err(StatusWord::WrongData);
        }
        let mut next = self.image.clone();
        next.pin.value = new.to_vec();
        next.pin.tries_left = next.pin.tries_max;
        self.commit(next)?;
        Ok(Response::ok(Vec::new()))
    }

    /// APPLICATION BLOCK (PBOC `84 1E 00 P2 04 MAC`): P2 `00` blocks the current
    /// application until UNBLOCK, `01` for ever.
    fn application_block(&mut self, command: &Command) -> Outcome {
        if self.session.df == DfRef::Master || command.p1 != 0 || command.p2 > 1 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let key = self.image.keys.maintenance.clone();
        let plain = self.verify_secure_messaging(command, &key)?;
        if !plain.is_empty() {
            return Err(StatusWord::WrongLength);
        }
        let mut next = self.image.clone();
        next.files.df_mut(self.session.df).state =
            if command.p2 == 1 { ApplicationState::PermanentlyBlocked } else { ApplicationState::Blocked };
        self.commit(next)?;
        Ok(Response::ok(Vec::new()))
    }

    /// APPLICATION UNBLOCK (PBOC `84 18 00 00 04 MAC`).
    fn application_unblock(&mut self, command: &Command) -> Outcome {
        if self.session.df == DfRef::Master || command.p1 != 0 || command.p2 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        if self.current_state() != ApplicationState::Blocked {
            return Err(StatusWord::ConditionsNotSatisfied);
        }
        let key = self.image.keys.maintenance.clone();
        let plain = self.verify_secure_messaging(command, &key)?;
        if !plain.is_empty() {
            return Err(StatusWord::WrongLength);
        }
        let mut next = self.image.clone();
        next.files.df_mut(self.session.df).state = ApplicationState::Active;
        self.commit(next)?;
        Ok(Response::ok(Vec::new()))
    }
}

fn is_pin_bcd(bytes: &[u8]) -> bool {
    let nibbles: Vec<u8> = bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]).collect();
    let digits = nibbles.iter().take_while(|n| **n <= 9).count();
    digits >= 4 && nibbles[digits..].iter().all(|n| *n == 0x0F) && nibbles.len() - digits <= 1
}

enum Target {
    Df(DfRef),
    Ef(usize),
}

impl SmartCard for CitizenCard {
    fn atr(&self) -> Vec<u8> {
        self.image.atr.clone()
    }

    fn power_on(&mut self) {
        self.session = Session::new();
    }

    fn power_off(&mut self) {
        self.session = Session::new();
    }

    fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        let response = match Command::parse(command) {
            Ok(command) => self.process(&command),
            Err(error) => {
                tracing::debug!(%error, "malformed command APDU");
                Response::status_only(StatusWord::WrongLength)
            }
        };
        response.to_bytes()
    }
}

/// An ATR for a T=1 contactless card as PC/SC presents it (PC/SC part 3,
/// 3.1.3.2.3): `3B 8n 80 01`, the historical bytes, and the check byte.
pub fn contactless_atr(historical: &[u8]) -> Vec<u8> {
    assert!(historical.len() <= 15);
    let mut atr = vec![0x3B, 0x80 | historical.len() as u8, 0x80, 0x01];
    atr.extend_from_slice(historical);
    let check = atr[1..].iter().fold(0u8, |acc, b| acc ^ b);
    atr.push(check);
    atr
}
