//! Every standard and key-management command over TCP through the client, with
//! its error paths.

mod support;

use card_host::crypto::{self, Key16};
use hsm_sim::keys::transport_decrypt;
use hsm_sim::keystore::TEST_SET_TRIPLE_DES;
use hsm_sim::{ClientError, ErrorCode, KeyAlgorithm, KeyType, MacAlgorithm, Request, Response, WrappedKey};
use support::*;

#[tokio::test]
async fn diagnostics_echo_and_random() {
    let hsm = start().await;
    let client = hsm.client().await;
    let diagnostics = client.diagnostics().await.expect("NC");
    assert_eq!(diagnostics.firmware, hsm_sim::command::FIRMWARE_VERSION);
    let lmk = std::fs::read_to_string(hsm.directory.path().join("test-lmk.hex")).expect("test LMK");
    assert_eq!(diagnostics.lmk_check, hsm_sim::Lmk::parse_hex(&lmk).expect("hex").check_value());
    assert_eq!(client.echo(b"hello \x00\xFF").await.expect("B2"), b"hello \x00\xFF");
    assert_eq!(client.echo(b"").await.expect("B2"), b"");
    let a = client.random(32).await.expect("N0");
    let b = client.random(32).await.expect("N0");
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    assert_eq!(client.random(255).await.expect("N0").len(), 255);
    for bad in [0, 256] {
        assert_eq!(client.random(bad).await.expect_err("length").code(), Some(ErrorCode::DataLength));
    }
}

#[tokio::test]
async fn generate_import_export_check_value_and_list() {
    let hsm = start().await;
    let client = hsm.client().await;
    let transport = Key16::from_bytes(*b"zone-master-key!");
    let transport_check =
        client.import_clear_key("zmk.1", KeyType::Transport, KeyAlgorithm::TripleDes, &transport).await.expect("ZS");
    assert_eq!(transport_check, transport.check_value(crypto::Algorithm::TripleDes));

    // A0 into the store, and A0 with export under the transport key.
    let (check, exported) =
        client.generate_key("clearing.mac", KeyType::Mac, KeyAlgorithm::TripleDes, None).await.expect("A0");
    assert_eq!(exported, None);
    assert_eq!(client.key_check_value("clearing.mac").await.expect("BU"), check);
    let (check, exported) = client
        .generate_key("psam.mpk.2", KeyType::PsamPurchaseMaster, KeyAlgorithm::Sm4, Some("zmk.1"))
        .await
        .expect("A0");
    let clear = transport_decrypt(&transport, KeyAlgorithm::TripleDes, &exported.expect("exported")).expect("decrypt");
    assert_eq!(clear.check_value(crypto::Algorithm::Sm4), check);

    // A8 export and A6 import of the same key under the transport key.
    let wrapped = client.export_key("psam.mpk.2", "zmk.1").await.expect("A8");
    assert_eq!(wrapped.check_value, check);
    let imported = client
        .import_key("psam.mpk.2.copy", KeyType::PsamPurchaseMaster, KeyAlgorithm::Sm4, "zmk.1", wrapped)
        .await
        .expect("A6");
    assert_eq!(imported, check);
    // A wrong check value on import is a verification failure, and nothing is stored.
    let bad = WrappedKey { check_value: [0, 0, 0], ..wrapped };
    let error =
        client.import_key("bad", KeyType::PsamPurchaseMaster, KeyAlgorithm::Sm4, "zmk.1", bad).await.expect_err("kcv");
    assert_eq!(error.code(), Some(ErrorCode::VerificationFailure));
    assert_eq!(client.key_check_value("bad").await.expect_err("absent").code(), Some(ErrorCode::KeyNotFound));

    // Error paths.
    let codes = [
        client.generate_key("clearing.mac", KeyType::Mac, KeyAlgorithm::TripleDes, None).await.expect_err("dup").code(),
        client.generate_key("sig.x", KeyType::Signing, KeyAlgorithm::TripleDes, None).await.expect_err("scheme").code(),
        client.generate_key("mac.x", KeyType::Mac, KeyAlgorithm::Ed25519, None).await.expect_err("scheme").code(),
        client
            .generate_key("mac.y", KeyType::Mac, KeyAlgorithm::TripleDes, Some("nozmk"))
            .await
            .expect_err("zmk")
            .code(),
        client
            .generate_key("mac.z", KeyType::Mac, KeyAlgorithm::TripleDes, Some("clearing.mac"))
            .await
            .expect_err("not zmk")
            .code(),
        client.export_key("settlement.signing", "zmk.1").await.expect_err("signing keys stay").code(),
        client.export_key("nokey", "zmk.1").await.expect_err("absent").code(),
    ];
    assert_eq!(
        codes.map(Option::unwrap_or_default_code),
        [
            ErrorCode::LabelInUse,
            ErrorCode::InvalidKeyScheme,
            ErrorCode::InvalidKeyScheme,
            ErrorCode::KeyNotFound,
            ErrorCode::KeyFunctionNotPermitted,
            ErrorCode::KeyFunctionNotPermitted,
            ErrorCode::KeyNotFound,
        ]
    );

    let list = client.list_keys().await.expect("ZU");
    let labels: Vec<&str> = list.iter().map(|k| k.label.as_str()).collect();
    for label in
        ["card.tac", "card.purchase.1", "card.psam.purchase.1", "sm4.load.1", "clearing.mac", "psam.mpk.2", "zmk.1"]
    {
        assert!(labels.contains(&label), "{label} listed");
    }
    let tac = list.iter().find(|k| k.label == "card.tac").expect("listed");
    assert_eq!(tac.key_type, KeyType::CardTacMaster);
    assert_eq!(tac.check_value, master_keys().tac.check_value(crypto::Algorithm::TripleDes));
}

trait CodeOrNone {
    fn unwrap_or_default_code(self) -> ErrorCode;
}

impl CodeOrNone for Option<ErrorCode> {
    fn unwrap_or_default_code(self) -> ErrorCode {
        self.unwrap_or(ErrorCode::Other(99))
    }
}

#[tokio::test]
async fn clear_import_needs_test_mode() {
    let hsm = start_with(hsm_sim::ServerConfig::default(), false).await;
    let client = hsm.client().await;
    let key = Key16::from_bytes([1; 16]);
    let error =
        client.import_clear_key("zmk", KeyType::Transport, KeyAlgorithm::TripleDes, &key).await.expect_err("refused");
    assert_eq!(error.code(), Some(ErrorCode::NotAuthorised));
}

#[tokio::test]
async fn macs_are_card_hosts_iso_9797_macs() {
    let hsm = start().await;
    let client = hsm.client().await;
    let key = Key16::from_bytes(*b"0123456789abcdef");
    client.import_clear_key("mac.3des", KeyType::Mac, KeyAlgorithm::TripleDes, &key).await.expect("ZS");
    client.import_clear_key("mac.sm4", KeyType::Mac, KeyAlgorithm::Sm4, &key).await.expect("ZS");
    let message = b"settlement 2026-11-24 total 123456 fen";
    let iv = [0x11u8; 8];
    let mac = client.generate_mac("mac.3des", MacAlgorithm::Retail, &iv, message).await.expect("M6");
    assert_eq!(mac[..], crypto::mac_retail(&key, iv, message)[..4]);
    assert!(client.verify_mac("mac.3des", MacAlgorithm::Retail, &iv, message, mac).await.expect("M8"));
    assert!(!client.verify_mac("mac.3des", MacAlgorithm::Retail, &iv, b"other", mac).await.expect("M8"));
    let iv16 = [0u8; 16];
    let mac = client.generate_mac("mac.sm4", MacAlgorithm::Sm4Cbc, &iv16, message).await.expect("M6");
    assert_eq!(mac[..], crypto::mac_sm4(&key, iv16, message)[..4]);
    assert!(client.verify_mac("mac.sm4", MacAlgorithm::Sm4Cbc, &iv16, message, mac).await.expect("M8"));
    // Vector C of the digest (secure-messaging retail MAC), through a MAC key.
    let vector_key = Key16::parse_hex("78BBDFD3CECA48FD7BD5F6AE69882C60").expect("hex");
    client.import_clear_key("mac.vector-c", KeyType::Mac, KeyAlgorithm::TripleDes, &vector_key).await.expect("ZS");
    let data = hex::decode("04DC07BC1C1116010020150827172423").expect("hex");
    let mut input = data.clone();
    input.extend_from_slice(&[0; 13]);
    let mac = client
        .generate_mac("mac.vector-c", MacAlgorithm::Retail, &hex::decode("FCF3047700000000").expect("hex"), &input)
        .await
        .expect("M6");
    assert_eq!(hex::encode_upper(mac), "8A0981B8");

    let codes = [
        client.generate_mac("mac.3des", MacAlgorithm::Sm4Cbc, &iv16, message).await.expect_err("alg").code(),
        client.generate_mac("card.tac", MacAlgorithm::Retail, &iv, message).await.expect_err("type").code(),
        client.generate_mac("nokey", MacAlgorithm::Retail, &iv, message).await.expect_err("absent").code(),
    ];
    assert_eq!(
        codes,
        [Some(ErrorCode::IncompatibleKey), Some(ErrorCode::KeyFunctionNotPermitted), Some(ErrorCode::KeyNotFound)]
    );
}

#[tokio::test]
async fn settlement_files_are_signed_and_verified_with_ed25519() {
    let hsm = start().await;
    let client = hsm.client().await;
    let file = b"merchant,amount_fen\nbus-01,123400\nhospital-02,98000\n";
    let signature = client.sign_settlement("settlement.signing", file).await.expect("ZM");
    assert!(client.verify_settlement("settlement.signing", file, &signature).await.expect("ZO"));
    assert!(!client.verify_settlement("settlement.signing", b"merchant,amount_fen\n", &signature).await.expect("ZO"));
    // Anyone with the public key can check it, without the HSM.
    let public = client.settlement_public_key("settlement.signing").await.expect("ZQ");
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public);
    assert!(key.verify(&hsm_sim::settlement_digest(file), &signature).is_ok());
    let (check, _) =
        client.generate_key("settlement.2", KeyType::Signing, KeyAlgorithm::Ed25519, None).await.expect("A0");
    assert_eq!(client.key_check_value("settlement.2").await.expect("BU"), check);
    assert!(!client.verify_settlement("settlement.2", file, &signature).await.expect("another key"));
    assert_eq!(
        client.sign_settlement("card.tac", file).await.expect_err("not a signing key").code(),
        Some(ErrorCode::KeyFunctionNotPermitted)
    );
}

#[tokio::test]
async fn typed_call_answers_typed_responses_and_errors() {
    let hsm = start().await;
    let client = hsm.client().await;
    assert!(matches!(client.call(&Request::Diagnostics).await, Ok(Response::Diagnostics { .. })));
    assert!(matches!(
        client.call(&Request::KeyCheckValue { label: "nothing.here".to_owned() }).await,
        Err(ClientError::Hsm(ErrorCode::KeyNotFound))
    ));
    let check = client.key_check_value(&format!("{TEST_SET_TRIPLE_DES}.maintenance")).await.expect("BU");
    assert_eq!(check, master_keys().maintenance.check_value(crypto::Algorithm::TripleDes));
}

#[tokio::test]
async fn a_key_store_that_cannot_be_written_is_an_internal_error_and_keeps_nothing() {
    let hsm = start().await;
    let client = hsm.client().await;
    std::fs::remove_dir_all(hsm.directory.path()).expect("remove the store's directory");
    let error =
        client.generate_key("lost.mac", KeyType::Mac, KeyAlgorithm::TripleDes, None).await.expect_err("no disk");
    assert_eq!(error.code(), Some(ErrorCode::Internal));
    assert_eq!(client.key_check_value("lost.mac").await.expect_err("not kept").code(), Some(ErrorCode::KeyNotFound));
    // Everything in memory still works.
    assert!(client.diagnostics().await.is_ok());
}

#[tokio::test]
async fn requests_that_cannot_be_encoded_are_refused_by_the_client_and_secrets_stay_out_of_logs() {
    let hsm = start().await;
    let client = hsm.client().await;
    for result in [
        client.key_check_value("has space").await,
        client.key_check_value("").await,
        client.key_check_value(&"x".repeat(41)).await,
    ] {
        assert!(matches!(result, Err(ClientError::InvalidRequest(_))), "{result:?}");
    }
    assert!(matches!(client.random(1_000).await, Err(ClientError::InvalidRequest(_))));
    assert!(matches!(
        client.generate_mac("test.mac", MacAlgorithm::Retail, &[0; 16], b"x").await,
        Err(ClientError::InvalidRequest(_))
    ));
    assert_eq!(client.verify_tacs("card", &[]).await.expect("nothing to do"), vec![]);

    let key = Key16::from_bytes(*b"secret-transport");
    client.import_clear_key("zmk.secret", KeyType::Transport, KeyAlgorithm::TripleDes, &key).await.expect("ZS");
    let request = Request::ImportClearKey {
        key_type: KeyType::Transport,
        algorithm: KeyAlgorithm::TripleDes,
        version: 1,
        label: "x".to_owned(),
        key: key.clone(),
    };
    let key_hex = hex::encode_upper(key.expose());
    assert!(!format!("{request:?}").contains(&key_hex));
    assert!(!format!("{:?}", hsm_sim::Pin::from_digits("123456").expect("pin")).contains("123456"));
    let log = hsm.audit_log().await;
    assert!(log.contains("zmk.secret"));
    assert!(!log.to_uppercase().contains(&key_hex));
}
