//! Random bytes into the frame and command parser: never a panic; and every
//! command the client can build parses back to itself.

use hsm_sim::command::{BatchRecord, LoadTac, PurchaseTac, Request, TacRecord};
use hsm_sim::parse_message;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), header in 0usize..8) {
        let _ = parse_message(&bytes, header);
    }

    #[test]
    fn random_fields_after_every_known_code_never_panic(
        code in proptest::sample::select(Request::CODES.to_vec()),
        fields in proptest::collection::vec(proptest::sample::select(b"0123456789ABCDEFTSEPLRUBMACZMK.x04card ".to_vec()), 0..200),
    ) {
        let mut message = b"0000".to_vec();
        message.extend_from_slice(code);
        message.extend_from_slice(&fields);
        let _ = parse_message(&message, 4);
    }

    #[test]
    fn tac_requests_round_trip(
        serial in any::<[u8; 8]>(),
        amount in any::<u32>(),
        terminal in any::<[u8; 6]>(),
        terminal_serial in any::<u32>(),
        counter in any::<u16>(),
        tac in any::<[u8; 4]>(),
        minute in 0u8..60,
    ) {
        let at = card_host::CardDateTime::new(2026, 11, 24, 8, minute, 0).expect("valid");
        let purchase = PurchaseTac {
            serial: card_host::ApplicationSerial(serial),
            amount: card_host::Fen(amount),
            kind: card_host::TransactionType::PursePurchase,
            terminal: card_host::TerminalNumber(terminal),
            terminal_serial,
            at,
            tac,
        };
        let load = LoadTac {
            serial: card_host::ApplicationSerial(serial),
            new_balance: card_host::Fen(amount),
            online_counter: counter,
            amount: card_host::Fen(amount / 2),
            kind: card_host::TransactionType::PurseLoad,
            terminal: card_host::TerminalNumber(terminal),
            at,
            tac,
        };
        let requests = [
            Request::VerifyPurchaseTac { key_set: "card".to_owned(), record: purchase.clone() },
            Request::VerifyLoadTac { key_set: "sm4".to_owned(), record: load.clone() },
            Request::VerifyTacBatch {
                key_set: "card".to_owned(),
                records: vec![BatchRecord::Tac(TacRecord::Purchase(purchase)), BatchRecord::Tac(TacRecord::Load(load))],
            },
        ];
        for request in requests {
            let encoded = request.encode();
            prop_assert_eq!(Request::parse(request.code(), &encoded), Ok(request));
        }
    }
}
