//! Serde helpers that write byte strings as upper-case hex, so card images and
//! fixtures stay readable and diffable.

use serde::{Deserialize, Deserializer, Serializer, de::Error};

/// `Vec<u8>` as one hex string.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode_upper(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(&text).map_err(|error| D::Error::custom(format!("{text:?} is not hex: {error}")))
    }
}

/// `Vec<Vec<u8>>` as a list of hex strings.
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(value: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(value.iter().map(hex::encode_upper))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| hex::decode(text).map_err(|error| D::Error::custom(format!("{text:?} is not hex: {error}"))))
            .collect()
    }
}

/// A fixed-size array as hex.
pub mod array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(value: &[u8; N], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode_upper(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(deserializer: D) -> Result<[u8; N], D::Error> {
        let bytes = bytes::deserialize(deserializer)?;
        let length = bytes.len();
        bytes.try_into().map_err(|_| D::Error::custom(format!("expected {N} bytes of hex, got {length}")))
    }
}

/// A [`crate::crypto::Key16`] as 32 hex digits (card images and key set files).
pub mod key {
    use super::*;
    use crate::crypto::Key16;

    pub fn serialize<S: Serializer>(value: &Key16, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode_upper(value.expose()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Key16, D::Error> {
        let text = zeroize::Zeroizing::new(String::deserialize(deserializer)?);
        Key16::parse_hex(&text).map_err(|_| D::Error::custom("a key is 32 hex digits"))
    }
}
