//! The PN532 NFC controller on a serial line (HSU): its host-interface frames,
//! command codes and status bytes, and an emulator that puts software cards in
//! its field. The terminal's PN532 driver uses [`frame`] and [`command`] too.
//!
//! See `docs/pn532.md` for the command set, the status codes and what libnfc's
//! `pn532_uart` driver sends.

pub mod command;
pub mod emulator;
pub mod frame;

pub use command::{Status, TypeATarget};
pub use emulator::{Control, EmulatorError, Pn532, Pty, Uid};
pub use frame::{Decoder, Direction, Frame, FrameError, Information};
