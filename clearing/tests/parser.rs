//! The batch parser never panics, and refuses or keeps each record, whatever it is given.

use proptest::prelude::*;
use serde_json::{Value, json};

fn a_record() -> Value {
    json!({"kind": "purchase", "card_serial": "3100000000000001", "card_type": 1, "offline_counter": 5,
           "balance_before_fen": 10000, "amount_fen": 200, "transaction_type": "06",
           "terminal_number": "310000000901", "terminal_serial": 17, "date_time": "20261124083000", "tac": "1A2B3C4D"})
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[0-9A-Fa-f]{0,20}".prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = clearing::batch::parse(&bytes);
    }

    #[test]
    fn a_mutated_record_is_kept_or_refused_alone(
        field in prop::sample::select(vec!["kind", "card_serial", "card_type", "offline_counter",
            "balance_before_fen", "amount_fen", "transaction_type", "terminal_number", "terminal_serial",
            "date_time", "tac", "extra"]),
        value in json_value(),
    ) {
        let mut mutated = a_record();
        mutated[field] = value;
        let document = json!({"format": "clearing-batch/1", "terminal_id": "310000000901", "batch_id": "b",
                              "records": [a_record(), mutated]});
        let batch = clearing::batch::parse(document.to_string().as_bytes()).expect("the document parses");
        prop_assert_eq!(batch.records.len(), 2);
        prop_assert!(batch.records[0].is_ok());
        if let Err(rejection) = &batch.records[1] {
            prop_assert_eq!(rejection.index, 1);
            prop_assert!(!rejection.field.is_empty() && !rejection.message.is_empty());
        }
    }
}
