//! The README's first command runs this demo: it must work through pcscd and
//! in-process, and say what happened.

use std::process::Command;

use system_tests::ReaderLock;

fn run(arguments: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_demo")).args(arguments).output().expect("demo runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "demo {arguments:?} failed:\n{text}\n{}", String::from_utf8_lossy(&output.stderr));
    text
}

#[test]
fn demo_runs_through_pcscd() {
    let _reader = ReaderLock::take();
    let text = run(&[]);
    for expected in [
        "reader: pcscd with the vpcd virtual reader",
        "cardholder: 张伟 (citizen ID 310115**********15)",
        "load      +100.00 yuan -> balance 100.00",
        "recovered GET TRANSACTION PROVE: the debit happened",
        "next purchase refused",
        "card image on disk: balance 93.00 yuan, offline counter 4, online counter 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("310115198503121015"), "no full citizen ID in the output");
}

#[test]
fn demo_runs_in_process() {
    let text = run(&["--in-process"]);
    assert!(text.contains("reader: in-process"), "{text}");
    assert!(text.contains("card image on disk: balance 95.00 yuan, offline counter 3, online counter 1"), "{text}");
}
