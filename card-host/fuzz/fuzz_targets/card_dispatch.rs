//! Sequences of APDUs into a fresh software card: no panic, and no change of the
//! card's state by a refused command.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| card_host::fuzzing::card_dispatch(data));
