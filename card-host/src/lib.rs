#![doc = include_str!("../README.md")]

pub mod apdu;
pub mod icc;
pub mod model;
pub mod status;
pub mod tlv;

pub use apdu::{ApduError, Case, Command, Response};
pub use icc::SmartCard;
pub use model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType, ValueError};
pub use status::StatusWord;
