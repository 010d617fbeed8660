#![doc = include_str!("../README.md")]

pub mod apdu;
pub mod card;
pub mod commands;
pub mod crypto;
#[doc(hidden)]
pub mod fuzzing;
pub mod hexser;
pub mod icc;
pub mod issue;
pub mod logs;
pub mod model;
pub mod pn532;
pub mod psam;
pub mod responses;
pub mod status;
pub mod storage;
pub mod tlv;
pub mod vpcd;

pub use apdu::{ApduError, Case, Command, Response};
pub use icc::SmartCard;
pub use model::{ApplicationSerial, CardDateTime, Fen, TerminalNumber, TransactionType, ValueError};
pub use status::StatusWord;
