//! The `pn532_frames` fuzz target's body on random input and on hand-made
//! command sequences (libnfc's start-up, a listing, chained APDUs), so every
//! test run fuzzes the PN532 decoder and emulator a little.

use card_host::fuzzing;

/// Commands as the fuzz body splits them: a length byte, then code and parameters.
fn commands(mode: u8, commands: &[&[u8]]) -> Vec<u8> {
    let mut data = vec![mode];
    for command in commands {
        data.push(command.len() as u8);
        data.extend_from_slice(command);
    }
    data
}

#[test]
fn hand_made_command_sequences() {
    let select: &[u8] = &[0x40, 0x01, 0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x06, 0x32, 0x01, 0x01, 0x05];
    for mode in [0, 1, 7, 31, 200, 255] {
        fuzzing::pn532_frames(&commands(
            mode,
            &[
                &[0x14, 0x01],
                b"\x00\x00libnfc",
                &[0x02],
                &[0x12, 0x14],
                &[0x06, 0x63, 0x02, 0x63, 0x03],
                &[0x08, 0x63, 0x02, 0x80],
                &[0x32, 0x01, 0x01],
                &[0x4A, 0x02, 0x00],
                select,
                &[0x40, 0x41, 0x80, 0x5C],
                &[0x40, 0x01, 0x00, 0x02, 0x04],
                &[0x40, 0x01],
                &[0x44, 0x00],
                &[0x54, 0x01],
                &[0x52, 0x00],
                &[0x60, 0x01, 0x01, 0x10],
                &[0x42, 0x26],
                &[0x16, 0xF0],
                &[0x04],
                &[0xFF],
            ],
        ));
    }
    // Raw line noise and frames.
    fuzzing::pn532_frames(&[3, 0x55, 0x55, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]);
    fuzzing::pn532_frames(&[0, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x0A, 0xF5, 0xD4, 0x40]);
    fuzzing::pn532_frames(&[]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_break_the_pn532_decoder_or_emulator(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)
    ) {
        fuzzing::pn532_frames(&data);
    }
}
