//! Card issuance: a cardholder profile and a key set become a new card image with
//! the layout of `docs/card.md` (the contract terminals rely on).
//!
//! For now the card keys are diversified here from a master key set file; a later
//! step moves the master keys into the HSM, which then hands out only the
//! diversified keys, under a transport key, for [`build_image`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::card::fs::{Access, Application, ApplicationState, DedicatedFile, ElementaryFile, FileSystem, MF_FID};
use crate::card::{self, CardImage, CardKeys, CardType, IndexedKey, PinState, PurseState};
use crate::crypto::{self, Algorithm, Key16};
use crate::model::{ApplicationSerial, CardDateTime, Fen, bcd_from_digits};
use crate::tlv::{constructed, primitive};

/// DF name of the social security application (the contract's `SSSE`).
pub const SOCIAL_SECURITY_NAME: &[u8] = b"SSSE";
/// AID of the e-purse and transit application (JT/T 978 interconnection).
pub const PURSE_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x06, 0x32, 0x01, 0x01, 0x05];
/// AID of the medical application (ours: the unregistered `F0` range, "CITYMED").
pub const MEDICAL_AID: [u8; 8] = [0xF0, 0x43, 0x49, 0x54, 0x59, 0x4D, 0x45, 0x44];
pub const SOCIAL_SECURITY_FID: u16 = 0xDF01;
pub const PURSE_FID: u16 = 0x1001;
pub const MEDICAL_FID: u16 = 0xDF03;
/// Issuer code (2 bytes BCD) and city code written into the public information.
pub const ISSUER_CODE: [u8; 2] = [0x31, 0x00];
/// PIN tries before the PIN blocks.
pub const PIN_TRIES: u8 = 3;
/// Largest balance of a purse unless the issuer says otherwise: 1,000 yuan.
pub const BALANCE_MAX_DEFAULT: Fen = Fen(100_000);
/// Length of a compound (transit) record (`docs/card.md` gives the layout).
pub const COMPOUND_RECORD_LENGTH: u8 = 48;
/// Compound record identifiers: bus, metro.
pub const COMPOUND_BUS: u8 = 0x01;
pub const COMPOUND_METRO: u8 = 0x02;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not valid: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("cardholder field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("no cardholder profile number {0} (the file has {1})")]
    NoSuchProfile(usize, usize),
}

fn field(field: &'static str, reason: impl Into<String>) -> IssueError {
    IssueError::Field { field, reason: reason.into() }
}

/// The issuer's master keys from which each card's keys are diversified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterKeySet {
    #[serde(default)]
    pub comment: String,
    /// Set in every key set under `fixtures/`: published keys, for tests only.
    #[serde(default)]
    pub test_only: bool,
    pub algorithm: Algorithm,
    pub purchase: Vec<IndexedKey>,
    pub load: Vec<IndexedKey>,
    #[serde(with = "crate::hexser::key")]
    pub tac: Key16,
    #[serde(with = "crate::hexser::key")]
    pub maintenance: Key16,
    #[serde(with = "crate::hexser::key")]
    pub pin_reload: Key16,
    #[serde(with = "crate::hexser::key")]
    pub external_auth: Key16,
}

impl MasterKeySet {
    pub fn load(path: &Path) -> Result<Self, IssueError> {
        read_json(path)
    }

    /// The keys of the card with this application serial number.
    pub fn card_keys(&self, serial: &ApplicationSerial) -> CardKeys {
        let algorithm = self.algorithm;
        let derive = |master: &Key16| crypto::diversify(algorithm, master, &serial.0);
        let derive_all = |keys: &[IndexedKey]| {
            keys.iter().map(|k| IndexedKey { index: k.index, version: k.version, key: derive(&k.key) }).collect()
        };
        CardKeys {
            algorithm,
            purchase: derive_all(&self.purchase),
            load: derive_all(&self.load),
            tac: derive(&self.tac),
            maintenance: derive(&self.maintenance),
            pin_reload: derive(&self.pin_reload),
            external_auth: derive(&self.external_auth),
        }
    }
}

/// A transport key (ZMK) that an HSM shares with a card personalisation
/// station: the HSM sends each new card's keys wrapped under it (`ZA`), and
/// only the station opens them, to write them into the card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportKey {
    #[serde(default)]
    pub comment: String,
    /// Set in the key under `fixtures/`: published, for tests only.
    #[serde(default)]
    pub test_only: bool,
    pub algorithm: Algorithm,
    #[serde(with = "crate::hexser::key")]
    pub key: Key16,
}

impl TransportKey {
    pub fn load(path: &Path) -> Result<Self, IssueError> {
        read_json(path)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, IssueError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| IssueError::Read { path: path.display().to_string(), source })?;
    serde_json::from_str(&text).map_err(|source| IssueError::Parse { path: path.display().to_string(), source })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Male,
    Female,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsuranceType {
    Employee,
    Resident,
    Retiree,
}

impl InsuranceType {
    pub fn code(self) -> u8 {
        match self {
            InsuranceType::Employee => 1,
            InsuranceType::Resident => 2,
            InsuranceType::Retiree => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BloodType {
    A,
    B,
    AB,
    O,
    #[serde(rename = "unknown")]
    Unknown,
}

impl BloodType {
    pub fn code(self) -> u8 {
        match self {
            BloodType::Unknown => 0,
            BloodType::A => 1,
            BloodType::B => 2,
            BloodType::AB => 3,
            BloodType::O => 4,
        }
    }
}

/// Allergies the medical application flags, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allergy {
    Penicillin,
    Sulfonamide,
    Aspirin,
    Iodine,
    Latex,
    Cephalosporin,
}

impl Allergy {
    pub fn bit(self) -> u16 {
        1 << match self {
            Allergy::Penicillin => 0,
            Allergy::Sulfonamide => 1,
            Allergy::Aspirin => 2,
            Allergy::Iodine => 3,
            Allergy::Latex => 4,
            Allergy::Cephalosporin => 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MedicalProfile {
    pub patient_number: String,
    pub insurance_type: InsuranceType,
    pub insurance_region: String,
    pub blood_type: BloodType,
    #[serde(default)]
    pub rh_negative: bool,
    #[serde(default)]
    pub allergies: Vec<Allergy>,
}

/// A cardholder as the issuer's profile file describes them.
#[derive(Clone, Serialize, Deserialize)]
pub struct Cardholder {
    pub name: String,
    pub sex: Sex,
    /// Nationality (民族) code, 1 = Han.
    pub nation: u8,
    /// Six-digit region code of the birthplace.
    pub birthplace: String,
    /// `YYYY-MM-DD`.
    pub birth_date: String,
    /// The 18-character citizen ID number (GB 11643).
    pub citizen_id: String,
    pub social_security_number: String,
    /// The 9-character social security card number printed on the card.
    pub social_security_card_number: String,
    /// Six-digit region code of the issuing region.
    pub region: String,
    pub card_type: CardType,
    /// 16 hex digits.
    pub application_serial: String,
    /// 4 to 12 digits.
    pub pin: String,
    pub medical: MedicalProfile,
}

impl std::fmt::Debug for Cardholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Identity data and the PIN stay out of logs.
        write!(f, "Cardholder {{ card_type: {:?}, region: {} }}", self.card_type, self.region)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileFile {
    #[serde(default)]
    pub comment: String,
    pub cardholders: Vec<Cardholder>,
}

impl ProfileFile {
    pub fn load(path: &Path) -> Result<Self, IssueError> {
        read_json(path)
    }

    pub fn cardholder(&self, number: usize) -> Result<&Cardholder, IssueError> {
        self.cardholders.get(number).ok_or(IssueError::NoSuchProfile(number, self.cardholders.len()))
    }
}

/// Checks a citizen ID number: 17 digits and the GB 11643 (ISO 7064 MOD 11-2) check character.
pub fn citizen_id_is_valid(id: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let bytes = id.as_bytes();
    if bytes.len() != 18 || !bytes[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = bytes[..17].iter().zip(WEIGHTS).map(|(digit, weight)| u32::from(digit - b'0') * weight).sum();
    CHECK[(sum % 11) as usize] == bytes[17]
}

/// Choices made at issue beyond the cardholder profile.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Overrides the profile's card type.
    pub card_type: Option<CardType>,
    /// Overrides the profile's application serial number.
    pub serial: Option<ApplicationSerial>,
    pub initial_balance: Fen,
    pub balance_max: Fen,
    pub issued_at: CardDateTime,
    pub valid_years: u16,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions {
            card_type: None,
            serial: None,
            initial_balance: Fen::ZERO,
            balance_max: BALANCE_MAX_DEFAULT,
            issued_at: CardDateTime::now_utc(),
            valid_years: 10,
        }
    }
}

impl Cardholder {
    /// The application serial number this cardholder's card is issued with.
    pub fn serial(&self) -> Result<ApplicationSerial, IssueError> {
        ApplicationSerial::parse_hex(&self.application_serial)
            .map_err(|error| field("application_serial", error.to_string()))
    }
}

fn fixed_text(name: &'static str, text: &str, length: usize) -> Result<Vec<u8>, IssueError> {
    let bytes = text.as_bytes();
    if bytes.len() > length {
        return Err(field(name, format!("longer than {length} bytes")));
    }
    let mut out = bytes.to_vec();
    out.resize(length, 0);
    Ok(out)
}

fn digits(name: &'static str, text: &str, count: usize) -> Result<Vec<u8>, IssueError> {
    if text.len() != count {
        return Err(field(name, format!("must be {count} digits")));
    }
    bcd_from_digits(text).map_err(|_| field(name, "must be digits"))
}

fn date_bcd(name: &'static str, text: &str) -> Result<[u8; 4], IssueError> {
    let plain: String = text.chars().filter(|c| *c != '-').collect();
    let bytes = digits(name, &plain, 8)?;
    let at = CardDateTime::from_bytes(&bytes, &[0, 0, 0]).map_err(|error| field(name, error.to_string()))?;
    Ok(at.date())
}

fn tlv_record(tag: u8, value: Vec<u8>) -> Vec<u8> {
    crate::tlv::encode(&primitive(u32::from(tag), value))
}

/// Builds a new card image from a profile and the card's own keys.
pub fn build_image(holder: &Cardholder, keys: CardKeys, options: &IssueOptions) -> Result<CardImage, IssueError> {
    let serial = match options.serial {
        Some(serial) => serial,
        None => holder.serial()?,
    };
    let card_type = options.card_type.unwrap_or(holder.card_type);
    if !citizen_id_is_valid(&holder.citizen_id) {
        return Err(field("citizen_id", "not 17 digits and a valid GB 11643 check character"));
    }
    let sex_digit_odd = (holder.citizen_id.as_bytes()[16] - b'0') % 2 == 1;
    if sex_digit_odd != (holder.sex == Sex::Male) {
        return Err(field("sex", "does not match the citizen ID number"));
    }
    if options.initial_balance > options.balance_max {
        return Err(field("initial_balance", "above the purse's maximum balance"));
    }
    let pin = PinState::from_digits(&holder.pin, PIN_TRIES).ok_or_else(|| field("pin", "must be 4 to 12 digits"))?;
    let region = digits("region", &holder.region, 6)?;
    let (year, month, day) = options.issued_at.ymd();
    let issued = options.issued_at.date();
    let expires = CardDateTime::new(year + options.valid_years, month, day.min(28), 0, 0, 0)
        .map_err(|error| field("valid_years", error.to_string()))?
        .date();

    // MF: EF.DIR and the issue-information file.
    let mut issue_info = Vec::with_capacity(40);
    issue_info.extend_from_slice(&ISSUER_CODE);
    issue_info.extend_from_slice(&region[..2]);
    issue_info.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]); // industry code, test flag, RFU
    issue_info.extend_from_slice(&serial.0);
    issue_info.extend_from_slice(&[0x00, card_type.code()]);
    issue_info.extend_from_slice(&issued);
    issue_info.extend_from_slice(&[0; 6]); // issuing device
    issue_info.extend_from_slice(&[0x00, 0x01]); // card version
    issue_info.extend_from_slice(&issued);
    issue_info.extend_from_slice(&expires);
    issue_info.extend_from_slice(&[0, 0]);
    let directory = [
        (SOCIAL_SECURITY_NAME.to_vec(), "SOCIAL SECURITY"),
        (PURSE_AID.to_vec(), "E-PURSE TRANSIT"),
        (MEDICAL_AID.to_vec(), "MEDICAL"),
    ]
    .into_iter()
    .map(|(aid, label)| {
        crate::tlv::encode(&constructed(0x61, vec![primitive(0x4F, aid), primitive(0x50, label.as_bytes().to_vec())]))
    })
    .collect();
    let master = DedicatedFile {
        fid: MF_FID,
        name: b"1PAY.SYS.DDF01".to_vec(),
        application: Application::Master,
        state: ApplicationState::Active,
        files: vec![
            ElementaryFile::linear(0x2F00, Some(0x1E), Access::Always, Access::Never, 64, 8, directory),
            ElementaryFile::transparent(0x0005, Some(0x05), Access::Always, Access::SecureMessaging, issue_info),
        ],
    };

    // Social security: EF05 card information, EF06 cardholder; TLV records, P1 = tag.
    let mut card_id = region[..3].to_vec();
    card_id.extend_from_slice(&[0xD1, 0x56, 0x00, 0x00, 0x05]);
    card_id.extend_from_slice(&serial.0);
    let card_info = vec![
        tlv_record(0x01, card_id),
        tlv_record(0x02, vec![card_type.code()]),
        tlv_record(0x03, b"3.00".to_vec()),
        tlv_record(0x04, fixed_text("region", &format!("{}000000", holder.region), 12)?),
        tlv_record(0x05, issued.to_vec()),
        tlv_record(0x06, expires.to_vec()),
        tlv_record(0x07, fixed_text("social_security_card_number", &holder.social_security_card_number, 9)?),
    ];
    let holder_records = vec![
        tlv_record(0x08, fixed_text("social_security_number", &holder.social_security_number, 18)?),
        tlv_record(0x09, fixed_text("name", &holder.name, 30)?),
        tlv_record(0x0A, vec![if holder.sex == Sex::Male { b'1' } else { b'2' }]),
        tlv_record(0x0B, vec![holder.nation]),
        tlv_record(0x0C, digits("birthplace", &holder.birthplace, 6)?),
        tlv_record(0x0D, date_bcd("birth_date", &holder.birth_date)?.to_vec()),
        tlv_record(0x0E, fixed_text("citizen_id", &holder.citizen_id, 18)?),
    ];
    let social_security = DedicatedFile {
        fid: SOCIAL_SECURITY_FID,
        name: SOCIAL_SECURITY_NAME.to_vec(),
        application: Application::SocialSecurity,
        state: ApplicationState::Active,
        files: vec![
            ElementaryFile::linear(0xEF05, Some(0x05), Access::Always, Access::SecureMessaging, 34, 16, card_info),
            ElementaryFile::linear(
                0xEF06,
                Some(0x06),
                Access::PinOrTerminal,
                Access::SecureMessaging,
                34,
                16,
                holder_records,
            ),
        ],
    };

    // E-purse: 0015 public information, 0016 holder, 0017 compound, 0018 details.
    let mut public = Vec::with_capacity(30);
    public.extend_from_slice(&ISSUER_CODE);
    public.extend_from_slice(&region[..2]);
    public.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]); // industry code, RFU
    public.extend_from_slice(&[0x01, 0x02]); // application enabled, version 2
    public.extend_from_slice(&[0x00, 0x00]); // interoperability flag
    public.extend_from_slice(&serial.0);
    public.extend_from_slice(&issued);
    public.extend_from_slice(&expires);
    public.extend_from_slice(&[card_type.code(), 0x00]);
    let mut holder_info = vec![card_type.code(), u8::from(card_type == CardType::Staff)];
    holder_info.extend(fixed_text("name", &holder.name, 20).unwrap_or_else(|_| vec![0; 20]));
    holder_info.extend(fixed_text("citizen_id", &holder.citizen_id, 32)?);
    holder_info.push(0x00); // ID type: citizen ID card
    let empty_compound = |id: u8| {
        let mut record = vec![0; usize::from(COMPOUND_RECORD_LENGTH)];
        record[0] = id;
        record[1] = COMPOUND_RECORD_LENGTH - 2;
        record
    };
    let purse = DedicatedFile {
        fid: PURSE_FID,
        name: PURSE_AID.to_vec(),
        application: Application::Purse,
        state: ApplicationState::Active,
        files: vec![
            ElementaryFile::transparent(0x0015, Some(0x15), Access::Always, Access::SecureMessaging, public),
            ElementaryFile::transparent(
                0x0016,
                Some(0x16),
                Access::PinOrTerminal,
                Access::SecureMessaging,
                holder_info,
            ),
            ElementaryFile::linear(
                0x0017,
                Some(0x17),
                Access::Always,
                Access::Never,
                COMPOUND_RECORD_LENGTH,
                4,
                vec![empty_compound(COMPOUND_BUS), empty_compound(COMPOUND_METRO)],
            ),
            ElementaryFile::cyclic(0x0018, Some(0x18), Access::Always, Access::Never, 23, 10),
        ],
    };

    // Medical: 0001 patient information, 0002 visits (cyclic, newest first).
    let medical_profile = &holder.medical;
    let mut patient = fixed_text("patient_number", &medical_profile.patient_number, 16)?;
    patient.push(medical_profile.insurance_type.code());
    patient.extend(digits("insurance_region", &medical_profile.insurance_region, 6)?);
    patient.push(medical_profile.blood_type.code());
    patient.push(u8::from(medical_profile.rh_negative));
    let allergies = medical_profile.allergies.iter().fold(0u16, |flags, allergy| flags | allergy.bit());
    patient.extend_from_slice(&allergies.to_be_bytes());
    patient.resize(32, 0);
    let medical = DedicatedFile {
        fid: MEDICAL_FID,
        name: MEDICAL_AID.to_vec(),
        application: Application::Medical,
        state: ApplicationState::Active,
        files: vec![
            ElementaryFile::transparent(0x0001, Some(0x01), Access::PinOrTerminal, Access::SecureMessaging, patient),
            ElementaryFile::cyclic(0x0002, Some(0x02), Access::PinOrTerminal, Access::Pin, 16, 5),
        ],
    };

    let image = CardImage {
        format: card::IMAGE_FORMAT.to_owned(),
        card_type,
        serial,
        atr: card::contactless_atr(b"CITIZENCARD\x01"),
        pin,
        keys,
        purse: PurseState {
            balance: options.initial_balance,
            balance_max: options.balance_max,
            offline_counter: 0,
            online_counter: 0,
            overdraft_limit: 0,
            proofs: Vec::new(),
            issued: options.initial_balance,
            loaded_total: 0,
            spent_total: 0,
        },
        files: FileSystem { master, applications: vec![social_security, purse, medical] },
    };
    image.check().map_err(|error| field("image", error.to_string()))?;
    Ok(image)
}

/// Issues a card from a profile and a master key set (keys diversified here).
pub fn issue(holder: &Cardholder, master_keys: &MasterKeySet, options: &IssueOptions) -> Result<CardImage, IssueError> {
    let serial = match options.serial {
        Some(serial) => serial,
        None => holder.serial()?,
    };
    build_image(holder, master_keys.card_keys(&serial), options)
}

/// Paths of the fixtures in this repository, for tests, the demo and the CLI's defaults.
pub mod fixtures {
    use std::path::PathBuf;

    pub fn directory() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
    }

    pub fn test_keyset() -> PathBuf {
        directory().join("keys/test-keyset.json")
    }

    pub fn test_keyset_sm4() -> PathBuf {
        directory().join("keys/test-keyset-sm4.json")
    }

    pub fn cardholders() -> PathBuf {
        directory().join("profiles/cardholders.json")
    }

    /// The TEST transport key shared by a test HSM deployment and the
    /// personalisation station.
    pub fn test_transport_key() -> PathBuf {
        directory().join("keys/test-transport-key.json")
    }
}
