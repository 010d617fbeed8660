//! The HTTP API over a real socket: signed terminal requests, online top-up
//! through the HSM, tokens and roles, validation; on SQLite and PostgreSQL.

mod support;

use card_host::crypto::{self, purse};
use card_host::model::{CardDateTime, Fen, TransactionType};
use clearing::api::{self, AppState, Role, Tokens};
use clearing::batch;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;
use support::{BUS, Backend, SHOP, World, at, uploaded_after};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR_TOKEN: &str = "TEST-operator-token";
const ISSUER_TOKEN: &str = "TEST-issuer-token";

struct Api {
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(world: &World) -> Api {
    serve(state(world).await).await
}

/// The state of the test server: operator and issuer tokens, the citizen-ID key.
async fn state(world: &World) -> AppState {
    let mut tokens = Tokens::default();
    tokens.add(OPERATOR_TOKEN, Role::Operator);
    tokens.add(ISSUER_TOKEN, Role::Issuer);
    AppState::new(world.db().clone(), world.hsm.client().await, tokens).with_citizen_key(support::citizen_key())
}

async fn serve(state: AppState) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    Api { address, task: tokio::spawn(api::serve(listener, state)) }
}

/// The fixture terminals' TEST device keys: 32 bytes of the terminal's last digit.
fn device_key(terminal: &str) -> Ed25519KeyPair {
    let digit = terminal.as_bytes()[11] - b'0';
    Ed25519KeyPair::from_seed_unchecked(&[digit; 32]).expect("seed")
}

/// One HTTP/1.1 request on a fresh connection; (status, body).
async fn http(api: &Api, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(api.address).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: clearing\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8(response).expect("utf-8");
    let status: u16 = text[9..12].parse().expect("status");
    let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
    (status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())))
}

async fn signed(api: &Api, terminal: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let signature = device_key(terminal).sign(&api::signed_message(method, path, body));
    let headers = [("X-Terminal-Id", terminal.to_owned()), ("X-Signature", hex::encode(signature.as_ref()))];
    http(api, method, path, &headers, body).await
}

fn bearer(token: &str) -> [(&'static str, String); 1] {
    [("Authorization", format!("Bearer {token}"))]
}

both!(terminals_upload_signed_batches, |backend: Backend| async move {
    let world = World::new(backend).await;
    assert_eq!(
        hex::encode(device_key(BUS).public_key().as_ref()),
        support::merchants().terminals[0].device_public_key,
        "the fixture's key is the TEST seed's"
    );
    let api = start(&world).await;
    let mut card = world.issue(1, 10_000).await;
    let records: Vec<_> = (0..3).map(|i| card.purchase(100, BUS, at(24, 8, i))).collect();
    let body = batch::document(&support::terminal(BUS), "b1", &records).to_string();
    let (status, report) = signed(&api, BUS, "POST", "/v1/batches", body.as_bytes()).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["accepted_count"], 3);
    let (status, report) = signed(&api, BUS, "POST", "/v1/batches", body.as_bytes()).await;
    assert_eq!((status, &report["duplicate"]), (200, &Value::Bool(true)));
    // Unsigned, signed by another key, or another terminal's batch.
    let (status, _) = http(&api, "POST", "/v1/batches", &[], body.as_bytes()).await;
    assert_eq!(status, 401);
    let forged = device_key(SHOP).sign(&api::signed_message("POST", "/v1/batches", body.as_bytes()));
    let headers = [("X-Terminal-Id", BUS.to_owned()), ("X-Signature", hex::encode(forged.as_ref()))];
    assert_eq!(http(&api, "POST", "/v1/batches", &headers, body.as_bytes()).await.0, 401);
    assert_eq!(signed(&api, SHOP, "POST", "/v1/batches", body.as_bytes()).await.0, 403);
    // A document that does not parse names the field; a bad record is refused alone.
    let (status, error) = signed(&api, BUS, "POST", "/v1/batches", br#"{"format":"clearing-batch/1"}"#).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("batch")), "{error}");
    let mut document = batch::document(&support::terminal(BUS), "b2", &[card.purchase(100, BUS, at(24, 9, 0))]);
    document["batch_id"] = "no spaces allowed".into();
    let (status, error) = signed(&api, BUS, "POST", "/v1/batches", document.to_string().as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("batch_id")));
    document["batch_id"] = "b2".into();
    document["records"][0]["tac"] = "nothex!!".into();
    let (status, report) = signed(&api, BUS, "POST", "/v1/batches", document.to_string().as_bytes()).await;
    assert_eq!((status, &report["rejected"][0]["field"]), (201, &Value::from("tac")));
    let (status, _) = signed(&api, BUS, "POST", "/v1/batches", b"{not json").await;
    assert_eq!(status, 422);
    // A revoked terminal is refused.
    clearing::registry::revoke_terminal(world.db(), &support::terminal(BUS)).await.expect("revoke");
    assert_eq!(signed(&api, BUS, "POST", "/v1/batches", body.as_bytes()).await.0, 403);
    // Health and metrics.
    assert_eq!(http(&api, "GET", "/healthz", &[], b"").await.0, 200);
    let (status, metrics) = http(&api, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(metrics.contains("clearing_batches_stored_total 2"), "{metrics}");
    assert!(metrics.contains("clearing_batches_duplicate_total 1"), "{metrics}");
});

both!(online_topup_is_authorised_confirmed_and_cleared, |backend: Backend| async move {
    let world = World::new(backend).await;
    let api = start(&world).await;
    let card = world.issue(1, 1_000).await;
    let keys = support::master_keys().card_keys(&card.serial);
    let kiosk = support::terminal(SHOP);
    let (random, counter, amount) = ([9, 8, 7, 6], 0u16, Fen(5_000));
    let session = crypto::load_session_key(keys.algorithm, &keys.load[0].key, random, counter);
    let mac1 = purse::load_mac1(&session, card.balance, amount, TransactionType::PurseLoad, &kiosk);
    let request = |mac1: [u8; 4]| {
        serde_json::json!({
            "card_serial": card.serial.to_hex(), "key_index": 1, "card_random": hex::encode(random),
            "online_counter": counter, "balance_before_fen": card.balance.0, "amount_fen": amount.0,
            "transaction_type": "02", "mac1": hex::encode(mac1),
        })
        .to_string()
    };
    // A wrong MAC1 is refused, naming the field.
    let (status, error) = signed(&api, SHOP, "POST", "/v1/topups/authorise", request([0; 4]).as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("mac1")), "{error}");
    let (status, answer) = signed(&api, SHOP, "POST", "/v1/topups/authorise", request(mac1).as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let at = CardDateTime::from_slice(&hex::decode(answer["date_time"].as_str().expect("date")).expect("hex"))
        .expect("date-time");
    let mac2 = purse::load_mac2(&session, amount, TransactionType::PurseLoad, &kiosk, &at);
    assert_eq!(answer["mac2"], hex::encode_upper(mac2), "the card would accept MAC2");
    // A retry answers the same MAC2.
    let (_, again) = signed(&api, SHOP, "POST", "/v1/topups/authorise", request(mac1).as_bytes()).await;
    assert_eq!(again, answer);
    // Confirm with the card's load TAC (a wrong one first).
    let new_balance = Fen(card.balance.0 + amount.0);
    let tac = purse::load_tac(
        keys.algorithm,
        &keys.tac,
        new_balance,
        counter,
        amount,
        TransactionType::PurseLoad,
        &kiosk,
        &at,
    );
    let confirm = |tac: [u8; 4]| {
        serde_json::json!({"card_serial": card.serial.to_hex(), "online_counter": counter, "tac": hex::encode(tac)})
            .to_string()
    };
    let (status, error) = signed(&api, SHOP, "POST", "/v1/topups/confirm", confirm([1, 2, 3, 4]).as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("tac")));
    let (status, confirmed) = signed(&api, SHOP, "POST", "/v1/topups/confirm", confirm(tac).as_bytes()).await;
    assert_eq!(status, 200, "{confirmed}");
    assert_eq!(signed(&api, SHOP, "POST", "/v1/topups/confirm", confirm(tac).as_bytes()).await.0, 200);
    // run-day clears the load once: the shadow account holds it.
    let day = clearing::BusinessDay::parse(confirmed["business_day"].as_str().expect("day")).expect("day");
    let options = clearing::RunOptions::new(day, world.out.path());
    let (summary, _) = clearing::run_day(world.db(), &world.client, &options).await.expect("run-day");
    assert_eq!((summary.cleared, summary.loads_fen), (1, 5_000));
    let shadow = clearing::registry::shadow(world.db(), &card.serial).await.expect("shadow");
    assert_eq!((shadow.balance_fen, shadow.online_counter), (6_000, 1));
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);
    // Fields are checked.
    let mut bad: Value = serde_json::from_str(&request(mac1)).expect("json");
    bad["amount_fen"] = 100_001.into();
    let (status, error) = signed(&api, SHOP, "POST", "/v1/topups/authorise", bad.to_string().as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("amount_fen")));
    bad["amount_fen"] = 1.into();
    bad["colour"] = "red".into();
    let (status, error) = signed(&api, SHOP, "POST", "/v1/topups/authorise", bad.to_string().as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("colour")));
});

both!(tokens_and_roles, |backend: Backend| async move {
    let world = World::new(backend).await;
    let api = start(&world).await;
    let mut card = world.issue(1, 10_000).await;
    let records = vec![card.purchase(100, BUS, at(24, 8, 0)), card.purchase(100, BUS, at(24, 8, 0))];
    world.upload(BUS, "b1", &records, uploaded_after(24)).await;
    let mut forged = records[1].clone();
    forged.tac = [0; 4];
    world.upload(BUS, "b2", &[forged], uploaded_after(24)).await;
    // Before run-day, the bus terminal's three records are pending, the other terminals' none.
    let (status, terminals) = http(&api, "GET", "/v1/operator/terminals", &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(status, 200, "{terminals}");
    let pending: Vec<(&str, i64)> = terminals
        .as_array()
        .expect("list")
        .iter()
        .map(|t| (t["terminal_number"].as_str().expect("number"), t["pending_records"].as_i64().expect("count")))
        .collect();
    assert_eq!(pending[0], (BUS, 3), "{terminals}");
    assert!(pending[1..].iter().all(|(_, n)| *n == 0), "{terminals}");
    world.run_day(24).await;
    let path = "/v1/operator/days/2026-11-24";
    assert_eq!(http(&api, "GET", path, &[], b"").await.0, 401);
    assert_eq!(http(&api, "GET", path, &bearer("wrong"), b"").await.0, 401);
    assert_eq!(http(&api, "GET", path, &bearer(ISSUER_TOKEN), b"").await.0, 403);
    let (status, summary) = http(&api, "GET", path, &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!((status, &summary["cleared"]), (200, &Value::from(2)), "{summary}");
    // The settlement file, the same bytes run-day wrote.
    let (status, csv) = http(&api, "GET", &format!("{path}/settlement"), &bearer(OPERATOR_TOKEN), b"").await;
    let written = std::fs::read_to_string(world.out.path().join("settlement-2026-11-24.csv")).expect("file");
    assert_eq!((status, csv.as_str()), (200, Some(written.as_str())));
    assert_eq!(http(&api, "GET", "/v1/operator/days/2026-11-23/settlement", &bearer(OPERATOR_TOKEN), b"").await.0, 404);
    let (status, quarantine) = http(&api, "GET", &format!("{path}/quarantine"), &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!((status, &quarantine[0]["reason"]), (200, &Value::from("forged_tac")), "{quarantine}");
    let (status, error) = http(&api, "GET", "/v1/operator/days/2026-13-01", &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!((status, error["field"].as_str()), (422, Some("date")));
    // The issuer reports the card lost; terminals download the blacklist.
    let loss = format!("/v1/issuer/cards/{}/loss", card.serial.to_hex());
    assert_eq!(http(&api, "POST", &loss, &bearer(OPERATOR_TOKEN), b"").await.0, 403);
    let (status, answer) = http(&api, "POST", &loss, &bearer(ISSUER_TOKEN), b"").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(http(&api, "POST", &loss, &bearer(ISSUER_TOKEN), b"").await.0, 404);
    let (status, list) = signed(&api, BUS, "GET", "/v1/blacklist?since=0", b"").await;
    assert_eq!((status, &list[0]["card_serial"]), (200, &Value::from(card.serial.to_hex())), "{list}");
    let (status, list) =
        signed(&api, BUS, "GET", &format!("/v1/blacklist?since={}", answer["blacklist_version"]), b"").await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(http(&api, "GET", "/v1/blacklist?since=0", &[], b"").await.0, 401);
    // Card history (newest first, with the quarantine reason) and terminal status.
    let history = format!("/v1/operator/cards/{}/history", card.serial.to_hex());
    assert_eq!(http(&api, "GET", &history, &bearer(ISSUER_TOKEN), b"").await.0, 403);
    let (status, history) = http(&api, "GET", &history, &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(status, 200, "{history}");
    let states: Vec<(&str, Option<&str>)> = history
        .as_array()
        .expect("list")
        .iter()
        .map(|h| (h["state"].as_str().expect("state"), h["reason"].as_str()))
        .collect();
    assert_eq!(states, vec![("quarantined", Some("forged_tac")), ("cleared", None), ("cleared", None)]);
    let (status, terminals) = http(&api, "GET", "/v1/operator/terminals", &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(status, 200, "{terminals}");
    assert_eq!(terminals[0]["terminal_number"], BUS);
    assert!(terminals[0]["last_upload_at"].as_i64().is_some());
    assert_eq!(terminals[0]["pending_records"], 0);
    assert_eq!(terminals[1]["last_upload_at"], Value::Null);
});

both!(issuer_issues_and_replaces_cards, |backend: Backend| async move {
    let world = World::new(backend).await;
    let api = start(&world).await;
    let issue = serde_json::json!({"card_serial": "3100000000000077", "card_type": 1, "key_set": "card",
        "citizen_id": "310101199001011234", "name": "Zhang San", "initial_balance_fen": 3_000});
    let (status, answer) =
        http(&api, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), issue.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        http(&api, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), issue.to_string().as_bytes()).await.0,
        409
    );
    assert_eq!(
        http(&api, "POST", "/v1/issuer/cards", &bearer(OPERATOR_TOKEN), issue.to_string().as_bytes()).await.0,
        403
    );
    let mut bad = issue.clone();
    bad["citizen_id"] = "12".into();
    let (status, error) =
        http(&api, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), bad.to_string().as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("citizen_id")));
    // The citizen ID is stored masked and hashed, never whole.
    let stored: Vec<(String,)> =
        sqlx::query_as("SELECT citizen_id_masked FROM cardholders").fetch_all(&world.db().pool).await.expect("rows");
    assert_eq!(stored, vec![("310*************34".to_owned(),)]);
    // Operators see the card's account with the citizen ID masked; nothing answers it whole.
    let account = "/v1/operator/cards/3100000000000077";
    assert_eq!(http(&api, "GET", account, &bearer(ISSUER_TOKEN), b"").await.0, 403);
    let (status, card_account) = http(&api, "GET", account, &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(status, 200, "{card_account}");
    assert_eq!(
        (&card_account["citizen_id_masked"], &card_account["cardholder_name"], &card_account["balance_yuan"]),
        (&Value::from("310*************34"), &Value::from("Zhang San"), &Value::from("30.00"))
    );
    assert!(!card_account.to_string().contains("310101199001011234"), "{card_account}");
    assert_eq!(http(&api, "GET", "/v1/operator/cards/3100000000000078", &bearer(OPERATOR_TOKEN), b"").await.0, 404);
    // A card with money, spent a little, is lost and replaced: the new card carries the balance.
    let mut card = world.issue(1, 10_000).await;
    world.upload(BUS, "b", &[card.purchase(1_000, BUS, at(24, 8, 0))], uploaded_after(24)).await;
    world.run_day(24).await;
    let loss = format!("/v1/issuer/cards/{}/loss", card.serial.to_hex());
    assert_eq!(http(&api, "POST", &loss, &bearer(ISSUER_TOKEN), b"").await.0, 200);
    let replace = format!("/v1/issuer/cards/{}/replace", card.serial.to_hex());
    let body =
        serde_json::json!({"new_card_serial": "3100000000000099", "card_type": 1, "key_set": "card"}).to_string();
    let (status, replaced) = http(&api, "POST", &replace, &bearer(ISSUER_TOKEN), body.as_bytes()).await;
    assert_eq!((status, &replaced["balance_moved_fen"]), (200, &Value::from(9_000)), "{replaced}");
    assert_eq!(http(&api, "POST", &replace, &bearer(ISSUER_TOKEN), body.as_bytes()).await.0, 409);
    let new_serial = card_host::model::ApplicationSerial::parse_hex("3100000000000099").expect("serial");
    let (_, old_account) =
        http(&api, "GET", &format!("/v1/operator/cards/{}", card.serial.to_hex()), &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(
        (&old_account["status"], &old_account["replaced_by"], &old_account["balance_fen"]),
        (&Value::from("replaced"), &Value::from("3100000000000099"), &Value::from(0))
    );
    let new = clearing::registry::shadow(world.db(), &new_serial).await.expect("new card");
    let old = clearing::registry::shadow(world.db(), &card.serial).await.expect("old card");
    assert_eq!(
        (new.balance_fen, new.status.as_str(), old.balance_fen, old.status.as_str()),
        (9_000, "active", 0, "replaced")
    );
    let summary = world.run_day(24).await;
    assert!(summary.card_float_matches_shadows);
});

both!(a_counter_gap_resolves_when_the_missing_record_arrives_and_is_released, |backend: Backend| async move {
    let world = World::new(backend).await;
    let api = start(&world).await;
    let mut card = world.issue(1, 10_000).await;
    let first = card.purchase(100, BUS, at(24, 8, 0));
    let missing = card.purchase(200, BUS, at(24, 9, 0));
    let third = card.purchase(300, BUS, at(24, 10, 0));
    world.upload(BUS, "b1", &[first, third], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 1));
    let quarantine = "/v1/operator/days/2026-11-24/quarantine";
    let (_, held) = http(&api, "GET", quarantine, &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(held[0]["reason"], "counter_gap");
    let id = held[0]["transaction_id"].as_i64().expect("a transaction");
    // The missing record arrives late and clears; the operator releases the held one; it clears too.
    world.upload(BUS, "b2", &[missing], uploaded_after(24) + 3_600).await;
    world.run_day(24).await;
    let release = format!("/v1/operator/quarantine/{id}/release");
    assert_eq!(http(&api, "POST", &release, &bearer(ISSUER_TOKEN), b"").await.0, 403);
    let (status, answer) = http(&api, "POST", &release, &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(http(&api, "POST", &release, &bearer(OPERATOR_TOKEN), b"").await.0, 404);
    assert_eq!(http(&api, "POST", "/v1/operator/quarantine/x/release", &bearer(OPERATOR_TOKEN), b"").await.0, 422);
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined, summary.purchases_fen), (3, 0, 600));
    assert_eq!(summary.settlements.len(), 3, "one settlement run per run that cleared something");
    let shadow = clearing::registry::shadow(world.db(), &card.serial).await.expect("shadow");
    assert_eq!((shadow.balance_fen, shadow.offline_counter), (9_400, 3));
    let released: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine_releases")
        .fetch_one(&world.db().pool)
        .await
        .expect("count");
    assert_eq!(released, 1);
});

async fn count(world: &World, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(&world.db().pool).await.expect("count")
}

both!(an_authorised_topup_the_card_never_got_is_voided, |backend: Backend| async move {
    let world = World::new(backend).await;
    let api = start(&world).await;
    let card = world.issue(1, 1_000).await;
    let keys = support::master_keys().card_keys(&card.serial);
    let kiosk = support::terminal(SHOP);
    let (random, counter) = ([1, 2, 3, 4], 0u16);
    let session = crypto::load_session_key(keys.algorithm, &keys.load[0].key, random, counter);
    let authorise = |amount: Fen| {
        let mac1 = purse::load_mac1(&session, card.balance, amount, TransactionType::PurseLoad, &kiosk);
        serde_json::json!({
            "card_serial": card.serial.to_hex(), "key_index": 1, "card_random": hex::encode(random),
            "online_counter": counter, "balance_before_fen": card.balance.0, "amount_fen": amount.0,
            "transaction_type": "02", "mac1": hex::encode(mac1),
        })
        .to_string()
    };
    let (status, first) = signed(&api, SHOP, "POST", "/v1/topups/authorise", authorise(Fen(2_000)).as_bytes()).await;
    assert_eq!(status, 200, "{first}");
    let postings = count(&world, "SELECT COUNT(*) FROM ledger_postings").await;
    // CREDIT FOR LOAD never reached the card: the kiosk voids the authorisation.
    let void = |date_time: &str, counter: u16| {
        serde_json::json!({"card_serial": card.serial.to_hex(), "online_counter": counter, "date_time": date_time})
            .to_string()
    };
    let date_time = first["date_time"].as_str().expect("date-time").to_owned();
    let (status, error) = signed(&api, SHOP, "POST", "/v1/topups/void", void("20261124000000", 0).as_bytes()).await;
    assert_eq!(status, 409, "another authorisation's date-time: {error}");
    assert_eq!(signed(&api, BUS, "POST", "/v1/topups/void", void(&date_time, 0).as_bytes()).await.0, 403);
    assert_eq!(signed(&api, SHOP, "POST", "/v1/topups/void", void(&date_time, 1).as_bytes()).await.0, 404);
    let (status, error) = signed(&api, SHOP, "POST", "/v1/topups/void", void("2026", 0).as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("date_time")));
    assert_eq!(http(&api, "POST", "/v1/topups/void", &[], void(&date_time, 0).as_bytes()).await.0, 401);
    let (status, voided) = signed(&api, SHOP, "POST", "/v1/topups/void", void(&date_time, 0).as_bytes()).await;
    assert_eq!((status, &voided["state"], &voided["voided_now"]), (200, &Value::from("voided"), &Value::from(true)));
    // Idempotent: the same void again answers the same state.
    let (status, again) = signed(&api, SHOP, "POST", "/v1/topups/void", void(&date_time, 0).as_bytes()).await;
    assert_eq!((status, &again["voided_now"]), (200, &Value::from(false)), "{again}");
    // Neither the shadow account nor the ledger moved, and no record exists.
    let shadow = clearing::registry::shadow(world.db(), &card.serial).await.expect("shadow");
    assert_eq!((shadow.balance_fen, shadow.online_counter), (1_000, 0));
    assert_eq!(count(&world, "SELECT COUNT(*) FROM ledger_postings").await, postings);
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);
    assert_eq!(count(&world, "SELECT COUNT(*) FROM transactions").await, 0);
    // The card's online counter did not move: a new top-up of another amount takes it.
    let (status, second) = signed(&api, SHOP, "POST", "/v1/topups/authorise", authorise(Fen(3_000)).as_bytes()).await;
    assert_eq!(status, 200, "{second}");
    let at = CardDateTime::from_slice(&hex::decode(second["date_time"].as_str().expect("date")).expect("hex"))
        .expect("date-time");
    let mac2 = purse::load_mac2(&session, Fen(3_000), TransactionType::PurseLoad, &kiosk, &at);
    assert_eq!(second["mac2"], hex::encode_upper(mac2));
    let tac = purse::load_tac(
        keys.algorithm,
        &keys.tac,
        Fen(4_000),
        counter,
        Fen(3_000),
        TransactionType::PurseLoad,
        &kiosk,
        &at,
    );
    let confirm =
        serde_json::json!({"card_serial": card.serial.to_hex(), "online_counter": counter, "tac": hex::encode(tac)});
    let (status, confirmed) = signed(&api, SHOP, "POST", "/v1/topups/confirm", confirm.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{confirmed}");
    // A confirmed top-up is not voided: the card has the money.
    let second_time = second["date_time"].as_str().expect("date-time");
    let (status, error) = signed(&api, SHOP, "POST", "/v1/topups/void", void(second_time, 0).as_bytes()).await;
    assert_eq!(status, 409, "{error}");
    let day = clearing::BusinessDay::parse(confirmed["business_day"].as_str().expect("day")).expect("day");
    let options = clearing::RunOptions::new(day, world.out.path());
    let (summary, _) = clearing::run_day(world.db(), &world.client, &options).await.expect("run-day");
    assert_eq!((summary.cleared, summary.loads_fen, summary.quarantined), (1, 3_000, 0));
    let shadow = clearing::registry::shadow(world.db(), &card.serial).await.expect("shadow");
    assert_eq!((shadow.balance_fen, shadow.online_counter), (4_000, 1));
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);
    let (_, metrics) = http(&api, "GET", "/metrics", &[], b"").await;
    assert!(metrics.as_str().expect("text").contains("clearing_topups_voided_total 1\n"), "{metrics}");
});

/// The statuses `/openapi.json` documents for one route.
fn documented_statuses(document: &Value, route: &api::ApiRoute) -> Vec<String> {
    let operation = &document["paths"][route.path][route.method.as_str().to_lowercase()];
    operation["responses"].as_object().map(|r| r.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn the_openapi_document_has_every_route_and_each_refusal_it_can_give() {
    let document = serde_json::to_value(api::openapi_document()).expect("json");
    assert!(document["openapi"].as_str().expect("openapi").starts_with("3."), "{}", document["openapi"]);
    assert_eq!(document["info"]["title"], "clearing");
    let routes = api::routes();
    // Exactly the routes of the list, each with its method.
    let documented: usize = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .count()
        })
        .sum();
    assert_eq!(documented, routes.len());
    for route in &routes {
        let name = format!("{} {}", route.method, route.path);
        let operation = &document["paths"][route.path][route.method.as_str().to_lowercase()];
        assert!(operation.is_object(), "{name} is not documented");
        let statuses = documented_statuses(&document, route);
        let has = |status: &str| statuses.iter().any(|s| s == status);
        assert!(statuses.iter().any(|s| s.starts_with('2')), "{name}: no success answer in {statuses:?}");
        let schemes: Vec<String> = operation["security"]
            .as_array()
            .map(|list| list.iter().flat_map(|s| s.as_object().expect("requirement").keys().cloned()).collect())
            .unwrap_or_default();
        let expected_scheme = if route.path.starts_with("/v1/operator/") {
            Some("operator_token")
        } else if route.path.starts_with("/v1/issuer/") {
            Some("issuer_token")
        } else if route.path.starts_with("/v1/") {
            Some("terminal_signature")
        } else {
            None
        };
        assert_eq!(schemes, expected_scheme.into_iter().map(String::from).collect::<Vec<_>>(), "{name}");
        if expected_scheme.is_some() {
            assert!(has("401") && has("403"), "{name}: an authenticated route documents 401 and 403: {statuses:?}");
            assert!(has("500"), "{name}: authentication reads the database: {statuses:?}");
        }
        if operation["requestBody"].is_object() {
            assert!(has("422") && has("413"), "{name}: a body route documents 422 and 413: {statuses:?}");
            assert!(operation["requestBody"]["content"]["application/json"]["schema"].is_object(), "{name}");
        }
        for parameter in route.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
            let listed = operation["parameters"]
                .as_array()
                .is_some_and(|list| list.iter().any(|p| p["name"] == parameter && p["in"] == "path"));
            assert!(listed, "{name}: path parameter {parameter} not documented");
            assert!(has("422"), "{name}: a path parameter can be refused: {statuses:?}");
        }
    }
    // What each handler's own refusals add, from its Fails<..> type.
    for (method, path, expected) in [
        ("POST", "/v1/batches", &["200", "201", "403", "409", "422"][..]),
        ("POST", "/v1/topups/authorise", &["403", "409", "422", "503"]),
        ("POST", "/v1/topups/confirm", &["404", "403", "409", "422", "503"]),
        ("POST", "/v1/topups/void", &["404", "403", "409", "422"]),
        ("POST", "/v1/issuer/cards", &["201", "409", "422", "503"]),
        ("POST", "/v1/issuer/cards/{serial}/replace", &["404", "409", "422"]),
        ("GET", "/v1/operator/days/{date}/settlement", &["404", "422", "503"]),
        ("POST", "/v1/operator/quarantine/{transaction_id}/release", &["404", "422"]),
    ] {
        let route = routes.iter().find(|r| r.method == method && r.path == path).expect("route in the list");
        let statuses = documented_statuses(&document, route);
        for status in expected {
            assert!(statuses.iter().any(|s| s == status), "{method} {path}: {status} missing from {statuses:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_the_documented_routes() {
    let world = World::new(Backend::Sqlite).await;
    let api = start(&world).await;
    // Served without authentication, the same document.
    let (status, served) = http(&api, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(served, serde_json::to_value(api::openapi_document()).expect("json"));
    // Not a route: the router's own 404, with no body.
    let (status, body) = http(&api, "GET", "/v1/nothing-here", &[], b"").await;
    assert_eq!((status, body), (404, Value::String(String::new())));
    // Every route of the list is served, and answers a bare request with a status it documents.
    for route in api::routes() {
        let path = route
            .path
            .replace("{serial}", "3100000000000001")
            .replace("{date}", "2026-11-24")
            .replace("{transaction_id}", "1");
        let (status, body) = http(&api, route.method.as_str(), &path, &[], b"").await;
        assert!(
            !(status == 404 && body == Value::String(String::new())) && status != 405,
            "{} {} is not served ({status})",
            route.method,
            route.path
        );
        let statuses = documented_statuses(&served, &route);
        assert!(statuses.contains(&status.to_string()), "{} {path}: {status} not in {statuses:?}", route.method);
    }
}

both!(the_issuer_personalises_cards_through_the_api, |backend: Backend| async move {
    use card_host::card::{CardType, CitizenCard};
    use card_host::issue::{ProfileFile, TransportKey, fixtures};
    let world = World::new(backend).await;
    let images = tempfile::tempdir().expect("temporary directory");
    let transport = TransportKey::load(&fixtures::test_transport_key()).expect("TEST transport key");
    let station =
        clearing::personalise::Personaliser::new(images.path(), hsm_sim::keystore::TEST_TRANSPORT_KEY, &transport)
            .expect("station");
    let api = serve(state(&world).await.with_personaliser(station)).await;
    let profiles = ProfileFile::load(&fixtures::cardholders()).expect("profiles");
    let holder = profiles.cardholder(2).expect("profile");
    let mut personalisation = serde_json::to_value(holder).expect("json");
    let personalisation = personalisation.as_object_mut().expect("object");
    for issued_elsewhere in ["name", "citizen_id", "card_type", "application_serial"] {
        personalisation.remove(issued_elsewhere);
    }
    let mut body = serde_json::json!({
        "card_serial": "3100000077770001",
        "card_type": 2,
        "key_set": "card",
        "citizen_id": holder.citizen_id,
        "name": holder.name,
        "initial_balance_fen": 1_234,
        "personalisation": personalisation,
    });

    // A PIN of the wrong type is refused naming the object, and the value is not echoed.
    let mut wrong = body.clone();
    wrong["personalisation"]["pin"] = Value::from(123_456);
    let (status, error) =
        http(&api, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), wrong.to_string().as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("personalisation")), "{error}");
    assert!(!error.to_string().contains("123456"), "{error}");
    let mut wrong = body.clone();
    wrong["personalisation"]["sex"] = "x".into();
    let (status, error) =
        http(&api, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), wrong.to_string().as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("personalisation.sex")), "{error}");

    let (status, issued) =
        http(&api, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), body.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{issued}");
    let image = issued["card_image"].as_str().expect("the image's path");
    let card = CitizenCard::open(std::path::Path::new(image)).expect("the image opens");
    assert_eq!(card.image().card_type, CardType::Student);
    assert_eq!(card.image().purse.balance, Fen(1_234));
    assert_eq!(card.image().serial.to_hex(), "3100000077770001");
    let shadow = clearing::registry::shadow(world.db(), &card.image().serial).await.expect("recorded");
    assert_eq!(shadow.balance_fen, 1_234);
    // The same card again: 409, the image untouched.
    let before = std::fs::read(image).expect("image");
    let (status, _) = http(&api, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), body.to_string().as_bytes()).await;
    assert_eq!(status, 409);
    assert_eq!(std::fs::read(image).expect("image"), before);

    // The card is lost: a replacement for the same person (proved by citizen ID)
    // is personalised holding the moved balance; another person's ID is refused
    // and changes nothing.
    let mut replace = serde_json::json!({
        "new_card_serial": "3100000077770009",
        "card_type": 2,
        "key_set": "card",
        "personalisation": { "citizen_id": "110101199003074514", "cardholder": personalisation.clone() },
    });
    let path = "/v1/issuer/cards/3100000077770001/replace";
    let (status, error) = http(&api, "POST", path, &bearer(ISSUER_TOKEN), replace.to_string().as_bytes()).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("citizen_id")), "{error}");
    assert_eq!(clearing::registry::shadow(world.db(), &card.image().serial).await.expect("old").status, "active");
    replace["personalisation"]["citizen_id"] = holder.citizen_id.clone().into();
    let (status, replaced) = http(&api, "POST", path, &bearer(ISSUER_TOKEN), replace.to_string().as_bytes()).await;
    assert_eq!((status, &replaced["balance_moved_fen"]), (200, &Value::from(1_234)), "{replaced}");
    let new_card = CitizenCard::open(std::path::Path::new(replaced["card_image"].as_str().expect("image")))
        .expect("the new image opens");
    assert_eq!(new_card.image().purse.balance, Fen(1_234));
    assert_eq!(new_card.image().serial.to_hex(), "3100000077770009");
    assert_eq!(clearing::registry::shadow(world.db(), &card.image().serial).await.expect("old").status, "replaced");
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);

    // A server without a station records cards but does not personalise them.
    let plain = start(&world).await;
    body["card_serial"] = "3100000077770002".into();
    let (status, error) =
        http(&plain, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), body.to_string().as_bytes()).await;
    assert_eq!(status, 503, "{error}");
    body.as_object_mut().expect("object").remove("personalisation");
    let (status, issued) =
        http(&plain, "POST", "/v1/issuer/cards", &bearer(ISSUER_TOKEN), body.to_string().as_bytes()).await;
    assert_eq!((status, issued.get("card_image")), (201, None), "{issued}");
});

both!(a_loss_is_listed_from_local_time_as_cards_record_it, |backend: Backend| async move {
    // Cards and terminals write local time (China Standard Time here): a loss
    // listed in UTC would quarantine the 8 hours of genuine records before it.
    let world = World::new(backend).await;
    let card = world.issue(1, 1_000).await;
    let api = start(&world).await;
    let path = format!("/v1/issuer/cards/{}/loss", card.serial.to_hex());
    let before = CardDateTime::now_at_offset(api::UTC_OFFSET_MINUTES_DEFAULT).unix_seconds();
    let (status, _) = http(&api, "POST", &path, &bearer(ISSUER_TOKEN), b"{}").await;
    let after = CardDateTime::now_at_offset(api::UTC_OFFSET_MINUTES_DEFAULT).unix_seconds();
    assert_eq!(status, 200);
    let listed: String = sqlx::query_scalar("SELECT listed_at FROM blacklist WHERE card_serial = $1")
        .bind(card.serial.to_hex())
        .fetch_one(&world.db().pool)
        .await
        .expect("listed");
    let listed = CardDateTime::from_slice(&hex::decode(listed).expect("hex")).expect("date-time").unix_seconds();
    assert!((before..=after).contains(&listed), "listed at {listed}, local time was {before}..={after}");
});

both!(operators_see_a_days_grey_records_and_the_records_refused_at_upload, |backend: Backend| async move {
    let world = World::new(backend).await;
    let api = start(&world).await;
    let mut card = world.issue(1, 10_000).await;
    let (grey, _) = card.grey(200, BUS, at(24, 8, 30), true);
    let next = card.purchase(300, BUS, at(24, 9, 0));
    let mut document = batch::document(&support::terminal(BUS), "b1", [batch::Entry::from(grey), next.into()]);
    // A third record with a bad TAC field: refused at upload, listed under its own day.
    let mut refused = document["records"][1].clone();
    refused["tac"] = "XYZ".into();
    document["records"].as_array_mut().expect("records").push(refused);
    // Stored as received an hour after the day (an upload over HTTP now would be late for 2026-11-24).
    let parsed = batch::parse(document.to_string().as_bytes()).expect("the document parses");
    let report = clearing::ingest(world.db(), &parsed, uploaded_after(24)).await.expect("ingest");
    assert_eq!((report.accepted_count, report.rejected_count), (2, 1), "{report:?}");
    world.run_day(24).await;
    let path = "/v1/operator/days/2026-11-24/grey-records";
    assert_eq!(http(&api, "GET", path, &bearer(ISSUER_TOKEN), b"").await.0, 403);
    let (status, greys) = http(&api, "GET", path, &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!(status, 200, "{greys}");
    assert_eq!(
        (&greys[0]["state"], &greys[0]["amount_fen"], &greys[0]["merchant_id"], &greys[0]["card_serial"]),
        (&Value::from("confirmed"), &Value::from(200), &Value::from("M-BUS-01"), &Value::from(card.serial.to_hex())),
        "{greys}"
    );
    let (_, summary) = http(&api, "GET", "/v1/operator/days/2026-11-24", &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!((&summary["grey_confirmed_fen"], &summary["gross_fen"]), (&Value::from(200), &Value::from(500)));
    let (_, quarantine) =
        http(&api, "GET", "/v1/operator/days/2026-11-24/quarantine", &bearer(OPERATOR_TOKEN), b"").await;
    assert_eq!((&quarantine[0]["reason"], &quarantine[0]["transaction_id"]), (&"malformed".into(), &Value::Null));
    assert_eq!(summary["quarantined_by_reason"]["malformed"], 1, "{summary}");
});

/// docs/clearing.md's table of the HTTP API names exactly the routes served
/// (beside the operator screen's page): the document a reader uses cannot
/// drift from the router either.
#[test]
fn the_api_table_in_the_docs_names_every_route() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/clearing.md")).expect("docs");
    let section = docs.split("## The HTTP API").nth(1).expect("the API section");
    let mut documented: Vec<(String, String)> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split_once('`'))
        .filter_map(|(route, _)| route.split_once(' '))
        .map(|(method, path)| (method.to_owned(), path.split('?').next().unwrap_or(path).to_owned()))
        .filter(|(method, path)| ["GET", "POST"].contains(&method.as_str()) && !path.starts_with("/operator/"))
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> =
        api::routes().iter().map(|route| (route.method.to_string(), route.path.to_owned())).collect();
    served.sort();
    assert_eq!(documented, served);
}
