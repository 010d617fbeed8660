//! The terminal's PN532 driver on a serial line of arbitrary bytes: raw line
//! noise, or frames with valid checksums among garbage, delivered at once or
//! frame by frame (`terminal::reader::fuzzing::pn532_driver`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    terminal::reader::fuzzing::pn532_driver(data);
});
