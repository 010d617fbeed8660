//! A card session: commands as types in, parsed answers out, over any
//! [`Channel`](crate::reader::Channel).

use card_host::apdu::{Command, Response};
use card_host::responses::ResponseError;
use card_host::status::StatusWord;

use crate::reader::{Channel, ExchangeOptions, ReaderError, exchange};

/// Why a card operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// The card refused a command with this status word.
    #[error("{command}: card answered {status}")]
    Refused { command: &'static str, status: StatusWord },
    #[error(transparent)]
    Response(#[from] ResponseError),
}

impl CardError {
    /// The status word of a refusal, if this is one.
    pub fn status(&self) -> Option<StatusWord> {
        match self {
            CardError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the card left the reader, so the outcome of the last command is unknown.
    pub fn is_card_removed(&self) -> bool {
        matches!(self, CardError::Reader(ReaderError::CardRemoved | ReaderError::CardReset))
    }

    /// Whether the last command's answer never came: the card left the reader
    /// ([`CardError::is_card_removed`]), or a PN532 lost the answer to an APDU
    /// that changes the card, which it does not send again
    /// ([`Pn532Error::OutcomeUnknown`](crate::reader::Pn532Error::OutcomeUnknown):
    /// the card may simply have moved in the field). Either way the outcome
    /// of that command is unknown and the card, presented again, tells.
    pub fn is_answer_lost(&self) -> bool {
        self.is_card_removed()
            || matches!(self, CardError::Reader(ReaderError::Pn532(crate::reader::Pn532Error::OutcomeUnknown(_))))
    }
}

/// One card in one reader, for the length of a transaction.
pub struct CardSession<'a> {
    channel: &'a mut dyn Channel,
    options: ExchangeOptions,
}

impl<'a> CardSession<'a> {
    pub fn new(channel: &'a mut dyn Channel) -> Self {
        CardSession { channel, options: ExchangeOptions::default() }
    }

    pub fn with_options(mut self, options: ExchangeOptions) -> Self {
        self.options = options;
        self
    }

    /// Sends a command; any status word comes back in the response.
    pub fn send(&mut self, command: &Command) -> Result<Response, ReaderError> {
        exchange(self.channel, command, self.options)
    }

    /// Sends a command that must succeed (`9000`) and returns its data.
    pub fn ok(&mut self, name: &'static str, command: &Command) -> Result<Vec<u8>, CardError> {
        let response = self.send(command)?;
        match response.status() {
            StatusWord::Ok => Ok(response.data().to_vec()),
            status => Err(CardError::Refused { command: name, status }),
        }
    }
}
