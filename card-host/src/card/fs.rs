//! The card's file system (ISO/IEC 7816-4 clause 7): the MF, application DFs
//! selected by DF name (AID) or FID, transparent and record EFs with short file
//! identifiers, and the access condition of each operation.

use serde::{Deserialize, Serialize};

use crate::status::StatusWord;

/// FID of the master file.
pub const MF_FID: u16 = 0x3F00;
/// Most records a record EF may hold.
pub const RECORDS_MAX: usize = 254;
/// Largest transparent EF.
pub const TRANSPARENT_SIZE_MAX: usize = 4096;

/// Who may perform an operation on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone.
    Always,
    /// No one, by any command.
    Never,
    /// After VERIFY of the cardholder PIN.
    Pin,
    /// After VERIFY of the PIN, or after EXTERNAL AUTHENTICATE of the terminal in this DF.
    PinOrTerminal,
    /// Only by a command with secure messaging: CLA `04`, a MAC under the card's
    /// maintenance key over a fresh GET CHALLENGE.
    SecureMessaging,
}

/// The structure and content of an EF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "structure", rename_all = "snake_case")]
pub enum Body {
    /// A byte string read and written at an offset.
    Transparent {
        #[serde(with = "crate::hexser::bytes")]
        data: Vec<u8>,
    },
    /// Records 1..=n of at most `record_length` bytes each.
    Linear {
        record_length: u8,
        capacity: u8,
        #[serde(with = "crate::hexser::list")]
        records: Vec<Vec<u8>>,
    },
    /// Fixed-length records in a ring: record 1 is always the newest, and
    /// appending to a full file drops the oldest.
    Cyclic {
        record_length: u8,
        capacity: u8,
        #[serde(with = "crate::hexser::list")]
        records: Vec<Vec<u8>>,
    },
}

/// An elementary file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementaryFile {
    pub fid: u16,
    /// Short file identifier, 1..=30.
    pub sfi: Option<u8>,
    pub read: Access,
    pub update: Access,
    pub body: Body,
}

/// Which application a DF carries: decides which proprietary commands it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Application {
    Master,
    SocialSecurity,
    Purse,
    Medical,
    Psam,
}

/// A dedicated file: the MF, or an application DF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedicatedFile {
    pub fid: u16,
    /// DF name (AID); empty when the DF has none.
    #[serde(with = "crate::hexser::bytes")]
    pub name: Vec<u8>,
    pub application: Application,
    pub files: Vec<ElementaryFile>,
    /// Life cycle: APPLICATION BLOCK and UNBLOCK change it.
    #[serde(default)]
    pub state: ApplicationState,
}

/// The life cycle state of an application DF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationState {
    #[default]
    Active,
    /// Temporarily blocked: SELECT answers `6283`, other commands `6A81`, until
    /// APPLICATION UNBLOCK.
    Blocked,
    /// Permanently blocked: SELECT answers `6A81`, nothing unblocks it.
    PermanentlyBlocked,
}

/// The whole file system: the MF and the application DFs directly under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSystem {
    pub master: DedicatedFile,
    pub applications: Vec<DedicatedFile>,
}

/// Which DF: the MF or the application at an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DfRef {
    Master,
    Application(usize),
}

impl FileSystem {
    pub fn df(&self, df: DfRef) -> &DedicatedFile {
        match df {
            DfRef::Master => &self.master,
            DfRef::Application(index) => &self.applications[index],
        }
    }

    pub fn df_mut(&mut self, df: DfRef) -> &mut DedicatedFile {
        match df {
            DfRef::Master => &mut self.master,
            DfRef::Application(index) => &mut self.applications[index],
        }
    }

    pub fn application(&self, application: Application) -> Option<DfRef> {
        self.applications.iter().position(|df| df.application == application).map(DfRef::Application)
    }

    /// The DF whose name is `name` or starts with it (ISO 7816-4 allows a
    /// right-truncated DF name in SELECT).
    pub fn find_by_name(&self, name: &[u8]) -> Option<DfRef> {
        if name.is_empty() {
            return None;
        }
        if !self.master.name.is_empty() && self.master.name.starts_with(name) {
            return Some(DfRef::Master);
        }
        self.applications.iter().position(|df| df.name.starts_with(name)).map(DfRef::Application)
    }

    pub fn find_df_by_fid(&self, fid: u16) -> Option<DfRef> {
        if fid == MF_FID || fid == self.master.fid {
            return Some(DfRef::Master);
        }
        self.applications.iter().position(|df| df.fid == fid).map(DfRef::Application)
    }
}

impl DedicatedFile {
    pub fn find_ef(&self, fid: u16) -> Option<usize> {
        self.files.iter().position(|ef| ef.fid == fid)
    }

    pub fn find_sfi(&self, sfi: u8) -> Option<usize> {
        self.files.iter().position(|ef| ef.sfi == Some(sfi))
    }

    pub fn ef(&self, fid: u16) -> Option<&ElementaryFile> {
        self.files.iter().find(|ef| ef.fid == fid)
    }

    pub fn ef_mut(&mut self, fid: u16) -> Option<&mut ElementaryFile> {
        self.files.iter_mut().find(|ef| ef.fid == fid)
    }
}

/// How a READ/UPDATE RECORD names its record (P2 bits 3..1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordSelector {
    /// P1 is a record number, 1 = first (for cyclic files: the newest).
    Number(u8),
    /// P1 is a record identifier: the first record whose first byte equals it.
    Identifier(u8),
}

impl RecordSelector {
    /// From P1 and the low three bits of P2.
    pub fn from_p1_p2(p1: u8, p2: u8) -> Result<Self, StatusWord> {
        match p2 & 0x07 {
            0b100 if p1 != 0 => Ok(RecordSelector::Number(p1)),
            0b000 => Ok(RecordSelector::Identifier(p1)),
            _ => Err(StatusWord::IncorrectP1P2),
        }
    }
}

impl ElementaryFile {
    pub fn transparent(fid: u16, sfi: Option<u8>, read: Access, update: Access, data: Vec<u8>) -> Self {
        assert!(data.len() <= TRANSPARENT_SIZE_MAX);
        ElementaryFile { fid, sfi, read, update, body: Body::Transparent { data } }
    }

    pub fn linear(
        fid: u16,
        sfi: Option<u8>,
        read: Access,
        update: Access,
        record_length: u8,
        capacity: u8,
        records: Vec<Vec<u8>>,
    ) -> Self {
        assert!(records.len() <= usize::from(capacity) && usize::from(capacity) <= RECORDS_MAX);
        assert!(records.iter().all(|record| record.len() <= usize::from(record_length)));
        ElementaryFile { fid, sfi, read, update, body: Body::Linear { record_length, capacity, records } }
    }

    pub fn cyclic(fid: u16, sfi: Option<u8>, read: Access, update: Access, record_length: u8, capacity: u8) -> Self {
        assert!(usize::from(capacity) <= RECORDS_MAX);
        ElementaryFile { fid, sfi, read, update, body: Body::Cyclic { record_length, capacity, records: Vec::new() } }
    }

    pub fn is_transparent(&self) -> bool {
        matches!(self.body, Body::Transparent { .. })
    }

    /// READ BINARY: up to `length` bytes from `offset`.
    pub fn read_binary(&self, offset: usize, length: usize) -> Result<Vec<u8>, StatusWord> {
        let Body::Transparent { data } = &self.body else {
            return Err(StatusWord::IncompatibleFileStructure);
        };
        if offset > data.len() || (offset == data.len() && !data.is_empty()) {
            return Err(StatusWord::WrongP1P2);
        }
        let end = data.len().min(offset.saturating_add(length));
        Ok(data[offset..end].to_vec())
    }

    /// UPDATE BINARY: replaces bytes at `offset`; the file does not grow.
    pub fn update_binary(&mut self, offset: usize, bytes: &[u8]) -> Result<(), StatusWord> {
        let Body::Transparent { data } = &mut self.body else {
            return Err(StatusWord::IncompatibleFileStructure);
        };
        let end = offset.checked_add(bytes.len()).filter(|end| *end <= data.len()).ok_or(StatusWord::WrongP1P2)?;
        data[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    fn records(&self) -> Result<&Vec<Vec<u8>>, StatusWord> {
        match &self.body {
            Body::Linear { records, .. } | Body::Cyclic { records, .. } => Ok(records),
            Body::Transparent { .. } => Err(StatusWord::IncompatibleFileStructure),
        }
    }

    fn position(&self, selector: RecordSelector) -> Result<usize, StatusWord> {
        let records = self.records()?;
        match selector {
            RecordSelector::Number(number) => {
                let index = usize::from(number).checked_sub(1).ok_or(StatusWord::RecordNotFound)?;
                if index < records.len() { Ok(index) } else { Err(StatusWord::RecordNotFound) }
            }
            RecordSelector::Identifier(id) => {
                records.iter().position(|record| record.first() == Some(&id)).ok_or(StatusWord::RecordNotFound)
            }
        }
    }

    pub fn read_record(&self, selector: RecordSelector) -> Result<Vec<u8>, StatusWord> {
        let index = self.position(selector)?;
        Ok(self.records()?[index].clone())
    }

    /// UPDATE RECORD: replaces a record of a linear file; the new content must fit
    /// the record length. Cyclic files are only appended to.
    pub fn update_record(&mut self, selector: RecordSelector, content: &[u8]) -> Result<(), StatusWord> {
        let index = self.position(selector)?;
        match &mut self.body {
            Body::Linear { record_length, records, .. } => {
                if content.len() > usize::from(*record_length) {
                    return Err(StatusWord::WrongLength);
                }
                records[index] = content.to_vec();
                Ok(())
            }
            Body::Cyclic { .. } => Err(StatusWord::IncompatibleFileStructure),
            Body::Transparent { .. } => Err(StatusWord::IncompatibleFileStructure),
        }
    }

    /// Writes a record by identifier, appending it when no record has that identifier yet.
    pub fn put_record(&mut self, selector: RecordSelector, content: &[u8]) -> Result<(), StatusWord> {
        match self.update_record(selector, content) {
            Err(StatusWord::RecordNotFound) if matches!(selector, RecordSelector::Identifier(_)) => {
                self.append_record(content)
            }
            other => other,
        }
    }

    /// APPEND RECORD: a new record; in a cyclic file it becomes record 1.
    pub fn append_record(&mut self, content: &[u8]) -> Result<(), StatusWord> {
        match &mut self.body {
            Body::Linear { record_length, capacity, records } => {
                if content.len() > usize::from(*record_length) {
                    return Err(StatusWord::WrongLength);
                }
                if records.len() >= usize::from(*capacity) {
                    return Err(StatusWord::NotEnoughMemory);
                }
                records.push(content.to_vec());
                Ok(())
            }
            Body::Cyclic { record_length, capacity, records } => {
                if content.len() != usize::from(*record_length) {
                    return Err(StatusWord::WrongLength);
                }
                records.insert(0, content.to_vec());
                records.truncate(usize::from(*capacity));
                Ok(())
            }
            Body::Transparent { .. } => Err(StatusWord::IncompatibleFileStructure),
        }
    }

    /// The FCP template (`62`) of this EF: size, descriptor, FID, SFI.
    pub fn control_parameters(&self) -> Vec<u8> {
        use crate::tlv::{constructed, primitive};
        let (size, descriptor) = match &self.body {
            Body::Transparent { data } => (data.len(), vec![0x01]),
            Body::Linear { record_length, capacity, .. } => {
                (usize::from(*record_length) * usize::from(*capacity), vec![0x02, 0x21, 0x00, *record_length])
            }
            Body::Cyclic { record_length, capacity, .. } => {
                (usize::from(*record_length) * usize::from(*capacity), vec![0x06, 0x21, 0x00, *record_length])
            }
        };
        let mut children = vec![
            primitive(0x80, (size as u16).to_be_bytes().to_vec()),
            primitive(0x82, descriptor),
            primitive(0x83, self.fid.to_be_bytes().to_vec()),
        ];
        if let Some(sfi) = self.sfi {
            children.push(primitive(0x88, vec![sfi << 3]));
        }
        crate::tlv::encode(&constructed(0x62, children))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyclic_file_keeps_newest_first_and_drops_oldest() {
        let mut ef = ElementaryFile::cyclic(0x18, Some(0x18), Access::Always, Access::Never, 2, 3);
        for n in 1..=4u8 {
            ef.append_record(&[n, n]).expect("append");
        }
        assert_eq!(ef.read_record(RecordSelector::Number(1)), Ok(vec![4, 4]));
        assert_eq!(ef.read_record(RecordSelector::Number(3)), Ok(vec![2, 2]));
        assert_eq!(ef.read_record(RecordSelector::Number(4)), Err(StatusWord::RecordNotFound));
        assert_eq!(ef.append_record(&[1]), Err(StatusWord::WrongLength));
    }

    #[test]
    fn records_by_identifier() {
        let mut ef =
            ElementaryFile::linear(0x17, Some(0x17), Access::Always, Access::Never, 4, 2, vec![vec![1, 0, 0, 0]]);
        ef.put_record(RecordSelector::Identifier(2), &[2, 9, 9, 9]).expect("appended");
        ef.put_record(RecordSelector::Identifier(1), &[1, 7, 7, 7]).expect("updated");
        assert_eq!(ef.read_record(RecordSelector::Identifier(1)), Ok(vec![1, 7, 7, 7]));
        assert_eq!(ef.read_record(RecordSelector::Number(2)), Ok(vec![2, 9, 9, 9]));
        assert_eq!(ef.put_record(RecordSelector::Identifier(3), &[3, 0, 0, 0]), Err(StatusWord::NotEnoughMemory));
        assert_eq!(RecordSelector::from_p1_p2(0, 0x04), Err(StatusWord::IncorrectP1P2));
    }

    #[test]
    fn binary_reads_and_updates_stay_inside_the_file() {
        let mut ef =
            ElementaryFile::transparent(0x15, Some(0x15), Access::Always, Access::SecureMessaging, vec![1, 2, 3, 4]);
        assert_eq!(ef.read_binary(1, 256), Ok(vec![2, 3, 4]));
        assert_eq!(ef.read_binary(4, 1), Err(StatusWord::WrongP1P2));
        assert_eq!(ef.update_binary(3, &[9, 9]), Err(StatusWord::WrongP1P2));
        ef.update_binary(2, &[9, 9]).expect("fits");
        assert_eq!(ef.read_binary(0, 4), Ok(vec![1, 2, 9, 9]));
        assert_eq!(ef.read_record(RecordSelector::Number(1)), Err(StatusWord::IncompatibleFileStructure));
    }
}
