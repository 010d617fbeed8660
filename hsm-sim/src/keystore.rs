//! The key store: every key wrapped under the LMK with AES-256-GCM (its label,
//! type, algorithm, version and check value bound as associated data), the whole
//! file sealed with an HMAC under a key derived from the LMK. Any change to the
//! file is detected when it is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use card_host::card::IndexedKey;
use card_host::crypto::{Algorithm, Key16};
use card_host::issue::{MasterKeySet, TransportKey};
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::keys::{KeyAlgorithm, KeyMaterial, KeyType, Lmk, LmkError};
use crate::wire::label_is_valid;

/// The most keys a store holds.
pub const KEYS_MAX: usize = 1_000;
/// The largest key store file we read.
pub const STORE_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The file of the store inside its directory.
pub const STORE_FILE: &str = "keystore.json";
/// Where a fresh test deployment keeps its generated LMK (test only).
pub const TEST_LMK_FILE: &str = "test-lmk.hex";
const FORMAT: &str = "hsm-sim keystore 1";

/// What is wrong with a key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a key store: {reason}")]
    Format { path: String, reason: String },
    #[error("the key store in {0} was made under another LMK (check value {1}, ours {2})")]
    WrongLmk(String, String, String),
    #[error("the key store in {path} has been tampered with: {what}")]
    Tampered { path: String, what: String },
    #[error("no LMK: give --lmk-file or HSM_SIM_LMK for the store in {0}")]
    NoLmk(String),
    #[error("LMK: {0}")]
    Lmk(#[from] LmkError),
    #[error("loading the test keys from fixtures/: {0}")]
    Fixtures(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io { path: path.display().to_string(), source }
}

/// What the store says about a key: everything but the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub label: String,
    pub key_type: KeyType,
    pub algorithm: KeyAlgorithm,
    pub version: u8,
    pub check_value: [u8; 3],
}

impl KeyInfo {
    fn aad(&self) -> Vec<u8> {
        format!(
            "{}|{}|{}|{}|{}",
            self.label,
            self.key_type.code(),
            self.algorithm.code() as char,
            self.version,
            hex::encode_upper(self.check_value)
        )
        .into_bytes()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    info: KeyInfo,
    material: KeyMaterial,
    wrapped: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    label: String,
    key_type: String,
    algorithm: String,
    version: u8,
    check_value: String,
    wrapped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SealedPart {
    format: String,
    lmk_check: String,
    test_deployment: bool,
    keys: Vec<StoredKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoreFile {
    #[serde(flatten)]
    sealed: SealedPart,
    seal: String,
}

/// Where the LMK comes from.
#[derive(Debug)]
pub enum LmkSource {
    /// Given (from a file or the environment).
    Given(Lmk),
    /// None given: a fresh store gets a fresh test LMK saved beside it, an
    /// existing test store reads that file back.
    TestDefault,
}

/// How [`KeyStore::open`] found the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// An existing store was loaded and verified.
    Existing,
    /// The directory was missing or empty: a new test deployment with the test
    /// keys from `fixtures/`.
    FreshTestDeployment,
}

/// The keys, unwrapped in memory, and their store on disk.
#[derive(Debug)]
pub struct KeyStore {
    directory: PathBuf,
    lmk: Lmk,
    test_deployment: bool,
    keys: BTreeMap<String, Entry>,
}

fn directory_is_empty(directory: &Path) -> Result<bool, KeyStoreError> {
    match std::fs::read_dir(directory) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(io_error(directory)(error)),
    }
}

impl KeyStore {
    /// Opens the store in `directory`; a missing or empty directory becomes a
    /// fresh test deployment (test LMK unless one is given, test keys from `fixtures/`).
    pub fn open(directory: &Path, lmk: LmkSource) -> Result<(KeyStore, Opened), KeyStoreError> {
        if directory_is_empty(directory)? {
            std::fs::create_dir_all(directory).map_err(io_error(directory))?;
            let lmk = match lmk {
                LmkSource::Given(lmk) => lmk,
                LmkSource::TestDefault => {
                    let lmk = Lmk::generate()?;
                    let path = directory.join(TEST_LMK_FILE);
                    write_private(&path, lmk.to_hex().as_bytes())?;
                    lmk
                }
            };
            let mut store =
                KeyStore { directory: directory.to_owned(), lmk, test_deployment: true, keys: BTreeMap::new() };
            store.add_test_keys()?;
            store.save().map_err(|_| KeyStoreError::Fixtures("writing the new store".to_owned()))?;
            return Ok((store, Opened::FreshTestDeployment));
        }
        let lmk = match lmk {
            LmkSource::Given(lmk) => lmk,
            LmkSource::TestDefault => {
                let path = directory.join(TEST_LMK_FILE);
                let text = std::fs::read_to_string(&path)
                    .map_err(|_| KeyStoreError::NoLmk(directory.display().to_string()))?;
                Lmk::parse_hex(&text)?
            }
        };
        let store = Self::load(directory, lmk)?;
        Ok((store, Opened::Existing))
    }

    fn load(directory: &Path, lmk: Lmk) -> Result<KeyStore, KeyStoreError> {
        let path = directory.join(STORE_FILE);
        let display = path.display().to_string();
        let format_error = |reason: String| KeyStoreError::Format { path: display.clone(), reason };
        let tampered = |what: String| KeyStoreError::Tampered { path: display.clone(), what };
        let size = std::fs::metadata(&path).map_err(io_error(&path))?.len();
        if size > STORE_FILE_BYTES_MAX {
            return Err(format_error(format!("larger than {STORE_FILE_BYTES_MAX} bytes")));
        }
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let file: StoreFile = serde_json::from_str(&text).map_err(|error| format_error(error.to_string()))?;
        if file.sealed.format != FORMAT {
            return Err(format_error(format!("format {:?}", file.sealed.format)));
        }
        if file.sealed.lmk_check != lmk.check_value_hex() {
            return Err(KeyStoreError::WrongLmk(
                directory.display().to_string(),
                file.sealed.lmk_check.clone(),
                lmk.check_value_hex(),
            ));
        }
        let sealed_bytes = serde_json::to_vec(&file.sealed).map_err(|error| format_error(error.to_string()))?;
        let expected = hex::encode_upper(lmk.seal(&sealed_bytes));
        if !card_host::crypto::constant_time_eq(expected.as_bytes(), file.seal.to_ascii_uppercase().as_bytes()) {
            return Err(tampered("the seal over the store does not match".to_owned()));
        }
        if file.sealed.keys.len() > KEYS_MAX {
            return Err(format_error(format!("more than {KEYS_MAX} keys")));
        }
        let mut keys = BTreeMap::new();
        for stored in &file.sealed.keys {
            let bad = |what: &str| tampered(format!("key {:?}: {what}", stored.label));
            let key_type = KeyType::from_code(stored.key_type.as_bytes()).map_err(|_| bad("key type"))?;
            let algorithm = match stored.algorithm.as_bytes() {
                [code] => KeyAlgorithm::from_code(*code).map_err(|_| bad("algorithm"))?,
                _ => return Err(bad("algorithm")),
            };
            let mut check_value = [0u8; 3];
            hex::decode_to_slice(&stored.check_value, &mut check_value).map_err(|_| bad("check value"))?;
            let info =
                KeyInfo { label: stored.label.clone(), key_type, algorithm, version: stored.version, check_value };
            let wrapped = hex::decode(&stored.wrapped).map_err(|_| bad("wrapped key"))?;
            let material = lmk.unwrap(&info.aad(), &wrapped).ok_or_else(|| bad("does not decrypt under the LMK"))?;
            if material.check_value(algorithm).ok() != Some(check_value) {
                return Err(bad("check value does not match the key"));
            }
            if !label_is_valid(&info.label) || keys.contains_key(&info.label) {
                return Err(bad("label invalid or repeated"));
            }
            keys.insert(info.label.clone(), Entry { info, material, wrapped });
        }
        Ok(KeyStore { directory: directory.to_owned(), lmk, test_deployment: file.sealed.test_deployment, keys })
    }

    fn save(&self) -> Result<(), KeyStoreError> {
        let sealed = SealedPart {
            format: FORMAT.to_owned(),
            lmk_check: self.lmk.check_value_hex(),
            test_deployment: self.test_deployment,
            keys: self
                .keys
                .values()
                .map(|entry| StoredKey {
                    label: entry.info.label.clone(),
                    key_type: entry.info.key_type.code().to_owned(),
                    algorithm: (entry.info.algorithm.code() as char).to_string(),
                    version: entry.info.version,
                    check_value: hex::encode_upper(entry.info.check_value),
                    wrapped: hex::encode_upper(&entry.wrapped),
                })
                .collect(),
        };
        let path = self.directory.join(STORE_FILE);
        let sealed_bytes = serde_json::to_vec(&sealed)
            .map_err(|error| KeyStoreError::Format { path: path.display().to_string(), reason: error.to_string() })?;
        let seal = hex::encode_upper(self.lmk.seal(&sealed_bytes));
        let text = serde_json::to_string_pretty(&StoreFile { sealed, seal })
            .map_err(|error| KeyStoreError::Format { path: path.display().to_string(), reason: error.to_string() })?;
        write_atomically(&path, text.as_bytes())
    }

    pub fn lmk_check_value(&self) -> [u8; 8] {
        self.lmk.check_value()
    }

    pub fn is_test_deployment(&self) -> bool {
        self.test_deployment
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys.values().map(|entry| entry.info.clone()).collect()
    }

    /// A key and what the store says about it.
    pub fn get(&self, label: &str) -> Result<(&KeyInfo, &KeyMaterial), ErrorCode> {
        self.keys.get(label).map(|entry| (&entry.info, &entry.material)).ok_or(ErrorCode::KeyNotFound)
    }

    /// A 16-byte key of the given type.
    pub fn key16(&self, label: &str, key_type: KeyType) -> Result<(Algorithm, Key16), ErrorCode> {
        let (info, material) = self.get(label)?;
        if info.key_type != key_type {
            return Err(ErrorCode::KeyFunctionNotPermitted);
        }
        let algorithm = info.algorithm.card().ok_or(ErrorCode::IncompatibleKey)?;
        Ok((algorithm, material.key16().ok_or(ErrorCode::Internal)?))
    }

    /// Adds a key and writes the store; nothing changes if the write fails.
    pub fn insert(
        &mut self,
        label: &str,
        key_type: KeyType,
        algorithm: KeyAlgorithm,
        version: u8,
        material: KeyMaterial,
    ) -> Result<KeyInfo, ErrorCode> {
        let info = self.insert_unsaved(label, key_type, algorithm, version, material)?;
        if let Err(error) = self.save() {
            tracing::error!(%error, "key store write failed; the new key is dropped");
            self.keys.remove(label);
            return Err(ErrorCode::Internal);
        }
        Ok(info)
    }

    fn insert_unsaved(
        &mut self,
        label: &str,
        key_type: KeyType,
        algorithm: KeyAlgorithm,
        version: u8,
        material: KeyMaterial,
    ) -> Result<KeyInfo, ErrorCode> {
        if !label_is_valid(label) {
            return Err(ErrorCode::InputData);
        }
        if !key_type.allows(algorithm) {
            return Err(ErrorCode::InvalidKeyScheme);
        }
        if self.keys.contains_key(label) {
            return Err(ErrorCode::LabelInUse);
        }
        if self.keys.len() >= KEYS_MAX {
            return Err(ErrorCode::KeyStoreFull);
        }
        let check_value = material.check_value(algorithm)?;
        let info = KeyInfo { label: label.to_owned(), key_type, algorithm, version, check_value };
        let wrapped = self.lmk.wrap(&info.aad(), &material).map_err(|_| ErrorCode::Internal)?;
        self.keys.insert(label.to_owned(), Entry { info: info.clone(), material, wrapped });
        Ok(info)
    }

    /// The master key set named `set` (labels `SET.purchase.N`, `SET.load.N`,
    /// `SET.tac`, `SET.maintenance`, `SET.pin_reload`, `SET.external_auth`), as
    /// card-host's [`MasterKeySet`], so cards' keys come from the one derivation
    /// card-host issues with.
    pub fn master_key_set(&self, set: &str) -> Result<MasterKeySet, ErrorCode> {
        let (algorithm, tac) = self.key16(&format!("{set}.tac"), KeyType::CardTacMaster)?;
        let one = |name: &str, key_type: KeyType| -> Result<Key16, ErrorCode> {
            let (key_algorithm, key) = self.key16(&format!("{set}.{name}"), key_type)?;
            if key_algorithm != algorithm {
                return Err(ErrorCode::IncompatibleKey);
            }
            Ok(key)
        };
        let indexed = |name: &str, key_type: KeyType| -> Result<Vec<IndexedKey>, ErrorCode> {
            let prefix = format!("{set}.{name}.");
            let mut keys = Vec::new();
            for (label, entry) in self.keys.range(prefix.clone()..) {
                let Some(index) = label.strip_prefix(&prefix) else { break };
                let Ok(index) = index.parse::<u8>() else { continue };
                let (key_algorithm, key) = self.key16(label, key_type)?;
                if key_algorithm != algorithm {
                    return Err(ErrorCode::IncompatibleKey);
                }
                keys.push(IndexedKey { index, version: entry.info.version, key });
            }
            keys.sort_by_key(|key| key.index);
            Ok(keys)
        };
        Ok(MasterKeySet {
            comment: String::new(),
            test_only: self.test_deployment,
            algorithm,
            purchase: indexed("purchase", KeyType::CardPurchaseMaster)?,
            load: indexed("load", KeyType::CardLoadMaster)?,
            tac,
            maintenance: one("maintenance", KeyType::CardMaintenanceMaster)?,
            pin_reload: one("pin_reload", KeyType::CardPinReloadMaster)?,
            external_auth: one("external_auth", KeyType::CardExternalAuthMaster)?,
        })
    }

    /// Puts a card master key set into the store under `set`, and writes the store.
    pub fn insert_master_key_set(&mut self, set: &str, keys: &MasterKeySet) -> Result<(), ErrorCode> {
        let before = self.keys.clone();
        let result =
            self.insert_master_key_set_unsaved(set, keys).and_then(|()| self.save().map_err(|_| ErrorCode::Internal));
        if result.is_err() {
            self.keys = before;
        }
        result
    }

    fn insert_master_key_set_unsaved(&mut self, set: &str, keys: &MasterKeySet) -> Result<(), ErrorCode> {
        let algorithm = KeyAlgorithm::from_card(keys.algorithm);
        for key in &keys.purchase {
            let material = KeyMaterial::from_key16(&key.key);
            self.insert_unsaved(
                &format!("{set}.purchase.{}", key.index),
                KeyType::CardPurchaseMaster,
                algorithm,
                key.version,
                material.clone(),
            )?;
            self.insert_unsaved(
                &format!("{set}.psam.purchase.{}", key.index),
                KeyType::PsamPurchaseMaster,
                algorithm,
                key.version,
                material,
            )?;
        }
        for key in &keys.load {
            self.insert_unsaved(
                &format!("{set}.load.{}", key.index),
                KeyType::CardLoadMaster,
                algorithm,
                key.version,
                KeyMaterial::from_key16(&key.key),
            )?;
        }
        for (name, key_type, key) in [
            ("tac", KeyType::CardTacMaster, &keys.tac),
            ("maintenance", KeyType::CardMaintenanceMaster, &keys.maintenance),
            ("pin_reload", KeyType::CardPinReloadMaster, &keys.pin_reload),
            ("external_auth", KeyType::CardExternalAuthMaster, &keys.external_auth),
        ] {
            self.insert_unsaved(&format!("{set}.{name}"), key_type, algorithm, 1, KeyMaterial::from_key16(key))?;
        }
        Ok(())
    }

    /// The keys of a test deployment: the test master key sets of `fixtures/`
    /// as sets `card` (3DES) and `sm4`, the test transport key for card
    /// personalisation, a MAC key of each algorithm, and a settlement signing key.
    fn add_test_keys(&mut self) -> Result<(), KeyStoreError> {
        let fixture = |error: String| KeyStoreError::Fixtures(error);
        for (set, path) in [
            (TEST_SET_TRIPLE_DES, card_host::issue::fixtures::test_keyset()),
            (TEST_SET_SM4, card_host::issue::fixtures::test_keyset_sm4()),
        ] {
            let keys = MasterKeySet::load(&path).map_err(|error| fixture(error.to_string()))?;
            if !keys.test_only {
                return Err(fixture(format!("{} is not marked test_only", path.display())));
            }
            self.insert_master_key_set_unsaved(set, &keys).map_err(|code| fixture(code.to_string()))?;
        }
        let path = card_host::issue::fixtures::test_transport_key();
        let transport = TransportKey::load(&path).map_err(|error| fixture(error.to_string()))?;
        if !transport.test_only {
            return Err(fixture(format!("{} is not marked test_only", path.display())));
        }
        self.insert_unsaved(
            TEST_TRANSPORT_KEY,
            KeyType::Transport,
            KeyAlgorithm::from_card(transport.algorithm),
            1,
            KeyMaterial::from_key16(&transport.key),
        )
        .map_err(|code| fixture(code.to_string()))?;
        for (label, key_type, algorithm) in [
            ("test.mac", KeyType::Mac, KeyAlgorithm::TripleDes),
            ("test.mac.sm4", KeyType::Mac, KeyAlgorithm::Sm4),
            ("settlement.signing", KeyType::Signing, KeyAlgorithm::Ed25519),
        ] {
            let material = KeyMaterial::generate(algorithm).map_err(|code| fixture(code.to_string()))?;
            self.insert_unsaved(label, key_type, algorithm, 1, material).map_err(|code| fixture(code.to_string()))?;
        }
        Ok(())
    }
}

/// The name of the 3DES test master key set in a fresh test deployment.
pub const TEST_SET_TRIPLE_DES: &str = "card";
/// The name of the SM4 test master key set in a fresh test deployment.
pub const TEST_SET_SM4: &str = "sm4";
/// The label of the transport key a fresh test deployment shares with the
/// personalisation station (`fixtures/keys/test-transport-key.json`).
pub const TEST_TRANSPORT_KEY: &str = "personalisation.zmk";

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), KeyStoreError> {
    use std::io::Write;
    let temporary = path.with_extension("json.tmp");
    {
        let mut file = std::fs::File::create(&temporary).map_err(io_error(&temporary))?;
        file.write_all(bytes).map_err(io_error(&temporary))?;
        file.sync_all().map_err(io_error(&temporary))?;
    }
    std::fs::rename(&temporary, path).map_err(io_error(path))?;
    if let Some(parent) = path.parent()
        && let Ok(directory) = std::fs::File::open(parent)
    {
        let _ = directory.sync_all();
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyStoreError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_store_refuses_more_keys() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let (mut store, _) = KeyStore::open(directory.path(), LmkSource::TestDefault).expect("fresh");
        let mut i = 0;
        while store.len() < KEYS_MAX {
            let material = KeyMaterial::from_key16(&Key16::from_bytes([i as u8; 16]));
            store
                .insert_unsaved(&format!("filler.{i}"), KeyType::Mac, KeyAlgorithm::TripleDes, 1, material)
                .expect("room");
            i += 1;
        }
        let material = KeyMaterial::from_key16(&Key16::from_bytes([0xAA; 16]));
        assert_eq!(
            store.insert("one.more", KeyType::Mac, KeyAlgorithm::TripleDes, 1, material),
            Err(ErrorCode::KeyStoreFull)
        );
    }
}
