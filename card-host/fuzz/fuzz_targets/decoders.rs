//! APDU, response, BER-TLV and record decoders on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| card_host::fuzzing::decoders(data));
