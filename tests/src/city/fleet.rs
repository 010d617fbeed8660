//! The city's terminals as clearing knows them: number, merchant, Ed25519
//! device key, PSAM and journal; registration, upload rounds and blacklist
//! refreshes shared by the validators, kiosks and counters.

use std::path::Path;

use card_host::TerminalNumber;
use card_host::psam::Psam;
use clearing::registry::TerminalEntry;
use terminal::blacklist::Blacklist;
use terminal::journal::Journal;
use terminal::reader::InProcess;
use terminal::upload::{self, ClearingClient, DeviceKey, RetryPolicy, UploadSummary};

use super::CityError;

/// A terminal of the city. The device keys are published TEST seeds (32 bytes
/// of [`TerminalSpec::seed`]): the fixture terminals 0901–0903 use 0x01–0x03
/// (`fixtures/terminals/device-090N.key`); the demo registers the others with
/// their seeds stated here. TEST ONLY.
#[derive(Debug, Clone, Copy)]
pub struct TerminalSpec {
    pub number: TerminalNumber,
    pub merchant: &'static str,
    pub seed: u8,
    /// Registered by the fixture merchant file already.
    pub fixture: bool,
}

pub const fn terminal(last: [u8; 2]) -> TerminalNumber {
    TerminalNumber([0x31, 0x00, 0x00, 0x00, last[0], last[1]])
}

pub const BUS_MERCHANT: &str = "M-BUS-01";
pub const SHOP_MERCHANT: &str = "M-SHOP-01";
pub const HOSPITAL_MERCHANT: &str = "M-HOSP-01";

/// A terminal's identity and its ways to clearing.
pub struct Device {
    pub spec: TerminalSpec,
    pub client: ClearingClient,
    /// The blacklist as this terminal last downloaded it.
    pub blacklist: Blacklist,
}

impl Device {
    /// Registers the terminal with clearing if it is not a fixture one, and
    /// makes its signed client.
    pub fn register(
        spec: TerminalSpec,
        clearing: &crate::clearing::Clearing,
        base_url: &str,
    ) -> Result<Device, CityError> {
        let key = DeviceKey::from_seed(&[spec.seed; 32]).map_err(|error| CityError::step("device key", error))?;
        if !spec.fixture {
            let entry = TerminalEntry {
                terminal_number: spec.number.to_string(),
                merchant_id: spec.merchant.to_owned(),
                device_public_key: key.public_key_hex(),
                psam_serial: format!("PSAM-{}", &spec.number.to_string()[8..]),
            };
            clearing
                .runtime
                .block_on(clearing::registry::put_terminal(&clearing.db, &entry))
                .map_err(|error| CityError::step("register a terminal", error))?;
        }
        Ok(Device { spec, client: client(spec, base_url)?, blacklist: Blacklist::empty() })
    }

    /// Downloads the blacklist changes; whether the list changed.
    pub fn refresh_blacklist(&mut self) -> Result<bool, CityError> {
        let newer = upload::refresh_blacklist(&self.client, &self.blacklist)
            .map_err(|error| CityError::step("download the blacklist", error))?;
        let changed = newer.version() != self.blacklist.version();
        self.blacklist = newer;
        Ok(changed)
    }

    /// Uploads what `journal` holds for clearing.
    pub fn upload(&self, journal: &Journal) -> Result<UploadSummary, CityError> {
        upload::upload_pending(journal, &self.client, upload::BATCH_RECORDS_MAX)
            .map_err(|error| CityError::step("upload a journal", error))
    }
}

/// A client signing as terminal `spec` (its TEST device key).
pub fn client(spec: TerminalSpec, base_url: &str) -> Result<ClearingClient, CityError> {
    let key = DeviceKey::from_seed(&[spec.seed; 32]).map_err(|error| CityError::step("device key", error))?;
    let retry = RetryPolicy { attempts: 3, ..RetryPolicy::default() };
    Ok(ClearingClient::new(base_url, spec.number, key, retry))
}

/// The terminal's PSAM image (TEST keys) and its in-process reader.
pub fn psam(directory: &Path, number: TerminalNumber) -> Result<Psam, CityError> {
    let image = Psam::issue(&crate::master_keys(), number, 1);
    let path = directory.join(format!("psam-{number}.psam"));
    card_host::storage::create(&path, &image, true).map_err(|error| CityError::step("write a PSAM image", error))?;
    Psam::open(&path).map_err(|error| CityError::step("open a PSAM image", error))
}

pub fn psam_reader(directory: &Path, number: TerminalNumber) -> Result<InProcess<Psam>, CityError> {
    Ok(InProcess::new(psam(directory, number)?))
}

/// The terminal's journal file.
pub fn journal(directory: &Path, number: TerminalNumber) -> Result<Journal, CityError> {
    Journal::open(&directory.join(format!("journal-{number}.sqlite")))
        .map_err(|error| CityError::step("open a journal", error))
}

/// Adds `other` into `total`.
pub fn add(total: &mut UploadSummary, other: UploadSummary) {
    total.batches += other.batches;
    total.duplicates += other.duplicates;
    total.records += other.records;
    total.rejected += other.rejected;
}
