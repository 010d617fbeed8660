//! The terminal's PSAM, in a second reader slot or in-process: terminal number,
//! MAC1 for purchases, the MAC2 check, and maintenance MACs.

use card_host::TerminalNumber;
use card_host::commands::{self, psam::PurchaseInput};
use card_host::psam::PSAM_AID;
use card_host::responses::{PsamPurchase, ResponseError};

use crate::session::{CardError, CardSession};

/// The PSAM's purchase application, selected.
pub struct PsamSession<'a> {
    session: CardSession<'a>,
    terminal: TerminalNumber,
    key_index: u8,
}

fn four(what: &'static str, data: &[u8]) -> Result<[u8; 4], CardError> {
    data.try_into().map_err(|_| CardError::Response(ResponseError::Length { what, expected: 4, got: data.len() }))
}

impl<'a> PsamSession<'a> {
    /// Reads the terminal number (`0016`), selects the purchase application and
    /// reads its key index (`0017`).
    pub fn open(mut session: CardSession<'a>) -> Result<Self, CardError> {
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
        Ok(PsamSession { session, terminal, key_index })
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
        Ok(PsamPurchase::parse(&self.session.ok("INIT SAM FOR PURCHASE", &commands::psam::init_for_purchase(input))?)?)
    }

    /// CREDIT SAM FOR PURCHASE: the PSAM checks the card's MAC2.
    pub fn credit_for_purchase(&mut self, mac2: [u8; 4]) -> Result<(), CardError> {
        self.session.ok("CREDIT SAM FOR PURCHASE", &commands::psam::credit_for_purchase(mac2))?;
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
        self.session.ok("DIVERSIFY maintenance key", &commands::psam::diversify_maintenance(serial))?;
        let mac = self.session.ok("CIPHER DATA (MAC)", &commands::psam::mac(challenge, header_and_data))?;
        four("PSAM MAC", &mac)
    }
}
