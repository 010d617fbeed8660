//! BER-TLV (ISO/IEC 7816-4 clause 6.3, the encoding of FCIs and social security
//! records), represented with the `iso7816-tlv` crate's types.
//!
//! Parsing is ours rather than the crate's own: it skips the padding bytes `00` and
//! `FF` that cards put before, between and after objects (ISO/IEC 7816-4 6.3 and
//! EMV Book 3 annex B), at every nesting level, and it bounds nesting depth and
//! length so that no input can exhaust the stack or memory.

use iso7816_tlv::ber::{Tag, Tlv, Value};

/// Deepest nesting of constructed objects accepted.
pub const DEPTH_MAX: usize = 16;
/// Largest length field accepted (three length bytes, `82 xx xx`, at most).
pub const LENGTH_MAX: usize = 0xFFFF;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlvError {
    #[error("TLV truncated at offset {0}")]
    Truncated(usize),
    #[error("tag at offset {0} is longer than 3 bytes")]
    TagTooLong(usize),
    #[error("length at offset {0} is malformed or over {LENGTH_MAX}")]
    BadLength(usize),
    #[error("TLV nested deeper than {DEPTH_MAX} levels at offset {0}")]
    TooDeep(usize),
    #[error("tag at offset {0} is not a valid BER tag")]
    BadTag(usize),
}

/// Padding bytes between objects.
fn is_padding(byte: u8) -> bool {
    byte == 0x00 || byte == 0xFF
}

/// Parses every object in `input`, skipping padding between them.
pub fn parse_all(input: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    parse_level(input, 0, 0)
}

/// Parses exactly one object (padding around it allowed).
pub fn parse_one(input: &[u8]) -> Result<Option<Tlv>, TlvError> {
    let mut all = parse_all(input)?;
    Ok(if all.len() == 1 { all.pop() } else { None })
}

fn parse_level(input: &[u8], base: usize, depth: usize) -> Result<Vec<Tlv>, TlvError> {
    if depth > DEPTH_MAX {
        return Err(TlvError::TooDeep(base));
    }
    let mut objects = Vec::new();
    let mut at = 0;
    while at < input.len() {
        if is_padding(input[at]) {
            at += 1;
            continue;
        }
        let start = at;
        // Tag: one byte, or more when the low five bits are all set.
        let mut tag_end = at + 1;
        if input[at] & 0x1F == 0x1F {
            loop {
                let byte = *input.get(tag_end).ok_or(TlvError::Truncated(base + tag_end))?;
                tag_end += 1;
                if byte & 0x80 == 0 {
                    break;
                }
                if tag_end - start >= 3 {
                    return Err(TlvError::TagTooLong(base + start));
                }
            }
        }
        let tag_bytes = &input[start..tag_end];
        let tag_value = tag_bytes.iter().fold(0u64, |value, byte| (value << 8) | u64::from(*byte));
        let tag = Tag::try_from(tag_value).map_err(|_| TlvError::BadTag(base + start))?;
        at = tag_end;
        // Length: short form, or 81 xx / 82 xx xx.
        let first = *input.get(at).ok_or(TlvError::Truncated(base + at))?;
        at += 1;
        let length = if first & 0x80 == 0 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7F);
            if count == 0 || count > 2 {
                return Err(TlvError::BadLength(base + at - 1));
            }
            let bytes = input.get(at..at + count).ok_or(TlvError::Truncated(base + at))?;
            at += count;
            bytes.iter().fold(0usize, |value, byte| (value << 8) | usize::from(*byte))
        };
        if length > LENGTH_MAX {
            return Err(TlvError::BadLength(base + at));
        }
        let content = input.get(at..at + length).ok_or(TlvError::Truncated(base + at))?;
        let value = if tag.is_constructed() {
            Value::Constructed(parse_level(content, base + at, depth + 1)?)
        } else {
            Value::Primitive(content.to_vec())
        };
        at += length;
        objects.push(Tlv::new(tag, value).map_err(|_| TlvError::BadTag(base + start))?);
    }
    Ok(objects)
}

/// Serialises an object with minimal (DER-style) lengths: short form up to 127,
/// then `81 xx`, `82 xx xx`.
///
/// Ours rather than the crate's `Tlv::to_vec`: iso7816-tlv 0.4 writes a length of
/// 127 as `81 7F` but counts it as one byte when it sizes the parent, so a
/// constructed object holding a 127-byte value came out one byte short and did
/// not parse back (found by the `decoders` fuzz target).
pub fn encode(object: &Tlv) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(object, &mut out);
    out
}

fn encode_into(object: &Tlv, out: &mut Vec<u8>) {
    out.extend_from_slice(object.tag().to_bytes());
    let mut content = Vec::new();
    match object.value() {
        Value::Primitive(bytes) => content.extend_from_slice(bytes),
        Value::Constructed(children) => children.iter().for_each(|child| encode_into(child, &mut content)),
    }
    match content.len() {
        length @ 0..=0x7F => out.push(length as u8),
        length @ 0x80..=0xFF => out.extend_from_slice(&[0x81, length as u8]),
        length @ 0x100..=0xFFFF => {
            out.push(0x82);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            let bytes = (length as u32).to_be_bytes();
            out.push(0x84);
            out.extend_from_slice(&bytes);
        }
    }
    out.extend_from_slice(&content);
}

/// A primitive object from a tag number and its value.
///
/// # Panics
/// If `tag` is not a valid BER tag: tags are constants in our code.
pub fn primitive(tag: u32, value: impl Into<Vec<u8>>) -> Tlv {
    let tag = Tag::try_from(tag).expect("valid constant tag");
    Tlv::new(tag, Value::Primitive(value.into())).expect("primitive value for a primitive tag")
}

/// A constructed object from a tag number and its children.
///
/// # Panics
/// If `tag` is not a valid constructed BER tag: tags are constants in our code.
pub fn constructed(tag: u32, children: Vec<Tlv>) -> Tlv {
    let tag = Tag::try_from(tag).expect("valid constant tag");
    Tlv::new(tag, Value::Constructed(children)).expect("constructed tag")
}

/// The value of the first primitive object with `tag`, searched depth-first.
pub fn find_primitive(objects: &[Tlv], tag: u32) -> Option<&[u8]> {
    let tag = Tag::try_from(tag).ok()?;
    objects.iter().find_map(|object| match object.find(&tag)?.value() {
        Value::Primitive(bytes) => Some(bytes.as_slice()),
        Value::Constructed(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fci_with_padding_parses() {
        // 6F { 84 A000000632010105, A5 { 9F08 01 02 } } with padding before, inside and after.
        let bytes = hex::decode("00FF6F11840".to_owned() + "8A000000632010105A5059F080102" + "0000FF").expect("hex");
        let objects = parse_all(&bytes).expect("parses");
        assert_eq!(objects.len(), 1);
        assert_eq!(find_primitive(&objects, 0x84), Some(&hex::decode("A000000632010105").expect("hex")[..]));
        assert_eq!(find_primitive(&objects, 0x9F08), Some(&[0x02][..]));
    }

    #[test]
    fn a_127_byte_value_inside_a_constructed_object_round_trips() {
        // The length boundary iso7816-tlv 0.4 gets wrong (see `encode`).
        for size in [126, 127, 128, 255, 256] {
            let object = constructed(0xA5, vec![primitive(0x9F0C, vec![0x5A; size]), primitive(0x84, vec![1])]);
            let bytes = encode(&object);
            assert_eq!(parse_all(&bytes).expect("parses back"), vec![object], "value of {size} bytes");
        }
        assert_eq!(&encode(&primitive(0x84, vec![0; 127]))[..2], &[0x84, 0x7F], "127 in the short form");
        assert_eq!(&encode(&primitive(0x84, vec![0; 128]))[..3], &[0x84, 0x81, 0x80]);
    }

    #[test]
    fn built_objects_round_trip() {
        let fci = constructed(
            0x6F,
            vec![primitive(0x84, b"SSSE".to_vec()), constructed(0xA5, vec![primitive(0x9F08, vec![3])])],
        );
        let bytes = encode(&fci);
        assert_eq!(parse_all(&bytes).expect("parses"), vec![fci]);
    }

    #[test]
    fn long_form_lengths() {
        let value = vec![0x5A; 300];
        let object = primitive(0x53, value.clone());
        let bytes = encode(&object);
        assert_eq!(&bytes[..4], &[0x53, 0x82, 0x01, 0x2C]);
        assert_eq!(find_primitive(&parse_all(&bytes).expect("parses"), 0x53), Some(&value[..]));
    }

    #[test]
    fn malformed_input_is_refused() {
        assert_eq!(parse_all(&[0x84, 0x05, 0x01]), Err(TlvError::Truncated(2)));
        assert_eq!(parse_all(&[0x9F]), Err(TlvError::Truncated(1)));
        assert_eq!(parse_all(&[0x9F, 0x81, 0x81, 0x01, 0x00]), Err(TlvError::TagTooLong(0)));
        assert_eq!(parse_all(&[0x84, 0x85, 0, 0, 0, 0, 1]), Err(TlvError::BadLength(1)));
        // 64 KiB of nested constructed objects must not exhaust the stack.
        let mut deep = vec![0x04, 0x01, 0xAA];
        for _ in 0..10_000 {
            let length = (deep.len() as u16).to_be_bytes();
            let mut outer = vec![0x21, 0x82, length[0], length[1]];
            outer.extend_from_slice(&deep);
            deep = outer;
        }
        assert!(matches!(parse_all(&deep), Err(TlvError::TooDeep(_))));
        let mut nested = vec![0x04, 0x01, 0xAA];
        for _ in 0..(DEPTH_MAX + 2) {
            let mut outer = vec![0x21, nested.len() as u8];
            outer.extend_from_slice(&nested);
            nested = outer;
            if nested.len() > 127 {
                break;
            }
        }
        assert!(matches!(parse_all(&nested), Err(TlvError::TooDeep(_))));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(objects) = parse_all(&bytes) {
                // What parses re-encodes to something that parses to the same objects.
                let again: Vec<u8> = objects.iter().flat_map(encode).collect();
                proptest::prop_assert_eq!(parse_all(&again).expect("re-encoded TLV parses"), objects);
            }
        }
    }
}
