//! The fuzz targets' bodies on random input and on hand-made sequences that reach
//! deep into the purse state machine, so every test run fuzzes a little.

use card_host::fuzzing;

fn sequence(apdus: &[&str]) -> Vec<u8> {
    let mut data = Vec::new();
    for apdu in apdus {
        let bytes = hex::decode(apdu).expect("hex");
        data.push(bytes.len() as u8);
        data.extend_from_slice(&bytes);
    }
    data
}

#[test]
fn hand_made_sequences() {
    let select = "00A4040008A000000632010105";
    for apdus in [
        vec![select, "805C000204", "8050010208010000000A3100000000010F", "8054010F0F000000012026112408300000000000"],
        vec![select, "8050030208010000000A3100000000010F", "80DC01B830", "8054010F0F"],
        vec![select, "8050000208010000000A3100000000010F", "805200000B20261124083000AABBCCDD04"],
        vec![
            select,
            "0020000003123456",
            "0020000003000000",
            "0020000003000000",
            "0020000003000000",
            "0020000003123456",
        ],
        vec![select, "0084000004", "841E000004AABBCCDD", "805C000204"],
        vec!["00A404000453535345", "00B2082C00", "00B2092C00", "0084000008", "0082000008AABBCCDDEEFF0011"],
        vec![select, "805A0006020001", "00B0950000", "00B2011C00", "00E200C017AABB"],
        vec!["", "00", "00A4", "00A40400FF", "0000000000", "00A404000000010000"],
    ] {
        fuzzing::card_dispatch(&sequence(&apdus));
        for apdu in apdus {
            fuzzing::decoders(&hex::decode(apdu).expect("hex"));
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_break_the_decoders(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        fuzzing::decoders(&data);
    }

    #[test]
    fn random_apdus_never_break_the_card(
        headers in proptest::collection::vec(
            (proptest::sample::select(vec![0x00u8, 0x04, 0x80, 0x84, 0xA0]),
             proptest::sample::select(vec![0xA4u8, 0xB0, 0xB2, 0xD6, 0xDC, 0xE2, 0x84, 0x82, 0x20, 0x5E, 0x1E, 0x18, 0x5C, 0x50, 0x52, 0x54, 0x5A, 0x70]),
             proptest::num::u8::ANY, proptest::num::u8::ANY,
             proptest::collection::vec(proptest::num::u8::ANY, 0..20)),
            1..12)
    ) {
        let mut data = sequence(&["00A4040008A000000632010105"]);
        for (cla, ins, p1, p2, body) in headers {
            let mut apdu = vec![cla, ins, p1, p2];
            if !body.is_empty() {
                apdu.push(body.len() as u8);
                apdu.extend_from_slice(&body);
            }
            data.push(apdu.len() as u8);
            data.extend_from_slice(&apdu);
        }
        fuzzing::card_dispatch(&data);
    }
}
