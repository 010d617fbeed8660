//! Terminal batch documents (`clearing-batch/1`) from untrusted bytes: no panic;
//! an accepted document accounts for every record it carried (kept or refused,
//! none dropped); every kept record re-encodes to a document that parses back to
//! the same record (`clearing::fuzzing::batch_document`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clearing::fuzzing::batch_document(data));
