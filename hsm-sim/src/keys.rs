//! Key types, algorithms and key material, the local master key (LMK), and the
//! transport encryption of keys for import and export.

use card_host::crypto::{self, Algorithm, Key16};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::ErrorCode;

/// What a key may be used for. The 3-character codes are ours (payShield's key
/// type codes name other functions); `docs/hsm.md` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyType {
    /// `MPK` card purchase master key (diversified into each card's DPK).
    CardPurchaseMaster,
    /// `MLK` card load master key (DLK).
    CardLoadMaster,
    /// `MTK` card TAC master key (DTK).
    CardTacMaster,
    /// `MMK` card maintenance master key (APPLICATION BLOCK/UNBLOCK, updates).
    CardMaintenanceMaster,
    /// `MRK` card PIN-reload master key.
    CardPinReloadMaster,
    /// `MEK` card external-authentication master key.
    CardExternalAuthMaster,
    /// `PPK` PSAM purchase master key (loaded into terminals' PSAMs).
    PsamPurchaseMaster,
    /// `MAC` a MAC key for `M6`/`M8`.
    Mac,
    /// `ZMK` a transport (zone master) key: keys travel under it.
    Transport,
    /// `SIG` a settlement-file signing key (Ed25519).
    Signing,
}

impl KeyType {
    pub const ALL: [KeyType; 10] = [
        KeyType::CardPurchaseMaster,
        KeyType::CardLoadMaster,
        KeyType::CardTacMaster,
        KeyType::CardMaintenanceMaster,
        KeyType::CardPinReloadMaster,
        KeyType::CardExternalAuthMaster,
        KeyType::PsamPurchaseMaster,
        KeyType::Mac,
        KeyType::Transport,
        KeyType::Signing,
    ];

    pub fn code(self) -> &'static str {
        match self {
            KeyType::CardPurchaseMaster => "MPK",
            KeyType::CardLoadMaster => "MLK",
            KeyType::CardTacMaster => "MTK",
            KeyType::CardMaintenanceMaster => "MMK",
            KeyType::CardPinReloadMaster => "MRK",
            KeyType::CardExternalAuthMaster => "MEK",
            KeyType::PsamPurchaseMaster => "PPK",
            KeyType::Mac => "MAC",
            KeyType::Transport => "ZMK",
            KeyType::Signing => "SIG",
        }
    }

    pub fn from_code(code: &[u8]) -> Result<Self, ErrorCode> {
        KeyType::ALL.into_iter().find(|kind| kind.code().as_bytes() == code).ok_or(ErrorCode::InvalidKeyType)
    }

    /// Whether keys of this type may leave the HSM under a transport key.
    pub fn exportable(self) -> bool {
        self != KeyType::Signing
    }

    /// Whether `algorithm` fits this type: signing keys are Ed25519, all others 16-byte 3DES or SM4.
    pub fn allows(self, algorithm: KeyAlgorithm) -> bool {
        (self == KeyType::Signing) == (algorithm == KeyAlgorithm::Ed25519)
    }
}

/// The algorithm of a stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// `T` 2-key triple DES (16 bytes).
    TripleDes,
    /// `S` SM4 (16 bytes).
    Sm4,
    /// `E` Ed25519 (a PKCS#8 document in the store).
    Ed25519,
}

impl KeyAlgorithm {
    pub fn code(self) -> u8 {
        match self {
            KeyAlgorithm::TripleDes => b'T',
            KeyAlgorithm::Sm4 => b'S',
            KeyAlgorithm::Ed25519 => b'E',
        }
    }

    pub fn from_code(code: u8) -> Result<Self, ErrorCode> {
        match code {
            b'T' => Ok(KeyAlgorithm::TripleDes),
            b'S' => Ok(KeyAlgorithm::Sm4),
            b'E' => Ok(KeyAlgorithm::Ed25519),
            _ => Err(ErrorCode::InvalidKeyScheme),
        }
    }

    /// The card algorithm profile of a 16-byte key.
    pub fn card(self) -> Option<Algorithm> {
        match self {
            KeyAlgorithm::TripleDes => Some(Algorithm::TripleDes),
            KeyAlgorithm::Sm4 => Some(Algorithm::Sm4),
            KeyAlgorithm::Ed25519 => None,
        }
    }

    pub fn from_card(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::TripleDes => KeyAlgorithm::TripleDes,
            Algorithm::Sm4 => KeyAlgorithm::Sm4,
        }
    }
}

/// Secret key bytes: 16 for 3DES and SM4, a PKCS#8 document for Ed25519.
/// Wiped when dropped; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(REDACTED)")
    }
}

impl KeyMaterial {
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        KeyMaterial(bytes)
    }

    pub fn from_key16(key: &Key16) -> Self {
        KeyMaterial(Zeroizing::new(key.expose().to_vec()))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The material as a 16-byte key, if it is one.
    pub fn key16(&self) -> Option<Key16> {
        let bytes: [u8; 16] = self.0.as_slice().try_into().ok()?;
        let key = Key16::from_bytes(bytes);
        Some(key)
    }

    /// A fresh random key of `algorithm`.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, ErrorCode> {
        let random = SystemRandom::new();
        match algorithm {
            KeyAlgorithm::TripleDes | KeyAlgorithm::Sm4 => {
                let mut bytes = Zeroizing::new(vec![0u8; 16]);
                random.fill(&mut bytes).map_err(|_| ErrorCode::Internal)?;
                Ok(KeyMaterial(bytes))
            }
            KeyAlgorithm::Ed25519 => {
                let document =
                    ring::signature::Ed25519KeyPair::generate_pkcs8(&random).map_err(|_| ErrorCode::Internal)?;
                Ok(KeyMaterial(Zeroizing::new(document.as_ref().to_vec())))
            }
        }
    }

    /// The key check value: for 3DES and SM4 the first 3 bytes of a zero block
    /// encrypted under the key (card-host's `Key16::check_value`); for Ed25519
    /// the first 3 bytes of SHA-256 of the public key (ours).
    pub fn check_value(&self, algorithm: KeyAlgorithm) -> Result<[u8; 3], ErrorCode> {
        match algorithm.card() {
            Some(card) => Ok(self.key16().ok_or(ErrorCode::InvalidKeyScheme)?.check_value(card)),
            None => {
                let public = self.ed25519_public()?;
                let digest = ring::digest::digest(&ring::digest::SHA256, &public);
                Ok([digest.as_ref()[0], digest.as_ref()[1], digest.as_ref()[2]])
            }
        }
    }

    pub fn ed25519(&self) -> Result<ring::signature::Ed25519KeyPair, ErrorCode> {
        ring::signature::Ed25519KeyPair::from_pkcs8(&self.0).map_err(|_| ErrorCode::InvalidKeyScheme)
    }

    pub fn ed25519_public(&self) -> Result<[u8; 32], ErrorCode> {
        use ring::signature::KeyPair;
        let pair = self.ed25519()?;
        pair.public_key().as_ref().try_into().map_err(|_| ErrorCode::Internal)
    }
}

/// Encrypts a 16-byte key under a transport key: 3DES ECB of each half (the
/// classic ZMK encryption), or one SM4 block.
pub fn transport_encrypt(transport: &Key16, algorithm: KeyAlgorithm, key: &Key16) -> Result<[u8; 16], ErrorCode> {
    let mut out = [0u8; 16];
    match algorithm {
        KeyAlgorithm::TripleDes => {
            out[..8].copy_from_slice(&crypto::tdes_encrypt_block(transport, key.left()));
            out[8..].copy_from_slice(&crypto::tdes_encrypt_block(transport, key.right()));
        }
        KeyAlgorithm::Sm4 => out = crypto::sm4_encrypt_block(transport, *key.expose()),
        KeyAlgorithm::Ed25519 => return Err(ErrorCode::IncompatibleKey),
    }
    Ok(out)
}

/// The inverse of [`transport_encrypt`].
pub fn transport_decrypt(transport: &Key16, algorithm: KeyAlgorithm, encrypted: &[u8; 16]) -> Result<Key16, ErrorCode> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    match algorithm {
        KeyAlgorithm::TripleDes => {
            let (left, right) = encrypted.split_at(8);
            let left: [u8; 8] = left.try_into().map_err(|_| ErrorCode::Internal)?;
            let right: [u8; 8] = right.try_into().map_err(|_| ErrorCode::Internal)?;
            bytes[..8].copy_from_slice(&crypto::tdes_decrypt_block(transport, left));
            bytes[8..].copy_from_slice(&crypto::tdes_decrypt_block(transport, right));
        }
        KeyAlgorithm::Sm4 => *bytes = crypto::sm4_decrypt_block(transport, *encrypted),
        KeyAlgorithm::Ed25519 => return Err(ErrorCode::IncompatibleKey),
    }
    Ok(Key16::from_bytes(*bytes))
}

/// The local master key: 32 bytes, AES-256-GCM over every stored key.
pub struct Lmk(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Lmk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lmk(REDACTED, check {})", self.check_value_hex())
    }
}

/// The LMK could not be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LmkError {
    #[error("an LMK is 64 hex digits (32 bytes)")]
    Format,
    #[error("the system random generator failed")]
    Random,
}

impl Lmk {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Lmk(Zeroizing::new(bytes))
    }

    pub fn parse_hex(text: &str) -> Result<Self, LmkError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| LmkError::Format)?;
        Ok(Lmk(bytes))
    }

    pub fn generate() -> Result<Self, LmkError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(bytes.as_mut()).map_err(|_| LmkError::Random)?;
        Ok(Lmk(bytes))
    }

    /// The LMK as hex, only to save a fresh test LMK beside its test store.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode_upper(*self.0))
    }

    /// The check value shown instead of the LMK: the first 8 bytes of
    /// SHA-256("hsm-sim LMK check" ‖ LMK), 16 hex digits (ours).
    pub fn check_value(&self) -> [u8; 8] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"hsm-sim LMK check");
        context.update(self.0.as_ref());
        let digest = context.finish();
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest.as_ref()[..8]);
        out
    }

    pub fn check_value_hex(&self) -> String {
        hex::encode_upper(self.check_value())
    }

    fn aead(&self) -> LessSafeKey {
        let key = UnboundKey::new(&AES_256_GCM, self.0.as_ref()).expect("a 32-byte key fits AES-256-GCM");
        LessSafeKey::new(key)
    }

    /// Encrypts `material` with a fresh random nonce; `aad` binds the key's
    /// metadata. Returns nonce (12) ‖ ciphertext ‖ tag (16).
    pub fn wrap(&self, aad: &[u8], material: &KeyMaterial) -> Result<Vec<u8>, LmkError> {
        let mut nonce = [0u8; 12];
        SystemRandom::new().fill(&mut nonce).map_err(|_| LmkError::Random)?;
        let mut sealed = material.expose().to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed)
            .map_err(|_| LmkError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        sealed.iter_mut().for_each(|b| *b = 0);
        Ok(out)
    }

    /// Decrypts what [`Lmk::wrap`] made; `None` if it or its metadata was changed
    /// (or the LMK is another one).
    pub fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Option<KeyMaterial> {
        if wrapped.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = wrapped.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = Zeroizing::new(sealed.to_vec());
        let plain = self.aead().open_in_place(nonce, Aad::from(aad), &mut buffer).ok()?;
        Some(KeyMaterial(Zeroizing::new(plain.to_vec())))
    }

    /// HMAC-SHA-256 over the whole store, under a key derived from the LMK, so
    /// a removed, added or reordered record is detected too.
    pub fn seal(&self, bytes: &[u8]) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"hsm-sim keystore seal");
        context.update(self.0.as_ref());
        let derived = Zeroizing::new(context.finish().as_ref().to_vec());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derived);
        let tag = ring::hmac::sign(&key, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_detects_any_change() {
        let lmk = Lmk::generate().expect("random");
        let material = KeyMaterial::generate(KeyAlgorithm::TripleDes).expect("random");
        let wrapped = lmk.wrap(b"meta", &material).expect("wrap");
        assert_eq!(lmk.unwrap(b"meta", &wrapped), Some(material));
        assert_eq!(lmk.unwrap(b"metb", &wrapped), None);
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert_eq!(lmk.unwrap(b"meta", &flipped), None);
        assert_eq!(Lmk::generate().expect("random").unwrap(b"meta", &wrapped), None);
        assert!(format!("{lmk:?}").contains("REDACTED"));
    }

    #[test]
    fn transport_round_trips() {
        for algorithm in [KeyAlgorithm::TripleDes, KeyAlgorithm::Sm4] {
            let transport = Key16::from_bytes([7; 16]);
            let key = Key16::from_bytes(*b"0123456789ABCDEF");
            let encrypted = transport_encrypt(&transport, algorithm, &key).expect("encrypt");
            assert_ne!(&encrypted, key.expose());
            assert_eq!(transport_decrypt(&transport, algorithm, &encrypted).expect("decrypt"), key);
        }
    }

    #[test]
    fn key_types_round_trip() {
        for kind in KeyType::ALL {
            assert_eq!(KeyType::from_code(kind.code().as_bytes()), Ok(kind));
        }
        assert_eq!(KeyType::from_code(b"XXX"), Err(ErrorCode::InvalidKeyType));
    }
}
