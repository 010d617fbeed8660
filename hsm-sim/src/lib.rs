#![doc = include_str!("../README.md")]

pub mod audit;
pub mod card;
pub mod client;
pub mod command;
pub mod error;
pub mod hsm;
pub mod keys;
pub mod keystore;
pub mod server;
pub mod wire;

pub use client::{ClientConfig, ClientError, Diagnostics, HsmClient, TacVerdict, settlement_digest};
pub use command::{
    BatchRecord, LoadAuthorisation, LoadTac, MacAlgorithm, MaintenanceFunction, Pin, PurchaseTac, Request, Response,
    TacRecord, WrappedCardKeys, WrappedKey,
};
pub use error::ErrorCode;
pub use hsm::Hsm;
pub use keys::{KeyAlgorithm, KeyType, Lmk};
pub use keystore::{KeyInfo, KeyStore, LmkSource, Opened};
pub use server::{Server, ServerConfig};

/// The LMK from the environment, as 64 hex digits.
pub const LMK_ENVIRONMENT_VARIABLE: &str = "HSM_SIM_LMK";

/// Parses a message (length prefix removed) the way the server does, for the
/// fuzz target and the property tests: frame, then command fields. Never panics.
pub fn parse_message(message: &[u8], header_length: usize) -> Result<Request, ErrorCode> {
    let frame = wire::CommandFrame::parse(message, header_length).map_err(|error| server::frame_error_code(&error))?;
    Request::parse(frame.code, frame.body)
}
