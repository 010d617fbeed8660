//! The fuzz targets' bodies (`clearing::fuzzing`, run by `clearing/fuzz`) in the
//! ordinary suite: hand-picked valid bodies, each field mutated, and random
//! bytes and JSON.

use clearing::api::bodies::{IssueCard, RequestBody, TopupAuthorise, TopupVoid};
use clearing::fuzzing;
use proptest::prelude::*;
use serde_json::{Value, json};

fn valid_bodies() -> Vec<Value> {
    vec![
        json!({"card_serial": "3100000000000001", "key_index": 1, "card_random": "01020304", "online_counter": 0,
               "balance_before_fen": 1000, "amount_fen": 5000, "transaction_type": "02", "mac1": "A1B2C3D4"}),
        json!({"card_serial": "3100000000000001", "online_counter": 7, "tac": "0a0b0c0d"}),
        json!({"card_serial": "3100000000000001", "online_counter": 7, "date_time": "20261124083000"}),
        json!({"card_serial": "3100000000000002", "card_type": 1, "key_set": "card", "citizen_id": "310101199001011234",
               "name": "Li Lei", "initial_balance_fen": 0}),
        json!({"new_card_serial": "3100000000000003", "card_type": 1, "key_set": "sm4"}),
        json!({"format": "clearing-batch/1", "terminal_id": "310000000901", "batch_id": "20261124-0001",
               "records": [{"kind": "purchase", "card_serial": "3100000000000001", "card_type": 1,
                            "offline_counter": 5, "balance_before_fen": 10000, "amount_fen": 200,
                            "transaction_type": "06", "terminal_number": "310000000901", "terminal_serial": 17,
                            "date_time": "20261124083000", "tac": "1A2B3C4D"}]}),
    ]
}

/// Replacement values a mutated field takes: wrong types, bounds, odd text.
fn odd_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(-1),
        json!(0),
        json!(1.5),
        json!(65_536),
        json!(4_294_967_296u64),
        json!(u64::MAX),
        json!(""),
        json!("zz"),
        json!("00000000000000000000"),
        json!("20261332250000"),
        json!("\u{0}\u{ffff}"),
        json!([1, 2]),
        json!({"a": 1}),
        json!(true),
    ]
}

#[test]
fn valid_bodies_parse_and_round_trip() {
    let bodies = valid_bodies();
    assert!(TopupAuthorise::parse(bodies[0].to_string().as_bytes()).is_ok());
    assert!(TopupVoid::parse(bodies[2].to_string().as_bytes()).is_ok());
    assert!(IssueCard::parse(bodies[3].to_string().as_bytes()).is_ok());
    for body in &bodies {
        fuzzing::http_bodies(body.to_string().as_bytes());
    }
}

#[test]
fn every_field_mutated_is_kept_or_refused_by_name() {
    for body in valid_bodies() {
        let Value::Object(map) = body else { unreachable!("objects") };
        for field in map.keys() {
            for value in odd_values() {
                let mut mutated = map.clone();
                mutated.insert(field.clone(), value);
                fuzzing::http_bodies(Value::Object(mutated).to_string().as_bytes());
            }
            let mut missing = map.clone();
            missing.remove(field);
            fuzzing::http_bodies(Value::Object(missing).to_string().as_bytes());
        }
        let mut extra = map.clone();
        extra.insert("x".repeat(100), json!(1));
        fuzzing::http_bodies(Value::Object(extra).to_string().as_bytes());
        // An empty field name (found by the fuzzer: it was refused naming the field "").
        let mut empty = map.clone();
        empty.insert(String::new(), json!(1));
        fuzzing::http_bodies(Value::Object(empty).to_string().as_bytes());
        // Every prefix of the bytes (cut JSON).
        let bytes = Value::Object(map).to_string().into_bytes();
        for end in 0..bytes.len() {
            fuzzing::http_bodies(&bytes[..end]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::http_bodies(&data);
    }

    #[test]
    fn random_field_values_never_panic(
        which in 0usize..6,
        field in 0usize..16,
        value in prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            "[0-9A-Fa-f]{0,20}".prop_map(Value::from),
            ".{0,30}".prop_map(Value::from),
        ],
    ) {
        let Value::Object(mut map) = valid_bodies().swap_remove(which) else { unreachable!("objects") };
        let name = map.keys().nth(field % map.len()).cloned().expect("a field");
        map.insert(name, value);
        fuzzing::http_bodies(Value::Object(map).to_string().as_bytes());
    }
}
