//! The PN532 frame decoder and the PN532 emulator on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| card_host::fuzzing::pn532_frames(data));
