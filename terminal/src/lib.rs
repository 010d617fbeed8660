#![doc = include_str!("../README.md")]

pub mod blacklist;
pub mod bus;
pub mod cardholder;
pub mod compound;
pub mod config;
pub mod counter;
pub mod journal;
pub mod kiosk;
pub mod medical;
pub mod psam;
pub mod purse;
pub mod reader;
pub mod screen;
pub mod session;
pub mod tariff;
pub mod transaction;
pub mod upload;

pub use reader::{Channel, ReaderError};
pub use session::{CardError, CardSession};
