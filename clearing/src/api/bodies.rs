//! The JSON bodies the API parses, each with its documented wire form.
//!
//! Every body is read as bytes and parsed strictly by its [`RequestBody::parse`]
//! (callable without a server: the fuzz targets and the `bodies` tests call it):
//! a JSON object with only the wire form's fields, each checked and named in the
//! error (422). The wire structs (`*Request`) are what `/openapi.json` documents
//! and what a client may serialise; the test `fields_match_the_documented_wire_forms`
//! keeps each parser's accepted fields equal to its wire struct's.

use card_host::model::{ApplicationSerial, CardDateTime, Fen, TransactionType};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ApiError;
use crate::batch::{self, FieldError, hex_field, integer, text};

/// The largest top-up: 1,000 yuan.
pub const TOPUP_FEN_MAX: u32 = 100_000;

/// A body the API parses from bytes.
pub trait RequestBody: Sized {
    /// The documented wire form.
    type Wire: JsonSchema;
    /// The top-level fields the parser accepts (the wire form's).
    const FIELDS: &'static [&'static str];
    /// Parses a request body; a refusal is a 422 naming the field.
    fn parse(body: &[u8]) -> Result<Self, ApiError>;
}

/// No body (a signed GET): anything sent is ignored beyond the signature.
impl RequestBody for () {
    type Wire = ();
    const FIELDS: &'static [&'static str] = &[];
    fn parse(_body: &[u8]) -> Result<Self, ApiError> {
        Ok(())
    }
}

pub(crate) fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::field("body", e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ApiError::field("body", "must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        if unknown.is_empty() {
            return Err(ApiError::field("body", "a field with an empty name"));
        }
        let name: String = unknown.chars().take(40).collect();
        return Err(ApiError::field(&name, "unknown field"));
    }
    Ok(map)
}

fn field_error((field, message): FieldError) -> ApiError {
    ApiError::field(field, message)
}

fn serial(map: &Map<String, Value>, field: &'static str) -> Result<ApplicationSerial, ApiError> {
    Ok(ApplicationSerial(hex_field::<8>(map, field).map_err(field_error)?))
}

fn small(map: &Map<String, Value>, field: &'static str, max: u64) -> Result<u64, ApiError> {
    integer(map, field, max).map_err(field_error)
}

fn short_text(map: &Map<String, Value>, field: &'static str) -> Result<String, ApiError> {
    let value = text(map, field).map_err(field_error)?;
    if value.is_empty() || value.len() > crate::registry::NAME_LENGTH_MAX {
        return Err(ApiError::field(field, "1 to 100 characters"));
    }
    Ok(value.to_owned())
}

/// `POST /v1/topups/authorise`: the card's INITIALIZE FOR LOAD answer and MAC1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopupAuthoriseRequest {
    /// 16 hex digits.
    pub card_serial: String,
    pub key_index: u8,
    /// 8 hex digits.
    pub card_random: String,
    pub online_counter: u16,
    pub balance_before_fen: u32,
    /// 1 to 100,000.
    pub amount_fen: u32,
    /// `01` or `02`.
    pub transaction_type: String,
    /// 8 hex digits.
    pub mac1: String,
}

/// A top-up authorisation request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopupAuthorise {
    pub serial: ApplicationSerial,
    pub key_index: u8,
    pub card_random: [u8; 4],
    pub online_counter: u16,
    pub balance_before: Fen,
    pub amount: Fen,
    pub kind: TransactionType,
    pub mac1: [u8; 4],
}

impl RequestBody for TopupAuthorise {
    type Wire = TopupAuthoriseRequest;
    const FIELDS: &'static [&'static str] = &[
        "card_serial",
        "key_index",
        "card_random",
        "online_counter",
        "balance_before_fen",
        "amount_fen",
        "transaction_type",
        "mac1",
    ];

    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, Self::FIELDS)?;
        let serial = serial(&map, "card_serial")?;
        let key_index = small(&map, "key_index", u64::from(u8::MAX))? as u8;
        let card_random = hex_field::<4>(&map, "card_random").map_err(field_error)?;
        let online_counter = small(&map, "online_counter", u64::from(u16::MAX))? as u16;
        let balance_before = Fen(small(&map, "balance_before_fen", u64::from(u32::MAX))? as u32);
        let amount = Fen(small(&map, "amount_fen", u64::from(TOPUP_FEN_MAX))? as u32);
        if amount.0 == 0 {
            return Err(ApiError::field("amount_fen", "must be at least 1"));
        }
        if balance_before.checked_add(amount).is_none() {
            return Err(ApiError::field("amount_fen", "the balance after the load overflows"));
        }
        let [code] = hex_field::<1>(&map, "transaction_type").map_err(field_error)?;
        let kind = TransactionType::from_code(code)
            .ok()
            .filter(|k| k.is_load())
            .ok_or_else(|| ApiError::field("transaction_type", "must be a load type (01 or 02)"))?;
        let mac1 = hex_field::<4>(&map, "mac1").map_err(field_error)?;
        Ok(TopupAuthorise { serial, key_index, card_random, online_counter, balance_before, amount, kind, mac1 })
    }
}

/// `POST /v1/topups/confirm`: the card's load TAC after CREDIT FOR LOAD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopupConfirmRequest {
    /// 16 hex digits.
    pub card_serial: String,
    pub online_counter: u16,
    /// 8 hex digits: the TAC CREDIT FOR LOAD answered.
    pub tac: String,
}

/// A top-up confirmation, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopupConfirm {
    pub serial: ApplicationSerial,
    pub online_counter: u16,
    pub tac: [u8; 4],
}

impl RequestBody for TopupConfirm {
    type Wire = TopupConfirmRequest;
    const FIELDS: &'static [&'static str] = &["card_serial", "online_counter", "tac"];

    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, Self::FIELDS)?;
        Ok(TopupConfirm {
            serial: serial(&map, "card_serial")?,
            online_counter: small(&map, "online_counter", u64::from(u16::MAX))? as u16,
            tac: hex_field::<4>(&map, "tac").map_err(field_error)?,
        })
    }
}

/// `POST /v1/topups/void`: a top-up whose CREDIT FOR LOAD never happened on the
/// card (the terminal's journal knows, through GET TRANSACTION PROVE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopupVoidRequest {
    /// 16 hex digits.
    pub card_serial: String,
    pub online_counter: u16,
    /// The host date-time of the authorisation (14 hex digits, as authorise answered):
    /// names which authorisation of this counter is void.
    pub date_time: String,
}

/// A top-up void, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopupVoid {
    pub serial: ApplicationSerial,
    pub online_counter: u16,
    pub at: CardDateTime,
}

impl RequestBody for TopupVoid {
    type Wire = TopupVoidRequest;
    const FIELDS: &'static [&'static str] = &["card_serial", "online_counter", "date_time"];

    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, Self::FIELDS)?;
        let serial = serial(&map, "card_serial")?;
        let online_counter = small(&map, "online_counter", u64::from(u16::MAX))? as u16;
        let bytes = hex_field::<7>(&map, "date_time").map_err(field_error)?;
        let at = CardDateTime::from_slice(&bytes)
            .map_err(|_| ApiError::field("date_time", "not a real date and time (YYYYMMDDhhmmss as BCD hex)"))?;
        Ok(TopupVoid { serial, online_counter, at })
    }
}

/// `POST /v1/issuer/cards`: a card to issue. Its `Debug` masks the citizen ID.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueCardRequest {
    /// 16 hex digits.
    pub card_serial: String,
    pub card_type: u8,
    /// The HSM key set of the card's keys (1 to 100 characters).
    pub key_set: String,
    /// Kept only hashed and masked (1 to 100 characters).
    pub citizen_id: String,
    /// 1 to 100 characters.
    pub name: String,
    /// 0 to 100,000.
    pub initial_balance_fen: u32,
    /// With it, the server also personalises the card: its keys derived in the
    /// HSM, its image written by the personalisation station (503 on a server
    /// without one). Without it, the card is only recorded (personalised
    /// elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personalisation: Option<Personalisation>,
}

/// What a personalised card carries beyond its serial, type, holder's name and
/// citizen ID (card-host's cardholder profile, `fixtures/profiles/cardholders.json`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Personalisation {
    /// `male` or `female`.
    pub sex: String,
    /// Nationality (民族) code, 1 = Han.
    pub nation: u8,
    /// Six-digit region code of the birthplace.
    pub birthplace: String,
    /// `YYYY-MM-DD`.
    pub birth_date: String,
    pub social_security_number: String,
    /// The 9-character social security card number printed on the card.
    pub social_security_card_number: String,
    /// Six-digit region code of the issuing region.
    pub region: String,
    /// 4 to 12 digits: written into the card, never stored or logged by clearing.
    pub pin: String,
    /// The medical profile: `patient_number`, `insurance_type` (`employee`,
    /// `resident`, `retiree`), `insurance_region`, `blood_type`, `rh_negative`,
    /// `allergies`.
    pub medical: Value,
}

impl std::fmt::Debug for Personalisation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Identity data and the PIN stay out of logs.
        f.write_str("Personalisation { .. }")
    }
}

impl Personalisation {
    /// The cardholder profile card-host issues from; a field that does not fit
    /// is a 422 naming it (`personalisation.FIELD`).
    pub fn cardholder(
        &self,
        serial: ApplicationSerial,
        card_type: card_host::card::CardType,
        name: &str,
        citizen_id: &str,
    ) -> Result<card_host::issue::Cardholder, ApiError> {
        let medical = serde_json::from_value(self.medical.clone())
            .map_err(|error| personalisation_refused(&error))
            .map_err(|refused| ApiError::field("personalisation.medical", refused.message().to_owned()))?;
        let sex = serde_json::from_value(Value::String(self.sex.clone()))
            .map_err(|_| ApiError::field("personalisation.sex", "male or female"))?;
        let holder = card_host::issue::Cardholder {
            name: name.to_owned(),
            sex,
            nation: self.nation,
            birthplace: self.birthplace.clone(),
            birth_date: self.birth_date.clone(),
            citizen_id: citizen_id.to_owned(),
            social_security_number: self.social_security_number.clone(),
            social_security_card_number: self.social_security_card_number.clone(),
            region: self.region.clone(),
            card_type,
            application_serial: serial.to_hex(),
            pin: self.pin.clone(),
            medical,
        };
        Ok(holder)
    }
}

/// The optional `personalisation` object of an issue or replace body.
fn optional_personalisation<T: serde::de::DeserializeOwned>(map: &Map<String, Value>) -> Result<Option<T>, ApiError> {
    match map.get("personalisation") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone()).map(Some).map_err(|error| personalisation_refused(&error)),
    }
}

/// A personalisation object that does not parse. serde's own message is kept
/// only when it names a field and no value (a wrong-typed value could be the PIN).
fn personalisation_refused(error: &serde_json::Error) -> ApiError {
    let message = error.to_string();
    if message.starts_with("missing field") || message.starts_with("unknown field") {
        ApiError::field("personalisation", message)
    } else {
        ApiError::field("personalisation", "a field has the wrong type (see /openapi.json)")
    }
}

/// A card to issue, parsed (the issue time is the server's). Its `Debug`
/// masks the citizen ID.
#[derive(Clone, PartialEq, Eq)]
pub struct IssueCard {
    pub serial: ApplicationSerial,
    pub card_type: u8,
    pub key_set: String,
    pub citizen_id: String,
    pub name: String,
    pub initial_balance: Fen,
    pub personalisation: Option<Personalisation>,
}

/// A card serial as text, for `Debug`: only its last four characters.
fn serial_tail(text: &str) -> String {
    let characters: Vec<char> = text.chars().collect();
    let keep = characters.len().saturating_sub(4);
    characters.iter().enumerate().map(|(index, c)| if index < keep { '*' } else { *c }).collect()
}

impl std::fmt::Debug for IssueCardRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueCardRequest")
            .field("card_serial", &serial_tail(&self.card_serial))
            .field("card_type", &self.card_type)
            .field("key_set", &self.key_set)
            .field("citizen_id", &crate::registry::mask_citizen_id(&self.citizen_id))
            .field("name", &self.name)
            .field("initial_balance_fen", &self.initial_balance_fen)
            .field("personalisation", &self.personalisation)
            .finish()
    }
}

impl std::fmt::Debug for IssueCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueCard")
            .field("serial", &self.serial)
            .field("card_type", &self.card_type)
            .field("key_set", &self.key_set)
            .field("citizen_id", &crate::registry::mask_citizen_id(&self.citizen_id))
            .field("name", &self.name)
            .field("initial_balance", &self.initial_balance)
            .field("personalisation", &self.personalisation)
            .finish()
    }
}

impl RequestBody for IssueCard {
    type Wire = IssueCardRequest;
    const FIELDS: &'static [&'static str] =
        &["card_serial", "card_type", "key_set", "citizen_id", "name", "initial_balance_fen", "personalisation"];

    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, Self::FIELDS)?;
        Ok(IssueCard {
            serial: serial(&map, "card_serial")?,
            card_type: small(&map, "card_type", u64::from(u8::MAX))? as u8,
            key_set: short_text(&map, "key_set")?,
            citizen_id: short_text(&map, "citizen_id")?,
            name: short_text(&map, "name")?,
            initial_balance: Fen(small(&map, "initial_balance_fen", u64::from(TOPUP_FEN_MAX))? as u32),
            personalisation: optional_personalisation(&map)?,
        })
    }
}

/// `POST /v1/issuer/cards/{serial}/replace`: the new card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceCardRequest {
    /// 16 hex digits.
    pub new_card_serial: String,
    pub card_type: u8,
    /// 1 to 100 characters.
    pub key_set: String,
    /// With it, the server also personalises the new card, holding the
    /// balance moved from the old one (503 on a server without a station).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personalisation: Option<ReplacementPersonalisation>,
}

/// The new card's profile: the cardholder proves who they are with their
/// citizen ID (it must be the old card's holder's); the name is clearing's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplacementPersonalisation {
    /// The old card's holder's citizen ID (checked against its hash, never stored again).
    pub citizen_id: String,
    pub cardholder: Personalisation,
}

impl std::fmt::Debug for ReplacementPersonalisation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplacementPersonalisation { .. }")
    }
}

/// A replacement card, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceCard {
    pub serial: ApplicationSerial,
    pub card_type: u8,
    pub key_set: String,
    pub personalisation: Option<ReplacementPersonalisation>,
}

impl RequestBody for ReplaceCard {
    type Wire = ReplaceCardRequest;
    const FIELDS: &'static [&'static str] = &["new_card_serial", "card_type", "key_set", "personalisation"];

    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, Self::FIELDS)?;
        Ok(ReplaceCard {
            serial: serial(&map, "new_card_serial")?,
            card_type: small(&map, "card_type", u64::from(u8::MAX))? as u8,
            key_set: short_text(&map, "key_set")?,
            personalisation: optional_personalisation(&map)?,
        })
    }
}

/// `POST /v1/batches`: the batch document (see [`crate::batch`]), documented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchDocument {
    /// `clearing-batch/1`.
    pub format: String,
    /// 12 hex digits.
    pub terminal_id: String,
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`, unique per terminal.
    pub batch_id: String,
    /// 1 to 10,000 records; a malformed one is refused alone (quarantined), the others kept.
    pub records: Vec<BatchRecord>,
}

/// One record of a batch document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRecord {
    /// `purchase`, `load`, or `unresolved`: a grey record, a purchase the
    /// terminal attempted without learning whether the card debited it (the
    /// purchase's fields without `tac`).
    pub kind: String,
    pub card_serial: String,
    pub card_type: u8,
    /// A purchase's or a grey record's: the card's offline counter before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_counter: Option<u16>,
    /// A load's: the card's online counter before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_counter: Option<u16>,
    pub balance_before_fen: u32,
    /// 1 to 1,000,000.
    pub amount_fen: u32,
    /// 2 hex digits: `05` `06` `09` (purchase), `01` `02` (load).
    pub transaction_type: String,
    /// 12 hex digits, equal to the batch's terminal.
    pub terminal_number: String,
    /// A purchase's or a grey record's: the PSAM's transaction serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_serial: Option<u32>,
    /// `YYYYMMDDhhmmss`.
    pub date_time: String,
    /// 8 hex digits; none in a grey record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tac: Option<String>,
}

impl RequestBody for batch::Batch {
    type Wire = BatchDocument;
    const FIELDS: &'static [&'static str] = &["format", "terminal_id", "batch_id", "records"];

    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Ok(batch::parse(body)?)
    }
}

/// Each parsed body's wire form: what a client sends to get it.
impl From<&TopupAuthorise> for TopupAuthoriseRequest {
    fn from(body: &TopupAuthorise) -> Self {
        TopupAuthoriseRequest {
            card_serial: body.serial.to_hex(),
            key_index: body.key_index,
            card_random: hex::encode(body.card_random),
            online_counter: body.online_counter,
            balance_before_fen: body.balance_before.0,
            amount_fen: body.amount.0,
            transaction_type: hex::encode([body.kind.code()]),
            mac1: hex::encode(body.mac1),
        }
    }
}

impl From<&TopupConfirm> for TopupConfirmRequest {
    fn from(body: &TopupConfirm) -> Self {
        TopupConfirmRequest {
            card_serial: body.serial.to_hex(),
            online_counter: body.online_counter,
            tac: hex::encode(body.tac),
        }
    }
}

impl From<&TopupVoid> for TopupVoidRequest {
    fn from(body: &TopupVoid) -> Self {
        TopupVoidRequest {
            card_serial: body.serial.to_hex(),
            online_counter: body.online_counter,
            date_time: hex::encode(body.at.to_bytes()),
        }
    }
}

impl From<&IssueCard> for IssueCardRequest {
    fn from(body: &IssueCard) -> Self {
        IssueCardRequest {
            card_serial: body.serial.to_hex(),
            card_type: body.card_type,
            key_set: body.key_set.clone(),
            citizen_id: body.citizen_id.clone(),
            name: body.name.clone(),
            initial_balance_fen: body.initial_balance.0,
            personalisation: body.personalisation.clone(),
        }
    }
}

impl From<&ReplaceCard> for ReplaceCardRequest {
    fn from(body: &ReplaceCard) -> Self {
        ReplaceCardRequest {
            new_card_serial: body.serial.to_hex(),
            card_type: body.card_type,
            key_set: body.key_set.clone(),
            personalisation: body.personalisation.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties<W: JsonSchema>() -> Vec<String> {
        let schema = schemars::SchemaGenerator::default().into_root_schema_for::<W>();
        let mut names: Vec<String> = schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    fn fields<B: RequestBody>() -> Vec<String> {
        let mut names: Vec<String> = B::FIELDS.iter().map(|f| f.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn fields_match_the_documented_wire_forms() {
        assert_eq!(fields::<TopupAuthorise>(), properties::<TopupAuthoriseRequest>());
        assert_eq!(fields::<TopupConfirm>(), properties::<TopupConfirmRequest>());
        assert_eq!(fields::<TopupVoid>(), properties::<TopupVoidRequest>());
        assert_eq!(fields::<IssueCard>(), properties::<IssueCardRequest>());
        assert_eq!(fields::<ReplaceCard>(), properties::<ReplaceCardRequest>());
        assert_eq!(fields::<batch::Batch>(), properties::<BatchDocument>());
        let mut record: Vec<String> = batch::PURCHASE_FIELDS
            .iter()
            .chain(batch::LOAD_FIELDS)
            .chain(batch::GREY_FIELDS)
            .map(|f| f.to_string())
            .collect();
        record.sort();
        record.dedup();
        assert_eq!(record, properties::<BatchRecord>());
    }

    #[test]
    fn a_card_to_issue_prints_its_citizen_id_and_serial_masked() {
        let body = br#"{"card_serial": "3100000000001234", "card_type": 1, "key_set": "card",
            "citizen_id": "310101199001011234", "name": "Li Lei", "initial_balance_fen": 0}"#;
        let card = IssueCard::parse(body).expect("a valid body");
        let wire: IssueCardRequest = serde_json::from_slice(body).expect("the wire form");
        for printed in [format!("{card:?}"), format!("{wire:?}")] {
            assert!(!printed.contains("310101199001011234"), "{printed}");
            assert!(!printed.contains("3100000000001234"), "{printed}");
            assert!(printed.contains("310*************34"), "{printed}");
            assert!(printed.contains("1234"), "the serial's tail: {printed}");
        }
    }
}
