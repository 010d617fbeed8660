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
