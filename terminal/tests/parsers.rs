//! Property tests of the terminal's parsers: a compound record from any bytes
//! never panics and what parses writes back the same; tariff and blacklist
//! text never panics; a quote's parts always add up to its base.

use card_host::Fen;
use card_host::card::CardType;
use proptest::prelude::*;
use terminal::blacklist::Blacklist;
use terminal::compound::{COMPOUND_RECORD_BYTES, CompoundRecord};
use terminal::tariff::{Tariff, Trip};

proptest! {
    #[test]
    fn compound_records_parse_or_refuse(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(record) = CompoundRecord::parse(&bytes) {
            let written = record.to_bytes();
            prop_assert_eq!(written.len(), COMPOUND_RECORD_BYTES);
            prop_assert_eq!(CompoundRecord::parse(&written).expect("what we write parses"), record);
        }
    }

    #[test]
    fn compound_records_with_valid_length_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 48)) {
        bytes[1] = 46;
        if let Ok(record) = CompoundRecord::parse(&bytes) {
            prop_assert_eq!(CompoundRecord::parse(&record.to_bytes()).expect("what we write parses"), record);
        }
    }

    #[test]
    fn tariff_and_blacklist_text_never_panics(text in "\\PC{0,200}") {
        let _ = Tariff::parse(&text);
        let _ = Blacklist::parse(&text);
    }

    #[test]
    fn quotes_add_up_and_never_exceed_the_base(
        amount in 0u32..=10_000,
        percent in 0u8..=100,
        off in 0u32..=10_000,
        transfer in 0u32..=10_000,
        stations in 0u16..=200,
        with_transfer: bool,
    ) {
        let flat = Tariff::parse(&format!(
            "name = \"p\"\nfare = {{ kind = \"flat\", amount_fen = {amount} }}\n[concessions]\nstudent = {{ percent_off = {percent} }}\n\
             disabled = {{ fixed_off_fen = {off} }}\n[transfer]\nwindow_minutes = 60\ndiscount_fen = {transfer}\n"
        )).expect("valid");
        let distance = Tariff::parse(&format!(
            "name = \"d\"\nfare = {{ kind = \"distance\", base_fen = {}, included_stations = 3, step_stations = 2, \
             step_fen = 50, max_fen = {amount} }}\n", amount / 2
        )).expect("valid");
        for card_type in [CardType::Ordinary, CardType::Student, CardType::Senior, CardType::Disabled] {
            for (tariff, trip) in [(&flat, Trip::Boarding), (&distance, Trip::Stations(stations))] {
                let quote = tariff.quote(card_type, trip, with_transfer);
                prop_assert!(quote.amount <= quote.base);
                prop_assert_eq!(
                    u64::from(quote.amount.0) + u64::from(quote.concession_off.0) + u64::from(quote.transfer_off.0),
                    u64::from(quote.base.0)
                );
                prop_assert!(quote.base <= Fen(amount.max(amount / 2)));
            }
        }
    }
}
