//! The bench runs end to end on a small day (the figures come from `clearing bench`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_day_clears_every_record() {
    let mut config = clearing::bench::BenchConfig::new(1_000, "sqlite", env!("CARGO_BIN_EXE_clearing"));
    config.topup_load_seconds = 1;
    config.topup_load_connections = vec![4];
    let report = clearing::bench::run(&config).await.expect("bench");
    assert_eq!((report.cleared, report.quarantined), (1_000, 0));
    assert!(report.run_day_peak_memory_kib > 0);
    assert!(report.hsm_in_process_one_core_tacs_per_second > 0.0);
    assert!(report.hsm_in_process_all_cores_tacs_per_second > 0.0);
    assert!(report.run_day_to_in_process_all_cores > 0.0);
    // The concurrent top-ups authorised and confirmed some (each confirm is checked for 200).
    assert_eq!(report.topup_loads.len(), 1);
    assert!(report.topup_loads[0].topups > 0, "{:?}", report.topup_loads);
}
