//! The key store on disk: restart with the same store, tampering detected on
//! load, the LMK never written anywhere but a test store's own test-LMK file.

mod support;

use card_host::crypto::Key16;
use hsm_sim::keystore::{KeyStore, KeyStoreError, LmkSource, Opened, STORE_FILE, TEST_LMK_FILE};
use hsm_sim::{KeyAlgorithm, KeyType, Lmk, ServerConfig};
use support::*;

fn lmk_of(directory: &std::path::Path) -> Lmk {
    Lmk::parse_hex(&std::fs::read_to_string(directory.join(TEST_LMK_FILE)).expect("test LMK")).expect("hex")
}

#[tokio::test]
async fn restart_with_the_same_store_keeps_every_key() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let (address, task) = serve(directory.path(), ServerConfig::default(), true).await;
    let client = hsm_sim::HsmClient::connect(hsm_sim::ClientConfig::new(address.to_string())).await.expect("connect");
    let before = client.diagnostics().await.expect("NC");
    let (check, _) = client.generate_key("kept.mac", KeyType::Mac, KeyAlgorithm::Sm4, None).await.expect("A0");
    let signature = client.sign_settlement("settlement.signing", b"day 1").await.expect("ZM");
    let keys_before = client.list_keys().await.expect("ZU");
    task.abort();
    drop(client);

    let (address, _task) = serve(directory.path(), ServerConfig::default(), true).await;
    let client = hsm_sim::HsmClient::connect(hsm_sim::ClientConfig::new(address.to_string())).await.expect("connect");
    assert_eq!(client.diagnostics().await.expect("NC").lmk_check, before.lmk_check);
    assert_eq!(client.key_check_value("kept.mac").await.expect("BU"), check);
    assert!(client.verify_settlement("settlement.signing", b"day 1", &signature).await.expect("ZO"));
    assert_eq!(client.list_keys().await.expect("ZU"), keys_before);

    // The same store opened with the LMK given explicitly.
    let (store, opened) = KeyStore::open(directory.path(), LmkSource::Given(lmk_of(directory.path()))).expect("open");
    assert_eq!(opened, Opened::Existing);
    assert!(store.is_test_deployment());
}

#[test]
fn a_fresh_store_has_the_test_keys_and_a_given_lmk_is_not_written() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("new");
    let lmk_hex = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
    let (store, opened) = KeyStore::open(&path, LmkSource::Given(Lmk::parse_hex(lmk_hex).expect("hex"))).expect("open");
    assert_eq!(opened, Opened::FreshTestDeployment);
    assert!(!path.join(TEST_LMK_FILE).exists(), "a given LMK is not saved");
    let text = std::fs::read_to_string(path.join(STORE_FILE)).expect("store");
    assert!(!text.contains(lmk_hex));
    // No key is in the file in clear.
    let keys = master_keys();
    for key in [&keys.tac, &keys.maintenance, &keys.pin_reload, &keys.purchase[0].key] {
        assert!(!text.to_uppercase().contains(&hex::encode_upper(key.expose())));
    }
    let set = store.master_key_set("card").expect("set");
    assert_eq!(set.algorithm, keys.algorithm);
    assert_eq!(set.tac, keys.tac);
    assert_eq!(set.purchase.len(), keys.purchase.len());
    assert_eq!(format!("{:?}", Key16::from_bytes([1; 16])), "Key16(REDACTED)");
    assert!(!format!("{store:?}").contains("0101"), "Debug of the store shows no key");
}

type Change<'a> = Box<dyn FnOnce(&mut serde_json::Value) + 'a>;

fn tamper(directory: &std::path::Path, change: impl FnOnce(&mut serde_json::Value)) -> KeyStoreError {
    let copy = tempfile::tempdir().expect("temporary directory");
    for name in [STORE_FILE, TEST_LMK_FILE] {
        std::fs::copy(directory.join(name), copy.path().join(name)).expect("copy");
    }
    let path = copy.path().join(STORE_FILE);
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    change(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).expect("json")).expect("write");
    KeyStore::open(copy.path(), LmkSource::TestDefault).expect_err("tampering is detected")
}

#[test]
fn tampering_with_the_store_is_detected_on_load() {
    let directory = tempfile::tempdir().expect("temporary directory");
    KeyStore::open(directory.path(), LmkSource::TestDefault).expect("fresh");
    KeyStore::open(directory.path(), LmkSource::TestDefault).expect("untouched store loads");

    let flip = |text: &str| -> String {
        let mut bytes = text.as_bytes().to_vec();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        String::from_utf8(bytes).expect("ascii")
    };
    let cases: Vec<Change<'_>> = vec![
        Box::new(|v| v["keys"][0]["wrapped"] = flip(v["keys"][0]["wrapped"].as_str().expect("hex")).into()),
        Box::new(|v| v["keys"][0]["label"] = "card.renamed".into()),
        Box::new(|v| v["keys"][1]["key_type"] = "MAC".into()),
        Box::new(|v| v["keys"][2]["version"] = 9.into()),
        Box::new(|v| v["keys"][3]["check_value"] = "000000".into()),
        Box::new(|v| {
            v["keys"].as_array_mut().expect("array").remove(1);
        }),
        Box::new(|v| {
            let keys = v["keys"].as_array_mut().expect("array");
            keys.swap(0, 1);
        }),
        Box::new(|v| v["test_deployment"] = false.into()),
        Box::new(|v| v["seal"] = flip(v["seal"].as_str().expect("hex")).into()),
    ];
    for (i, change) in cases.into_iter().enumerate() {
        let error = tamper(directory.path(), change);
        assert!(matches!(error, KeyStoreError::Tampered { .. }), "case {i}: {error}");
    }
    // Not JSON at all, and another LMK.
    std::fs::write(directory.path().join("garbage.json"), "x").expect("write");
    let other =
        KeyStore::open(directory.path(), LmkSource::Given(Lmk::generate().expect("random"))).expect_err("wrong LMK");
    assert!(matches!(other, KeyStoreError::WrongLmk(..)), "{other}");
    let copy = tempfile::tempdir().expect("temporary directory");
    std::fs::write(copy.path().join(STORE_FILE), "{ not json").expect("write");
    std::fs::copy(directory.path().join(TEST_LMK_FILE), copy.path().join(TEST_LMK_FILE)).expect("copy");
    assert!(matches!(KeyStore::open(copy.path(), LmkSource::TestDefault), Err(KeyStoreError::Format { .. })));
    // A store without its LMK does not open.
    let copy = tempfile::tempdir().expect("temporary directory");
    std::fs::copy(directory.path().join(STORE_FILE), copy.path().join(STORE_FILE)).expect("copy");
    assert!(matches!(KeyStore::open(copy.path(), LmkSource::TestDefault), Err(KeyStoreError::NoLmk(_))));
}
