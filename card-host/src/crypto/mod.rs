//! The card cryptography, one implementation for the card, the PSAM and the HSM:
//! 2-key 3DES and SM4 block operations, the ISO 9797-1 MACs the card uses, key
//! diversification, the purchase and load session keys, and (in [`purse`]) MAC1,
//! MAC2 and TAC. `docs/crypto.md` gives every input layout and its source.

mod block;
pub mod purse;

pub use block::{
    des_decrypt_block, des_encrypt_block, mac_retail, mac_single_des, mac_sm4, pad_method2, sm4_decrypt_block,
    sm4_encrypt_block, tdes_decrypt_block, tdes_encrypt_block,
};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("unknown algorithm identifier {0:02X}")]
    UnknownAlgorithm(u8),
    #[error("a key is 32 hex digits (16 bytes)")]
    KeyFormat,
}

/// The algorithm profile of a card: 2-key 3DES (PBOC 2.0) or SM4 (PBOC 3.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    TripleDes,
    Sm4,
}

impl Algorithm {
    /// The algorithm identifier byte the card answers in INITIALIZE FOR LOAD and
    /// PURCHASE: `00` for 3DES (vectors A and B), `04` for SM4 (see crypto.md).
    pub fn id(self) -> u8 {
        match self {
            Algorithm::TripleDes => 0x00,
            Algorithm::Sm4 => 0x04,
        }
    }

    pub fn from_id(id: u8) -> Result<Self, CryptoError> {
        match id {
            0x00 => Ok(Algorithm::TripleDes),
            0x04 => Ok(Algorithm::Sm4),
            other => Err(CryptoError::UnknownAlgorithm(other)),
        }
    }
}

/// A 16-byte secret key: a 2-key 3DES key or an SM4 key. Wiped when dropped;
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key16(Zeroizing<[u8; 16]>);

impl std::fmt::Debug for Key16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key16(REDACTED)")
    }
}

impl Key16 {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Key16(Zeroizing::new(bytes))
    }

    pub fn parse_hex(text: &str) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; 16]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| CryptoError::KeyFormat)?;
        Ok(Key16(bytes))
    }

    /// The key bytes. Only cryptographic code and key storage should call this.
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn left(&self) -> [u8; 8] {
        let mut left = [0; 8];
        left.copy_from_slice(&self.0[..8]);
        left
    }

    pub fn right(&self) -> [u8; 8] {
        let mut right = [0; 8];
        right.copy_from_slice(&self.0[8..]);
        right
    }

    /// Key check value: the first 3 bytes of an all-zero block encrypted under the key.
    pub fn check_value(&self, algorithm: Algorithm) -> [u8; 3] {
        let block = match algorithm {
            Algorithm::TripleDes => tdes_encrypt_block(self, [0; 8]).to_vec(),
            Algorithm::Sm4 => sm4_encrypt_block(self, [0; 16]).to_vec(),
        };
        [block[0], block[1], block[2]]
    }
}

/// A session key: 8 bytes used as a single-DES key in the 3DES profile, 16 bytes
/// in the SM4 profile.
#[derive(Clone, PartialEq, Eq, Zeroize)]
#[zeroize(drop)]
pub enum SessionKey {
    Des([u8; 8]),
    Sm4([u8; 16]),
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(REDACTED)")
    }
}

impl SessionKey {
    /// The 4-byte MAC of `data` (ISO 9797-1 method-2 padding, zero IV): single-DES
    /// CBC-MAC (algorithm 1) for 3DES cards, SM4 CBC-MAC for SM4 cards.
    pub fn mac(&self, data: &[u8]) -> [u8; 4] {
        match self {
            SessionKey::Des(key) => first4(&mac_single_des(key, [0; 8], data)),
            SessionKey::Sm4(key) => first4(&mac_sm4(&Key16::from_bytes(*key), [0; 16], data)),
        }
    }

    pub fn expose(&self) -> &[u8] {
        match self {
            SessionKey::Des(key) => key,
            SessionKey::Sm4(key) => key,
        }
    }
}

pub(crate) fn first4(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// Diversifies a card key from a master key by an 8-byte factor (the application
/// serial number). 3DES: left = 3DES(MK, D), right = 3DES(MK, NOT D). SM4: the
/// 16-byte result of SM4(MK, D ‖ NOT D).
pub fn diversify(algorithm: Algorithm, master: &Key16, factor: &[u8; 8]) -> Key16 {
    let mut complement = [0u8; 8];
    for (out, byte) in complement.iter_mut().zip(factor) {
        *out = !byte;
    }
    match algorithm {
        Algorithm::TripleDes => {
            let mut key = Zeroizing::new([0u8; 16]);
            key[..8].copy_from_slice(&tdes_encrypt_block(master, *factor));
            key[8..].copy_from_slice(&tdes_encrypt_block(master, complement));
            Key16(key)
        }
        Algorithm::Sm4 => {
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(factor);
            block[8..].copy_from_slice(&complement);
            Key16::from_bytes(sm4_encrypt_block(master, block))
        }
    }
}

/// Diversifies through several levels, the first factor first (the highest level,
/// the card's last).
pub fn diversify_levels(algorithm: Algorithm, master: &Key16, factors: &[[u8; 8]]) -> Key16 {
    factors.iter().fold(master.clone(), |key, factor| diversify(algorithm, &key, factor))
}

fn session_key(algorithm: Algorithm, key: &Key16, input: [u8; 8]) -> SessionKey {
    match algorithm {
        Algorithm::TripleDes => SessionKey::Des(tdes_encrypt_block(key, input)),
        Algorithm::Sm4 => {
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(&input);
            block[8] = 0x80;
            SessionKey::Sm4(sm4_encrypt_block(key, block))
        }
    }
}

/// The purchase session key: the card's DPK over card random (4) ‖ offline
/// counter (2) ‖ the last 2 bytes of the terminal transaction serial.
pub fn purchase_session_key(
    algorithm: Algorithm,
    dpk: &Key16,
    card_random: [u8; 4],
    offline_counter: u16,
    terminal_serial: u32,
) -> SessionKey {
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(&card_random);
    input[4..6].copy_from_slice(&offline_counter.to_be_bytes());
    input[6..].copy_from_slice(&terminal_serial.to_be_bytes()[2..]);
    session_key(algorithm, dpk, input)
}

/// The load session key: the card's DLK over card random (4) ‖ online counter (2) ‖ `80 00`.
pub fn load_session_key(algorithm: Algorithm, dlk: &Key16, card_random: [u8; 4], online_counter: u16) -> SessionKey {
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(&card_random);
    input[4..6].copy_from_slice(&online_counter.to_be_bytes());
    input[6] = 0x80;
    session_key(algorithm, dlk, input)
}

/// The MAC of a secure-messaging command: 3DES cards use the retail MAC (ISO
/// 9797-1 algorithm 3) with the 16-byte key and initial value challenge (4) ‖
/// `00000000` (vector C); SM4 cards the SM4 CBC-MAC with initial value challenge
/// ‖ twelve `00`. `header_and_data` is CLA INS P1 P2 Lc (counting the MAC) and data.
pub fn secure_messaging_mac(algorithm: Algorithm, key: &Key16, challenge: [u8; 4], header_and_data: &[u8]) -> [u8; 4] {
    match algorithm {
        Algorithm::TripleDes => {
            let mut iv = [0u8; 8];
            iv[..4].copy_from_slice(&challenge);
            first4(&mac_retail(key, iv, header_and_data))
        }
        Algorithm::Sm4 => {
            let mut iv = [0u8; 16];
            iv[..4].copy_from_slice(&challenge);
            first4(&mac_sm4(key, iv, header_and_data))
        }
    }
}

/// The terminal's cryptogram for EXTERNAL AUTHENTICATE: the 8-byte challenge
/// encrypted under the external-authentication key (SM4: the first 8 bytes of the
/// challenge ‖ eight `00` encrypted).
pub fn external_auth_cryptogram(algorithm: Algorithm, key: &Key16, challenge: &[u8; 8]) -> [u8; 8] {
    match algorithm {
        Algorithm::TripleDes => tdes_encrypt_block(key, *challenge),
        Algorithm::Sm4 => {
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(challenge);
            let out = sm4_encrypt_block(key, block);
            let mut cryptogram = [0u8; 8];
            cryptogram.copy_from_slice(&out[..8]);
            cryptogram
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
