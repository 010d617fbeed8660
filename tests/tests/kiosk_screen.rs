//! The kiosk's citizen screen end to end: the `terminal kiosk` process with a
//! `[screen]` section, its card and PSAM in pcscd's vpcd reader (software cards
//! served into slots 0 and 1), a real clearing server (SQLite, in-process
//! HSM) on loopback, and headless chromium at a kiosk's 1024x768 clicking
//! through the page: idle → card in (balance, name after the PIN) → top-up of
//! 50 yuan (card and clearing agree) → a water bill with its receipt → the
//! card pulled during a payment, before and after the card debited (the page
//! tells which, the card agrees) → card out → idle. Screenshots of each step
//! under `target/tmp/screens/kiosk_screen/`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use card_host::vpcd::{Tear, TearPoint};
use card_host::{Fen, TerminalNumber};
use system_tests::browser::{Browser, Options, screens_directory};
use system_tests::clearing::Clearing;
use system_tests::{Rig, card_reader, issue_card, psam_reader, wait_for_reader};
use terminal::CardSession;
use terminal::purse::Purse;
use terminal::reader::InProcess;

/// The fixture shop terminal, the kiosk (its device key is in `fixtures/terminals`).
const SHOP: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x02]);

/// A running `terminal kiosk` process, stopped (`quit`) or killed when dropped.
struct KioskProcess {
    child: Child,
    url: String,
}

impl KioskProcess {
    fn start(config: &Path) -> KioskProcess {
        let mut child = Command::new(system_tests::terminal_binary())
            .args(["kiosk", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("terminal kiosk");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the screen's address");
        let Some(url) = line.trim().strip_prefix("screen ").map(str::to_owned) else {
            panic!("terminal kiosk did not serve its screen ({:?}); its standard error is above", child.wait());
        };
        KioskProcess { child, url }
    }

    fn stop(mut self) {
        self.child.stdin.take().expect("stdin").write_all(b"quit\n").expect("quit");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "terminal kiosk: {status:?}");
    }
}

impl Drop for KioskProcess {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The card's balance as a reader sees it (the kiosk is not using the card then).
fn card_balance(rig: &Rig) -> Fen {
    let mut channel = rig.card_channel();
    let balance = Purse::select(CardSession::new(&mut channel)).and_then(|mut purse| purse.balance()).expect("balance");
    channel.disconnect();
    balance
}

/// Clicks `keys` one after the other on the keypad `pad`.
fn type_on(browser: &Browser, pad: &str, keys: &str) {
    for key in keys.chars() {
        browser.find(&format!("#{pad} button[data-key='{key}']")).expect("keypad key").click().expect("key");
    }
}

/// Pays a bill through the page: utility, account, amount in yuan.
fn pay_bill(browser: &Browser, utility: &str, account: &str, yuan: &str) {
    browser.find("#show-bill").expect("bill button").click().expect("bill");
    browser.find(&format!("#utility-{utility}")).expect("utility").click().expect("utility");
    type_on(browser, "account-pad", account);
    browser.wait_for_text("#account-display", account).expect("account typed");
    browser.find("#account-next").expect("next").click().expect("next");
    type_on(browser, "amount-pad", yuan);
    browser.wait_for_text("#amount-display", yuan).expect("amount typed");
}

#[test]
fn a_citizen_tops_up_pays_a_bill_and_pulls_the_card_at_the_kiosk_screen() {
    let clearing = Clearing::start();
    let (clearing_address, _server) = clearing.serve();
    let mut rig = Rig::new(SHOP);
    let opening = Fen(2_000);
    // Clearing knows the card before it is served: the same fixture cardholder
    // issued in a scratch directory has the same serial and type.
    let scratch = tempfile::tempdir().expect("temp dir");
    let serial = clearing.register(&mut InProcess::new(issue_card(scratch.path(), 0, opening).1), opening);

    let config = rig.directory.path().join("kiosk.toml");
    let key = card_host::issue::fixtures::directory().join("terminals/device-0902.key");
    std::fs::write(
        &config,
        format!(
            // China Standard Time (the default), as clearing's host date-time for loads.
            "[journal]\npath = {:?}\n[clearing]\nurl = \"http://{clearing_address}\"\n\
             terminal_id = \"310000000902\"\ndevice_key = {key:?}\nupload_interval_seconds = 1\n[screen]\nlisten = \"127.0.0.1:0\"\n\
             [reader]\nkind = \"pcsc\"\ncard = {:?}\npsam = {:?}\n",
            rig.directory.path().join("journal.sqlite"),
            card_reader(),
            psam_reader(),
        ),
    )
    .expect("config");
    let kiosk = KioskProcess::start(&config);
    let browser = Browser::start_with(Options { lang: Some("zh-CN".into()), ..Options::kiosk() }).expect("browser");
    let screens = screens_directory(env!("CARGO_TARGET_TMPDIR"), "kiosk_screen");
    let shot = |name: &str| browser.screenshot(&screens.join(name)).expect("screenshot");

    // Idle.
    browser.goto(&kiosk.url).expect("the kiosk page");
    browser.wait_for_text("#view-idle", "请插入市民卡").expect("idle page");
    browser.wait_for_text("#view-idle", "Please insert your citizen card").expect("idle page, English");
    shot("01-idle.png");

    // The card comes: masked number, type, balance; the name after the PIN.
    rig.serve_card(0, opening);
    browser.wait_for_text("#balance", "20.00").expect("the balance");
    browser.wait_for_text("#card-number", &serial.masked()).expect("the masked card number");
    browser.wait_for_text("#card-type-zh", "普通卡").expect("the card type");
    browser.wait_for_text("#recent", "暂无交易").expect("no transactions yet");
    browser.find("#show-name").expect("name button").click().expect("show name");
    type_on(&browser, "pin-pad", "123456");
    browser.find("#pin-ok").expect("OK").click().expect("PIN");
    browser.wait_for_text("#card-name", "张伟").expect("the cardholder's name");
    shot("02-card.png");

    // Top up 50 yuan: on the page, on the card, and confirmed at clearing.
    browser.find("#show-topup").expect("top-up button").click().expect("top up");
    browser.wait_for_text("#view-topup", "选择充值金额").expect("amounts");
    shot("03-topup-amounts.png");
    browser.find("#topup-5000").expect("50 yuan").click().expect("50 yuan");
    browser.wait_for_text("#receipt", "¥50.00").expect("the top-up receipt");
    browser.wait_for_text("#message", "充值成功 50.00 元").expect("the top-up message");
    shot("04-topped-up.png");
    browser.find("#receipt-done").expect("done").click().expect("done");
    browser.wait_for_text("#balance", "70.00").expect("the new balance");
    browser.wait_for_text("#recent", "充值 Top-up").expect("the load listed");
    assert_eq!(card_balance(&rig), Fen(opening.0 + 5_000), "the card grew by exactly 5000 fen");
    let confirmed = "SELECT COUNT(*) FROM topups WHERE state = 'confirmed' AND amount_fen = 5000";
    assert_eq!(clearing.count(confirmed), 1, "clearing has the confirmed load");
    assert_eq!(clearing.count("SELECT COUNT(*) FROM topups"), 1);

    // A water bill: keypads, receipt, balance down by the amount.
    pay_bill(&browser, "water", "20261125", "12.34");
    shot("05-bill-amount.png");
    browser.find("#amount-pay").expect("pay").click().expect("pay");
    browser.wait_for_text("#receipt", "户号 Account: 20261125").expect("the bill receipt");
    browser.wait_for_text("#receipt", "¥12.34").expect("the amount on the receipt");
    browser.wait_for_text("#receipt", "¥57.66").expect("the balance on the receipt");
    shot("06-bill-receipt.png");
    browser.find("#receipt-done").expect("done").click().expect("done");
    browser.wait_for_text("#balance", "57.66").expect("the balance after the bill");
    assert_eq!(card_balance(&rig), Fen(5_766));

    // Pulled before the card saw INITIALIZE (a bill's card APDUs: SELECT, READ
    // BINARY to check it is the card shown, SELECT, READ BINARY, INITIALIZE,
    // DEBIT): nothing was charged, and the page says so.
    let control = rig.card().control();
    pay_bill(&browser, "gas", "555", "8");
    control.tear_at(Tear { apdu: 5, point: TearPoint::BeforeCommand });
    browser.find("#amount-pay").expect("pay").click().expect("pay");
    browser.wait_for_text("#message", "卡已移走，未扣款").expect("nothing charged");
    browser.wait_for_text("#message", "Card removed — nothing was charged").expect("nothing charged, English");
    browser.wait_for_text("#view-idle", "请插入市民卡").expect("idle with the message");
    shot("07-pulled-nothing-charged.png");
    wait_for_reader(&card_reader(), false);
    control.insert();
    browser.wait_for_text("#balance", "57.66").expect("the card is back, not charged");
    assert_eq!(card_balance(&rig), Fen(5_766), "nothing was charged");

    // Pulled after the card carried DEBIT out, before its answer: the page
    // cannot know and asks for the card; the card's proof then decides.
    pay_bill(&browser, "gas", "555", "8");
    control.tear_at(Tear { apdu: 6, point: TearPoint::AfterCommand });
    browser.find("#amount-pay").expect("pay").click().expect("pay");
    browser.wait_for_text("#message", "请重新插入同一张卡").expect("asks for the card again");
    browser.wait_for_text("#view-idle", "请插入市民卡").expect("idle with the message");
    shot("08-pulled-during-debit.png");
    wait_for_reader(&card_reader(), false);
    control.insert();
    browser.wait_for_text("#message", "上次中断的缴费已扣款 8.00 元").expect("the card says it was charged");
    browser.wait_for_text("#receipt", "户号 Account: 555").expect("the receipt of the settled payment");
    browser.wait_for_text("#receipt", &serial.masked()).expect("the card on the receipt");
    shot("09-settled-charged.png");
    browser.find("#receipt-done").expect("done").click().expect("done");
    browser.wait_for_text("#balance", "49.66").expect("the balance after the settled payment");
    assert_eq!(card_balance(&rig), Fen(4_966), "the card agrees: charged once");

    // Card out: idle, nothing of the card left on the page.
    control.remove();
    browser.wait_for_text("#view-idle", "请插入市民卡").expect("idle again");
    let message = browser.find("#message").expect("message banner");
    assert_eq!(message.text().expect("banner text"), "", "no message left after a plain removal");
    assert!(!browser.body_text().expect("page text").contains("49.66"), "no balance left on the page");
    shot("10-idle-again.png");

    // No upload command with a screen: the kiosk's own thread uploads the two
    // paid bills (the confirmed load is clearing's record already); run-day
    // clears the three, nothing in quarantine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while clearing.count("SELECT COUNT(*) FROM transactions WHERE kind = 'purchase'") < 2 {
        assert!(std::time::Instant::now() < deadline, "the kiosk did not upload its bills");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    kiosk.stop();
    let day = clearing.run_day(&card_host::CardDateTime::now_at_offset(480));
    assert_eq!((day.cleared, day.quarantined), (3, 0), "the load and the two bills: {day:?}");
    let shadow = clearing.runtime.block_on(clearing::registry::shadow(&clearing.db, &serial)).expect("shadow");
    assert_eq!(shadow.balance_fen, 4_966, "clearing's shadow account equals the card");
}
