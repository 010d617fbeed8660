//! Grey records (灰记录): purchases a terminal uploads without a TAC because the
//! card went away before it could learn whether DEBIT happened. The card's
//! later records decide each one: confirmed (paid), proved (its own record
//! came) or voided (the card never debited it). On SQLite and PostgreSQL.

mod support;

use clearing::registry;
use support::{BUS, Backend, SHOP, World, at, uploaded_after};

async fn states(world: &World) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT state, merchant_id FROM grey_records ORDER BY grey_id")
        .fetch_all(&world.db().pool)
        .await
        .expect("grey records")
}

async fn shadow_agrees(world: &World, card: &support::TestCard) {
    let shadow = registry::shadow(world.db(), &card.serial).await.expect("shadow");
    assert_eq!(
        (shadow.balance_fen, shadow.offline_counter),
        (i64::from(card.balance.0), i64::from(card.offline_counter)),
        "the shadow account is the card's purse"
    );
}

both!(a_grey_record_the_next_purchase_shows_debited_is_confirmed_and_paid, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let first = card.purchase(100, BUS, at(24, 8, 0));
    let (grey, _) = card.grey(200, BUS, at(24, 8, 30), true);
    let next = card.purchase(300, SHOP, at(24, 9, 0));
    let report = world.upload(BUS, "bus", [clearing::batch::Entry::from(first), grey.into()], uploaded_after(24)).await;
    assert_eq!((report.accepted_count, report.rejected_count), (2, 0));
    world.upload(SHOP, "shop", [next], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined, summary.pending), (2, 0, 0), "{summary:?}");
    assert_eq!((summary.grey_confirmed, summary.grey_confirmed_fen), (1, 200));
    assert_eq!(states(&world).await, vec![("confirmed".to_owned(), Some("M-BUS-01".to_owned()))]);
    // The bus operator is paid the grey fare beside its cleared one.
    let bus = summary.settlements.iter().find(|line| line.merchant_id == "M-BUS-01").expect("bus settled");
    assert_eq!((bus.record_count, bus.gross_fen), (2, 300));
    assert_eq!(summary.gross_fen, 600);
    assert!(summary.settled_equals_cleared && summary.card_float_matches_shadows, "{summary:?}");
    shadow_agrees(&world, &card).await;
    // A re-run changes nothing.
    assert_eq!(world.run_day(24).await, summary);
});

both!(a_grey_record_its_own_record_arrives_for_is_proved_and_paid_once, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let (grey, proof) = card.grey(200, BUS, at(24, 8, 30), true);
    // The grey record first; the card came back later and the terminal proved the purchase.
    world.upload(BUS, "grey", [grey], uploaded_after(24)).await;
    world.upload(BUS, "proof", [proof.expect("debited")], uploaded_after(24) + 60).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.grey_confirmed, summary.gross_fen), (1, 0, 200), "{summary:?}");
    assert_eq!(states(&world).await, vec![("proved".to_owned(), None)]);
    assert!(summary.settled_equals_cleared && summary.card_float_matches_shadows);
    shadow_agrees(&world, &card).await;
});

both!(a_grey_record_whose_counter_the_card_used_again_is_voided, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let (grey, none) = card.grey(200, BUS, at(24, 8, 30), false);
    assert!(none.is_none());
    // The card never took the fare: its next purchase uses the same counter.
    let next = card.purchase(500, SHOP, at(24, 9, 0));
    world.upload(BUS, "grey", [grey], uploaded_after(24)).await;
    world.upload(SHOP, "shop", [next], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.grey_confirmed, summary.gross_fen), (1, 0, 500), "{summary:?}");
    assert_eq!(states(&world).await, vec![("voided".to_owned(), None)]);
    assert_eq!(summary.grey_by_state.get("voided"), Some(&1));
    shadow_agrees(&world, &card).await;
});

both!(a_proof_after_its_grey_record_was_confirmed_is_never_paid_twice, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let (grey, proof) = card.grey(200, BUS, at(24, 8, 30), true);
    let next = card.purchase(300, SHOP, at(24, 9, 0));
    world.upload(BUS, "grey", [grey], uploaded_after(24)).await;
    world.upload(SHOP, "shop", [next], uploaded_after(24)).await;
    let first = world.run_day(24).await;
    assert_eq!((first.grey_confirmed_fen, first.gross_fen), (200, 500));
    // The terminal proves it later: the record is a duplicate naming the grey record.
    world.upload(BUS, "proof", [proof.expect("debited")], uploaded_after(24) + 3_600).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined, summary.gross_fen), (1, 1, 500), "{summary:?}");
    let detail: String = sqlx::query_scalar("SELECT detail FROM quarantine WHERE reason = 'duplicate'")
        .fetch_one(&world.db().pool)
        .await
        .expect("the proof is held");
    assert!(detail.contains("grey record") && detail.contains("proves it"), "{detail}");
    assert!(summary.settled_equals_cleared && summary.card_float_matches_shadows);
    shadow_agrees(&world, &card).await;
});

both!(a_grey_record_behind_a_counter_cleared_before_it_arrived_is_decided, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    let (proved, proof) = card.grey(200, BUS, at(24, 8, 30), true);
    let (voided, _) = card.grey(300, BUS, at(24, 8, 40), false);
    let other = card.purchase(400, SHOP, at(24, 9, 0));
    world.upload(BUS, "proof", [proof.expect("debited")], uploaded_after(24)).await;
    world.upload(SHOP, "shop", [other], uploaded_after(24)).await;
    world.run_day(24).await;
    // The grey records come after both counters were cleared.
    world.upload(BUS, "greys", [proved, voided], uploaded_after(24) + 60).await;
    let summary = world.run_day(24).await;
    assert_eq!(states(&world).await, vec![("proved".to_owned(), None), ("voided".to_owned(), None)]);
    assert_eq!((summary.grey_confirmed, summary.gross_fen), (0, 600));
    shadow_agrees(&world, &card).await;
});

both!(a_load_after_a_grey_record_confirms_it, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 1_000).await;
    let (grey, _) = card.grey(200, BUS, at(24, 8, 30), true);
    let load = card.load(5_000, SHOP, at(24, 10, 0));
    world.upload(BUS, "grey", [grey], uploaded_after(24)).await;
    world.upload(SHOP, "load", [load], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined, summary.grey_confirmed_fen), (1, 0, 200), "{summary:?}");
    assert!(summary.settled_equals_cleared && summary.card_float_matches_shadows);
    shadow_agrees(&world, &card).await;
});

both!(grey_records_that_do_not_add_up_stay_open_and_the_gap_is_held, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut card = world.issue(1, 10_000).await;
    // The grey record claims 200 fen, but the card's next record shows 250 gone
    // (another purchase whose record is missing): nothing is guessed.
    let (mut grey, _) = card.grey(250, BUS, at(24, 8, 30), true);
    grey.amount = card_host::model::Fen(200);
    let next = card.purchase(300, SHOP, at(24, 9, 0));
    let (lonely, _) = card.grey(100, BUS, at(24, 9, 30), true);
    world.upload(BUS, "grey", [grey, lonely], uploaded_after(24)).await;
    world.upload(SHOP, "shop", [next], uploaded_after(24)).await;
    let summary = world.run_day(24).await;
    assert_eq!((summary.cleared, summary.quarantined, summary.grey_confirmed), (0, 1, 0), "{summary:?}");
    assert_eq!(world.quarantine_reasons(24).await, vec!["counter_gap"]);
    assert_eq!(summary.grey_by_state.get("open"), Some(&2));
    assert!(summary.card_float_matches_shadows);
});
