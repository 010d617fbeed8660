//! The HSM itself: a key store and the commands run against it, without the
//! network (the server puts it on TCP; the benchmark also calls it directly).

use std::sync::RwLock;

use card_host::crypto::{self, Key16};
use ring::rand::SecureRandom;

use crate::card;
use crate::command::{
    BatchRecord, MacAlgorithm, MacRequest, Request, Response, TacRecord, WrappedCardKeys, WrappedIndexedKey, WrappedKey,
};
use crate::error::ErrorCode;
use crate::keys::{KeyAlgorithm, KeyMaterial, KeyType, transport_decrypt, transport_encrypt};
use crate::keystore::KeyStore;

/// Batches at least this long are split over all cores.
pub const BATCH_PARALLEL_MIN: usize = 256;
/// The most threads one batch uses.
pub const BATCH_THREADS_MAX: usize = 16;

#[derive(Debug)]
pub struct Hsm {
    keys: RwLock<KeyStore>,
    /// Clear-key import (`ZS`) is accepted only in test mode.
    test_mode: bool,
}

impl Hsm {
    pub fn new(keys: KeyStore, test_mode: bool) -> Self {
        Hsm { keys: RwLock::new(keys), test_mode }
    }

    pub fn lmk_check_value(&self) -> [u8; 8] {
        self.read().lmk_check_value()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyStore> {
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyStore> {
        self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a request may take long (batches, key store writes): the server
    /// runs those off its I/O threads.
    pub fn is_slow(request: &Request) -> bool {
        matches!(
            request,
            Request::VerifyTacBatch { .. }
                | Request::GenerateKey { .. }
                | Request::ImportKey { .. }
                | Request::ImportClearKey { .. }
                | Request::DeriveCardKeys { .. }
        )
    }

    /// Runs one command.
    pub fn execute(&self, request: &Request) -> Result<Response, ErrorCode> {
        match request {
            Request::Diagnostics => Ok(Response::Diagnostics {
                lmk_check: self.lmk_check_value(),
                firmware: crate::command::FIRMWARE_VERSION.to_owned(),
            }),
            Request::Echo { data } => Ok(Response::Echo { data: data.clone() }),
            Request::Random { length } => {
                let mut bytes = vec![0u8; *length];
                ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| ErrorCode::Internal)?;
                Ok(Response::Random { bytes })
            }
            Request::GenerateKey { key_type, algorithm, version, label, export_under } => {
                if !key_type.allows(*algorithm) {
                    return Err(ErrorCode::InvalidKeyScheme);
                }
                let material = KeyMaterial::generate(*algorithm)?;
                let exported = match export_under {
                    Some(transport) => {
                        if !key_type.exportable() {
                            return Err(ErrorCode::KeyFunctionNotPermitted);
                        }
                        let key = material.key16().ok_or(ErrorCode::Internal)?;
                        Some(self.encrypt_under(transport, &key)?)
                    }
                    None => None,
                };
                let info = self.write().insert(label, *key_type, *algorithm, *version, material)?;
                Ok(Response::GeneratedKey { check_value: info.check_value, exported })
            }
            Request::ImportKey { key_type, algorithm, version, label, transport, key } => {
                if !key_type.allows(*algorithm) || *algorithm == KeyAlgorithm::Ed25519 {
                    return Err(ErrorCode::InvalidKeyScheme);
                }
                let (transport_algorithm, transport_key) = self.transport(transport)?;
                let clear = transport_decrypt(&transport_key, transport_algorithm, &key.encrypted)?;
                let card_algorithm = algorithm.card().ok_or(ErrorCode::InvalidKeyScheme)?;
                if clear.check_value(card_algorithm) != key.check_value {
                    return Err(ErrorCode::VerificationFailure);
                }
                let info =
                    self.write().insert(label, *key_type, *algorithm, *version, KeyMaterial::from_key16(&clear))?;
                Ok(Response::CheckValue { check_value: info.check_value })
            }
            Request::ImportClearKey { key_type, algorithm, version, label, key } => {
                if !self.test_mode {
                    return Err(ErrorCode::NotAuthorised);
                }
                if !key_type.allows(*algorithm) || *algorithm == KeyAlgorithm::Ed25519 {
                    return Err(ErrorCode::InvalidKeyScheme);
                }
                let info = self.write().insert(label, *key_type, *algorithm, *version, KeyMaterial::from_key16(key))?;
                Ok(Response::CheckValue { check_value: info.check_value })
            }
            Request::ExportKey { label, transport } => {
                let (key_type, check_value, key) = {
                    let store = self.read();
                    let (info, material) = store.get(label)?;
                    (info.key_type, info.check_value, material.key16())
                };
                if !key_type.exportable() {
                    return Err(ErrorCode::KeyFunctionNotPermitted);
                }
                let key = key.ok_or(ErrorCode::KeyFunctionNotPermitted)?;
                Ok(Response::ExportedKey {
                    key: WrappedKey { encrypted: self.encrypt_under(transport, &key)?, check_value },
                })
            }
            Request::KeyCheckValue { label } => {
                Ok(Response::CheckValue { check_value: self.read().get(label)?.0.check_value })
            }
            Request::GenerateMac(request) => Ok(Response::Mac { mac: self.mac(request)? }),
            Request::VerifyMac { request, mac } => {
                let expected = self.mac(request)?;
                if crypto::constant_time_eq(&expected, mac) {
                    Ok(Response::Verified)
                } else {
                    Err(ErrorCode::VerificationFailure)
                }
            }
            Request::DeriveCardKeys { key_set, serial, transport } => {
                let master = self.read().master_key_set(key_set)?;
                let keys = master.card_keys(serial);
                let (transport_algorithm, transport_key) = self.transport(transport)?;
                let wrap = |key: &Key16| -> Result<WrappedKey, ErrorCode> {
                    Ok(WrappedKey {
                        encrypted: transport_encrypt(&transport_key, transport_algorithm, key)?,
                        check_value: key.check_value(keys.algorithm),
                    })
                };
                let indexed = |list: &[card_host::card::IndexedKey]| -> Result<Vec<WrappedIndexedKey>, ErrorCode> {
                    list.iter()
                        .map(|k| Ok(WrappedIndexedKey { index: k.index, version: k.version, key: wrap(&k.key)? }))
                        .collect()
                };
                Ok(Response::CardKeys(WrappedCardKeys {
                    algorithm: keys.algorithm,
                    purchase: indexed(&keys.purchase)?,
                    load: indexed(&keys.load)?,
                    tac: wrap(&keys.tac)?,
                    maintenance: wrap(&keys.maintenance)?,
                    pin_reload: wrap(&keys.pin_reload)?,
                    external_auth: wrap(&keys.external_auth)?,
                }))
            }
            Request::AuthoriseLoad { key_set, load } => {
                let label = format!("{key_set}.load.{}", load.key_index);
                let (algorithm, master) = match self.read().key16(&label, KeyType::CardLoadMaster) {
                    Err(ErrorCode::KeyNotFound) => {
                        // The set exists but not this index: an invalid index, not a missing set.
                        return Err(if self.read().get(&format!("{key_set}.tac")).is_ok() {
                            ErrorCode::InvalidIndex
                        } else {
                            ErrorCode::KeyNotFound
                        });
                    }
                    other => other?,
                };
                Ok(Response::LoadAuthorised { mac2: card::authorise_load(algorithm, &master, load)? })
            }
            Request::VerifyPurchaseTac { key_set, record } => {
                let (algorithm, master) = self.tac_master(key_set)?;
                verified(card::verify_purchase_tac(algorithm, &master, record))
            }
            Request::VerifyLoadTac { key_set, record } => {
                let (algorithm, master) = self.tac_master(key_set)?;
                verified(card::verify_load_tac(algorithm, &master, record))
            }
            Request::VerifyTacBatch { key_set, records } => {
                let (algorithm, master) = self.tac_master(key_set)?;
                Ok(Response::TacBatch { results: verify_batch(algorithm, &master, records) })
            }
            Request::MaintenanceMac { key_set, serial, challenge, function } => {
                let (name, key_type) = match function {
                    crate::command::MaintenanceFunction::PinReload(_) => ("pin_reload", KeyType::CardPinReloadMaster),
                    _ => ("maintenance", KeyType::CardMaintenanceMaster),
                };
                let (algorithm, master) = self.read().key16(&format!("{key_set}.{name}"), key_type)?;
                let card_key = crypto::diversify(algorithm, &master, &serial.0);
                Ok(Response::Mac { mac: card::maintenance_mac(algorithm, &card_key, *challenge, function) })
            }
            Request::SignSettlement { label, digest } => {
                let pair = self.signing_key(label)?;
                let signature: [u8; 64] = pair.sign(digest).as_ref().try_into().map_err(|_| ErrorCode::Internal)?;
                Ok(Response::Signature { signature })
            }
            Request::VerifySettlement { label, digest, signature } => {
                let public = self.public_key(label)?;
                let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public);
                verified(key.verify(digest, signature).is_ok())
            }
            Request::PublicKey { label } => Ok(Response::PublicKey { key: self.public_key(label)? }),
            Request::ListKeys => Ok(Response::KeyList { keys: self.read().list() }),
        }
    }

    fn transport(&self, label: &str) -> Result<(KeyAlgorithm, Key16), ErrorCode> {
        let (algorithm, key) = self.read().key16(label, KeyType::Transport)?;
        Ok((KeyAlgorithm::from_card(algorithm), key))
    }

    fn encrypt_under(&self, transport: &str, key: &Key16) -> Result<[u8; 16], ErrorCode> {
        let (algorithm, transport_key) = self.transport(transport)?;
        transport_encrypt(&transport_key, algorithm, key)
    }

    fn tac_master(&self, key_set: &str) -> Result<(card_host::crypto::Algorithm, Key16), ErrorCode> {
        self.read().key16(&format!("{key_set}.tac"), KeyType::CardTacMaster)
    }

    fn signing_key(&self, label: &str) -> Result<ring::signature::Ed25519KeyPair, ErrorCode> {
        let store = self.read();
        let (info, material) = store.get(label)?;
        if info.key_type != KeyType::Signing {
            return Err(ErrorCode::KeyFunctionNotPermitted);
        }
        material.ed25519()
    }

    fn public_key(&self, label: &str) -> Result<[u8; 32], ErrorCode> {
        let store = self.read();
        let (info, material) = store.get(label)?;
        if info.key_type != KeyType::Signing {
            return Err(ErrorCode::KeyFunctionNotPermitted);
        }
        material.ed25519_public()
    }

    fn mac(&self, request: &MacRequest) -> Result<[u8; 4], ErrorCode> {
        let (algorithm, key) = self.read().key16(&request.label, KeyType::Mac)?;
        let mac = match (request.algorithm, algorithm) {
            (MacAlgorithm::Retail, card_host::crypto::Algorithm::TripleDes) => {
                let iv: [u8; 8] = request.iv.as_slice().try_into().map_err(|_| ErrorCode::InputData)?;
                crypto::mac_retail(&key, iv, &request.message).to_vec()
            }
            (MacAlgorithm::Sm4Cbc, card_host::crypto::Algorithm::Sm4) => {
                let iv: [u8; 16] = request.iv.as_slice().try_into().map_err(|_| ErrorCode::InputData)?;
                crypto::mac_sm4(&key, iv, &request.message).to_vec()
            }
            _ => return Err(ErrorCode::IncompatibleKey),
        };
        Ok([mac[0], mac[1], mac[2], mac[3]])
    }
}

fn verified(ok: bool) -> Result<Response, ErrorCode> {
    if ok { Ok(Response::Verified) } else { Err(ErrorCode::VerificationFailure) }
}

fn verify_records(
    algorithm: card_host::crypto::Algorithm,
    master: &Key16,
    records: &[BatchRecord],
    out: &mut [ErrorCode],
) {
    for (record, result) in records.iter().zip(out.iter_mut()) {
        *result = match record {
            BatchRecord::Tac(tac) if card::verify_tac(algorithm, master, tac) => ErrorCode::Ok,
            BatchRecord::Tac(_) => ErrorCode::VerificationFailure,
            BatchRecord::Malformed { .. } => ErrorCode::InputData,
        };
    }
}

/// Verifies every record of a batch, over all cores when it is long; one code
/// per record, in order.
pub fn verify_batch(
    algorithm: card_host::crypto::Algorithm,
    master: &Key16,
    records: &[BatchRecord],
) -> Vec<ErrorCode> {
    let mut results = vec![ErrorCode::Internal; records.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(BATCH_THREADS_MAX);
    if records.len() < BATCH_PARALLEL_MIN || threads == 1 {
        verify_records(algorithm, master, records, &mut results);
        return results;
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (records, results) in records.chunks(chunk).zip(results.chunks_mut(chunk)) {
            scope.spawn(move || verify_records(algorithm, master, records, results));
        }
    });
    debug_assert!(!results.contains(&ErrorCode::Internal));
    results
}

/// In-process TAC-verification rates: the crypto's own limit, without the
/// network (`hsm-sim bench` and `clearing bench` report their figures against it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InProcessRates {
    pub records: usize,
    /// One record after another on the calling thread.
    pub one_core_per_second: f64,
    /// The batch path ([`verify_batch`]) over all cores.
    pub all_cores_per_second: f64,
}

impl Hsm {
    /// Verifies `records` under the key set's TAC master key twice, timed: one
    /// after another on this thread, then as one batch over all cores. Every
    /// record must verify (`VerificationFailure` otherwise): a benchmark of
    /// genuine TACs. Blocks the calling thread for the whole measurement.
    pub fn measure_in_process(&self, key_set: &str, records: &[TacRecord]) -> Result<InProcessRates, ErrorCode> {
        let (algorithm, master) = self.read().key16(&format!("{key_set}.tac"), KeyType::CardTacMaster)?;
        let started = std::time::Instant::now();
        let valid = records.iter().filter(|record| verify_one(algorithm, &master, record)).count();
        let one_core = started.elapsed().as_secs_f64();
        if valid != records.len() {
            return Err(ErrorCode::VerificationFailure);
        }
        let batch: Vec<BatchRecord> = records.iter().cloned().map(BatchRecord::Tac).collect();
        let started = std::time::Instant::now();
        let results = verify_batch(algorithm, &master, &batch);
        let all_cores = started.elapsed().as_secs_f64();
        if results.iter().any(|code| !code.is_ok()) {
            return Err(ErrorCode::VerificationFailure);
        }
        Ok(InProcessRates {
            records: records.len(),
            one_core_per_second: records.len() as f64 / one_core.max(f64::MIN_POSITIVE),
            all_cores_per_second: records.len() as f64 / all_cores.max(f64::MIN_POSITIVE),
        })
    }
}

/// A TAC record, for the benchmark's in-process figure.
pub fn verify_one(algorithm: card_host::crypto::Algorithm, master: &Key16, record: &TacRecord) -> bool {
    card::verify_tac(algorithm, master, record)
}
