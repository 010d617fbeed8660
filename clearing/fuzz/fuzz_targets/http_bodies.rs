//! Every JSON body the clearing API parses (top-up authorise, confirm and void;
//! the issuer's issue and replacement; the terminal batch document) from
//! untrusted bytes: no panic; a refusal is a 422 naming a field; an accepted
//! body re-encodes to JSON that parses back to the same body
//! (`clearing::fuzzing::http_bodies`, which the ordinary tests also run).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clearing::fuzzing::http_bodies(data));
