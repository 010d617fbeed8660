//! The terminal's configuration file (TOML). Relative paths are taken from the
//! configuration file's directory. Examples: `fixtures/terminals/*.toml`.
//!
//! ```toml
//! [bus]
//! route = 42
//! station = 1
//! tariff = "../tariffs/bus-flat.toml"
//! dedup_window_seconds = 10
//!
//! [journal]
//! path = "/var/lib/citizen-card/journal.sqlite"
//! flag_unresolved_after_seconds = 86400
//!
//! [blacklist]
//! path = "blacklist.toml"
//!
//! [clearing]
//! url = "http://clearing.internal:8080"
//! terminal_id = "310000000901"
//! device_key = "device-0901.key"
//! batch_records = 1000
//!
//! [screen]                      # a kiosk's web screen
//! listen = "127.0.0.1:8090"
//! topup_amounts_fen = [1000, 2000, 5000, 10000]
//!
//! [reader]
//! kind = "pcsc"
//! card = "Virtual PCD 00 00"
//! psam = "Virtual PCD 00 01"
//! # or a PN532 module for the cards, the PSAM in PC/SC (or psam_image = FILE):
//! # kind = "pn532"
//! # device = "/dev/ttyS0"
//! # psam_reader = "Virtual PCD 00 01"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::bus::{BusSettings, DEDUP_WINDOW_SECONDS_MAX};

/// The largest configuration file read.
pub const CONFIG_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Card images an in-process demo serves at most.
pub const DEMO_CARDS_MAX: usize = 64;
/// The UTC offset range a configuration may set (±14 hours).
pub const UTC_OFFSET_MINUTES_MAX: i32 = 14 * 60;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("configuration {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("configuration {path}: larger than {CONFIG_FILE_BYTES_MAX} bytes")]
    TooLarge { path: String },
    #[error("configuration: {0}")]
    Parse(Box<toml::de::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bus: Option<BusConfig>,
    pub journal: JournalConfig,
    pub blacklist: Option<BlacklistConfig>,
    pub clearing: Option<ClearingConfig>,
    pub counter: Option<CounterConfig>,
    /// The kiosk's citizen-facing web screen; without it `terminal kiosk` reads
    /// commands on standard input.
    pub screen: Option<ScreenConfig>,
    pub reader: ReaderConfig,
    /// Local time's offset from UTC, for the date and time sent to cards
    /// (China Standard Time: 480).
    #[serde(default = "china_standard_time")]
    pub utc_offset_minutes: i32,
}

fn china_standard_time() -> i32 {
    8 * 60
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub route: u16,
    #[serde(default)]
    pub station: u16,
    pub tariff: PathBuf,
    #[serde(default = "dedup_window_default")]
    pub dedup_window_seconds: u32,
}

fn dedup_window_default() -> u32 {
    10
}

impl BusConfig {
    pub fn settings(&self) -> BusSettings {
        BusSettings { route: self.route, station: self.station, dedup_window_seconds: self.dedup_window_seconds }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    pub path: PathBuf,
    /// An intent the card has not settled after this long is flagged for clearing.
    #[serde(default = "flag_after_default")]
    pub flag_unresolved_after_seconds: u64,
}

fn flag_after_default() -> u64 {
    24 * 3600
}

impl JournalConfig {
    pub fn flag_unresolved_after(&self) -> Duration {
        Duration::from_secs(self.flag_unresolved_after_seconds)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistConfig {
    pub path: PathBuf,
}

/// A hospital counter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterConfig {
    /// The hospital's code in the visit log, 12 hex digits.
    pub hospital: String,
    pub department: u16,
}

impl CounterConfig {
    pub fn settings(&self) -> Result<crate::counter::CounterSettings, ConfigError> {
        let mut hospital = [0u8; 6];
        hex::decode_to_slice(&self.hospital, &mut hospital)
            .map_err(|_| ConfigError::Invalid("counter.hospital: not 12 hex digits".into()))?;
        Ok(crate::counter::CounterSettings { hospital, department: self.department })
    }
}

/// The kiosk's screen: a web page served on a loopback address, shown by the
/// kiosk's own browser (`terminal::screen`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenConfig {
    /// `127.0.0.1:PORT` (port 0: any free port, printed at start). Loopback
    /// only: whoever reaches the page can move the inserted card's money.
    pub listen: String,
    /// The top-up buttons, in fen (1 to `kiosk::TOPUP_FEN_MAX` each, at most
    /// [`SCREEN_TOPUP_CHOICES_MAX`]).
    #[serde(default = "topup_choices_default")]
    pub topup_amounts_fen: Vec<u32>,
}

/// Top-up buttons a screen shows at most.
pub const SCREEN_TOPUP_CHOICES_MAX: usize = 6;

fn topup_choices_default() -> Vec<u32> {
    vec![1_000, 2_000, 5_000, 10_000]
}

impl ScreenConfig {
    /// The address to listen on: a loopback socket address.
    pub fn address(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let address: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "screen.listen: {:?} is not an address and port (127.0.0.1:8090)",
                self.listen
            ))
        })?;
        if !address.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "screen.listen: {address} is not a loopback address; the screen has no login, so it is served to \
                 the kiosk's own browser only (127.0.0.1:PORT)"
            )));
        }
        Ok(address)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.address()?;
        let max = crate::kiosk::TOPUP_FEN_MAX;
        if self.topup_amounts_fen.is_empty()
            || self.topup_amounts_fen.len() > SCREEN_TOPUP_CHOICES_MAX
            || self.topup_amounts_fen.iter().any(|fen| *fen == 0 || *fen > max)
        {
            return Err(ConfigError::Invalid(format!(
                "screen.topup_amounts_fen: 1 to {SCREEN_TOPUP_CHOICES_MAX} amounts of 1 to {max} fen"
            )));
        }
        Ok(())
    }
}

/// Where clearing is and who this terminal is to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearingConfig {
    /// Base URL, plain HTTP (`http://host:port`).
    pub url: String,
    /// The PSAM's terminal number (12 hex digits), as clearing registered it.
    pub terminal_id: String,
    /// The Ed25519 device key's seed, 64 hex digits in a file readable by the
    /// terminal alone.
    pub device_key: PathBuf,
    /// Records per uploaded batch (at most `upload::BATCH_RECORDS_MAX`).
    #[serde(default = "batch_records_default")]
    pub batch_records: u32,
    /// A running bus validator uploads (and refreshes its blacklist) this often,
    /// from a thread of its own; 0: never (run `terminal upload` instead).
    #[serde(default = "upload_interval_default")]
    pub upload_interval_seconds: u64,
}

fn upload_interval_default() -> u64 {
    300
}

fn batch_records_default() -> u32 {
    crate::upload::BATCH_RECORDS_MAX
}

impl ClearingConfig {
    pub fn terminal_number(&self) -> Result<card_host::TerminalNumber, ConfigError> {
        card_host::TerminalNumber::parse_hex(&self.terminal_id)
            .ok()
            .filter(|_| self.terminal_id.len() == 12)
            .ok_or_else(|| ConfigError::Invalid("clearing.terminal_id: not 12 hex digits".into()))
    }

    /// The client, with the device key loaded.
    pub fn client(&self) -> Result<crate::upload::ClearingClient, ConfigError> {
        let key = crate::upload::DeviceKey::load(&self.device_key)
            .map_err(|error| ConfigError::Invalid(format!("clearing.device_key: {error}")))?;
        Ok(crate::upload::ClearingClient::new(&self.url, self.terminal_number()?, key, Default::default()))
    }
}

/// Where the card and the PSAM are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ReaderConfig {
    /// PC/SC readers by name (pcscd; `Virtual PCD 00 00` is vpcd's slot 0).
    Pcsc { card: String, psam: String },
    /// Card images served in-process (a demo without readers): taps are read
    /// from standard input, `tap N` for the Nth card.
    InProcess { cards: Vec<PathBuf>, psam: PathBuf },
    /// A PN532 module on a serial line (`device`: `/dev/ttyS0`, or the link
    /// `card-host serve --pn532 PATH` makes) for the cards; the PSAM in a PC/SC
    /// reader (`psam_reader`) or an image served in-process (`psam_image`), one
    /// of the two.
    Pn532 { device: PathBuf, psam_reader: Option<String>, psam_image: Option<PathBuf> },
}

/// Where the PSAM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsamSource<'a> {
    /// In a PC/SC reader of this name.
    Pcsc(&'a str),
    /// An image file served in-process.
    Image(&'a Path),
}

impl ReaderConfig {
    /// The PSAM's reader or image.
    pub fn psam(&self) -> Result<PsamSource<'_>, ConfigError> {
        match self {
            ReaderConfig::Pcsc { psam, .. } => Ok(PsamSource::Pcsc(psam)),
            ReaderConfig::InProcess { psam, .. } => Ok(PsamSource::Image(psam)),
            ReaderConfig::Pn532 { psam_reader: Some(reader), psam_image: None, .. } => Ok(PsamSource::Pcsc(reader)),
            ReaderConfig::Pn532 { psam_reader: None, psam_image: Some(image), .. } => Ok(PsamSource::Image(image)),
            ReaderConfig::Pn532 { .. } => {
                Err(ConfigError::Invalid("reader: kind \"pn532\" takes one of psam_reader and psam_image".into()))
            }
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let size = std::fs::metadata(path).map_err(|source| ConfigError::Read { path: name.clone(), source })?.len();
        if size > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge { path: name });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name, source })?;
        let mut config = Config::parse(&text)?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse(Box::new(error)))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(bus) = &self.bus
            && bus.dedup_window_seconds > DEDUP_WINDOW_SECONDS_MAX
        {
            return Err(ConfigError::Invalid(format!("bus.dedup_window_seconds above {DEDUP_WINDOW_SECONDS_MAX}")));
        }
        if let Some(clearing) = &self.clearing {
            clearing.terminal_number()?;
            if !clearing.url.starts_with("http://") {
                return Err(ConfigError::Invalid("clearing.url: plain http:// only (no TLS stack built in)".into()));
            }
            if clearing.batch_records == 0 || clearing.batch_records > crate::upload::BATCH_RECORDS_MAX {
                return Err(ConfigError::Invalid(format!(
                    "clearing.batch_records: 1 to {}",
                    crate::upload::BATCH_RECORDS_MAX
                )));
            }
        }
        if let Some(counter) = &self.counter {
            counter.settings()?;
        }
        if let Some(screen) = &self.screen {
            screen.check()?;
        }
        if self.utc_offset_minutes.abs() > UTC_OFFSET_MINUTES_MAX {
            return Err(ConfigError::Invalid("utc_offset_minutes beyond ±14 hours".into()));
        }
        if let ReaderConfig::InProcess { cards, .. } = &self.reader
            && cards.len() > DEMO_CARDS_MAX
        {
            return Err(ConfigError::Invalid(format!("more than {DEMO_CARDS_MAX} in-process cards")));
        }
        self.reader.psam()?;
        Ok(())
    }

    /// Makes every relative path relative to `base` (the file's directory).
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(bus) = &mut self.bus {
            resolve(&mut bus.tariff);
        }
        resolve(&mut self.journal.path);
        if let Some(blacklist) = &mut self.blacklist {
            resolve(&mut blacklist.path);
        }
        if let Some(clearing) = &mut self.clearing {
            resolve(&mut clearing.device_key);
        }
        if let ReaderConfig::InProcess { cards, psam } = &mut self.reader {
            cards.iter_mut().for_each(resolve);
            resolve(psam);
        }
        if let ReaderConfig::Pn532 { device, psam_image, .. } = &mut self.reader {
            resolve(device);
            psam_image.iter_mut().for_each(resolve);
        }
    }

    /// The local date and time now, as sent to cards.
    pub fn now(&self) -> card_host::CardDateTime {
        card_host::CardDateTime::now_at_offset(self.utc_offset_minutes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_configurations_load_with_paths_from_their_directory() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/terminals");
        let config = Config::load(&directory.join("bus-42.toml")).expect("bus-42.toml");
        let bus = config.bus.as_ref().expect("bus section");
        assert_eq!(bus.route, 42);
        assert!(bus.tariff.exists(), "{}", bus.tariff.display());
        assert!(matches!(config.reader, ReaderConfig::Pcsc { .. }));
        let demo = Config::load(&directory.join("bus-demo.toml")).expect("bus-demo.toml");
        assert!(matches!(demo.reader, ReaderConfig::InProcess { .. }));
        assert!(demo.blacklist.as_ref().expect("blacklist").path.exists());
        let kiosk = Config::load(&directory.join("kiosk-902.toml")).expect("kiosk-902.toml");
        let clearing = kiosk.clearing.as_ref().expect("clearing section");
        assert!(clearing.device_key.exists(), "{}", clearing.device_key.display());
        assert_eq!(clearing.client().expect("client").terminal().to_string(), "310000000902");
        assert!(kiosk.screen.is_none(), "kiosk-902.toml is the standard-input kiosk");
        let screen = Config::load(&directory.join("kiosk-902-screen.toml")).expect("kiosk-902-screen.toml");
        let address = screen.screen.as_ref().expect("screen section").address().expect("loopback address");
        assert_eq!(address.to_string(), "127.0.0.1:8090");
        let counter = Config::load(&directory.join("counter-903.toml")).expect("counter-903.toml");
        let settings = counter.counter.as_ref().expect("counter section").settings().expect("settings");
        assert_eq!((settings.hospital, settings.department), ([0x31, 0, 0, 0, 0x09, 0x03], 12));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let base = "[journal]\npath = \"j\"\n[reader]\nkind = \"pcsc\"\ncard = \"a\"\npsam = \"b\"\n";
        assert!(Config::parse(base).is_ok());
        let too_long = format!("{base}[bus]\nroute = 1\ntariff = \"t\"\ndedup_window_seconds = 100000\n");
        assert!(matches!(Config::parse(&too_long), Err(ConfigError::Invalid(_))));
        assert!(Config::parse(&format!("{base}typo = 1\n")).is_err());
        assert!(Config::parse(&format!("utc_offset_minutes = 9999\n{base}")).is_err());
        let clearing =
            "[clearing]\nurl = \"http://127.0.0.1:8080\"\nterminal_id = \"310000000901\"\ndevice_key = \"k\"\n";
        let config = Config::parse(&format!("{base}{clearing}")).expect("clearing section");
        assert_eq!(config.clearing.as_ref().map(|c| c.batch_records), Some(crate::upload::BATCH_RECORDS_MAX));
        assert!(Config::parse(&format!("{base}{}", clearing.replace("http:", "https:"))).is_err(), "no TLS");
        assert!(Config::parse(&format!("{base}{}", clearing.replace("0901", "09"))).is_err());
        assert!(Config::parse(&format!("{base}{clearing}batch_records = 0\n")).is_err());
    }

    #[test]
    fn a_pn532_reader_takes_one_psam() {
        let reader = "[journal]\npath = \"j\"\n[reader]\nkind = \"pn532\"\ndevice = \"/dev/ttyS0\"\n";
        let config = Config::parse(&format!("{reader}psam_image = \"p.psam\"\n")).expect("PSAM image");
        assert_eq!(config.reader.psam().expect("psam"), PsamSource::Image(Path::new("p.psam")));
        let config = Config::parse(&format!("{reader}psam_reader = \"Virtual PCD 00 01\"\n")).expect("PSAM reader");
        assert_eq!(config.reader.psam().expect("psam"), PsamSource::Pcsc("Virtual PCD 00 01"));
        for wrong in ["", "psam_image = \"p\"\npsam_reader = \"r\"\n"] {
            let outcome = Config::parse(&format!("{reader}{wrong}"));
            assert!(
                matches!(&outcome, Err(ConfigError::Invalid(why)) if why.contains("one of psam_reader and psam_image")),
                "{outcome:?}"
            );
        }
        let mut config = Config::parse(&format!("{reader}psam_image = \"p.psam\"\n")).expect("parse");
        config.resolve_paths(Path::new("/etc/terminal"));
        assert_eq!(config.reader.psam().expect("psam"), PsamSource::Image(Path::new("/etc/terminal/p.psam")));
    }

    #[test]
    fn the_screen_section_is_checked() {
        let base = "[journal]\npath = \"j\"\n[reader]\nkind = \"pcsc\"\ncard = \"a\"\npsam = \"b\"\n";
        let config = Config::parse(&format!("{base}[screen]\nlisten = \"127.0.0.1:8090\"\n")).expect("screen");
        let screen = config.screen.as_ref().expect("screen section");
        assert_eq!(screen.address().expect("address").port(), 8090);
        assert_eq!(screen.topup_amounts_fen, [1_000, 2_000, 5_000, 10_000]);
        let refused = |section: &str| match Config::parse(&format!("{base}[screen]\n{section}")) {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("{section}: {other:?}"),
        };
        assert!(refused("listen = \"0.0.0.0:8090\"\n").contains("not a loopback address"));
        assert!(refused("listen = \"localhost\"\n").contains("screen.listen"));
        let amounts = refused("listen = \"127.0.0.1:0\"\ntopup_amounts_fen = [0]\n");
        assert!(amounts.contains("screen.topup_amounts_fen"), "{amounts}");
        assert!(refused("listen = \"127.0.0.1:0\"\ntopup_amounts_fen = [100001]\n").contains("topup_amounts_fen"));
        assert!(Config::parse(&format!("{base}[screen]\nlisten = \"[::1]:0\"\n")).is_ok());
        assert!(Config::parse(&format!("{base}[screen]\nlisten = \"127.0.0.1:0\"\ntypo = 1\n")).is_err());
    }
}
