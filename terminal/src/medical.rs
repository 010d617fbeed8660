//! The medical application (AID `F0 43 49 54 59 4D 45 44`, ours; layout in
//! `docs/card.md`): the patient information (`0001`) and the visit log (`0002`,
//! cyclic, newest first), both behind the cardholder's PIN.

use card_host::commands;
use card_host::issue::MEDICAL_AID;
use card_host::responses::ResponseError;
use card_host::status::StatusWord;
use zeroize::Zeroizing;

use crate::session::{CardError, CardSession};

const PATIENT_SFI: u8 = 0x01;
const VISITS_SFI: u8 = 0x02;
/// Records in the visit log.
pub const VISITS_MAX: u8 = 5;
const PATIENT_LENGTH: usize = 32;
const VISIT_LENGTH: usize = 16;

/// `0001`: who the patient is to a hospital.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientInformation {
    pub patient_number: String,
    /// `01` employee, `02` resident, `03` retiree.
    pub insurance_type: u8,
    /// Region code, 6 digits.
    pub insurance_region: String,
    /// `00` unknown, `01` A, `02` B, `03` AB, `04` O.
    pub blood_type: u8,
    pub rh_negative: bool,
    /// Bit 0 penicillin, 1 sulfonamide, 2 aspirin, 3 iodine, 4 latex, 5 cephalosporin.
    pub allergy_flags: u16,
}

impl PatientInformation {
    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let d: &[u8; PATIENT_LENGTH] = data.try_into().map_err(|_| ResponseError::Length {
            what: "medical patient information",
            expected: PATIENT_LENGTH,
            got: data.len(),
        })?;
        let end = d[..16].iter().position(|b| *b == 0).unwrap_or(16);
        Ok(PatientInformation {
            patient_number: String::from_utf8_lossy(&d[..end]).into_owned(),
            insurance_type: d[16],
            insurance_region: d[17..20].iter().map(|b| format!("{b:02X}")).collect(),
            blood_type: d[20],
            rh_negative: d[21] != 0,
            allergy_flags: u16::from_be_bytes([d[22], d[23]]),
        })
    }

    /// The blood type as a hospital writes it ("A", "AB-", ...).
    pub fn blood_group(&self) -> String {
        let group = match self.blood_type {
            0x01 => "A",
            0x02 => "B",
            0x03 => "AB",
            0x04 => "O",
            _ => return "unknown".to_owned(),
        };
        format!("{group}{}", if self.rh_negative { "-" } else { "+" })
    }

    /// The allergies flagged, by name.
    pub fn allergies(&self) -> Vec<&'static str> {
        ["penicillin", "sulfonamide", "aspirin", "iodine", "latex", "cephalosporin"]
            .into_iter()
            .enumerate()
            .filter(|(bit, _)| self.allergy_flags & (1 << bit) != 0)
            .map(|(_, name)| name)
            .collect()
    }
}

/// A visit record of `0002`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    /// BCD `YYYYMMDD`.
    pub date: [u8; 4],
    /// The hospital's 6-byte code (a terminal number of the hospital).
    pub hospital: [u8; 6],
    pub department: u16,
    pub visit_type: u8,
}

impl Visit {
    pub fn to_bytes(&self) -> [u8; VISIT_LENGTH] {
        let mut record = [0u8; VISIT_LENGTH];
        record[0..4].copy_from_slice(&self.date);
        record[4..10].copy_from_slice(&self.hospital);
        record[10..12].copy_from_slice(&self.department.to_be_bytes());
        record[12] = self.visit_type;
        record
    }

    pub fn parse(data: &[u8]) -> Result<Self, ResponseError> {
        let d: &[u8; VISIT_LENGTH] = data.try_into().map_err(|_| ResponseError::Length {
            what: "medical visit",
            expected: VISIT_LENGTH,
            got: data.len(),
        })?;
        Ok(Visit {
            date: [d[0], d[1], d[2], d[3]],
            hospital: [d[4], d[5], d[6], d[7], d[8], d[9]],
            department: u16::from_be_bytes([d[10], d[11]]),
            visit_type: d[12],
        })
    }
}

/// The medical application, selected.
pub struct Medical<'a> {
    session: CardSession<'a>,
}

impl<'a> Medical<'a> {
    pub fn select(mut session: CardSession<'a>) -> Result<Self, CardError> {
        session.ok("SELECT medical", &commands::select_by_name(&MEDICAL_AID))?;
        Ok(Medical { session })
    }

    /// VERIFY with the patient's PIN digits (the PIN is the card's one cardholder PIN).
    pub fn verify_pin(&mut self, digits: &str) -> Result<(), CardError> {
        let pin = Zeroizing::new(card_host::card::pin_from_digits(digits).ok_or(CardError::Response(
            ResponseError::Length { what: "PIN digits", expected: 4, got: digits.len() },
        ))?);
        self.session.ok("VERIFY", &commands::verify_pin(&pin))?;
        Ok(())
    }

    pub fn patient(&mut self) -> Result<PatientInformation, CardError> {
        let data = self
            .session
            .ok("READ BINARY patient information", &commands::read_binary(PATIENT_SFI, 0, PATIENT_LENGTH))?;
        Ok(PatientInformation::parse(&data)?)
    }

    /// The visit log, newest first.
    pub fn visits(&mut self) -> Result<Vec<Visit>, CardError> {
        let mut visits = Vec::new();
        for number in 1..=VISITS_MAX {
            let response = self.session.send(&commands::read_record(VISITS_SFI, number))?;
            match response.status() {
                StatusWord::Ok => visits.push(Visit::parse(response.data())?),
                StatusWord::RecordNotFound => break,
                status => return Err(CardError::Refused { command: "READ RECORD visit", status }),
            }
        }
        Ok(visits)
    }

    /// Registers a visit (APPEND RECORD; the oldest of a full log goes).
    pub fn register_visit(&mut self, visit: &Visit) -> Result<(), CardError> {
        self.session.ok("APPEND RECORD visit", &commands::append_record(VISITS_SFI, &visit.to_bytes()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_information_parses_and_names_its_flags() {
        let mut data = b"P31000000001".to_vec();
        data.resize(16, 0);
        data.extend_from_slice(&[0x01, 0x31, 0x00, 0x00, 0x03, 0x01, 0x00, 0b0010_0001]);
        data.resize(32, 0);
        let patient = PatientInformation::parse(&data).expect("32 bytes");
        assert_eq!(patient.patient_number, "P31000000001");
        assert_eq!(patient.insurance_region, "310000");
        assert_eq!(patient.blood_group(), "AB-");
        assert_eq!(patient.allergies(), ["penicillin", "cephalosporin"]);
        assert!(PatientInformation::parse(&data[..31]).is_err());
    }

    #[test]
    fn visits_round_trip() {
        let visit = Visit {
            date: [0x20, 0x26, 0x11, 0x25],
            hospital: [0x31, 0, 0, 0, 0x05, 0x01],
            department: 7,
            visit_type: 1,
        };
        assert_eq!(Visit::parse(&visit.to_bytes()).expect("16 bytes"), visit);
        assert!(Visit::parse(&[0; 15]).is_err());
    }
}
