//! The batch document terminals upload, and its strict parser.
//!
//! ```json
//! {
//!   "format": "clearing-batch/1",
//!   "terminal_id": "310000000901",
//!   "batch_id": "20261124-0001",
//!   "records": [
//!     {"kind": "purchase", "card_serial": "3100000000000001", "card_type": 1,
//!      "offline_counter": 5, "balance_before_fen": 10000, "amount_fen": 200,
//!      "transaction_type": "06", "terminal_number": "310000000901",
//!      "terminal_serial": 17, "date_time": "20261124083000", "tac": "1A2B3C4D"},
//!     {"kind": "load", "card_serial": "3100000000000001", "card_type": 1,
//!      "online_counter": 2, "balance_before_fen": 9800, "amount_fen": 5000,
//!      "transaction_type": "02", "terminal_number": "310000000901",
//!      "date_time": "20261124090000", "tac": "5E6F7A8B"}
//!   ]
//! }
//! ```
//!
//!
//! A terminal that could not learn whether a purchase's DEBIT reached the card
//! (the card went away and did not come back to be asked) uploads the purchase
//! it attempted as a **grey record** (灰记录): kind `"unresolved"`, the purchase
//! record's fields without `tac`. Clearing keeps it apart and lets the card's
//! later records decide it (`crate::grey`).
//!
//! The document itself must parse (unknown top-level fields, a wrong format,
//! terminal id or batch id refuse the whole batch). Records are parsed one by
//! one: a malformed record is refused with a message naming its field, and the
//! valid records beside it are kept (the batch is accepted partially; the
//! refused records are kept in quarantine with their raw JSON, nothing is dropped).

use card_host::model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// The format tag of the document.
pub const BATCH_FORMAT: &str = "clearing-batch/1";
/// The most records in one batch.
pub const BATCH_RECORDS_MAX: usize = 10_000;
/// The largest batch document, in bytes.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// The longest batch id.
pub const BATCH_ID_LENGTH_MAX: usize = 64;
/// The largest amount of one record: the card's 4-byte balance allows more, but
/// no single purse transaction in the city exceeds 10,000 yuan.
pub const AMOUNT_FEN_MAX: u32 = 1_000_000;
/// The longest raw record kept in quarantine, in bytes (longer ones are cut).
pub const RAW_RECORD_BYTES_MAX: usize = 4_096;

/// Purchase (offline counter) or load (online counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Purchase,
    Load,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Purchase => "purchase",
            RecordKind::Load => "load",
        }
    }

    pub fn parse(text: &str) -> Option<RecordKind> {
        match text {
            "purchase" => Some(RecordKind::Purchase),
            "load" => Some(RecordKind::Load),
            _ => None,
        }
    }
}

/// One card transaction as a terminal recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub card_serial: ApplicationSerial,
    pub card_type: u8,
    /// Purchase: the offline counter before the purchase, as INITIALIZE FOR
    /// PURCHASE answered (the transaction number is this + 1). Load: the online
    /// counter before the load (as in INITIALIZE FOR LOAD and the load TAC).
    pub counter: u16,
    pub balance_before: Fen,
    pub amount: Fen,
    pub transaction_type: TransactionType,
    pub terminal_number: TerminalNumber,
    /// The PSAM's terminal transaction serial (purchases; 0 for loads).
    pub terminal_serial: u32,
    pub at: CardDateTime,
    pub tac: [u8; 4],
}

impl Record {
    /// The balance after the transaction (checked when parsed).
    pub fn balance_after(&self) -> Fen {
        match self.kind {
            RecordKind::Purchase => Fen(self.balance_before.0 - self.amount.0),
            RecordKind::Load => Fen(self.balance_before.0 + self.amount.0),
        }
    }

    /// The record as the document carries it.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("kind".into(), self.kind.as_str().into());
        map.insert("card_serial".into(), self.card_serial.to_hex().into());
        map.insert("card_type".into(), self.card_type.into());
        let counter_field = match self.kind {
            RecordKind::Purchase => "offline_counter",
            RecordKind::Load => "online_counter",
        };
        map.insert(counter_field.into(), self.counter.into());
        map.insert("balance_before_fen".into(), self.balance_before.0.into());
        map.insert("amount_fen".into(), self.amount.0.into());
        map.insert("transaction_type".into(), format!("{:02X}", self.transaction_type.code()).into());
        map.insert("terminal_number".into(), self.terminal_number.to_string().into());
        if self.kind == RecordKind::Purchase {
            map.insert("terminal_serial".into(), self.terminal_serial.into());
        }
        map.insert("date_time".into(), hex::encode(self.at.to_bytes()).into());
        map.insert("tac".into(), hex::encode_upper(self.tac).into());
        Value::Object(map)
    }
}

/// A purchase a terminal attempted without learning whether the card debited
/// it (a grey record, 灰记录): the purchase record's fields, no TAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreyRecord {
    pub card_serial: ApplicationSerial,
    pub card_type: u8,
    /// The offline counter before the purchase, as INITIALIZE FOR PURCHASE answered.
    pub counter: u16,
    pub balance_before: Fen,
    pub amount: Fen,
    pub transaction_type: TransactionType,
    pub terminal_number: TerminalNumber,
    pub terminal_serial: u32,
    pub at: CardDateTime,
}

impl GreyRecord {
    /// The record as the document carries it: the purchase's fields, kind
    /// `unresolved`, no `tac`.
    pub fn to_json(&self) -> Value {
        let purchase = Record {
            kind: RecordKind::Purchase,
            card_serial: self.card_serial,
            card_type: self.card_type,
            counter: self.counter,
            balance_before: self.balance_before,
            amount: self.amount,
            transaction_type: self.transaction_type,
            terminal_number: self.terminal_number,
            terminal_serial: self.terminal_serial,
            at: self.at,
            tac: [0; 4],
        };
        let mut value = purchase.to_json();
        if let Value::Object(map) = &mut value {
            map.remove("tac");
            map.insert("kind".into(), UNRESOLVED.into());
        }
        value
    }
}

impl Record {
    /// This purchase as the grey record a terminal uploads when it never learned
    /// whether the card took it (`None` for a load: only purchases are grey).
    pub fn grey(&self) -> Option<GreyRecord> {
        (self.kind == RecordKind::Purchase).then_some(GreyRecord {
            card_serial: self.card_serial,
            card_type: self.card_type,
            counter: self.counter,
            balance_before: self.balance_before,
            amount: self.amount,
            transaction_type: self.transaction_type,
            terminal_number: self.terminal_number,
            terminal_serial: self.terminal_serial,
            at: self.at,
        })
    }
}

/// The `kind` of a grey record.
pub const UNRESOLVED: &str = "unresolved";

/// One entry of a batch: a transaction the card proved with its TAC, or a grey record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Proved(Record),
    Grey(GreyRecord),
}

impl Entry {
    pub fn to_json(&self) -> Value {
        match self {
            Entry::Proved(record) => record.to_json(),
            Entry::Grey(grey) => grey.to_json(),
        }
    }

    /// The proved record, if it is one.
    pub fn proved(&self) -> Option<&Record> {
        match self {
            Entry::Proved(record) => Some(record),
            Entry::Grey(_) => None,
        }
    }
}

impl From<&Entry> for Entry {
    fn from(entry: &Entry) -> Entry {
        entry.clone()
    }
}

impl From<Record> for Entry {
    fn from(record: Record) -> Entry {
        Entry::Proved(record)
    }
}

impl From<&Record> for Entry {
    fn from(record: &Record) -> Entry {
        Entry::Proved(record.clone())
    }
}

impl From<GreyRecord> for Entry {
    fn from(grey: GreyRecord) -> Entry {
        Entry::Grey(grey)
    }
}

impl From<&GreyRecord> for Entry {
    fn from(grey: &GreyRecord) -> Entry {
        Entry::Grey(grey.clone())
    }
}

/// A record refused at upload, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecordRejection {
    pub index: usize,
    pub field: String,
    pub message: String,
}

/// The document's outer shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    terminal_id: String,
    batch_id: String,
    records: Vec<Value>,
}

/// A parsed batch: the header as types, each record parsed or refused.
#[derive(Debug)]
pub struct Batch {
    pub terminal_id: TerminalNumber,
    pub batch_id: String,
    pub records: Vec<Result<Entry, RecordRejection>>,
    /// The records as received, for the quarantine of refused ones.
    pub raw_records: Vec<Value>,
    /// SHA-256 of the records (canonical JSON), to tell a repeat from a conflict.
    pub digest: [u8; 32],
}

/// Builds a document (for terminals and tests) of records and grey records.
pub fn document<E: Into<Entry>>(
    terminal_id: &TerminalNumber,
    batch_id: &str,
    entries: impl IntoIterator<Item = E>,
) -> Value {
    serde_json::json!({
        "format": BATCH_FORMAT,
        "terminal_id": terminal_id.to_string(),
        "batch_id": batch_id,
        "records": entries.into_iter().map(|entry| entry.into().to_json()).collect::<Vec<_>>(),
    })
}

fn check_batch_id(batch_id: &str) -> Result<(), Error> {
    if batch_id.is_empty()
        || batch_id.len() > BATCH_ID_LENGTH_MAX
        || !batch_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::invalid("batch_id", format!("1 to {BATCH_ID_LENGTH_MAX} characters of A-Z a-z 0-9 . _ -")));
    }
    Ok(())
}

/// Parses a document from bytes (at most [`BATCH_BYTES_MAX`]).
pub fn parse(bytes: &[u8]) -> Result<Batch, Error> {
    if bytes.len() > BATCH_BYTES_MAX {
        return Err(Error::invalid("batch", format!("larger than {BATCH_BYTES_MAX} bytes")));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|error| Error::invalid("batch", error.to_string()))?;
    parse_value(value)
}

/// Parses a document already read as JSON.
pub fn parse_value(value: Value) -> Result<Batch, Error> {
    if let Some(records) = value.get("records").and_then(Value::as_array)
        && records.len() > BATCH_RECORDS_MAX
    {
        return Err(Error::invalid("records", format!("more than {BATCH_RECORDS_MAX} records")));
    }
    let document: Document =
        serde_json::from_value(value).map_err(|error| Error::invalid("batch", error.to_string()))?;
    if document.format != BATCH_FORMAT {
        return Err(Error::invalid("format", format!("must be {BATCH_FORMAT:?}")));
    }
    let terminal_id =
        parse_terminal(&document.terminal_id).map_err(|message| Error::invalid("terminal_id", message))?;
    check_batch_id(&document.batch_id)?;
    if document.records.is_empty() {
        return Err(Error::invalid("records", "a batch has at least one record"));
    }
    let canonical =
        serde_json::to_vec(&document.records).map_err(|error| Error::invalid("records", error.to_string()))?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &canonical).as_ref());
    let records = document
        .records
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            parse_record(raw, &terminal_id).map_err(|(field, message)| RecordRejection {
                index,
                field: field.to_owned(),
                message,
            })
        })
        .collect();
    Ok(Batch { terminal_id, batch_id: document.batch_id, records, raw_records: document.records, digest })
}

pub(crate) type FieldError = (&'static str, String);

pub(crate) const PURCHASE_FIELDS: &[&str] = &[
    "kind",
    "card_serial",
    "card_type",
    "offline_counter",
    "balance_before_fen",
    "amount_fen",
    "transaction_type",
    "terminal_number",
    "terminal_serial",
    "date_time",
    "tac",
];
/// A grey record's fields: a purchase's without the TAC.
pub(crate) const GREY_FIELDS: &[&str] = &[
    "kind",
    "card_serial",
    "card_type",
    "offline_counter",
    "balance_before_fen",
    "amount_fen",
    "transaction_type",
    "terminal_number",
    "terminal_serial",
    "date_time",
];
pub(crate) const LOAD_FIELDS: &[&str] = &[
    "kind",
    "card_serial",
    "card_type",
    "online_counter",
    "balance_before_fen",
    "amount_fen",
    "transaction_type",
    "terminal_number",
    "date_time",
    "tac",
];

pub(crate) fn parse_terminal(text: &str) -> Result<TerminalNumber, String> {
    if text.len() != 12 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be 12 hex digits".into());
    }
    TerminalNumber::parse_hex(text).map_err(|error| error.to_string())
}

pub(crate) fn integer(map: &Map<String, Value>, field: &'static str, max: u64) -> Result<u64, FieldError> {
    let value = map.get(field).ok_or((field, "missing".to_owned()))?;
    let number = value.as_u64().ok_or((field, "must be a whole number, not negative".to_owned()))?;
    if number > max {
        return Err((field, format!("must be at most {max}")));
    }
    Ok(number)
}

pub(crate) fn text<'a>(map: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, FieldError> {
    map.get(field).ok_or((field, "missing".to_owned()))?.as_str().ok_or((field, "must be a string".to_owned()))
}

pub(crate) fn hex_field<const N: usize>(map: &Map<String, Value>, field: &'static str) -> Result<[u8; N], FieldError> {
    let value = text(map, field)?;
    let wrong = || (field, format!("must be {} hex digits", 2 * N));
    if value.len() != 2 * N {
        return Err(wrong());
    }
    let bytes = hex::decode(value).map_err(|_| wrong())?;
    bytes.try_into().map_err(|_| wrong())
}

fn parse_record(raw: &Value, batch_terminal: &TerminalNumber) -> Result<Entry, FieldError> {
    let map = raw.as_object().ok_or(("record", "must be a JSON object".to_owned()))?;
    let kind_text = text(map, "kind")?;
    // A grey record is parsed as the purchase it attempted, without its TAC.
    let grey = kind_text == UNRESOLVED;
    let kind = if grey { Some(RecordKind::Purchase) } else { RecordKind::parse(kind_text) }
        .ok_or(("kind", "must be \"purchase\", \"load\" or \"unresolved\"".to_owned()))?;
    let (allowed, name) = match kind {
        RecordKind::Purchase if grey => (GREY_FIELDS, UNRESOLVED),
        RecordKind::Purchase => (PURCHASE_FIELDS, "purchase"),
        RecordKind::Load => (LOAD_FIELDS, "load"),
    };
    if let Some(unknown) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
        // The field name is the sender's; cut it so a message stays short.
        let field: String = unknown.chars().take(40).collect();
        return Err(("record", format!("unknown field {field:?} in a {name} record")));
    }
    let card_serial = ApplicationSerial(hex_field::<8>(map, "card_serial")?);
    let card_type = integer(map, "card_type", u64::from(u8::MAX))? as u8;
    let counter_field = match kind {
        RecordKind::Purchase => "offline_counter",
        RecordKind::Load => "online_counter",
    };
    let counter = integer(map, counter_field, u64::from(u16::MAX))? as u16;
    let balance_before = Fen(integer(map, "balance_before_fen", u64::from(u32::MAX))? as u32);
    let amount = Fen(integer(map, "amount_fen", u64::from(AMOUNT_FEN_MAX))? as u32);
    let [code] = hex_field::<1>(map, "transaction_type")?;
    let transaction_type = TransactionType::from_code(code).map_err(|error| ("transaction_type", error.to_string()))?;
    // A compound purchase of 0 is a trip record the card wrote with its DEBIT (a
    // distance tap-in, a free ride): the card's counter moved, so it is cleared too.
    if amount.0 == 0 && transaction_type != TransactionType::CompoundPurchase {
        return Err(("amount_fen", "must be at least 1 (0 only in a compound purchase, type 09)".to_owned()));
    }
    if transaction_type.is_load() != (kind == RecordKind::Load) {
        return Err(("transaction_type", format!("{code:02X} is not a {} type", kind.as_str())));
    }
    let terminal_number = parse_terminal(text(map, "terminal_number")?).map_err(|m| ("terminal_number", m))?;
    if terminal_number != *batch_terminal {
        return Err(("terminal_number", "differs from the batch's terminal_id".to_owned()));
    }
    let terminal_serial = match kind {
        RecordKind::Purchase => integer(map, "terminal_serial", u64::from(u32::MAX))? as u32,
        RecordKind::Load => 0,
    };
    let at = CardDateTime::from_slice(&hex_field::<7>(map, "date_time")?)
        .map_err(|error| ("date_time", format!("must be YYYYMMDDhhmmss: {error}")))?;
    match kind {
        RecordKind::Purchase if amount > balance_before => {
            return Err(("amount_fen", "is more than balance_before_fen".to_owned()));
        }
        RecordKind::Load if balance_before.checked_add(amount).is_none() => {
            return Err(("amount_fen", "the balance after the load overflows".to_owned()));
        }
        _ => {}
    }
    if grey {
        return Ok(Entry::Grey(GreyRecord {
            card_serial,
            card_type,
            counter,
            balance_before,
            amount,
            transaction_type,
            terminal_number,
            terminal_serial,
            at,
        }));
    }
    let tac = hex_field::<4>(map, "tac")?;
    Ok(Entry::Proved(Record {
        kind,
        card_serial,
        card_type,
        counter,
        balance_before,
        amount,
        transaction_type,
        terminal_number,
        terminal_serial,
        at,
        tac,
    }))
}

/// The raw record, cut to [`RAW_RECORD_BYTES_MAX`], for the quarantine.
pub fn raw_for_quarantine(raw: &Value) -> String {
    let mut text = raw.to_string();
    if text.len() > RAW_RECORD_BYTES_MAX {
        let mut end = RAW_RECORD_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal() -> TerminalNumber {
        TerminalNumber::parse_hex("310000000901").expect("valid")
    }

    fn purchase() -> Record {
        Record {
            kind: RecordKind::Purchase,
            card_serial: ApplicationSerial::parse_hex("3100000000000001").expect("valid"),
            card_type: 1,
            counter: 5,
            balance_before: Fen(10_000),
            amount: Fen(200),
            transaction_type: TransactionType::PursePurchase,
            terminal_number: terminal(),
            terminal_serial: 17,
            at: CardDateTime::new(2026, 11, 24, 8, 30, 0).expect("valid"),
            tac: [1, 2, 3, 4],
        }
    }

    fn load() -> Record {
        Record {
            kind: RecordKind::Load,
            counter: 2,
            transaction_type: TransactionType::PurseLoad,
            terminal_serial: 0,
            ..purchase()
        }
    }

    fn with(field: &str, value: Value) -> Value {
        let mut record = purchase().to_json();
        record.as_object_mut().expect("object").insert(field.into(), value);
        record
    }

    fn grey() -> GreyRecord {
        purchase().grey().expect("a purchase has its grey record")
    }

    fn parse_one(record: Value) -> Result<Entry, RecordRejection> {
        let document = serde_json::json!({"format": BATCH_FORMAT, "terminal_id": "310000000901", "batch_id": "b1", "records": [record]});
        let mut batch = parse_value(document).expect("document parses");
        batch.records.remove(0)
    }

    #[test]
    fn records_round_trip() {
        assert_eq!(parse_one(purchase().to_json()), Ok(purchase().into()));
        assert_eq!(parse_one(load().to_json()), Ok(load().into()));
        assert_eq!(parse_one(grey().to_json()), Ok(grey().into()));
    }

    #[test]
    fn a_grey_record_is_a_purchase_without_its_tac() {
        let with_tac = |mut value: Value| {
            value.as_object_mut().expect("object").insert("tac".into(), "01020304".into());
            value
        };
        let rejection = parse_one(with_tac(grey().to_json())).expect_err("a grey record has no TAC");
        assert_eq!((rejection.field.as_str(), rejection.message.contains("unresolved")), ("record", true));
        let mut load_grey = grey().to_json();
        load_grey["transaction_type"] = "02".into();
        assert_eq!(parse_one(load_grey).expect_err("only purchases").field, "transaction_type");
        let mut over = grey().to_json();
        over["amount_fen"] = 10_001.into();
        assert_eq!(parse_one(over).expect_err("within the balance").field, "amount_fen");
        let mut online = grey().to_json();
        online.as_object_mut().expect("object").insert("online_counter".into(), 1.into());
        assert_eq!(parse_one(online).expect_err("offline counter only").field, "record");
        let mixed = document(&terminal(), "b1", [Entry::from(purchase()), grey().into()]);
        let batch = parse_value(mixed).expect("parses");
        assert_eq!(batch.records, vec![Ok(purchase().into()), Ok(grey().into())]);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(Value, &str)> = vec![
            (with("card_serial", "31000000000000".into()), "card_serial"),
            (with("card_serial", "31000000000000ZZ".into()), "card_serial"),
            (with("card_type", 256.into()), "card_type"),
            (with("offline_counter", 65_536.into()), "offline_counter"),
            (with("offline_counter", (-1).into()), "offline_counter"),
            (with("balance_before_fen", "100".into()), "balance_before_fen"),
            (with("amount_fen", 0.into()), "amount_fen"),
            (with("amount_fen", 20_000.into()), "amount_fen"),
            (with("amount_fen", 1.5.into()), "amount_fen"),
            (with("transaction_type", "02".into()), "transaction_type"),
            (with("transaction_type", "07".into()), "transaction_type"),
            (with("terminal_number", "310000000902".into()), "terminal_number"),
            (with("terminal_serial", 4_294_967_296_u64.into()), "terminal_serial"),
            (with("date_time", "20261324083000".into()), "date_time"),
            (with("date_time", "2026112408300".into()), "date_time"),
            (with("tac", "1A2B3C".into()), "tac"),
            (with("kind", "refund".into()), "kind"),
            (with("online_counter", 1.into()), "record"),
            (with("extra", 1.into()), "record"),
            (Value::from(5), "record"),
        ];
        for (record, field) in cases {
            let rejection = parse_one(record.clone()).expect_err("refused");
            assert_eq!(rejection.field, field, "{record}: {}", rejection.message);
        }
        let mut missing = purchase().to_json();
        missing.as_object_mut().expect("object").remove("tac");
        assert_eq!(parse_one(missing).expect_err("refused").field, "tac");
    }

    #[test]
    fn the_document_is_strict() {
        let good = document(&terminal(), "b1", &[purchase()]);
        assert!(parse_value(good.clone()).is_ok());
        let mut extra = good.clone();
        extra.as_object_mut().expect("object").insert("signature".into(), "x".into());
        assert!(matches!(parse_value(extra), Err(Error::Invalid { .. })));
        for (field, value) in
            [("format", "other"), ("terminal_id", "31000000090"), ("batch_id", "a b"), ("batch_id", "")]
        {
            let mut bad = good.clone();
            bad.as_object_mut().expect("object").insert(field.into(), value.into());
            match parse_value(bad) {
                Err(Error::Invalid { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let too_many = document(&terminal(), "b1", vec![purchase(); BATCH_RECORDS_MAX + 1]);
        assert!(matches!(parse_value(too_many), Err(Error::Invalid { field, .. }) if field == "records"));
        assert!(parse(b"{not json").is_err());
    }

    #[test]
    fn a_bad_record_leaves_its_neighbours() {
        let mut document = document(&terminal(), "b1", &[purchase(), purchase(), load()]);
        document["records"][1]["tac"] = "XYZ".into();
        let batch = parse_value(document).expect("parses");
        assert!(batch.records[0].is_ok() && batch.records[2].is_ok());
        assert_eq!(batch.records[1].as_ref().expect_err("refused").index, 1);
    }
}
