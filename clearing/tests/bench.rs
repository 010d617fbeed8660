//! The bench runs end to end on a small day (the figures come from `clearing bench`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_day_clears_every_record() {
    let config = clearing::bench::BenchConfig {
        records: 1_000,
        database: "sqlite".into(),
        clearing_binary: env!("CARGO_BIN_EXE_clearing").into(),
    };
    let report = clearing::bench::run(&config).await.expect("bench");
    assert_eq!((report.cleared, report.quarantined), (1_000, 0));
    assert!(report.run_day_peak_memory_kib > 0);
}
