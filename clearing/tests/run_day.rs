//! run-day's rules, each on SQLite and on PostgreSQL.

mod support;

use clearing::registry;
use support::{BUS, Backend, HOSPITAL, SHOP, World, at, uploaded_after};

both!(genuine_records_settle, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut alice = world.issue(1, 10_000).await;
    let mut bob = world.issue(2, 5_000).await;
    let bus = vec![
        alice.purchase(200, BUS, at(24, 8, 0)),
        bob.purchase(200, BUS, at(24, 8, 5)),
        alice.purchase(150, BUS, at(24, 18, 0)),
    ];
    let shop = vec![
        alice.purchase(1_250, SHOP, at(24, 19, 0)),
        bob.load(2_000, SHOP, at(24, 12, 30)),
        bob.purchase(3_000, SHOP, at(24, 13, 0)),
    ];
    let report = world.upload(BUS, "bus-1", &bus, uploaded_after(24)).await;
    assert_eq!((report.accepted_count, report.rejected_count, report.duplicate), (3, 0, false));
    world.upload(SHOP, "shop-1", &shop, uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!(world.quarantine_reasons(24).await, Vec::<String>::new());
    assert_eq!((summary.records, summary.cleared, summary.quarantined, summary.pending), (6, 6, 0, 0));
    assert_eq!(summary.purchases_fen, 200 + 200 + 150 + 1_250 + 3_000);
    assert_eq!(summary.loads_fen, 2_000);
    let lines: Vec<_> = summary
        .settlements
        .iter()
        .map(|l| (l.merchant_id.as_str(), l.record_count, l.gross_fen, l.fee_fen, l.net_fen))
        .collect();
    // Bus: 550 fen × 0.006 = 3.3 → 3; shop: 4,250 × 0.005 = 21.25 → 21.
    assert_eq!(lines, vec![("M-BUS-01", 3, 550, 3, 547), ("M-SHOP-01", 2, 4_250, 21, 4_229)]);
    assert_eq!(summary.ledger_total_fen, 0);
    assert!(summary.card_float_matches_shadows && summary.settled_equals_cleared);
    // The shadow accounts follow the cards.
    for card in [&alice, &bob] {
        let shadow = registry::shadow(world.db(), &card.serial).await.expect("shadow");
        assert_eq!(shadow.balance_fen, i64::from(card.balance.0));
        assert_eq!(shadow.offline_counter, i64::from(card.offline_counter));
        assert_eq!(shadow.online_counter, i64::from(card.online_counter));
    }
    // The settlement file and its manifest, signed by the HSM.
    let csv = std::fs::read(world.out.path().join("settlement-2026-11-24.csv")).expect("settlement file");
    let manifest: clearing::run_day::Manifest = serde_json::from_slice(
        &std::fs::read(world.out.path().join("settlement-2026-11-24.manifest.json")).expect("manifest"),
    )
    .expect("manifest parses");
    assert_eq!(manifest.sha256, hex::encode(hsm_sim::settlement_digest(&csv)));
    let signature: [u8; 64] = hex::decode(&manifest.signature).expect("hex").try_into().expect("64 bytes");
    assert!(world.client.verify_settlement("settlement.signing", &csv, &signature).await.expect("verify"));
    assert_eq!(
        String::from_utf8(csv).expect("utf-8").lines().nth(1),
        Some("2026-11-24,1,M-BUS-01,6222000000000001,3,550,0.0060,3,547")
    );
    assert!(world.out.path().join("reconciliation-2026-11-24.json").exists());
});

both!(forged_tac_is_quarantined, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let genuine = card.purchase(200, BUS, at(24, 8, 0));
    let mut forged = card.purchase(300, BUS, at(24, 9, 0));
    forged.tac[0] ^= 0x01;
    let mut inflated = card.purchase(100, BUS, at(24, 10, 0));
    inflated.amount = card_host::model::Fen(50); // the amount changed after the card signed it
    world.upload(BUS, "b", &[genuine, forged, inflated], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 2));
    assert_eq!(world.quarantine_reasons(24).await, vec!["forged_tac", "forged_tac"]);
    assert_eq!(summary.purchases_fen, 200);
});

both!(replayed_record_is_a_duplicate, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let first = card.purchase(200, BUS, at(24, 8, 0));
    world.upload(BUS, "b1", std::slice::from_ref(&first), uploaded_after(24)).await;
    // The same record again in another batch of the same day, and on a later day's run.
    world.upload(BUS, "b2", std::slice::from_ref(&first), uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 1));
    assert_eq!(world.quarantine_reasons(24).await, vec!["duplicate"]);
    world.upload(BUS, "b3", std::slice::from_ref(&first), uploaded_after(24) + 60).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 2));
    assert_eq!(summary.purchases_fen, 200);
    assert_eq!(world.quarantine_reasons(24).await, vec!["duplicate", "duplicate"]);
});

both!(counter_gap_is_quarantined, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let first = card.purchase(200, BUS, at(24, 8, 0));
    let _missing = card.purchase(200, BUS, at(24, 9, 0));
    let third = card.purchase(200, BUS, at(24, 10, 0));
    world.upload(BUS, "b", &[first, third], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 1));
    assert_eq!(world.quarantine_reasons(24).await, vec!["counter_gap"]);
});

both!(cloned_card_breaks_balance_continuity, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    // A clone copied the card's state; the original spends first, then the clone
    // spends the same money at the next counter (its balance is the old one).
    let mut clone = card.clone();
    let original = card.purchase(4_000, SHOP, at(24, 8, 0));
    clone.offline_counter = card.offline_counter;
    let cloned = clone.purchase(4_000, SHOP, at(24, 9, 0));
    world.upload(SHOP, "b", &[original, cloned], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 1));
    assert_eq!(world.quarantine_reasons(24).await, vec!["balance_discontinuity"]);
    let shadow = registry::shadow(world.db(), &card.serial).await.expect("shadow");
    assert_eq!(shadow.balance_fen, 6_000);
});

both!(blacklisted_card_is_quarantined, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let before = card.purchase(200, BUS, at(24, 8, 0));
    let after = card.purchase(200, BUS, at(24, 12, 0));
    let version = registry::report_loss(world.db(), &card.serial, &at(24, 10, 0)).await.expect("loss");
    let list = registry::blacklist_since(world.db(), version - 1).await.expect("blacklist");
    assert_eq!(list.len(), 1);
    assert!(registry::blacklist_since(world.db(), version).await.expect("blacklist").is_empty());
    world.upload(BUS, "b", &[before, after], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 1));
    assert_eq!(world.quarantine_reasons(24).await, vec!["blacklisted_card"]);
});

both!(unknown_revoked_terminal_unknown_card_late_upload, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let unknown = card.purchase(100, "310000009999", at(24, 8, 0));
    world.upload("310000009999", "u", &[unknown], uploaded_after(24)).await;
    registry::revoke_terminal(world.db(), &support::terminal(HOSPITAL)).await.expect("revoke");
    let mut card2 = world.issue(2, 10_000).await;
    let revoked = card2.purchase(100, HOSPITAL, at(24, 8, 0));
    world.upload(HOSPITAL, "h", &[revoked], uploaded_after(24)).await;
    let mut stranger = world.issue(3, 10_000).await;
    stranger.serial = card_host::model::ApplicationSerial::parse_hex("3199999999999999").expect("serial");
    let never_issued = stranger.purchase(100, BUS, at(24, 9, 0));
    let mut card4 = world.issue(4, 10_000).await;
    let late = card4.purchase(100, BUS, at(24, 9, 0));
    world.upload(BUS, "b", &[never_issued], uploaded_after(24)).await;
    world.upload(BUS, "late", &[late], uploaded_after(24) + 8 * 86_400).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (0, 4));
    let reasons: std::collections::BTreeMap<_, _> = summary.quarantined_by_reason.into_iter().collect();
    assert_eq!(
        reasons,
        [("late_upload", 1), ("revoked_terminal", 1), ("unknown_card", 1), ("unknown_terminal", 1)]
            .into_iter()
            .map(|(r, n)| (r.to_owned(), n))
            .collect()
    );
    assert!(summary.settlements.is_empty());
});

both!(rerun_is_identical_and_late_arrivals_settle_once, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 100_000).await;
    let records: Vec<_> = (0..30).map(|i| card.purchase(100 + i, BUS, at(24, 8, i as u8))).collect();
    world.upload(BUS, "b", &records[..20], uploaded_after(24)).await;
    let mut options = world.options(24);
    options.chunk_records = 7;
    let (first, stats) = clearing::run_day(world.db(), &world.client, &options).await.expect("run");
    assert_eq!((stats.chunks, stats.records_processed, stats.settlement_runs_added), (3, 20, 1));
    let file = std::fs::read(world.out.path().join("settlement-2026-11-24.csv")).expect("file");
    let (again, stats) = clearing::run_day(world.db(), &world.client, &options).await.expect("re-run");
    assert_eq!(again, first);
    assert_eq!((stats.chunks, stats.settlement_runs_added), (0, 0));
    assert_eq!(std::fs::read(world.out.path().join("settlement-2026-11-24.csv")).expect("file"), file);
    // Ten more arrive after the day was settled: a second settlement run, once.
    world.upload(BUS, "b2", &records[20..], uploaded_after(24) + 60).await;
    let (later, _) = clearing::run_day(world.db(), &world.client, &options).await.expect("run");
    let (later_again, _) = clearing::run_day(world.db(), &world.client, &options).await.expect("run");
    assert_eq!(later, later_again);
    assert_eq!(later.cleared, 30);
    assert_eq!(later.settlements.len(), 2);
    assert_eq!(later.gross_fen, (0..30).map(|i| 100 + i).sum::<i64>());
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);
});

both!(a_shadow_account_moved_meanwhile_fails_the_chunk, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let records: Vec<_> = (0..3).map(|i| card.purchase(100, BUS, at(24, 8, i))).collect();
    world.upload(BUS, "b", &records, uploaded_after(24)).await;
    // Between the HSM round and the write, the issuer replaces the card.
    let mut options = world.options(24);
    let url = world.test_db.url.clone();
    let serial = card.serial;
    options.on_step = Some(std::sync::Arc::new(move |step| {
        if step == clearing::run_day::Step::ChunkDecided(1) {
            let url = url.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    let db = clearing::Db::connect(&url).await.expect("db");
                    let new = registry::ReplacementCard {
                        serial: card_host::model::ApplicationSerial::parse_hex("3100000000000099").expect("serial"),
                        card_type: 1,
                        key_set: "card".into(),
                        issued_at: at(24, 7, 0),
                    };
                    registry::replace_card(&db, &serial, &new).await.expect("replace");
                    db.close().await;
                })
            })
            .join()
            .expect("replacement");
        }
    }));
    let error = clearing::run_day(world.db(), &world.client, &options).await.expect_err("the chunk is refused");
    assert!(matches!(error, clearing::Error::Conflict(_)), "{error}");
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);
    // Run again: the old card's records are blacklisted (listed from the replacement), money is not doubled.
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (0, 3));
    assert!(summary.card_float_matches_shadows);
});

both!(two_jobs_on_one_day_never_count_twice, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut records = Vec::new();
    for n in 0..20 {
        let mut card = world.issue(n, 10_000).await;
        records.extend((0..5).map(|i| card.purchase(100 + n, BUS, at(24, 8 + i, n as u8))));
    }
    world.upload(BUS, "b", &records, uploaded_after(24)).await;
    let mut options = world.options(24);
    options.chunk_records = 7;
    let second_client = world.hsm.client().await;
    let (first, second) = tokio::join!(
        clearing::run_day(world.db(), &world.client, &options),
        clearing::run_day(world.db(), &second_client, &options)
    );
    // Either may lose a race and fail with a conflict; neither counts a record twice.
    for result in [&first, &second] {
        if let Err(error) = result {
            assert!(matches!(error, clearing::Error::Conflict(_) | clearing::Error::Database(_)), "{error}");
        }
    }
    assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0);
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (100, 0));
    assert_eq!(summary.purchases_fen, (0..20).map(|n| 5 * (100 + n)).sum::<i64>());
    assert_eq!(summary.gross_fen, summary.purchases_fen);
    assert!(summary.card_float_matches_shadows);
});

both!(records_arriving_behind_the_cursor_are_cleared_by_the_last_pass, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut cards = Vec::new();
    let mut records = Vec::new();
    for n in 0..4 {
        let mut card = world.issue(n, 10_000).await;
        records.extend((0..2).map(|i| card.purchase(100, BUS, at(24, 8, i))));
        cards.push(card);
    }
    world.upload(BUS, "b", &records, uploaded_after(24)).await;
    // The first card's next purchase, uploaded once the chunks of the first
    // cards have committed: behind the cursor, for the run's last pass.
    let late = cards[0].purchase(100, BUS, at(24, 9, 0));
    let document = clearing::batch::document(&support::terminal(BUS), "late", &[late]);
    let url = world.test_db.url.clone();
    let mut options = world.options(24);
    options.chunk_records = 3;
    options.on_step = Some(std::sync::Arc::new(move |step| {
        if step == clearing::run_day::Step::ChunkCommitted(2) {
            let (url, document) = (url.clone(), document.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    let db = clearing::Db::connect(&url).await.expect("db");
                    let parsed = clearing::batch::parse(document.to_string().as_bytes()).expect("batch parses");
                    clearing::ingest(&db, &parsed, uploaded_after(24)).await.expect("ingest");
                    db.close().await;
                })
            })
            .join()
            .expect("late upload");
        }
    }));
    let (summary, _) = clearing::run_day(world.db(), &world.client, &options).await.expect("run-day");
    assert_eq!((summary.records, summary.cleared, summary.quarantined, summary.pending), (9, 9, 0, 0));
    assert_eq!(summary.gross_fen, 900);
    assert!(summary.card_float_matches_shadows);
    // Run again: nothing left, the same summary.
    assert_eq!(world.run_day(24).await, summary);
});

both!(a_released_record_first_in_its_old_chunk_posts_its_money, |backend: Backend| async move {
    // Card 1's record with a counter gap is the first of a chunk that also
    // clears card 2's purchase. Once the missing record has cleared, the held
    // one is released and cleared in a chunk of its own: its ledger entry must
    // not be taken for the first chunk's (it was keyed by the chunk's first
    // record, so its postings were silently skipped).
    let world = World::new(backend).await;
    let mut gapped = world.issue(1, 10_000).await;
    let mut other = world.issue(2, 10_000).await;
    let missing = gapped.purchase(100, BUS, at(24, 8, 0));
    let held = gapped.purchase(200, BUS, at(24, 9, 0));
    let cleared = other.purchase(400, BUS, at(24, 9, 30));
    world.upload(BUS, "b1", &[held, cleared], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 1));
    world.upload(BUS, "b2", &[missing], uploaded_after(24) + 3_600).await;
    world.run_day(24).await;
    let held_id: i64 = sqlx::query_scalar("SELECT transaction_id FROM quarantine WHERE reason = 'counter_gap'")
        .fetch_one(&world.db().pool)
        .await
        .expect("the held record");
    registry::release_quarantined(world.db(), held_id, "operator", uploaded_after(24) + 7_200).await.expect("release");
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined, summary.purchases_fen), (3, 0, 700));
    assert!(summary.card_float_matches_shadows, "{summary:?}");
    assert!(summary.settled_equals_cleared, "{summary:?}");
    let float = clearing::ledger::balance(world.db(), &clearing::ledger::Account::CardFloat).await.expect("float");
    assert_eq!(float, -(20_000 - 700));
});
