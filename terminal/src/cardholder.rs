//! The social security application (DF name `SSSE`): the card information
//! (EF05, free to read) and the cardholder (EF06, after the PIN or a terminal
//! authentication). Records are `tag ‖ length ‖ value`, read by tag.

use card_host::commands;
use card_host::issue::SOCIAL_SECURITY_NAME;
use card_host::responses::ResponseError;
use zeroize::Zeroizing;

use crate::session::{CardError, CardSession};

const CARD_INFORMATION_SFI: u8 = 0x05;
const CARDHOLDER_SFI: u8 = 0x06;

/// EF05: what the card says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardInformation {
    /// Card identification code: region (3, BCD) ‖ `D156000005` ‖ card bytes.
    pub identification: Vec<u8>,
    pub category: u8,
    pub version: String,
    pub issued: [u8; 4],
    pub expires: [u8; 4],
    pub card_number: String,
}

/// EF06: the cardholder. `Debug` masks the identity numbers.
#[derive(Clone, PartialEq, Eq)]
pub struct Cardholder {
    pub social_security_number: String,
    pub name: String,
    /// `1` male, `2` female (GB/T 2261.1).
    pub sex: u8,
    /// Birth date, BCD `YYYYMMDD`.
    pub birth_date: [u8; 4],
    pub citizen_id: String,
}

/// An identity number with all but its first 6 and last 2 characters hidden.
pub fn mask_identity(number: &str) -> String {
    let characters: Vec<char> = number.chars().collect();
    characters
        .iter()
        .enumerate()
        .map(|(index, c)| if index < 6 || index + 2 >= characters.len() { *c } else { '*' })
        .collect()
}

impl std::fmt::Debug for Cardholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cardholder")
            .field("social_security_number", &mask_identity(&self.social_security_number))
            .field("name", &self.name)
            .field("sex", &self.sex)
            .field("citizen_id", &mask_identity(&self.citizen_id))
            .finish_non_exhaustive()
    }
}

/// The social security application, selected.
pub struct SocialSecurity<'a> {
    session: CardSession<'a>,
}

fn length(what: &'static str, expected: usize, got: usize) -> CardError {
    CardError::Response(ResponseError::Length { what, expected, got })
}

fn text(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0x00 || *b == 0xFF).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).trim_end().to_owned()
}

fn bcd4(what: &'static str, value: &[u8]) -> Result<[u8; 4], CardError> {
    value.try_into().map_err(|_| length(what, 4, value.len()))
}

impl<'a> SocialSecurity<'a> {
    pub fn select(mut session: CardSession<'a>) -> Result<Self, CardError> {
        session.ok("SELECT SSSE", &commands::select_by_name(SOCIAL_SECURITY_NAME))?;
        Ok(SocialSecurity { session })
    }

    /// The value of the record with `tag` in the file with `sfi`.
    fn field(&mut self, what: &'static str, sfi: u8, tag: u8) -> Result<Vec<u8>, CardError> {
        let record = self.session.ok(what, &commands::read_record_by_identifier(sfi, tag))?;
        match record.as_slice() {
            [found, length, value @ ..] if *found == tag && usize::from(*length) == value.len() => Ok(value.to_vec()),
            _ => Err(length(what, 2, record.len())),
        }
    }

    pub fn card_information(&mut self) -> Result<CardInformation, CardError> {
        let sfi = CARD_INFORMATION_SFI;
        Ok(CardInformation {
            identification: self.field("READ RECORD card identification", sfi, 0x01)?,
            category: *self.field("READ RECORD card category", sfi, 0x02)?.first().ok_or(length("category", 1, 0))?,
            version: text(&self.field("READ RECORD specification version", sfi, 0x03)?),
            issued: bcd4("issue date", &self.field("READ RECORD issue date", sfi, 0x05)?)?,
            expires: bcd4("expiry date", &self.field("READ RECORD expiry date", sfi, 0x06)?)?,
            card_number: text(&self.field("READ RECORD card number", sfi, 0x07)?),
        })
    }

    /// VERIFY with the cardholder's PIN digits, packed as BCD.
    pub fn verify_pin(&mut self, digits: &str) -> Result<(), CardError> {
        let pin =
            Zeroizing::new(card_host::card::pin_from_digits(digits).ok_or(length("PIN digits", 4, digits.len()))?);
        self.session.ok("VERIFY", &commands::verify_pin(&pin))?;
        Ok(())
    }

    /// The cardholder (EF06): the PIN must have been verified, or the terminal
    /// authenticated, in this session.
    pub fn cardholder(&mut self) -> Result<Cardholder, CardError> {
        let sfi = CARDHOLDER_SFI;
        Ok(Cardholder {
            social_security_number: text(&self.field("READ RECORD social security number", sfi, 0x08)?),
            name: text(&self.field("READ RECORD name", sfi, 0x09)?),
            sex: self.field("READ RECORD sex", sfi, 0x0A)?.first().map_or(0, |b| b.wrapping_sub(b'0')),
            birth_date: bcd4("birth date", &self.field("READ RECORD birth date", sfi, 0x0D)?)?,
            citizen_id: text(&self.field("READ RECORD citizen ID", sfi, 0x0E)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_numbers_are_masked() {
        assert_eq!(mask_identity("310115198503121015"), "310115**********15");
        assert_eq!(mask_identity("12"), "12");
    }
}
