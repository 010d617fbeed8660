//! The commands as typed requests and responses: each has one `parse` and one
//! `encode`, used by the server and the client alike. `docs/hsm.md` gives every
//! field layout.

use card_host::card::{CardKeys, IndexedKey};
use card_host::crypto::{Algorithm, Key16};
use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use zeroize::Zeroizing;

use crate::error::ErrorCode;
use crate::keys::{KeyAlgorithm, KeyType, transport_decrypt};
use crate::keystore::KeyInfo;
use crate::wire::{Code, FieldError, FieldReader, FieldWriter};

/// The most random bytes one `N0` returns.
pub const RANDOM_MAX: usize = 255;
/// The most TAC records in one `ZI` request: what fits in a 65,535-byte frame.
pub const BATCH_RECORDS_MAX: usize = 1_700;
/// The most bytes one `M6`/`M8` MACs.
pub const MAC_MESSAGE_MAX: usize = 32 * 1024;
/// The most keys one `ZU` lists.
pub const LIST_MAX: usize = 1_000;
/// Length of a purchase record in a batch (kind byte included).
pub const BATCH_PURCHASE_RECORD_BYTES: usize = 35;
/// Length of a load record in a batch (kind byte included).
pub const BATCH_LOAD_RECORD_BYTES: usize = 37;
/// The firmware version `NC` answers (9 characters, as payShield's).
pub const FIRMWARE_VERSION: &str = "SIM-0.1.0";

/// The PIN of a PIN RELOAD: 2 to 6 bytes of BCD, `F`-padded. Wiped when
/// dropped; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(REDACTED)")
    }
}

/// The most bytes of a PIN (12 digits).
pub const PIN_BYTES_MAX: usize = 6;
/// The fewest bytes of a PIN (4 digits).
pub const PIN_BYTES_MIN: usize = 2;

impl Pin {
    /// From BCD bytes: 4 to 12 digits, padded with `F` to whole bytes.
    pub fn from_bcd(bytes: &[u8]) -> Option<Pin> {
        if !(PIN_BYTES_MIN..=PIN_BYTES_MAX).contains(&bytes.len()) {
            return None;
        }
        let nibbles: Vec<u8> = bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]).collect();
        let digits = nibbles.iter().take_while(|n| **n <= 9).count();
        let valid = digits >= 4 && nibbles[digits..].iter().all(|n| *n == 0x0F) && nibbles.len() - digits <= 1;
        valid.then(|| Pin(Zeroizing::new(bytes.to_vec())))
    }

    /// From decimal digits (4 to 12).
    pub fn from_digits(digits: &str) -> Option<Pin> {
        if !(4..=12).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut nibbles: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
        if nibbles.len() % 2 == 1 {
            nibbles.push(0x0F);
        }
        Pin::from_bcd(&nibbles.chunks(2).map(|pair| (pair[0] << 4) | pair[1]).collect::<Vec<u8>>())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Which card maintenance command a MAC is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaintenanceFunction {
    /// `B`: APPLICATION BLOCK until UNBLOCK (`84 1E 00 00`).
    Block,
    /// `P`: APPLICATION BLOCK for ever (`84 1E 00 01`).
    BlockPermanently,
    /// `U`: APPLICATION UNBLOCK (`84 18 00 00`).
    Unblock,
    /// `R`: PIN RELOAD (`84 5E 00 00`, data = the new PIN).
    PinReload(Pin),
}

impl MaintenanceFunction {
    /// INS, P1, P2 and data of the card command the MAC is for.
    pub fn command(&self) -> (u8, u8, u8, &[u8]) {
        match self {
            MaintenanceFunction::Block => (0x1E, 0x00, 0x00, &[]),
            MaintenanceFunction::BlockPermanently => (0x1E, 0x00, 0x01, &[]),
            MaintenanceFunction::Unblock => (0x18, 0x00, 0x00, &[]),
            MaintenanceFunction::PinReload(pin) => (0x5E, 0x00, 0x00, pin.expose()),
        }
    }
}

/// The MAC algorithms of `M6`/`M8`, those the card uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MacAlgorithm {
    /// `3`: ISO 9797-1 algorithm 3 (retail MAC) with a 2-key 3DES key, padding method 2.
    Retail,
    /// `5` (ours): SM4 CBC-MAC (ISO 9797-1 algorithm 1 with SM4), padding method 2.
    Sm4Cbc,
}

impl MacAlgorithm {
    pub fn code(self) -> u8 {
        match self {
            MacAlgorithm::Retail => b'3',
            MacAlgorithm::Sm4Cbc => b'5',
        }
    }

    pub fn iv_length(self) -> usize {
        match self {
            MacAlgorithm::Retail => 8,
            MacAlgorithm::Sm4Cbc => 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacRequest {
    pub algorithm: MacAlgorithm,
    pub label: String,
    /// 8 bytes for the retail MAC, 16 for SM4.
    pub iv: Vec<u8>,
    pub message: Vec<u8>,
}

/// An online top-up to authorise: what INITIALIZE FOR LOAD answered and what
/// CREDIT FOR LOAD will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadAuthorisation {
    pub serial: ApplicationSerial,
    pub key_index: u8,
    pub card_random: [u8; 4],
    pub online_counter: u16,
    pub old_balance: Fen,
    pub amount: Fen,
    pub kind: TransactionType,
    pub terminal: TerminalNumber,
    /// The host date and time that goes into MAC2 and CREDIT FOR LOAD.
    pub at: CardDateTime,
    pub mac1: [u8; 4],
}

/// A purchase's TAC and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseTac {
    pub serial: ApplicationSerial,
    pub amount: Fen,
    pub kind: TransactionType,
    pub terminal: TerminalNumber,
    pub terminal_serial: u32,
    pub at: CardDateTime,
    pub tac: [u8; 4],
}

/// A load's TAC and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadTac {
    pub serial: ApplicationSerial,
    pub new_balance: Fen,
    /// The online counter before the load (as in INITIALIZE FOR LOAD).
    pub online_counter: u16,
    pub amount: Fen,
    pub kind: TransactionType,
    pub terminal: TerminalNumber,
    pub at: CardDateTime,
    pub tac: [u8; 4],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TacRecord {
    Purchase(PurchaseTac),
    Load(LoadTac),
}

/// One record of a batch: parsed, or kept as bytes when a field is invalid (it
/// is answered `15` alone; the rest of the batch goes on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchRecord {
    Tac(TacRecord),
    Malformed { kind: u8, bytes: Vec<u8> },
}

/// A 16-byte key under a transport key, and the check value of the clear key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappedKey {
    pub encrypted: [u8; 16],
    pub check_value: [u8; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappedIndexedKey {
    pub index: u8,
    pub version: u8,
    pub key: WrappedKey,
}

/// A card's application keys under a transport key (`ZA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedCardKeys {
    pub algorithm: Algorithm,
    pub purchase: Vec<WrappedIndexedKey>,
    pub load: Vec<WrappedIndexedKey>,
    pub tac: WrappedKey,
    pub maintenance: WrappedKey,
    pub pin_reload: WrappedKey,
    pub external_auth: WrappedKey,
}

impl WrappedCardKeys {
    /// The clear card keys, for the personalisation step that holds the
    /// transport key. Every check value is verified.
    pub fn unwrap(&self, transport: &Key16, transport_algorithm: KeyAlgorithm) -> Result<CardKeys, ErrorCode> {
        let open = |wrapped: &WrappedKey| -> Result<Key16, ErrorCode> {
            let key = transport_decrypt(transport, transport_algorithm, &wrapped.encrypted)?;
            if key.check_value(self.algorithm) != wrapped.check_value {
                return Err(ErrorCode::VerificationFailure);
            }
            Ok(key)
        };
        let indexed = |keys: &[WrappedIndexedKey]| -> Result<Vec<IndexedKey>, ErrorCode> {
            keys.iter().map(|k| Ok(IndexedKey { index: k.index, version: k.version, key: open(&k.key)? })).collect()
        };
        Ok(CardKeys {
            algorithm: self.algorithm,
            purchase: indexed(&self.purchase)?,
            load: indexed(&self.load)?,
            tac: open(&self.tac)?,
            maintenance: open(&self.maintenance)?,
            pin_reload: open(&self.pin_reload)?,
            external_auth: open(&self.external_auth)?,
        })
    }
}

/// A command to the HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// `NC` diagnostics.
    Diagnostics,
    /// `B2` echo.
    Echo { data: Vec<u8> },
    /// `N0` random bytes.
    Random { length: usize },
    /// `A0` generate a key into the store, optionally also exported under a transport key.
    GenerateKey { key_type: KeyType, algorithm: KeyAlgorithm, version: u8, label: String, export_under: Option<String> },
    /// `A6` import a key under a transport key.
    ImportKey {
        key_type: KeyType,
        algorithm: KeyAlgorithm,
        version: u8,
        label: String,
        transport: String,
        key: WrappedKey,
    },
    /// `A8` export a key under a transport key.
    ExportKey { label: String, transport: String },
    /// `BU` key check value.
    KeyCheckValue { label: String },
    /// `M6` generate a MAC.
    GenerateMac(MacRequest),
    /// `M8` verify a MAC.
    VerifyMac { request: MacRequest, mac: [u8; 4] },
    /// `ZA` derive a card's application keys, returned under a transport key.
    DeriveCardKeys { key_set: String, serial: ApplicationSerial, transport: String },
    /// `ZC` online top-up: verify load MAC1, make MAC2.
    AuthoriseLoad { key_set: String, load: LoadAuthorisation },
    /// `ZE` verify a purchase TAC.
    VerifyPurchaseTac { key_set: String, record: PurchaseTac },
    /// `ZG` verify a load TAC.
    VerifyLoadTac { key_set: String, record: LoadTac },
    /// `ZI` verify many TACs, one answer per record.
    VerifyTacBatch { key_set: String, records: Vec<BatchRecord> },
    /// `ZK` the MAC of a card maintenance command.
    MaintenanceMac { key_set: String, serial: ApplicationSerial, challenge: [u8; 4], function: MaintenanceFunction },
    /// `ZM` sign a settlement file's SHA-256 digest (Ed25519).
    SignSettlement { label: String, digest: [u8; 32] },
    /// `ZO` verify a settlement file's signature.
    VerifySettlement { label: String, digest: [u8; 32], signature: [u8; 64] },
    /// `ZQ` the public key of a signing key.
    PublicKey { label: String },
    /// `ZS` import a key in clear: only a server in test mode accepts it.
    ImportClearKey { key_type: KeyType, algorithm: KeyAlgorithm, version: u8, label: String, key: Key16 },
    /// `ZU` list the keys (labels, types, check values).
    ListKeys,
}

fn field(error: FieldError) -> ErrorCode {
    tracing::debug!(%error, "request field");
    ErrorCode::InputData
}

fn read_serial(reader: &mut FieldReader) -> Result<ApplicationSerial, ErrorCode> {
    Ok(ApplicationSerial(reader.hex::<8>("serial").map_err(field)?))
}

fn read_fen(reader: &mut FieldReader, name: &'static str) -> Result<Fen, ErrorCode> {
    Ok(Fen::from_bytes(reader.hex::<4>(name).map_err(field)?))
}

fn read_kind(reader: &mut FieldReader) -> Result<TransactionType, ErrorCode> {
    let [code] = reader.hex::<1>("transaction type").map_err(field)?;
    TransactionType::from_code(code).map_err(|_| ErrorCode::InputData)
}

fn read_terminal(reader: &mut FieldReader) -> Result<TerminalNumber, ErrorCode> {
    Ok(TerminalNumber(reader.hex::<6>("terminal").map_err(field)?))
}

fn read_at(reader: &mut FieldReader) -> Result<CardDateTime, ErrorCode> {
    let bytes = reader.hex::<7>("date and time").map_err(field)?;
    CardDateTime::from_slice(&bytes).map_err(|_| ErrorCode::InputData)
}

fn read_key_type(reader: &mut FieldReader) -> Result<KeyType, ErrorCode> {
    KeyType::from_code(reader.take("key type", 3).map_err(field)?)
}

fn read_algorithm(reader: &mut FieldReader) -> Result<KeyAlgorithm, ErrorCode> {
    KeyAlgorithm::from_code(reader.char("algorithm").map_err(field)?)
}

fn read_mac_request(reader: &mut FieldReader) -> Result<MacRequest, ErrorCode> {
    let algorithm = match reader.char("MAC algorithm").map_err(field)? {
        b'3' => MacAlgorithm::Retail,
        b'5' => MacAlgorithm::Sm4Cbc,
        _ => return Err(ErrorCode::InputData),
    };
    let label = reader.label("key").map_err(field)?;
    let iv = reader.hex_bytes("IV", algorithm.iv_length()).map_err(field)?;
    let length = reader.hex_length("message length").map_err(field)?;
    if length > MAC_MESSAGE_MAX {
        return Err(ErrorCode::DataLength);
    }
    let message = reader.take("message", length).map_err(field)?.to_vec();
    Ok(MacRequest { algorithm, label, iv, message })
}

fn write_mac_request(writer: &mut FieldWriter, request: &MacRequest) {
    writer
        .char(request.algorithm.code())
        .label(&request.label)
        .hex(&request.iv)
        .hex_length(request.message.len())
        .raw(&request.message);
}

fn write_at(writer: &mut FieldWriter, at: &CardDateTime) {
    writer.hex(&at.to_bytes());
}

fn parse_purchase_binary(bytes: &[u8]) -> Option<PurchaseTac> {
    Some(PurchaseTac {
        serial: ApplicationSerial::from_slice(&bytes[0..8]).ok()?,
        amount: Fen::from_bytes(bytes[8..12].try_into().ok()?),
        kind: TransactionType::from_code(bytes[12]).ok().filter(|kind| !kind.is_load())?,
        terminal: TerminalNumber::from_slice(&bytes[13..19]).ok()?,
        terminal_serial: u32::from_be_bytes(bytes[19..23].try_into().ok()?),
        at: CardDateTime::from_slice(&bytes[23..30]).ok()?,
        tac: bytes[30..34].try_into().ok()?,
    })
}

fn parse_load_binary(bytes: &[u8]) -> Option<LoadTac> {
    Some(LoadTac {
        serial: ApplicationSerial::from_slice(&bytes[0..8]).ok()?,
        new_balance: Fen::from_bytes(bytes[8..12].try_into().ok()?),
        online_counter: u16::from_be_bytes(bytes[12..14].try_into().ok()?),
        amount: Fen::from_bytes(bytes[14..18].try_into().ok()?),
        kind: TransactionType::from_code(bytes[18]).ok().filter(|kind| kind.is_load())?,
        terminal: TerminalNumber::from_slice(&bytes[19..25]).ok()?,
        at: CardDateTime::from_slice(&bytes[25..32]).ok()?,
        tac: bytes[32..36].try_into().ok()?,
    })
}

/// Appends one record of a `ZI` batch in its binary form.
pub fn encode_batch_record(out: &mut Vec<u8>, record: &BatchRecord) {
    match record {
        BatchRecord::Tac(TacRecord::Purchase(p)) => {
            out.push(b'P');
            out.extend_from_slice(&p.serial.0);
            out.extend_from_slice(&p.amount.to_bytes());
            out.push(p.kind.code());
            out.extend_from_slice(&p.terminal.0);
            out.extend_from_slice(&p.terminal_serial.to_be_bytes());
            out.extend_from_slice(&p.at.to_bytes());
            out.extend_from_slice(&p.tac);
        }
        BatchRecord::Tac(TacRecord::Load(l)) => {
            out.push(b'L');
            out.extend_from_slice(&l.serial.0);
            out.extend_from_slice(&l.new_balance.to_bytes());
            out.extend_from_slice(&l.online_counter.to_be_bytes());
            out.extend_from_slice(&l.amount.to_bytes());
            out.push(l.kind.code());
            out.extend_from_slice(&l.terminal.0);
            out.extend_from_slice(&l.at.to_bytes());
            out.extend_from_slice(&l.tac);
        }
        BatchRecord::Malformed { kind, bytes } => {
            out.push(*kind);
            out.extend_from_slice(bytes);
        }
    }
}

impl Request {
    pub fn code(&self) -> Code {
        Code(*match self {
            Request::Diagnostics => b"NC",
            Request::Echo { .. } => b"B2",
            Request::Random { .. } => b"N0",
            Request::GenerateKey { .. } => b"A0",
            Request::ImportKey { .. } => b"A6",
            Request::ExportKey { .. } => b"A8",
            Request::KeyCheckValue { .. } => b"BU",
            Request::GenerateMac(_) => b"M6",
            Request::VerifyMac { .. } => b"M8",
            Request::DeriveCardKeys { .. } => b"ZA",
            Request::AuthoriseLoad { .. } => b"ZC",
            Request::VerifyPurchaseTac { .. } => b"ZE",
            Request::VerifyLoadTac { .. } => b"ZG",
            Request::VerifyTacBatch { .. } => b"ZI",
            Request::MaintenanceMac { .. } => b"ZK",
            Request::SignSettlement { .. } => b"ZM",
            Request::VerifySettlement { .. } => b"ZO",
            Request::PublicKey { .. } => b"ZQ",
            Request::ImportClearKey { .. } => b"ZS",
            Request::ListKeys => b"ZU",
        })
    }

    /// Every command code the simulator knows.
    pub const CODES: [&'static [u8; 2]; 20] = [
        b"NC", b"B2", b"N0", b"A0", b"A6", b"A8", b"BU", b"M6", b"M8", b"ZA", b"ZC", b"ZE", b"ZG", b"ZI", b"ZK", b"ZM",
        b"ZO", b"ZQ", b"ZS", b"ZU",
    ];

    /// Parses a command's fields. `Err(CommandNotSupported)` for an unknown code.
    pub fn parse(code: Code, body: &[u8]) -> Result<Request, ErrorCode> {
        let mut r = FieldReader::new(body);
        let request = match &code.0 {
            b"NC" => Request::Diagnostics,
            b"B2" => {
                let length = r.hex_length("length").map_err(field)?;
                Request::Echo { data: r.take("data", length).map_err(field)?.to_vec() }
            }
            b"N0" => {
                let length = r.decimal("length", 3).map_err(field)? as usize;
                if length == 0 || length > RANDOM_MAX {
                    return Err(ErrorCode::DataLength);
                }
                Request::Random { length }
            }
            b"A0" => {
                let mode = r.char("mode").map_err(field)?;
                let key_type = read_key_type(&mut r)?;
                let algorithm = read_algorithm(&mut r)?;
                let [version] = r.hex::<1>("version").map_err(field)?;
                let label = r.label("label").map_err(field)?;
                let export_under = match mode {
                    b'0' => None,
                    b'1' => Some(r.label("transport key").map_err(field)?),
                    _ => return Err(ErrorCode::InputData),
                };
                Request::GenerateKey { key_type, algorithm, version, label, export_under }
            }
            b"A6" => {
                let key_type = read_key_type(&mut r)?;
                let algorithm = read_algorithm(&mut r)?;
                let [version] = r.hex::<1>("version").map_err(field)?;
                let label = r.label("label").map_err(field)?;
                let transport = r.label("transport key").map_err(field)?;
                let encrypted = r.hex::<16>("key").map_err(field)?;
                let check_value = r.hex::<3>("check value").map_err(field)?;
                Request::ImportKey {
                    key_type,
                    algorithm,
                    version,
                    label,
                    transport,
                    key: WrappedKey { encrypted, check_value },
                }
            }
            b"A8" => Request::ExportKey {
                label: r.label("label").map_err(field)?,
                transport: r.label("transport key").map_err(field)?,
            },
            b"BU" => Request::KeyCheckValue { label: r.label("label").map_err(field)? },
            b"M6" => Request::GenerateMac(read_mac_request(&mut r)?),
            b"M8" => {
                let request = read_mac_request(&mut r)?;
                Request::VerifyMac { request, mac: r.hex::<4>("MAC").map_err(field)? }
            }
            b"ZA" => Request::DeriveCardKeys {
                key_set: r.label("key set").map_err(field)?,
                serial: read_serial(&mut r)?,
                transport: r.label("transport key").map_err(field)?,
            },
            b"ZC" => {
                let key_set = r.label("key set").map_err(field)?;
                let load = LoadAuthorisation {
                    serial: read_serial(&mut r)?,
                    key_index: r.hex::<1>("key index").map_err(field)?[0],
                    card_random: r.hex::<4>("card random").map_err(field)?,
                    online_counter: u16::from_be_bytes(r.hex::<2>("online counter").map_err(field)?),
                    old_balance: read_fen(&mut r, "old balance")?,
                    amount: read_fen(&mut r, "amount")?,
                    kind: read_kind(&mut r)?,
                    terminal: read_terminal(&mut r)?,
                    at: read_at(&mut r)?,
                    mac1: r.hex::<4>("MAC1").map_err(field)?,
                };
                if !load.kind.is_load() {
                    return Err(ErrorCode::InputData);
                }
                Request::AuthoriseLoad { key_set, load }
            }
            b"ZE" => {
                let key_set = r.label("key set").map_err(field)?;
                let record = PurchaseTac {
                    serial: read_serial(&mut r)?,
                    amount: read_fen(&mut r, "amount")?,
                    kind: read_kind(&mut r)?,
                    terminal: read_terminal(&mut r)?,
                    terminal_serial: u32::from_be_bytes(r.hex::<4>("terminal serial").map_err(field)?),
                    at: read_at(&mut r)?,
                    tac: r.hex::<4>("TAC").map_err(field)?,
                };
                if record.kind.is_load() {
                    return Err(ErrorCode::InputData);
                }
                Request::VerifyPurchaseTac { key_set, record }
            }
            b"ZG" => {
                let key_set = r.label("key set").map_err(field)?;
                let record = LoadTac {
                    serial: read_serial(&mut r)?,
                    new_balance: read_fen(&mut r, "new balance")?,
                    online_counter: u16::from_be_bytes(r.hex::<2>("online counter").map_err(field)?),
                    amount: read_fen(&mut r, "amount")?,
                    kind: read_kind(&mut r)?,
                    terminal: read_terminal(&mut r)?,
                    at: read_at(&mut r)?,
                    tac: r.hex::<4>("TAC").map_err(field)?,
                };
                if !record.kind.is_load() {
                    return Err(ErrorCode::InputData);
                }
                Request::VerifyLoadTac { key_set, record }
            }
            b"ZI" => {
                let key_set = r.label("key set").map_err(field)?;
                let count = r.decimal("record count", 4).map_err(field)? as usize;
                if count == 0 || count > BATCH_RECORDS_MAX {
                    return Err(ErrorCode::DataLength);
                }
                let mut records = Vec::with_capacity(count);
                for _ in 0..count {
                    let kind = r.char("record kind").map_err(field)?;
                    let record = match kind {
                        b'P' => {
                            let bytes = r.take("purchase record", BATCH_PURCHASE_RECORD_BYTES - 1).map_err(field)?;
                            parse_purchase_binary(bytes)
                                .map(|p| BatchRecord::Tac(TacRecord::Purchase(p)))
                                .unwrap_or_else(|| BatchRecord::Malformed { kind, bytes: bytes.to_vec() })
                        }
                        b'L' => {
                            let bytes = r.take("load record", BATCH_LOAD_RECORD_BYTES - 1).map_err(field)?;
                            parse_load_binary(bytes)
                                .map(|l| BatchRecord::Tac(TacRecord::Load(l)))
                                .unwrap_or_else(|| BatchRecord::Malformed { kind, bytes: bytes.to_vec() })
                        }
                        _ => return Err(ErrorCode::InputData),
                    };
                    records.push(record);
                }
                Request::VerifyTacBatch { key_set, records }
            }
            b"ZK" => {
                let key_set = r.label("key set").map_err(field)?;
                let serial = read_serial(&mut r)?;
                let challenge = r.hex::<4>("challenge").map_err(field)?;
                let function = match r.char("function").map_err(field)? {
                    b'B' => MaintenanceFunction::Block,
                    b'P' => MaintenanceFunction::BlockPermanently,
                    b'U' => MaintenanceFunction::Unblock,
                    b'R' => {
                        let length = r.decimal("PIN length", 2).map_err(field)? as usize;
                        if length > PIN_BYTES_MAX {
                            return Err(ErrorCode::InputData);
                        }
                        let bytes = Zeroizing::new(r.hex_bytes("PIN", length).map_err(field)?);
                        MaintenanceFunction::PinReload(Pin::from_bcd(&bytes).ok_or(ErrorCode::InputData)?)
                    }
                    _ => return Err(ErrorCode::InputData),
                };
                Request::MaintenanceMac { key_set, serial, challenge, function }
            }
            b"ZM" => Request::SignSettlement {
                label: r.label("label").map_err(field)?,
                digest: r.hex::<32>("digest").map_err(field)?,
            },
            b"ZO" => Request::VerifySettlement {
                label: r.label("label").map_err(field)?,
                digest: r.hex::<32>("digest").map_err(field)?,
                signature: r.hex::<64>("signature").map_err(field)?,
            },
            b"ZQ" => Request::PublicKey { label: r.label("label").map_err(field)? },
            b"ZS" => {
                let key_type = read_key_type(&mut r)?;
                let algorithm = read_algorithm(&mut r)?;
                let [version] = r.hex::<1>("version").map_err(field)?;
                let label = r.label("label").map_err(field)?;
                let bytes = Zeroizing::new(r.hex::<16>("key").map_err(field)?);
                Request::ImportClearKey { key_type, algorithm, version, label, key: Key16::from_bytes(*bytes) }
            }
            b"ZU" => Request::ListKeys,
            _ => return Err(ErrorCode::CommandNotSupported),
        };
        r.finish().map_err(field)?;
        Ok(request)
    }

    /// Checks what [`Request::encode`] needs of a request built in code: valid
    /// labels, counts within their fields. A client calls it before sending.
    pub fn check(&self) -> Result<(), &'static str> {
        let labels: Vec<&str> = match self {
            Request::Diagnostics | Request::ListKeys | Request::Echo { .. } | Request::Random { .. } => vec![],
            Request::GenerateKey { label, export_under, .. } => {
                let mut labels = vec![label.as_str()];
                labels.extend(export_under.as_deref());
                labels
            }
            Request::ImportKey { label, transport, .. } | Request::ExportKey { label, transport } => {
                vec![label, transport]
            }
            Request::KeyCheckValue { label }
            | Request::PublicKey { label }
            | Request::SignSettlement { label, .. }
            | Request::VerifySettlement { label, .. }
            | Request::ImportClearKey { label, .. } => vec![label],
            Request::GenerateMac(request) | Request::VerifyMac { request, .. } => vec![&request.label],
            Request::DeriveCardKeys { key_set, transport, .. } => vec![key_set, transport],
            Request::AuthoriseLoad { key_set, .. }
            | Request::VerifyPurchaseTac { key_set, .. }
            | Request::VerifyLoadTac { key_set, .. }
            | Request::VerifyTacBatch { key_set, .. }
            | Request::MaintenanceMac { key_set, .. } => vec![key_set],
        };
        if !labels.into_iter().all(crate::wire::label_is_valid) {
            return Err("a label is 1 to 40 characters of A-Z a-z 0-9 . _ - /");
        }
        match self {
            Request::Random { length } if *length > 999 => Err("a random length has 3 digits"),
            Request::VerifyTacBatch { records, .. } if records.is_empty() || records.len() > BATCH_RECORDS_MAX => {
                Err("a batch holds 1 to BATCH_RECORDS_MAX records")
            }
            Request::GenerateMac(request) | Request::VerifyMac { request, .. }
                if request.iv.len() != request.algorithm.iv_length() =>
            {
                Err("the IV length does not fit the MAC algorithm")
            }
            _ => Ok(()),
        }
    }

    /// The command's fields (what follows the command code). The request must
    /// pass [`Request::check`].
    pub fn encode(&self) -> Vec<u8> {
        let mut w = FieldWriter::new();
        match self {
            Request::Diagnostics | Request::ListKeys => {}
            Request::Echo { data } => {
                w.hex_length(data.len()).raw(data);
            }
            Request::Random { length } => {
                w.decimal(*length as u32, 3);
            }
            Request::GenerateKey { key_type, algorithm, version, label, export_under } => {
                w.char(if export_under.is_some() { b'1' } else { b'0' })
                    .raw(key_type.code().as_bytes())
                    .char(algorithm.code())
                    .hex(&[*version])
                    .label(label);
                if let Some(transport) = export_under {
                    w.label(transport);
                }
            }
            Request::ImportKey { key_type, algorithm, version, label, transport, key } => {
                w.raw(key_type.code().as_bytes())
                    .char(algorithm.code())
                    .hex(&[*version])
                    .label(label)
                    .label(transport)
                    .hex(&key.encrypted)
                    .hex(&key.check_value);
            }
            Request::ExportKey { label, transport } => {
                w.label(label).label(transport);
            }
            Request::KeyCheckValue { label } | Request::PublicKey { label } => {
                w.label(label);
            }
            Request::GenerateMac(request) => write_mac_request(&mut w, request),
            Request::VerifyMac { request, mac } => {
                write_mac_request(&mut w, request);
                w.hex(mac);
            }
            Request::DeriveCardKeys { key_set, serial, transport } => {
                w.label(key_set).hex(&serial.0).label(transport);
            }
            Request::AuthoriseLoad { key_set, load } => {
                w.label(key_set)
                    .hex(&load.serial.0)
                    .hex(&[load.key_index])
                    .hex(&load.card_random)
                    .hex(&load.online_counter.to_be_bytes())
                    .hex(&load.old_balance.to_bytes())
                    .hex(&load.amount.to_bytes())
                    .hex(&[load.kind.code()])
                    .hex(&load.terminal.0);
                write_at(&mut w, &load.at);
                w.hex(&load.mac1);
            }
            Request::VerifyPurchaseTac { key_set, record } => {
                w.label(key_set)
                    .hex(&record.serial.0)
                    .hex(&record.amount.to_bytes())
                    .hex(&[record.kind.code()])
                    .hex(&record.terminal.0)
                    .hex(&record.terminal_serial.to_be_bytes());
                write_at(&mut w, &record.at);
                w.hex(&record.tac);
            }
            Request::VerifyLoadTac { key_set, record } => {
                w.label(key_set)
                    .hex(&record.serial.0)
                    .hex(&record.new_balance.to_bytes())
                    .hex(&record.online_counter.to_be_bytes())
                    .hex(&record.amount.to_bytes())
                    .hex(&[record.kind.code()])
                    .hex(&record.terminal.0);
                write_at(&mut w, &record.at);
                w.hex(&record.tac);
            }
            Request::VerifyTacBatch { key_set, records } => {
                assert!(records.len() <= BATCH_RECORDS_MAX, "the client splits batches");
                w.label(key_set).decimal(records.len() as u32, 4);
                for record in records {
                    encode_batch_record(&mut w.bytes, record);
                }
            }
            Request::MaintenanceMac { key_set, serial, challenge, function } => {
                w.label(key_set).hex(&serial.0).hex(challenge);
                match function {
                    MaintenanceFunction::Block => w.char(b'B'),
                    MaintenanceFunction::BlockPermanently => w.char(b'P'),
                    MaintenanceFunction::Unblock => w.char(b'U'),
                    MaintenanceFunction::PinReload(pin) => {
                        w.char(b'R').decimal(pin.expose().len() as u32, 2).hex(pin.expose())
                    }
                };
            }
            Request::SignSettlement { label, digest } => {
                w.label(label).hex(digest);
            }
            Request::VerifySettlement { label, digest, signature } => {
                w.label(label).hex(digest).hex(signature);
            }
            Request::ImportClearKey { key_type, algorithm, version, label, key } => {
                w.raw(key_type.code().as_bytes())
                    .char(algorithm.code())
                    .hex(&[*version])
                    .label(label)
                    .hex(key.expose());
            }
        }
        w.into_bytes()
    }

    /// What the audit log may say about this request: labels, counts and masked
    /// card numbers, never key or PIN material.
    pub fn audit_detail(&self) -> String {
        match self {
            Request::Diagnostics | Request::ListKeys => String::new(),
            Request::Echo { data } => format!("bytes={}", data.len()),
            Request::Random { length } => format!("bytes={length}"),
            Request::GenerateKey { key_type, label, export_under, .. } => {
                format!("label={label} type={} export={}", key_type.code(), export_under.as_deref().unwrap_or("-"))
            }
            Request::ImportKey { key_type, label, transport, .. } => {
                format!("label={label} type={} transport={transport}", key_type.code())
            }
            Request::ExportKey { label, transport } => format!("label={label} transport={transport}"),
            Request::KeyCheckValue { label } | Request::PublicKey { label } => format!("label={label}"),
            Request::GenerateMac(request) | Request::VerifyMac { request, .. } => {
                format!("label={} bytes={}", request.label, request.message.len())
            }
            Request::DeriveCardKeys { key_set, serial, transport } => {
                format!("set={key_set} card={} transport={transport}", serial.masked())
            }
            Request::AuthoriseLoad { key_set, load } => {
                format!(
                    "set={key_set} card={} amount_fen={} terminal={}",
                    load.serial.masked(),
                    load.amount.0,
                    load.terminal
                )
            }
            Request::VerifyPurchaseTac { key_set, record } => {
                format!(
                    "set={key_set} card={} amount_fen={} terminal={}",
                    record.serial.masked(),
                    record.amount.0,
                    record.terminal
                )
            }
            Request::VerifyLoadTac { key_set, record } => {
                format!(
                    "set={key_set} card={} amount_fen={} terminal={}",
                    record.serial.masked(),
                    record.amount.0,
                    record.terminal
                )
            }
            Request::VerifyTacBatch { key_set, records } => format!("set={key_set} records={}", records.len()),
            Request::MaintenanceMac { key_set, serial, function, .. } => {
                let name = match function {
                    MaintenanceFunction::Block => "block",
                    MaintenanceFunction::BlockPermanently => "block-permanently",
                    MaintenanceFunction::Unblock => "unblock",
                    MaintenanceFunction::PinReload(_) => "pin-reload",
                };
                format!("set={key_set} card={} function={name}", serial.masked())
            }
            Request::SignSettlement { label, .. } | Request::VerifySettlement { label, .. } => format!("label={label}"),
            Request::ImportClearKey { key_type, label, .. } => format!("label={label} type={} clear", key_type.code()),
        }
    }
}

/// A successful answer of the HSM (an error answer carries no fields).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// `ND`: LMK check value and firmware version.
    Diagnostics { lmk_check: [u8; 8], firmware: String },
    /// `B3`.
    Echo { data: Vec<u8> },
    /// `N1`.
    Random { bytes: Vec<u8> },
    /// `A1`: check value, and the key under the transport key if asked.
    GeneratedKey { check_value: [u8; 3], exported: Option<[u8; 16]> },
    /// `A7`, `BV`, `ZT`: a check value.
    CheckValue { check_value: [u8; 3] },
    /// `A9`.
    ExportedKey { key: WrappedKey },
    /// `M7`, `ZL`: a 4-byte MAC.
    Mac { mac: [u8; 4] },
    /// `M9`, `ZF`, `ZH`, `ZP`: verified (a failure is error `01`).
    Verified,
    /// `ZB`.
    CardKeys(WrappedCardKeys),
    /// `ZD`: MAC1 was right; MAC2 for CREDIT FOR LOAD.
    LoadAuthorised { mac2: [u8; 4] },
    /// `ZJ`: one code per record, in order.
    TacBatch { results: Vec<ErrorCode> },
    /// `ZN`.
    Signature { signature: [u8; 64] },
    /// `ZR`.
    PublicKey { key: [u8; 32] },
    /// `ZV`.
    KeyList { keys: Vec<KeyInfo> },
}

fn write_wrapped(w: &mut FieldWriter, key: &WrappedKey) {
    w.hex(&key.encrypted).hex(&key.check_value);
}

fn read_wrapped(r: &mut FieldReader) -> Result<WrappedKey, FieldError> {
    Ok(WrappedKey { encrypted: r.hex::<16>("key")?, check_value: r.hex::<3>("check value")? })
}

fn protocol(field: &'static str, reason: &'static str) -> FieldError {
    FieldError { field, reason }
}

impl Response {
    /// The fields of a successful response.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = FieldWriter::new();
        match self {
            Response::Diagnostics { lmk_check, firmware } => {
                assert_eq!(firmware.len(), 9, "a firmware version is 9 characters");
                w.hex(lmk_check).raw(firmware.as_bytes());
            }
            Response::Echo { data } => {
                w.raw(data);
            }
            Response::Random { bytes } => {
                w.hex(bytes);
            }
            Response::GeneratedKey { check_value, exported } => {
                w.hex(check_value);
                if let Some(exported) = exported {
                    w.hex(exported);
                }
            }
            Response::CheckValue { check_value } => {
                w.hex(check_value);
            }
            Response::ExportedKey { key } => write_wrapped(&mut w, key),
            Response::Mac { mac } | Response::LoadAuthorised { mac2: mac } => {
                w.hex(mac);
            }
            Response::Verified => {}
            Response::CardKeys(keys) => {
                w.char(KeyAlgorithm::from_card(keys.algorithm).code());
                for list in [&keys.purchase, &keys.load] {
                    w.decimal(list.len() as u32, 2);
                    for key in list.iter() {
                        w.hex(&[key.index, key.version]);
                        write_wrapped(&mut w, &key.key);
                    }
                }
                for key in [&keys.tac, &keys.maintenance, &keys.pin_reload, &keys.external_auth] {
                    write_wrapped(&mut w, key);
                }
            }
            Response::TacBatch { results } => {
                w.decimal(results.len() as u32, 4);
                for result in results {
                    w.raw(&result.to_ascii());
                }
            }
            Response::Signature { signature } => {
                w.hex(signature);
            }
            Response::PublicKey { key } => {
                w.hex(key);
            }
            Response::KeyList { keys } => {
                w.decimal(keys.len() as u32, 4);
                for key in keys {
                    w.label(&key.label)
                        .raw(key.key_type.code().as_bytes())
                        .char(key.algorithm.code())
                        .hex(&[key.version])
                        .hex(&key.check_value);
                }
            }
        }
        w.into_bytes()
    }

    /// Parses the fields of a successful response to the command `request`.
    pub fn parse(request: &Request, body: &[u8]) -> Result<Response, FieldError> {
        let mut r = FieldReader::new(body);
        let response = match request {
            Request::Diagnostics => {
                let lmk_check = r.hex::<8>("LMK check value")?;
                let firmware = r.take("firmware", 9)?;
                Response::Diagnostics { lmk_check, firmware: String::from_utf8_lossy(firmware).into_owned() }
            }
            Request::Echo { .. } => Response::Echo { data: r.rest().to_vec() },
            Request::Random { length } => Response::Random { bytes: r.hex_bytes("random", *length)? },
            Request::GenerateKey { export_under, .. } => Response::GeneratedKey {
                check_value: r.hex::<3>("check value")?,
                exported: if export_under.is_some() { Some(r.hex::<16>("key")?) } else { None },
            },
            Request::ImportKey { .. } | Request::KeyCheckValue { .. } | Request::ImportClearKey { .. } => {
                Response::CheckValue { check_value: r.hex::<3>("check value")? }
            }
            Request::ExportKey { .. } => Response::ExportedKey { key: read_wrapped(&mut r)? },
            Request::GenerateMac(_) | Request::MaintenanceMac { .. } => Response::Mac { mac: r.hex::<4>("MAC")? },
            Request::VerifyMac { .. }
            | Request::VerifyPurchaseTac { .. }
            | Request::VerifyLoadTac { .. }
            | Request::VerifySettlement { .. } => Response::Verified,
            Request::DeriveCardKeys { .. } => {
                let algorithm = match KeyAlgorithm::from_code(r.char("algorithm")?).ok().and_then(KeyAlgorithm::card) {
                    Some(algorithm) => algorithm,
                    None => return Err(protocol("algorithm", "not a card algorithm")),
                };
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let count = r.decimal("key count", 2)?;
                    for _ in 0..count {
                        let [index, version] = r.hex::<2>("index and version")?;
                        list.push(WrappedIndexedKey { index, version, key: read_wrapped(&mut r)? });
                    }
                }
                let [purchase, load] = lists;
                Response::CardKeys(WrappedCardKeys {
                    algorithm,
                    purchase,
                    load,
                    tac: read_wrapped(&mut r)?,
                    maintenance: read_wrapped(&mut r)?,
                    pin_reload: read_wrapped(&mut r)?,
                    external_auth: read_wrapped(&mut r)?,
                })
            }
            Request::AuthoriseLoad { .. } => Response::LoadAuthorised { mac2: r.hex::<4>("MAC2")? },
            Request::VerifyTacBatch { records, .. } => {
                let count = r.decimal("record count", 4)? as usize;
                if count != records.len() {
                    return Err(protocol("record count", "not the number of records sent"));
                }
                let mut results = Vec::with_capacity(count);
                for _ in 0..count {
                    let digits = r.take("result", 2)?;
                    results.push(
                        ErrorCode::from_ascii([digits[0], digits[1]]).ok_or(protocol("result", "not two digits"))?,
                    );
                }
                Response::TacBatch { results }
            }
            Request::SignSettlement { .. } => Response::Signature { signature: r.hex::<64>("signature")? },
            Request::PublicKey { .. } => Response::PublicKey { key: r.hex::<32>("public key")? },
            Request::ListKeys => {
                let count = r.decimal("key count", 4)? as usize;
                if count > LIST_MAX {
                    return Err(protocol("key count", "over the maximum"));
                }
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    let label = r.label("label")?;
                    let key_type =
                        KeyType::from_code(r.take("key type", 3)?).map_err(|_| protocol("key type", "unknown"))?;
                    let algorithm =
                        KeyAlgorithm::from_code(r.char("algorithm")?).map_err(|_| protocol("algorithm", "unknown"))?;
                    let [version] = r.hex::<1>("version")?;
                    let check_value = r.hex::<3>("check value")?;
                    keys.push(KeyInfo { label, key_type, algorithm, version, check_value });
                }
                Response::KeyList { keys }
            }
        };
        r.finish()?;
        Ok(response)
    }
}
