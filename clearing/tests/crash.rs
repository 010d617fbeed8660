//! `clearing run-day` killed with SIGKILL at several points, then run again:
//! the totals come out exactly as from one uninterrupted run.

mod support;

use std::os::unix::process::ExitStatusExt;

use support::{BUS, Backend, SHOP, World, at, uploaded_after};

/// A day with genuine records on several cards and merchants, a forged TAC and a replay.
async fn a_day(world: &World) {
    let mut uploads: Vec<(&str, Vec<clearing::Record>)> = vec![(BUS, Vec::new()), (SHOP, Vec::new())];
    for n in 0..6 {
        let mut card = world.issue(n, 50_000).await;
        for i in 0..6u8 {
            let (terminal, list) = &mut uploads[usize::from(i % 2)];
            list.push(card.purchase(100 + u32::from(i) * 7 + n, terminal, at(24, 8 + i, n as u8)));
        }
    }
    uploads[0].1[3].tac[1] ^= 0x40;
    let replay = uploads[1].1[0].clone();
    uploads[1].1.push(replay);
    for (index, (terminal, records)) in uploads.iter().enumerate() {
        world.upload(terminal, &format!("batch-{index}"), records, uploaded_after(24)).await;
    }
}

fn run_cli(world: &World, kill_at: Option<&str>) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_clearing"));
    command.args(["run-day", "--date", "2026-11-24", "--chunk-records", "5"]);
    command.args(["--database", &world.test_db.url, "--hsm", &world.hsm.address.to_string()]);
    command.arg("--out").arg(world.out.path());
    if let Some(point) = kill_at {
        command.env("CLEARING_TEST_KILL_AT", point);
    }
    command.output().expect("run the clearing binary")
}

fn comparable(mut summary: clearing::DaySummary) -> clearing::DaySummary {
    // Each test HSM has its own random signing key.
    summary.settlement_signature.clear();
    summary
}

async fn killed_then_rerun(backend: Backend) {
    let baseline = {
        let world = World::new(backend).await;
        a_day(&world).await;
        comparable(world.run_day(24).await)
    };
    // The forged record leaves its card's five later ones behind a counter gap.
    assert_eq!((baseline.cleared, baseline.quarantined), (30, 7));
    assert_eq!(baseline.quarantined_by_reason.values().sum::<i64>(), 7);
    for points in [
        &["chunk-before-commit:1"][..],
        &["chunk-committed:2", "chunk-before-commit:2"],
        &["chunk-committed:5"],
        &["chunk-committed:8", "settlement-committed"],
        &["file-written"],
    ] {
        let world = World::new(backend).await;
        a_day(&world).await;
        for point in points {
            let world_ref = &world;
            let output = tokio::task::block_in_place(|| run_cli(world_ref, Some(point)));
            assert_eq!(
                output.status.signal(),
                Some(9),
                "killed at {point}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0, "after a kill at {point}");
        }
        let output = tokio::task::block_in_place(|| run_cli(&world, None));
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: clearing::DaySummary = serde_json::from_slice(&output.stdout).expect("summary JSON");
        assert_eq!(comparable(summary), baseline, "killed at {points:?}");
        assert_eq!(comparable(world.run_day(24).await), baseline);
    }
}

both!(killed_at_any_point_then_rerun_gives_identical_totals, killed_then_rerun);

/// A bigger day for timed kills: 150 cards × 8 purchases, with forged TACs here and there.
async fn a_bigger_day(world: &World) {
    let mut bus = Vec::new();
    let mut shop = Vec::new();
    for n in 0..150u32 {
        let mut card = world.issue(n, 50_000).await;
        for i in 0..8u8 {
            let mut record = card.purchase(
                100 + n % 50 + u32::from(i),
                if i % 2 == 0 { BUS } else { SHOP },
                at(24, 8 + i, (n % 60) as u8),
            );
            if n % 37 == 0 && i == 2 {
                record.tac[0] ^= 0x80;
            }
            if i % 2 == 0 { bus.push(record) } else { shop.push(record) }
        }
    }
    world.upload(BUS, "bus", &bus, uploaded_after(24)).await;
    world.upload(SHOP, "shop", &shop, uploaded_after(24)).await;
}

fn run_cli_chunked(world: &World, chunk_records: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_clearing"))
        .args(["run-day", "--date", "2026-11-24", "--chunk-records", chunk_records])
        .args(["--database", &world.test_db.url, "--hsm", &world.hsm.address.to_string()])
        .arg("--out")
        .arg(world.out.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the clearing binary")
}

/// `kill -9` from outside at seeded random moments of a run (trials and seed from
/// CLEARING_KILL_TRIALS and CLEARING_KILL_SEED, so a failure can be replayed).
async fn killed_at_random_moments(backend: Backend) {
    let trials: u64 = std::env::var("CLEARING_KILL_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(4);
    let seed: u64 = std::env::var("CLEARING_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_124);
    let (baseline, duration) = {
        let world = World::new(backend).await;
        a_bigger_day(&world).await;
        let started = std::time::Instant::now();
        let output = tokio::task::block_in_place(|| run_cli_chunked(&world, "20").wait_with_output()).expect("run");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: clearing::DaySummary = serde_json::from_slice(&output.stdout).expect("summary");
        (comparable(summary), started.elapsed())
    };
    assert_eq!(baseline.records, 1_200);
    let mut random = seed;
    for trial in 0..trials {
        // xorshift64: deterministic from the seed.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let delay = std::time::Duration::from_micros(random % duration.as_micros().max(1) as u64);
        let world = World::new(backend).await;
        a_bigger_day(&world).await;
        let mut child = run_cli_chunked(&world, "20");
        tokio::time::sleep(delay).await;
        let _ = child.kill(); // SIGKILL; it may have finished already
        let _ = tokio::task::block_in_place(|| child.wait());
        assert_eq!(clearing::ledger::total(world.db()).await.expect("ledger"), 0, "trial {trial}, seed {seed}");
        let output = tokio::task::block_in_place(|| run_cli_chunked(&world, "20").wait_with_output()).expect("run");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: clearing::DaySummary = serde_json::from_slice(&output.stdout).expect("summary");
        assert_eq!(comparable(summary), baseline, "trial {trial} killed after {delay:?}, seed {seed}");
    }
}

both!(killed_at_random_moments_then_rerun_gives_identical_totals, killed_at_random_moments);
