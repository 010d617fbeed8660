//! The terminal's PSAM, in a second reader slot or in-process: terminal number,
//! MAC1 for purchases, the MAC2 check, and maintenance MACs.
//!
//! The PSAM stays in its reader for the terminal's whole life, but the reader
//! may fail: reset, the PSAM taken out and put back, pcscd restarted. After a
//! reader error the session is opened again (terminal number read and checked
//! to be the same PSAM, application selected) before the next command. A
//! command whose repetition is harmless (INIT SAM FOR PURCHASE: at worst a
//! terminal serial is used up; DIVERSIFY) is sent again once on the re-opened
//! session; CREDIT SAM FOR PURCHASE never is, as its check needs the state INIT
//! SAM left in the PSAM: the caller learns the MAC2 was not checked.

use card_host::TerminalNumber;
use card_host::apdu::Command;
use card_host::commands::{self, psam::PurchaseInput};
use card_host::psam::PSAM_AID;
use card_host::responses::{PsamPurchase, ResponseError};

use crate::reader::ReaderError;
use crate::session::{CardError, CardSession};

/// The PSAM's purchase application, selected.
pub struct PsamSession<'a> {
    session: CardSession<'a>,
    terminal: TerminalNumber,
    key_index: u8,
    /// A reader error came since the session was last opened.
    stale: bool,
}

fn four(what: &'static str, data: &[u8]) -> Result<[u8; 4], CardError> {
    data.try_into().map_err(|_| CardError::Response(ResponseError::Length { what, expected: 4, got: data.len() }))
}

impl<'a> PsamSession<'a> {
    /// Reads the terminal number (`0016`), selects the purchase application and
    /// reads its key index (`0017`).
    pub fn open(mut session: CardSession<'a>) -> Result<Self, CardError> {
        let (terminal, key_index) = Self::select(&mut session)?;
        Ok(PsamSession { session, terminal, key_index, stale: false })
    }

    fn select(session: &mut CardSession<'a>) -> Result<(TerminalNumber, u8), CardError> {
        let number = session.ok("READ BINARY terminal number", &commands::psam::read_terminal_number())?;
        let terminal = TerminalNumber::from_slice(&number)
            .map_err(|source| ResponseError::Value { what: "PSAM terminal number", source })?;
        session.ok("SELECT PSAM application", &commands::select_by_name(&PSAM_AID))?;
        let information =
            session.ok("READ BINARY purchase information", &commands::psam::read_purchase_information())?;
        let key_index = *information.first().ok_or(ResponseError::Length {
            what: "PSAM purchase information",
            expected: 25,
            got: 0,
        })?;
        Ok((terminal, key_index))
    }

    /// Opens the session again after a reader error; the PSAM must be the same.
    fn reopen(&mut self) -> Result<(), CardError> {
        self.stale = true;
        // A reader that has just reconnected refuses the first command with
        // CardReset without carrying it out: then once more.
        let selected = match Self::select(&mut self.session) {
            Err(CardError::Reader(ReaderError::CardReset)) => Self::select(&mut self.session),
            other => other,
        };
        let (terminal, key_index) = selected.inspect_err(|error| tracing::warn!(%error, "PSAM not back yet"))?;
        if terminal != self.terminal {
            tracing::error!(expected = %self.terminal, found = %terminal, "another PSAM in the reader");
            return Err(ReaderError::CardChanged.into());
        }
        self.key_index = key_index;
        self.stale = false;
        tracing::info!(terminal = %terminal, "PSAM session opened again");
        Ok(())
    }

    /// Whether the PSAM's reader failed since the session was last opened
    /// (the next command opens it again first).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Sends a PSAM command that must succeed, opening the session again first
    /// if its reader failed; `retry`: the command is harmless to repeat, so
    /// after a reader error it is sent again once on the re-opened session.
    fn command(&mut self, name: &'static str, command: &Command, retry: bool) -> Result<Vec<u8>, CardError> {
        if self.stale {
            self.reopen()?;
        }
        let mut outcome = self.session.ok(name, command);
        if retry && matches!(outcome, Err(CardError::Reader(_))) {
            tracing::warn!(command = name, "PSAM reader failed: opening the PSAM session again");
            self.reopen()?;
            outcome = self.session.ok(name, command);
        }
        if let Err(CardError::Reader(error)) = &outcome {
            tracing::warn!(command = name, %error, "PSAM reader failed");
            self.stale = true;
        }
        outcome
    }

    pub fn terminal_number(&self) -> TerminalNumber {
        self.terminal
    }

    /// The purchase key index to ask the card for.
    pub fn key_index(&self) -> u8 {
        self.key_index
    }

    /// INIT SAM FOR PURCHASE: the terminal transaction serial it used up and MAC1.
    pub fn init_for_purchase(&mut self, input: &PurchaseInput<'_>) -> Result<PsamPurchase, CardError> {
        Ok(PsamPurchase::parse(&self.command(
            "INIT SAM FOR PURCHASE",
            &commands::psam::init_for_purchase(input),
            true,
        )?)?)
    }

    /// CREDIT SAM FOR PURCHASE: the PSAM checks the card's MAC2.
    pub fn credit_for_purchase(&mut self, mac2: [u8; 4]) -> Result<(), CardError> {
        self.command("CREDIT SAM FOR PURCHASE", &commands::psam::credit_for_purchase(mac2), false)?;
        Ok(())
    }

    /// The MAC of a maintenance command for the card with `serial`, over the
    /// card's challenge: diversify the maintenance key, then MAC.
    pub fn maintenance_mac(
        &mut self,
        serial: [u8; 8],
        challenge: [u8; 4],
        header_and_data: &[u8],
    ) -> Result<[u8; 4], CardError> {
        self.command("DIVERSIFY maintenance key", &commands::psam::diversify_maintenance(serial), true)?;
        let mac = self.command("CIPHER DATA (MAC)", &commands::psam::mac(challenge, header_and_data), false)?;
        four("PSAM MAC", &mac)
    }
}
