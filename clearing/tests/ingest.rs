//! Batch upload: partial acceptance, idempotence (again and at once), conflicts.

mod support;

use clearing::batch;
use support::{BUS, Backend, World, at, uploaded_after};

both!(same_batch_twice_counts_once, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let records: Vec<_> = (0..5).map(|i| card.purchase(100, BUS, at(24, 8, i))).collect();
    let first = world.upload(BUS, "b1", &records, uploaded_after(24)).await;
    assert!(!first.duplicate);
    let again = world.upload(BUS, "b1", &records, uploaded_after(24) + 600).await;
    assert!(again.duplicate);
    assert_eq!((again.record_count, again.accepted_count), (5, 5));
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM transactions").fetch_one(&world.db().pool).await.expect("count");
    assert_eq!(stored, 5);
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.purchases_fen), (5, 500));
});

both!(concurrent_uploads_of_one_batch_count_once, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 100_000).await;
    let records: Vec<_> =
        (0..200).map(|i| card.purchase(10, BUS, at(24, 8 + (i / 60) as u8, (i % 60) as u8))).collect();
    let document = batch::document(&support::terminal(BUS), "same", &records).to_string();
    let uploads: Vec<_> = (0..8)
        .map(|_| {
            let db = world.db().clone();
            let document = document.clone();
            tokio::spawn(async move {
                let parsed = batch::parse(document.as_bytes()).expect("parses");
                clearing::ingest(&db, &parsed, uploaded_after(24)).await.expect("ingest")
            })
        })
        .collect();
    let mut fresh = 0;
    for upload in uploads {
        let report = upload.await.expect("task");
        assert_eq!(report.accepted_count, 200);
        fresh += usize::from(!report.duplicate);
    }
    assert_eq!(fresh, 1, "exactly one upload stored the batch");
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM transactions").fetch_one(&world.db().pool).await.expect("count");
    assert_eq!(stored, 200);
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.purchases_fen), (200, 2_000));
});

both!(same_batch_id_with_other_records_is_a_conflict, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let one = card.purchase(100, BUS, at(24, 8, 0));
    let two = card.purchase(100, BUS, at(24, 9, 0));
    world.upload(BUS, "b1", std::slice::from_ref(&one), uploaded_after(24)).await;
    let parsed =
        batch::parse(batch::document(&support::terminal(BUS), "b1", &[two]).to_string().as_bytes()).expect("parses");
    let error = clearing::ingest(world.db(), &parsed, uploaded_after(24)).await.expect_err("conflict");
    assert!(matches!(error, clearing::Error::BatchConflict { .. }), "{error}");
});

both!(malformed_records_are_quarantined_beside_kept_ones, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let records: Vec<_> = (0..3).map(|i| card.purchase(100, BUS, at(24, 8, i))).collect();
    let mut document = batch::document(&support::terminal(BUS), "b1", &records);
    document["records"][1]["amount_fen"] = serde_json::json!(-5);
    let parsed = batch::parse(document.to_string().as_bytes()).expect("the document parses");
    let report = clearing::ingest(world.db(), &parsed, uploaded_after(24)).await.expect("ingest");
    assert_eq!((report.accepted_count, report.rejected_count), (2, 1));
    assert_eq!(report.rejected[0].field, "amount_fen");
    let (reason, detail, raw): (String, String, String) =
        sqlx::query_as("SELECT reason, detail, raw_record FROM quarantine WHERE batch_id = 'b1'")
            .fetch_one(&world.db().pool)
            .await
            .expect("quarantined");
    assert_eq!(reason, "malformed");
    assert!(detail.starts_with("amount_fen:"), "{detail}");
    assert!(raw.contains("\"amount_fen\":-5"), "{raw}");
    // The card's counter 1 never arrived: the record after it is a gap, not lost.
    // The refused record is listed with its day (by its own date-time).
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined), (1, 1));
    assert_eq!(world.quarantine_reasons(24).await, vec!["malformed", "counter_gap"]);
    assert_eq!(summary.quarantined_by_reason.get("malformed"), Some(&1));
});

both!(fees_round_half_up_per_merchant_per_day, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 100_000).await;
    // Shop at 0.005: 3 × 100 = 300 fen → 1.5 fen → 2 (half up); one transaction of
    // 100 alone would be 0.5 → 1, so rounding per transaction would give 3.
    let shop: Vec<_> = (0..3).map(|i| card.purchase(100, support::SHOP, at(24, 8, i))).collect();
    // Bus at 0.0060: 1,241 fen → 7.446 → 7.
    let bus = vec![card.purchase(1_241, BUS, at(24, 9, 0))];
    world.upload(support::SHOP, "s", &shop, uploaded_after(24)).await;
    world.upload(BUS, "b", &bus, uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    let fees: Vec<_> =
        summary.settlements.iter().map(|l| (l.merchant_id.as_str(), l.gross_fen, l.fee_fen, l.net_fen)).collect();
    assert_eq!(fees, vec![("M-BUS-01", 1_241, 7, 1_234), ("M-SHOP-01", 300, 2, 298)]);
    assert_eq!(clearing::ledger::balance(world.db(), &clearing::ledger::Account::FeeIncome).await.expect("fees"), -9);
});
