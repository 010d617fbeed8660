//! Operators' reports (clearing::report): a day hour by hour and the blacklist
//! as operators read it; on SQLite and on PostgreSQL.

mod support;

use clearing::BusinessDay;
use clearing::report::{self, BLACKLIST_PAGE_MAX, HOURS};
use support::{BUS, Backend, SHOP, World, at, uploaded_after};

fn day(text: &str) -> BusinessDay {
    BusinessDay::parse(text).expect("day")
}

both!(a_day_hour_by_hour, |backend: Backend| async move {
    let world = World::new(backend).await;
    let mut alice = world.issue(1, 10_000).await;
    let mut bob = world.issue(2, 5_000).await;
    let mut carol = world.issue(3, 5_000).await;
    let mut forged = carol.purchase(700, BUS, at(24, 8, 40));
    forged.tac[0] ^= 0x01;
    // Each card's records made in card-time order (counters follow).
    let (a1, b1, b2, b3) = (
        alice.purchase(200, BUS, at(24, 8, 0)),
        bob.purchase(250, BUS, at(24, 8, 59)),
        bob.load(2_000, SHOP, at(24, 12, 30)),
        bob.purchase(3_001, SHOP, at(24, 13, 0)),
    );
    let a2 = alice.purchase(1_250, SHOP, at(24, 23, 59));
    // The next business day: not in the 24th's hours.
    let a3 = alice.purchase(100, BUS, at(25, 0, 0));
    let bus = vec![a1, b1, forged, a3];
    let shop = vec![b2, b3, a2];
    world.upload(BUS, "bus-1", &bus, uploaded_after(25)).await;
    world.upload(SHOP, "shop-1", &shop, uploaded_after(25)).await;

    // Before run-day every record is pending: counted, nothing cleared yet.
    let pending = report::hourly(world.db(), &day("2026-11-24")).await.expect("hourly");
    assert_eq!(pending.business_day, "2026-11-24");
    assert_eq!(pending.hours.len(), HOURS);
    assert!(pending.hours.iter().enumerate().all(|(i, h)| usize::from(h.hour) == i));
    let counts: Vec<(u8, i64)> = pending.hours.iter().filter(|h| h.records > 0).map(|h| (h.hour, h.records)).collect();
    assert_eq!(counts, vec![(8, 3), (12, 1), (13, 1), (23, 1)]);
    assert!(pending.hours.iter().all(|h| h.purchases == 0 && h.loads == 0 && h.quarantined == 0));
    assert!(pending.hours.iter().all(|h| h.purchase_yuan == "0.00" && h.load_yuan == "0.00"));

    let summary = world.run_day(24).await;
    assert_eq!((summary.records, summary.cleared, summary.quarantined), (6, 5, 1));
    let hourly = report::hourly(world.db(), &day("2026-11-24")).await.expect("hourly");
    let hour = |h: usize| &hourly.hours[h];
    assert_eq!((hour(8).records, hour(8).quarantined, hour(8).purchases), (3, 1, 2));
    assert_eq!((hour(8).purchase_fen, hour(8).purchase_yuan.as_str()), (450, "4.50"));
    assert_eq!((hour(12).loads, hour(12).load_fen, hour(12).load_yuan.as_str()), (1, 2_000, "20.00"));
    assert_eq!((hour(12).purchases, hour(12).purchase_yuan.as_str()), (0, "0.00"));
    assert_eq!((hour(13).purchases, hour(13).purchase_yuan.as_str()), (1, "30.01"));
    assert_eq!((hour(23).purchases, hour(23).purchase_yuan.as_str()), (1, "12.50"));
    assert_eq!(hourly.hours.iter().map(|h| h.records).sum::<i64>(), summary.records);
    assert_eq!(hourly.hours.iter().map(|h| h.purchase_fen).sum::<i64>(), summary.purchases_fen);
    assert_eq!(hourly.hours.iter().map(|h| h.load_fen).sum::<i64>(), summary.loads_fen);
    assert_eq!(hourly.hours.iter().map(|h| h.quarantined).sum::<i64>(), summary.quarantined);

    let next = report::hourly(world.db(), &day("2026-11-25")).await.expect("hourly");
    assert_eq!(next.hours[0].records, 1);
    assert_eq!(next.hours.iter().map(|h| h.records).sum::<i64>(), 1);
    let empty = report::hourly(world.db(), &day("2026-01-01")).await.expect("hourly");
    assert!(empty.hours.iter().all(|h| h.records == 0 && h.purchase_yuan == "0.00"));
});

both!(the_blacklist_newest_first, |backend: Backend| async move {
    let world = World::new(backend).await;
    assert_eq!(report::blacklist(world.db(), None, BLACKLIST_PAGE_MAX).await.expect("empty"), vec![]);
    let alice = world.issue(1, 1_000).await;
    let bob = world.issue(2, 1_000).await;
    let carol = world.issue(3, 1_000).await;
    let mut versions = Vec::new();
    for (card, when) in [(&alice, at(20, 10, 0)), (&bob, at(21, 11, 30)), (&carol, at(22, 7, 5))] {
        versions.push(clearing::registry::report_loss(world.db(), &card.serial, &when).await.expect("loss"));
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]));

    let all = report::blacklist(world.db(), None, BLACKLIST_PAGE_MAX).await.expect("blacklist");
    let listed: Vec<(i64, String)> = all.iter().map(|v| (v.version, v.card_serial.clone())).collect();
    assert_eq!(
        listed,
        vec![
            (versions[2], carol.serial.to_hex()),
            (versions[1], bob.serial.to_hex()),
            (versions[0], alice.serial.to_hex())
        ]
    );
    let bob_entry = &all[1];
    assert_eq!(bob_entry.action, "add");
    assert_eq!(bob_entry.reason, "lost");
    assert_eq!(bob_entry.listed_at, "20261121113000");
    assert_eq!(bob_entry.card_status.as_deref(), Some("lost"));

    // Pages: below a version, and at most a limit.
    let page = report::blacklist(world.db(), Some(versions[2]), 1).await.expect("page");
    assert_eq!(page.iter().map(|v| v.version).collect::<Vec<_>>(), vec![versions[1]]);
    let rest = report::blacklist(world.db(), Some(versions[1]), BLACKLIST_PAGE_MAX).await.expect("page");
    assert_eq!(rest.iter().map(|v| v.version).collect::<Vec<_>>(), vec![versions[0]]);
    assert!(report::blacklist(world.db(), Some(versions[0]), 10).await.expect("page").is_empty());

    for (before, limit, field) in [(Some(0), 10, "before"), (Some(-3), 10, "before"), (None, 0, "limit")] {
        match report::blacklist(world.db(), before, limit).await {
            Err(clearing::Error::Invalid { field: named, .. }) => assert_eq!(named, field),
            other => panic!("before {before:?} limit {limit}: {other:?}"),
        }
    }
});
