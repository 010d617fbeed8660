//! Known-answer tests of the card cryptography, driven by the JSON files in
//! `fixtures/vectors/` (see `docs/crypto.md` for what each value is):
//!
//! - `published.json`: digest vectors A (EP load), B (住建部 CAPP purchase) and C
//!   (secure-messaging retail MACs) from real card logs in the public repository
//!   ConardLKL/ChangSha, and a few more values from the same log; every entry
//!   carries its `source`.
//! - `standards.json`: DES, 3DES and SM4 known answers from FIPS 81, NIST SP 800-17,
//!   SP 800-20, SP 800-67 and GB/T 32907-2016.
//! - `derived.json`: written by `fixtures/vectors/crosscheck.py`, an independent
//!   Python implementation (OpenSSL through `cryptography`) of our conventions,
//!   for what no public log covers: diversification, the SM4 profile, edges.
//!
//! Every expected value comes from a fixture, never from the code under test.

use std::path::PathBuf;

use card_host::crypto::{
    self, Algorithm, Key16, SessionKey, des_decrypt_block, des_encrypt_block, mac_retail, mac_single_des, mac_sm4,
    pad_method2, purse, sm4_decrypt_block, sm4_encrypt_block, tdes_decrypt_block, tdes_encrypt_block,
};
use card_host::{CardDateTime, Fen, TerminalNumber, TransactionType};
use serde::Deserialize;
use serde::de::DeserializeOwned;

// ----- fixtures -----

fn fixture<T: DeserializeOwned>(name: &str) -> T {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "fixtures", "vectors", name].iter().collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn bytes(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap_or_else(|_| panic!("not hex: {text}"))
}

fn array<const N: usize>(text: &str) -> [u8; N] {
    bytes(text).try_into().unwrap_or_else(|_| panic!("not {N} bytes: {text}"))
}

fn key(text: &str) -> Key16 {
    Key16::parse_hex(text).unwrap_or_else(|_| panic!("not a 16-byte key: {text}"))
}

fn upper(data: &[u8]) -> String {
    hex::encode_upper(data)
}

fn fen(text: &str) -> Fen {
    Fen::from_bytes(array(text))
}

fn counter(text: &str) -> u16 {
    u16::from_be_bytes(array(text))
}

fn serial(text: &str) -> u32 {
    u32::from_be_bytes(array(text))
}

fn kind(text: &str) -> TransactionType {
    TransactionType::from_code(array::<1>(text)[0]).expect("known transaction type")
}

fn terminal(text: &str) -> TerminalNumber {
    TerminalNumber::parse_hex(text).expect("6-byte terminal number")
}

fn at(text: &str) -> CardDateTime {
    CardDateTime::from_slice(&bytes(text)).expect("BCD date and time")
}

fn algorithm(name: &str) -> Algorithm {
    match name {
        "triple_des" => Algorithm::TripleDes,
        "sm4" => Algorithm::Sm4,
        other => panic!("unknown algorithm {other}"),
    }
}

fn xor_halves(key: &Key16) -> [u8; 8] {
    let (left, right) = (key.left(), key.right());
    std::array::from_fn(|i| left[i] ^ right[i])
}

// ----- published.json -----

#[derive(Deserialize)]
struct Published {
    #[allow(dead_code)]
    source: String,
    load: Vec<PublishedLoad>,
    purchase: Vec<PublishedPurchase>,
    secure_messaging: Vec<PublishedSecureMessaging>,
    external_auth: Vec<PublishedExternalAuth>,
    tdes_ecb: Vec<PublishedBlocks>,
}

#[derive(Deserialize)]
struct PublishedLoad {
    name: String,
    source: String,
    dlk: String,
    dtk: String,
    command: String,
    init_response: String,
    card_random: String,
    online_counter: String,
    balance_before: String,
    amount: String,
    transaction_type: String,
    terminal: String,
    at: String,
    session_key: String,
    mac1: String,
    mac2: String,
    tac_key: String,
    tac: String,
}

#[derive(Deserialize)]
struct PublishedPurchase {
    name: String,
    source: String,
    dpk: String,
    dtk: String,
    init_response: String,
    card_random: String,
    offline_counter: String,
    terminal_serial: String,
    amount: String,
    transaction_type: String,
    terminal: String,
    at: String,
    security_auth_code: String,
    session_key: String,
    mac1: String,
    standard_mac1: String,
    #[allow(dead_code)]
    standard_mac1_note: String,
    mac2: String,
    tac: String,
    debit_response: String,
}

#[derive(Deserialize)]
struct PublishedSecureMessaging {
    name: String,
    source: String,
    key: String,
    challenge: String,
    header_and_data: String,
    mac: String,
}

#[derive(Deserialize)]
struct PublishedExternalAuth {
    name: String,
    source: String,
    key: String,
    challenge: String,
    cryptogram: String,
}

#[derive(Deserialize)]
struct PublishedBlocks {
    name: String,
    source: String,
    key: String,
    plaintext: String,
    ciphertext: String,
}

fn cites_the_log(name: &str, source: &str) {
    assert!(source.contains("ConardLKL/ChangSha"), "{name}: source must name the public repository");
    assert!(source.contains("verify_pboc.py"), "{name}: source must say how it was recomputed");
}

/// Digest vector A (EP load, ConardLKL/ChangSha `doc/华大智宝/t2_load.txt`): the
/// session key, MAC1, MAC2, TAC key and TAC through the crypto functions.
#[test]
fn published_vector_a_load() {
    let published: Published = fixture("published.json");
    assert!(!published.load.is_empty());
    for v in &published.load {
        let name = &v.name;
        cites_the_log(name, &v.source);
        // The log's INITIALIZE FOR LOAD answer carries the inputs used below.
        let command = bytes(&v.command);
        assert_eq!(upper(&command[6..10]), v.amount, "{name}: amount in the command");
        assert_eq!(upper(&command[10..16]), v.terminal, "{name}: terminal in the command");
        let init = bytes(&v.init_response);
        assert_eq!(upper(&init[..4]), v.balance_before, "{name}");
        assert_eq!(upper(&init[4..6]), v.online_counter, "{name}");
        assert_eq!(Algorithm::from_id(init[7]), Ok(Algorithm::TripleDes), "{name}: algorithm id 00 is 3DES");
        assert_eq!(upper(&init[8..12]), v.card_random, "{name}");
        assert_eq!(upper(&init[12..16]), v.mac1, "{name}");

        let (amount, kind, terminal, at) =
            (fen(&v.amount), kind(&v.transaction_type), terminal(&v.terminal), at(&v.at));
        assert_eq!(kind, TransactionType::PurseLoad, "{name}");
        let session = crypto::load_session_key(
            Algorithm::TripleDes,
            &key(&v.dlk),
            array(&v.card_random),
            counter(&v.online_counter),
        );
        assert_eq!(upper(session.expose()), v.session_key, "{name}: SESLK");
        assert_eq!(
            upper(&purse::load_mac1(&session, fen(&v.balance_before), amount, kind, &terminal)),
            v.mac1,
            "{name}: MAC1"
        );
        assert_eq!(upper(&purse::load_mac2(&session, amount, kind, &terminal, &at)), v.mac2, "{name}: MAC2");

        let dtk = key(&v.dtk);
        assert_eq!(upper(&xor_halves(&dtk)), v.tac_key, "{name}: TAC key = DTK left XOR right");
        let new_balance = fen(&v.balance_before).checked_add(amount).expect("no overflow");
        let tac = purse::load_tac(
            Algorithm::TripleDes,
            &dtk,
            new_balance,
            counter(&v.online_counter),
            amount,
            kind,
            &terminal,
            &at,
        );
        assert_eq!(upper(&tac), v.tac, "{name}: TAC");
        // The same TAC as a plain single-DES CBC-MAC under the published TAC key.
        let mut data = new_balance.to_bytes().to_vec();
        data.extend_from_slice(&bytes(&v.online_counter));
        data.extend_from_slice(&bytes(&v.amount));
        data.extend_from_slice(&bytes(&v.transaction_type));
        data.extend_from_slice(&bytes(&v.terminal));
        data.extend_from_slice(&bytes(&v.at));
        assert_eq!(upper(&mac_single_des(&array(&v.tac_key), [0; 8], &data)[..4]), v.tac, "{name}: TAC by hand");
    }
}

/// Digest vector B (住建部 CAPP purchase, ConardLKL/ChangSha `doc/华大智宝/t7_purchase.py`):
/// SESPK, MAC1 with the 9-byte security-auth code appended, MAC2 and TAC.
#[test]
fn published_vector_b_capp_purchase() {
    let published: Published = fixture("published.json");
    assert!(!published.purchase.is_empty());
    for v in &published.purchase {
        let name = &v.name;
        cites_the_log(name, &v.source);
        let init = bytes(&v.init_response);
        assert_eq!(upper(&init[..4]), v.amount, "{name}: the balance before is the amount spent");
        assert_eq!(upper(&init[4..6]), v.offline_counter, "{name}");
        assert_eq!(Algorithm::from_id(init[10]), Ok(Algorithm::TripleDes), "{name}: algorithm id 00 is 3DES");
        assert_eq!(upper(&init[11..15]), v.card_random, "{name}");

        let (amount, kind, terminal, at) =
            (fen(&v.amount), kind(&v.transaction_type), terminal(&v.terminal), at(&v.at));
        assert_eq!(kind, TransactionType::CompoundPurchase, "{name}");
        let session = crypto::purchase_session_key(
            Algorithm::TripleDes,
            &key(&v.dpk),
            array(&v.card_random),
            counter(&v.offline_counter),
            serial(&v.terminal_serial),
        );
        assert_eq!(upper(session.expose()), v.session_key, "{name}: SESPK");

        // The card of the log wants 住建部's 9-byte code after the standard MAC1 data.
        let mut mac1_data = amount.to_bytes().to_vec();
        mac1_data.push(kind.code());
        mac1_data.extend_from_slice(&terminal.0);
        mac1_data.extend_from_slice(&bytes(&v.at));
        let standard = purse::purchase_mac1(&session, amount, kind, &terminal, &at);
        assert_eq!(upper(&standard), v.standard_mac1, "{name}: standard MAC1 (ours)");
        assert_eq!(standard, session.mac(&mac1_data), "{name}: purchase_mac1 is the MAC of the standard data");
        mac1_data.extend_from_slice(&bytes(&v.security_auth_code));
        assert_eq!(upper(&session.mac(&mac1_data)), v.mac1, "{name}: MAC1 with the security-auth code");

        let mac2 = purse::purchase_mac2(&session, amount);
        assert_eq!(upper(&mac2), v.mac2, "{name}: MAC2");
        let tac = purse::purchase_tac(
            Algorithm::TripleDes,
            &key(&v.dtk),
            amount,
            kind,
            &terminal,
            serial(&v.terminal_serial),
            &at,
        );
        assert_eq!(upper(&tac), v.tac, "{name}: TAC");
        assert_eq!(format!("{}{}", upper(&tac), upper(&mac2)), v.debit_response, "{name}: DEBIT answers TAC ‖ MAC2");
    }
}

/// Digest vector C and three more MACs of the same personalisation log: the
/// retail MAC (ISO 9797-1 algorithm 3) over the whole header, Lc counting the MAC,
/// with GET CHALLENGE ‖ `00000000` as initial value.
#[test]
fn published_vector_c_secure_messaging_macs() {
    let published: Published = fixture("published.json");
    assert!(published.secure_messaging.len() >= 2);
    for v in &published.secure_messaging {
        let name = &v.name;
        cites_the_log(name, &v.source);
        let input = bytes(&v.header_and_data);
        assert_eq!(usize::from(input[4]), input.len() - 5 + 4, "{name}: Lc counts the data and the 4 MAC bytes");
        let mac = crypto::secure_messaging_mac(Algorithm::TripleDes, &key(&v.key), array(&v.challenge), &input);
        assert_eq!(upper(&mac), v.mac, "{name}");
        let mut iv = [0u8; 8];
        iv[..4].copy_from_slice(&bytes(&v.challenge));
        assert_eq!(upper(&mac_retail(&key(&v.key), iv, &input)[..4]), v.mac, "{name}: mac_retail");
    }
}

/// More from the personalisation log (`t1_initAndActive.txt` / `.py`): an
/// EXTERNAL AUTHENTICATE cryptogram and a 2-key 3DES ECB encryption of key data.
#[test]
fn published_log_external_auth_and_tdes() {
    let published: Published = fixture("published.json");
    assert!(!published.external_auth.is_empty() && !published.tdes_ecb.is_empty());
    for v in &published.external_auth {
        cites_the_log(&v.name, &v.source);
        let cryptogram = crypto::external_auth_cryptogram(Algorithm::TripleDes, &key(&v.key), &array(&v.challenge));
        assert_eq!(upper(&cryptogram), v.cryptogram, "{}", v.name);
    }
    for v in &published.tdes_ecb {
        cites_the_log(&v.name, &v.source);
        let (k, plain, cipher) = (key(&v.key), bytes(&v.plaintext), bytes(&v.ciphertext));
        assert_eq!(plain.len(), cipher.len());
        for (p, c) in plain.chunks(8).zip(cipher.chunks(8)) {
            let (p, c): ([u8; 8], [u8; 8]) = (p.try_into().expect("8"), c.try_into().expect("8"));
            assert_eq!(upper(&tdes_encrypt_block(&k, p)), upper(&c), "{}: encrypt", v.name);
            assert_eq!(upper(&tdes_decrypt_block(&k, c)), upper(&p), "{}: decrypt", v.name);
        }
    }
}

// ----- standards.json -----

#[derive(Deserialize)]
struct Standards {
    #[allow(dead_code)]
    source: String,
    des: Vec<StandardBlock>,
    tdes2: Vec<StandardBlock>,
    tdes3_from_des: Vec<StandardTdes3>,
    sm4: Vec<StandardSm4>,
}

#[derive(Deserialize)]
struct StandardBlock {
    name: String,
    source: String,
    key: String,
    plaintext: String,
    ciphertext: String,
}

#[derive(Deserialize)]
struct StandardTdes3 {
    name: String,
    source: String,
    k1: String,
    k2: String,
    k3: String,
    plaintext: String,
    ciphertext: String,
}

#[derive(Deserialize)]
struct StandardSm4 {
    name: String,
    source: String,
    key: String,
    plaintext: String,
    iterations: u32,
    ciphertext: String,
}

fn blocks8(text: &str) -> Vec<[u8; 8]> {
    bytes(text).chunks(8).map(|c| c.try_into().expect("whole 8-byte blocks")).collect()
}

/// DES: FIPS 81 Appendix B (ECB, "Now is the time for all ") and the first rows of
/// NIST SP 800-17's variable-plaintext known-answer test.
#[test]
fn standard_des_known_answers() {
    let standards: Standards = fixture("standards.json");
    assert!(!standards.des.is_empty());
    for v in &standards.des {
        assert!(v.source.contains("FIPS") || v.source.contains("NIST"), "{}: cite the standard", v.name);
        let k: [u8; 8] = array(&v.key);
        for (p, c) in blocks8(&v.plaintext).into_iter().zip(blocks8(&v.ciphertext)) {
            assert_eq!(upper(&des_encrypt_block(&k, p)), upper(&c), "{}: encrypt", v.name);
            assert_eq!(upper(&des_decrypt_block(&k, c)), upper(&p), "{}: decrypt", v.name);
        }
    }
}

/// 3DES: NIST SP 800-20's TECB variable-plaintext rows (all keys equal, our 2-key
/// type with K1 = K2), and the 3-key NIST SP 800-67 example composed from our DES.
#[test]
fn standard_tdes_known_answers() {
    let standards: Standards = fixture("standards.json");
    assert!(!standards.tdes2.is_empty() && !standards.tdes3_from_des.is_empty());
    for v in &standards.tdes2 {
        assert!(v.source.contains("NIST"), "{}: cite the standard", v.name);
        let k = key(&v.key);
        for (p, c) in blocks8(&v.plaintext).into_iter().zip(blocks8(&v.ciphertext)) {
            assert_eq!(upper(&tdes_encrypt_block(&k, p)), upper(&c), "{}: encrypt", v.name);
            assert_eq!(upper(&tdes_decrypt_block(&k, c)), upper(&p), "{}: decrypt", v.name);
        }
    }
    for v in &standards.tdes3_from_des {
        assert!(v.source.contains("NIST"), "{}: cite the standard", v.name);
        let (k1, k2, k3): ([u8; 8], [u8; 8], [u8; 8]) = (array(&v.k1), array(&v.k2), array(&v.k3));
        for (p, c) in blocks8(&v.plaintext).into_iter().zip(blocks8(&v.ciphertext)) {
            let encrypted = des_encrypt_block(&k3, des_decrypt_block(&k2, des_encrypt_block(&k1, p)));
            assert_eq!(upper(&encrypted), upper(&c), "{}: encrypt", v.name);
            let decrypted = des_decrypt_block(&k1, des_encrypt_block(&k2, des_decrypt_block(&k3, c)));
            assert_eq!(upper(&decrypted), upper(&p), "{}: decrypt", v.name);
        }
    }
}

/// SM4: GB/T 32907-2016 Appendix A, examples 1 (one encryption, and its
/// decryption) and 2 (one million encryptions of the same block under the same key).
#[test]
fn standard_sm4_known_answers() {
    let standards: Standards = fixture("standards.json");
    assert!(!standards.sm4.is_empty());
    for v in &standards.sm4 {
        assert!(v.source.contains("GB/T 32907"), "{}: cite the standard", v.name);
        let k = key(&v.key);
        let block = (0..v.iterations).fold(array::<16>(&v.plaintext), |block, _| sm4_encrypt_block(&k, block));
        assert_eq!(upper(&block), v.ciphertext, "{}", v.name);
        if v.iterations == 1 {
            assert_eq!(upper(&sm4_decrypt_block(&k, array(&v.ciphertext))), v.plaintext, "{}: decrypt", v.name);
        }
    }
}

// ----- derived.json -----

#[derive(Deserialize)]
struct Derived {
    source: String,
    cases: Vec<DerivedCase>,
    diversify_levels: Vec<DerivedLevels>,
    check_values: Vec<DerivedCheckValue>,
    external_auth: Vec<DerivedExternalAuth>,
    secure_messaging: Vec<DerivedSecureMessaging>,
    macs: Vec<DerivedMacs>,
    padding: Vec<DerivedPadding>,
    compound_purchase: Vec<DerivedCompound>,
}

#[derive(Deserialize)]
struct DerivedCase {
    algorithm: String,
    master: String,
    serial: String,
    card_key: String,
    card_random: String,
    counter: u16,
    terminal_serial: u32,
    balance: u32,
    amount: u32,
    terminal: String,
    at: String,
    purchase_session_key: String,
    load_session_key: String,
    purchase_mac1: String,
    purchase_mac2: String,
    purchase_tac: String,
    load_mac1: String,
    load_mac2: String,
    load_tac: String,
}

#[derive(Deserialize)]
struct DerivedLevels {
    algorithm: String,
    master: String,
    factors: Vec<String>,
    key: String,
    first_level_only: String,
}

#[derive(Deserialize)]
struct DerivedCheckValue {
    algorithm: String,
    key: String,
    check_value: String,
}

#[derive(Deserialize)]
struct DerivedExternalAuth {
    algorithm: String,
    key: String,
    challenge: String,
    cryptogram: String,
}

#[derive(Deserialize)]
struct DerivedSecureMessaging {
    algorithm: String,
    key: String,
    challenge: String,
    header_and_data: String,
    mac: String,
}

#[derive(Deserialize)]
struct DerivedMacs {
    data: String,
    single_des_key: String,
    single_des_iv: String,
    single_des: String,
    retail_key: String,
    retail_iv: String,
    retail: String,
    sm4_key: String,
    sm4_iv: String,
    sm4: String,
}

#[derive(Deserialize)]
struct DerivedPadding {
    data: String,
    block_size: usize,
    padded: String,
}

#[derive(Deserialize)]
struct DerivedCompound {
    algorithm: String,
    card_key: String,
    card_random: String,
    counter: u16,
    terminal_serial: u32,
    amount: u32,
    terminal: String,
    at: String,
    purchase_session_key: String,
    mac1: String,
    mac2: String,
    tac: String,
}

fn derived() -> Derived {
    let derived: Derived = fixture("derived.json");
    assert!(derived.source.contains("crosscheck.py"));
    derived
}

/// Both profiles: diversification by the application serial, both session keys,
/// load MAC1/MAC2/TAC and purchase MAC1/MAC2/TAC (crosscheck.py).
#[test]
fn derived_purse_cases() {
    let derived = derived();
    assert_eq!(derived.cases.len(), 6);
    for (i, c) in derived.cases.iter().enumerate() {
        let alg = algorithm(&c.algorithm);
        let card_key = crypto::diversify(alg, &key(&c.master), &array(&c.serial));
        assert_eq!(upper(card_key.expose()), c.card_key, "case {i}: diversified key");
        let (terminal, at, amount) = (terminal(&c.terminal), at(&c.at), Fen(c.amount));
        let random = array(&c.card_random);

        let spk = crypto::purchase_session_key(alg, &card_key, random, c.counter, c.terminal_serial);
        assert_eq!(upper(spk.expose()), c.purchase_session_key, "case {i}: SESPK");
        assert!(matches!(
            (alg, &spk),
            (Algorithm::TripleDes, SessionKey::Des(_)) | (Algorithm::Sm4, SessionKey::Sm4(_))
        ));
        let kind = TransactionType::PursePurchase;
        assert_eq!(
            upper(&purse::purchase_mac1(&spk, amount, kind, &terminal, &at)),
            c.purchase_mac1,
            "case {i}: purchase MAC1"
        );
        assert_eq!(upper(&purse::purchase_mac2(&spk, amount)), c.purchase_mac2, "case {i}: purchase MAC2");
        let tac = purse::purchase_tac(alg, &card_key, amount, kind, &terminal, c.terminal_serial, &at);
        assert_eq!(upper(&tac), c.purchase_tac, "case {i}: purchase TAC");

        let slk = crypto::load_session_key(alg, &card_key, random, c.counter);
        assert_eq!(upper(slk.expose()), c.load_session_key, "case {i}: SESLK");
        let kind = TransactionType::PurseLoad;
        assert_eq!(
            upper(&purse::load_mac1(&slk, Fen(c.balance), amount, kind, &terminal)),
            c.load_mac1,
            "case {i}: load MAC1"
        );
        assert_eq!(upper(&purse::load_mac2(&slk, amount, kind, &terminal, &at)), c.load_mac2, "case {i}: load MAC2");
        let new_balance = Fen(c.balance + c.amount);
        let tac = purse::load_tac(alg, &card_key, new_balance, c.counter, amount, kind, &terminal, &at);
        assert_eq!(upper(&tac), c.load_tac, "case {i}: load TAC");
    }
}

/// Compound (type `09`) purchase in both profiles, amount 0 (a gate entry).
#[test]
fn derived_compound_purchase() {
    let derived = derived();
    assert_eq!(derived.compound_purchase.len(), 2);
    for (i, c) in derived.compound_purchase.iter().enumerate() {
        let alg = algorithm(&c.algorithm);
        let card_key = key(&c.card_key);
        let (terminal, at, amount, kind) =
            (terminal(&c.terminal), at(&c.at), Fen(c.amount), TransactionType::CompoundPurchase);
        let spk = crypto::purchase_session_key(alg, &card_key, array(&c.card_random), c.counter, c.terminal_serial);
        assert_eq!(upper(spk.expose()), c.purchase_session_key, "case {i}: SESPK");
        assert_eq!(upper(&purse::purchase_mac1(&spk, amount, kind, &terminal, &at)), c.mac1, "case {i}: MAC1");
        assert_eq!(upper(&purse::purchase_mac2(&spk, amount)), c.mac2, "case {i}: MAC2");
        let tac = purse::purchase_tac(alg, &card_key, amount, kind, &terminal, c.terminal_serial, &at);
        assert_eq!(upper(&tac), c.tac, "case {i}: TAC");
    }
}

/// Several diversification levels, the first factor first.
#[test]
fn derived_diversify_levels() {
    let derived = derived();
    assert_eq!(derived.diversify_levels.len(), 4);
    for (i, c) in derived.diversify_levels.iter().enumerate() {
        let (alg, master) = (algorithm(&c.algorithm), key(&c.master));
        let factors: Vec<[u8; 8]> = c.factors.iter().map(|f| array(f)).collect();
        assert!(factors.len() >= 2);
        assert_eq!(upper(crypto::diversify_levels(alg, &master, &factors).expose()), c.key, "case {i}");
        assert_eq!(
            upper(crypto::diversify_levels(alg, &master, &factors[..1]).expose()),
            c.first_level_only,
            "case {i}: one level"
        );
        assert_eq!(
            upper(crypto::diversify(alg, &master, &factors[0]).expose()),
            c.first_level_only,
            "case {i}: diversify"
        );
        let reversed: Vec<[u8; 8]> = factors.iter().rev().copied().collect();
        assert_ne!(upper(crypto::diversify_levels(alg, &master, &reversed).expose()), c.key, "case {i}: order matters");
    }
}

#[test]
fn derived_key_check_values() {
    let derived = derived();
    assert_eq!(derived.check_values.len(), 6);
    for (i, c) in derived.check_values.iter().enumerate() {
        assert_eq!(upper(&key(&c.key).check_value(algorithm(&c.algorithm))), c.check_value, "case {i}");
    }
}

#[test]
fn derived_external_auth_cryptograms() {
    let derived = derived();
    assert_eq!(derived.external_auth.len(), 4);
    for (i, c) in derived.external_auth.iter().enumerate() {
        let cryptogram = crypto::external_auth_cryptogram(algorithm(&c.algorithm), &key(&c.key), &array(&c.challenge));
        assert_eq!(upper(&cryptogram), c.cryptogram, "case {i}");
    }
}

/// Secure messaging in both profiles, including MAC inputs that end on a block
/// boundary (a whole padding block is added).
#[test]
fn derived_secure_messaging_macs() {
    let derived = derived();
    assert_eq!(derived.secure_messaging.len(), 8);
    for (i, c) in derived.secure_messaging.iter().enumerate() {
        let input = bytes(&c.header_and_data);
        assert_eq!(usize::from(input[4]), input.len() - 5 + 4, "case {i}: Lc counts the MAC");
        let mac = crypto::secure_messaging_mac(algorithm(&c.algorithm), &key(&c.key), array(&c.challenge), &input);
        assert_eq!(upper(&mac), c.mac, "case {i}");
    }
}

/// The raw MACs (whole last block, non-zero IV for the DES ones) and ISO 9797-1
/// padding method 2 for lengths around the 8- and 16-byte boundaries.
#[test]
fn derived_raw_macs_and_padding() {
    let derived = derived();
    assert_eq!(derived.macs.len(), 9);
    for (i, c) in derived.macs.iter().enumerate() {
        let data = bytes(&c.data);
        let single = mac_single_des(&array(&c.single_des_key), array(&c.single_des_iv), &data);
        assert_eq!(upper(&single), c.single_des, "case {i}: single DES");
        let retail = mac_retail(&key(&c.retail_key), array(&c.retail_iv), &data);
        assert_eq!(upper(&retail), c.retail, "case {i}: retail");
        let sm4 = mac_sm4(&key(&c.sm4_key), array(&c.sm4_iv), &data);
        assert_eq!(upper(&sm4), c.sm4, "case {i}: SM4");
    }
    assert_eq!(derived.padding.len(), 18);
    for (i, c) in derived.padding.iter().enumerate() {
        assert_eq!(upper(&pad_method2(&bytes(&c.data), c.block_size)), c.padded, "padding case {i}");
    }
}

/// The algorithm identifier byte of INITIALIZE: `00` 3DES (vectors A and B); `04`
/// SM4 is our choice (docs/crypto.md); anything else is refused.
#[test]
fn algorithm_identifiers() {
    assert_eq!(Algorithm::TripleDes.id(), 0x00);
    assert_eq!(Algorithm::Sm4.id(), 0x04);
    assert_eq!(Algorithm::from_id(0x00), Ok(Algorithm::TripleDes));
    assert_eq!(Algorithm::from_id(0x04), Ok(Algorithm::Sm4));
    for other in [0x01, 0x02, 0x03, 0x05, 0xFF] {
        assert!(Algorithm::from_id(other).is_err());
    }
}
