//! The blacklist: a versioned list of card serials (lost, stolen, replaced
//! cards) from clearing. For now it is read from a file; the terminal keeps the
//! newest version it has seen ([`Blacklist::update`]).
//!
//! File format (TOML):
//!
//! ```toml
//! version = 7
//! cards = ["3100000000000009", "310000000000000A"]
//! ```

use std::collections::HashSet;
use std::path::Path;

use card_host::ApplicationSerial;
use serde::Deserialize;

/// Cards one blacklist holds at most.
pub const BLACKLIST_CARDS_MAX: usize = 1_000_000;
/// The largest blacklist file read (a serial is 16 hex digits plus quoting).
pub const BLACKLIST_FILE_BYTES_MAX: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlacklistError {
    #[error("blacklist {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("blacklist {path}: larger than {BLACKLIST_FILE_BYTES_MAX} bytes")]
    TooLarge { path: String },
    #[error("blacklist: {0}")]
    Parse(Box<toml::de::Error>),
    #[error("blacklist: card {index} is not 16 hex digits")]
    BadSerial { index: usize },
    #[error("blacklist: more than {BLACKLIST_CARDS_MAX} cards")]
    TooManyCards,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlacklistFile {
    version: u64,
    cards: Vec<String>,
}

/// One version of the blacklist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blacklist {
    version: u64,
    cards: HashSet<ApplicationSerial>,
}

impl Blacklist {
    /// An empty list, version 0 (nothing is refused).
    pub fn empty() -> Blacklist {
        Blacklist::default()
    }

    pub fn new(version: u64, cards: impl IntoIterator<Item = ApplicationSerial>) -> Result<Blacklist, BlacklistError> {
        let cards: HashSet<ApplicationSerial> = cards.into_iter().take(BLACKLIST_CARDS_MAX + 1).collect();
        if cards.len() > BLACKLIST_CARDS_MAX {
            return Err(BlacklistError::TooManyCards);
        }
        Ok(Blacklist { version, cards })
    }

    pub fn load(path: &Path) -> Result<Blacklist, BlacklistError> {
        let name = path.display().to_string();
        let size = std::fs::metadata(path).map_err(|source| BlacklistError::Read { path: name.clone(), source })?.len();
        if size > BLACKLIST_FILE_BYTES_MAX {
            return Err(BlacklistError::TooLarge { path: name });
        }
        let text = std::fs::read_to_string(path).map_err(|source| BlacklistError::Read { path: name, source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Blacklist, BlacklistError> {
        let file: BlacklistFile = toml::from_str(text).map_err(|error| BlacklistError::Parse(Box::new(error)))?;
        if file.cards.len() > BLACKLIST_CARDS_MAX {
            return Err(BlacklistError::TooManyCards);
        }
        let cards = file
            .cards
            .iter()
            .enumerate()
            .map(|(index, card)| ApplicationSerial::parse_hex(card).map_err(|_| BlacklistError::BadSerial { index }))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(file.version, cards)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.cards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    pub fn contains(&self, card: &ApplicationSerial) -> bool {
        self.cards.contains(card)
    }

    /// The listed cards, in no order.
    pub fn cards(&self) -> impl Iterator<Item = &ApplicationSerial> {
        self.cards.iter()
    }

    /// The list in the file format above, cards sorted.
    pub fn to_toml(&self) -> String {
        let mut cards: Vec<String> = self.cards.iter().map(|card| format!("\"{}\"", card.to_hex())).collect();
        cards.sort();
        format!("version = {}\ncards = [{}]\n", self.version, cards.join(", "))
    }

    /// Writes the list to `path` atomically (a temporary file beside it,
    /// fsync'd, renamed over it), so a reader sees the old or the new list.
    pub fn save(&self, path: &Path) -> Result<(), BlacklistError> {
        use std::io::Write;
        let failed = |source| BlacklistError::Read { path: path.display().to_string(), source };
        let temporary = path.with_extension("toml.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(failed)?;
        file.write_all(self.to_toml().as_bytes()).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// Takes `newer` if its version is higher; returns whether it did. An older
    /// or equal version (a stale download) is ignored.
    pub fn update(&mut self, newer: Blacklist) -> bool {
        if newer.version <= self.version {
            tracing::info!(kept = self.version, offered = newer.version, "stale blacklist ignored");
            return false;
        }
        tracing::info!(from = self.version, to = newer.version, cards = newer.len(), "blacklist updated");
        *self = newer;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_keeps_the_newest_version() {
        let mut list = Blacklist::parse("version = 3\ncards = [\"3100000000000009\"]\n").expect("valid");
        let listed = ApplicationSerial::parse_hex("3100000000000009").expect("hex");
        assert!(list.contains(&listed));
        assert!(!list.contains(&ApplicationSerial([0x31, 0, 0, 0, 0, 0, 0, 1])));
        assert!(!list.update(Blacklist::new(2, []).expect("list")), "older ignored");
        assert!(list.contains(&listed));
        assert!(list.update(Blacklist::new(4, []).expect("list")));
        assert!(!list.contains(&listed));
        assert_eq!(list.version(), 4);
    }

    #[test]
    fn saved_list_reads_back() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("blacklist.toml");
        let list = Blacklist::new(9, [ApplicationSerial([0x31, 0, 0, 0, 0, 0, 0, 2])]).expect("list");
        list.save(&path).expect("save");
        assert_eq!(Blacklist::load(&path).expect("load"), list);
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(matches!(Blacklist::parse("version = 1\ncards = [\"31\"]\n"), Err(BlacklistError::BadSerial { .. })));
        assert!(matches!(Blacklist::parse("cards = []\n"), Err(BlacklistError::Parse(_))));
        assert!(Blacklist::parse("version = 1\ncards = []\nextra = 1\n").is_err());
    }
}
