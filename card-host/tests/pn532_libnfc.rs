//! libnfc's own PN532 driver (`pn532_uart`, Debian's libnfc-bin 1.8) against
//! `card-host serve --pn532`: a real peer that was not written against our
//! emulator. `nfc-scan-device -v` must find a PN532 v1.6, and `nfc-list -v` the
//! card as an ISO/IEC 14443-4 type A target with our ATS.
//!
//! scripts/setup.sh installs libnfc-bin; without it this test fails and says so.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn card_host(arguments: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_card-host"));
    command.args(arguments).env("RUST_LOG", "warn");
    command
}

/// Runs a libnfc tool on the emulator's link, at most 60 s.
fn libnfc(tool: &str, arguments: &[&str], link: &Path) -> Output {
    let mut child = Command::new(tool)
        .args(arguments)
        .env("LIBNFC_DEFAULT_DEVICE", format!("pn532_uart:{}", link.display()))
        .env("LIBNFC_AUTO_SCAN", "false")
        .env("LIBNFC_LOG_LEVEL", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("{tool} does not run ({error}): install Debian's libnfc-bin (scripts/setup.sh does)")
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{tool} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn libnfc_finds_the_pn532_and_lists_the_card() {
    let directory = tempfile::tempdir().expect("temp dir");
    let card = directory.path().join("card.json");
    let link = directory.path().join("ttyPN532");
    let issued = card_host(&["issue", "--out", card.to_str().expect("utf-8")]).output().expect("issue");
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let _served = Served(
        card_host(&["serve", "--card", card.to_str().expect("utf-8"), "--pn532", link.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .spawn()
            .expect("serve starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_link(&link).is_err() {
        assert!(Instant::now() < deadline, "no link at {}", link.display());
        std::thread::sleep(Duration::from_millis(20));
    }

    let scan = libnfc("nfc-scan-device", &["-v"], &link);
    let text = String::from_utf8_lossy(&scan.stdout);
    println!("{text}");
    assert!(scan.status.success(), "{text}\n{}", String::from_utf8_lossy(&scan.stderr));
    assert!(text.contains("1 NFC device(s) found"), "{text}");
    assert!(text.contains("chip: PN532 v1.6"), "{text}");

    // Twice: libnfc leaves the PN532 powered down after the first run, and the
    // second must wake it up again.
    for run in 1..=2 {
        let list = libnfc("nfc-list", &["-v"], &link);
        let text = String::from_utf8_lossy(&list.stdout);
        println!("{text}");
        assert!(list.status.success(), "run {run}: {text}\n{}", String::from_utf8_lossy(&list.stderr));
        assert!(text.contains("1 ISO14443A passive target(s) found"), "run {run}: {text}");
        assert!(text.contains("ATQA (SENS_RES): 00  04"), "{text}");
        // The issued card's serial ends 00 00 01: the UID is 08 00 00 01.
        assert!(text.contains("UID (NFCID3): 08  00  00  01"), "{text}");
        assert!(text.contains("SAK (SEL_RES): 20"), "{text}");
        assert!(text.contains("Compliant with ISO/IEC 14443-4"), "{text}");
        // ATS: T0 TA TB TC, then the card's historical bytes ("CITIZENCARD" 01).
        assert!(text.contains("ATS: 78  80  81  02  43  49  54  49  5a  45  4e  43  41  52  44  01"), "{text}");
        assert!(text.contains("0 Felica (212 kbps) passive target(s) found"), "{text}");
        assert!(text.contains("0 ISO14443B passive target(s) found"), "{text}");
    }
}
