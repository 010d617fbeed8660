//! The card's and the PSAM's response data, parsed into types. Each parser takes
//! the data of a `9000` response and refuses a wrong length.

use crate::model::{CardDateTime, Fen, TerminalNumber, TransactionType, ValueError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    #[error("{what}: expected {expected} bytes of response data, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },
    #[error("{what}: {source}")]
    Value { what: &'static str, source: ValueError },
}

fn exact<'a, const N: usize>(what: &'static str, data: &'a [u8]) -> Result<&'a [u8; N], ResponseError> {
    data.try_into().map_err(|_| ResponseError::Length { what, expected: N, got: data.len() })
}

fn four(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// The answer to INITIALIZE FOR LOAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadInitialization {
    pub balance: Fen,
    pub online_counter: u16,
    pub key_version: u8,
    pub algorithm_id: u8,
    pub card_random: [u8; 4],
    pub mac1: [u8; 4],
}

impl LoadInitialization {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let d = exact::<16>("INITIALIZE FOR LOAD", data)?;
        Ok(LoadInitialization {
            balance: Fen::from_bytes(four(&d[0..4])),
            online_counter: u16::from_be_bytes([d[4], d[5]]),
            key_version: d[6],
            algorithm_id: d[7],
            card_random: four(&d[8..12]),
            mac1: four(&d[12..16]),
        })
    }
}

/// The answer to INITIALIZE FOR (CAPP) PURCHASE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseInitialization {
    pub balance: Fen,
    pub offline_counter: u16,
    pub overdraft_limit: u32,
    pub key_version: u8,
    pub algorithm_id: u8,
    pub card_random: [u8; 4],
}

impl PurchaseInitialization {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let d = exact::<15>("INITIALIZE FOR PURCHASE", data)?;
        Ok(PurchaseInitialization {
            balance: Fen::from_bytes(four(&d[0..4])),
            offline_counter: u16::from_be_bytes([d[4], d[5]]),
            overdraft_limit: u32::from_be_bytes([0, d[6], d[7], d[8]]),
            key_version: d[9],
            algorithm_id: d[10],
            card_random: four(&d[11..15]),
        })
    }
}

/// The answer to DEBIT FOR PURCHASE: TAC then MAC2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit {
    pub tac: [u8; 4],
    pub mac2: [u8; 4],
}

impl Debit {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let d = exact::<8>("DEBIT FOR PURCHASE", data)?;
        Ok(Debit { tac: four(&d[0..4]), mac2: four(&d[4..8]) })
    }
}

/// The answer to GET TRANSACTION PROVE: MAC then TAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionProof {
    pub mac: [u8; 4],
    pub tac: [u8; 4],
}

impl TransactionProof {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let d = exact::<8>("GET TRANSACTION PROVE", data)?;
        Ok(TransactionProof { mac: four(&d[0..4]), tac: four(&d[4..8]) })
    }
}

/// The PSAM's answer to INIT SAM FOR PURCHASE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsamPurchase {
    pub terminal_serial: u32,
    pub mac1: [u8; 4],
}

impl PsamPurchase {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let d = exact::<8>("INIT SAM FOR PURCHASE", data)?;
        Ok(PsamPurchase { terminal_serial: u32::from_be_bytes(four(&d[0..4])), mac1: four(&d[4..8]) })
    }
}

/// A record of the cyclic transaction-detail file (EF `0018`, 23 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    pub number: u16,
    pub overdraft_limit: u32,
    pub amount: Fen,
    pub kind: TransactionType,
    pub terminal: TerminalNumber,
    pub at: CardDateTime,
}

impl TransactionRecord {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let what = "transaction record";
        let d = exact::<23>(what, data)?;
        let value = |source| ResponseError::Value { what, source };
        Ok(TransactionRecord {
            number: u16::from_be_bytes([d[0], d[1]]),
            overdraft_limit: u32::from_be_bytes([0, d[2], d[3], d[4]]),
            amount: Fen::from_bytes(four(&d[5..9])),
            kind: TransactionType::from_code(d[9]).map_err(value)?,
            terminal: TerminalNumber::from_slice(&d[10..16]).map_err(value)?,
            at: CardDateTime::from_slice(&d[16..23]).map_err(value)?,
        })
    }
}

/// The e-purse public-information file (EF `0015`, 30 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicInformation {
    pub issuer_code: [u8; 2],
    pub city_code: [u8; 2],
    pub enabled: bool,
    pub version: u8,
    pub application_serial: crate::model::ApplicationSerial,
    pub valid_from: [u8; 4],
    pub valid_until: [u8; 4],
    /// Card type code (see `card::CardType::from_code`).
    pub card_type: u8,
}

impl PublicInformation {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let what = "public information";
        let d = exact::<30>(what, data)?;
        Ok(PublicInformation {
            issuer_code: [d[0], d[1]],
            city_code: [d[2], d[3]],
            enabled: d[8] == 0x01,
            version: d[9],
            application_serial: crate::model::ApplicationSerial::from_slice(&d[12..20])
                .map_err(|source| ResponseError::Value { what, source })?,
            valid_from: four(&d[20..24]),
            valid_until: four(&d[24..28]),
            card_type: d[28],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_a_load_initialization_parses() {
        // Response to INITIALIZE FOR LOAD in vector A (card-protocol digest §6).
        let data = hex::decode("0000000000000100CDEF4F2006B1BEF5").expect("hex");
        let parsed = LoadInitialization::parse(&data).expect("16 bytes");
        assert_eq!(parsed.balance, Fen(0));
        assert_eq!(parsed.key_version, 0x01);
        assert_eq!(parsed.card_random, [0xCD, 0xEF, 0x4F, 0x20]);
        assert_eq!(parsed.mac1, [0x06, 0xB1, 0xBE, 0xF5]);
        assert!(matches!(
            LoadInitialization::parse(&data[..15]),
            Err(ResponseError::Length { expected: 16, got: 15, .. })
        ));
    }

    #[test]
    fn vector_b_purchase_initialization_and_debit_parse() {
        let data = hex::decode("00001C37000000000001009AC87503").expect("hex");
        let parsed = PurchaseInitialization::parse(&data).expect("15 bytes");
        assert_eq!(parsed.balance, Fen(0x1C37));
        assert_eq!(parsed.card_random, [0x9A, 0xC8, 0x75, 0x03]);
        let debit = Debit::parse(&hex::decode("44A8E04A350AC480").expect("hex")).expect("8 bytes");
        assert_eq!(debit.tac, [0x44, 0xA8, 0xE0, 0x4A]);
        assert_eq!(debit.mac2, [0x35, 0x0A, 0xC4, 0x80]);
    }
}
