//! Terminal batch documents (`clearing-batch/1`) from untrusted bytes: no panic;
//! an accepted document accounts for every record it carried (kept or refused,
//! none dropped); every kept record re-encodes to a document that parses back to
//! the same record.
#![no_main]

use clearing::batch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = batch::parse(data) else {
        return;
    };
    assert_eq!(parsed.records.len(), parsed.raw_records.len(), "every record is kept or refused");
    for record in parsed.records.iter().flatten() {
        let document = batch::document(&parsed.terminal_id, &parsed.batch_id, std::slice::from_ref(record));
        let again = batch::parse_value(document).expect("a kept record re-encodes to a valid document");
        match again.records.as_slice() {
            [Ok(same)] => assert_eq!(same, record),
            other => panic!("a kept record came back as {other:?}"),
        }
    }
});
