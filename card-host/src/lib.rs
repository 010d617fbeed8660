#![doc = include_str!("../README.md")]

pub mod apdu;
// pub mod card; (waits for crypto)
pub mod commands;
// #[doc(hidden)] pub mod fuzzing; (waits for crypto)
pub mod hexser;
pub mod icc;
// pub mod issue; (waits for crypto)
pub mod model;
// pub mod psam; (waits for crypto)
pub mod responses;
pub mod status;
pub mod storage;
pub mod tlv;

pub use apdu::{ApduError, Case, Command, Response};
pub use icc::SmartCard;
pub use model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType, ValueError};
pub use status::StatusWord;
