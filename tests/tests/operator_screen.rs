//! The clearing operator's screen (`/operator/`) in headless chromium against
//! a real clearing server: a day made by the terminal library (bus taps on a
//! validator, bill payments at a kiosk, in-process cards and PSAMs) uploaded as
//! signed batches, one card reported lost before its tap (quarantined), run-day;
//! then sign-in refused (401, 403) and accepted, and the page's settlement,
//! quarantine, card history, blacklist and hourly plot checked against the
//! database. Screenshots: `target/tmp/screens/operator_screen/*.png`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use card_host::card::CitizenCard;
use card_host::{ApplicationSerial, CardDateTime, Fen, TerminalNumber};
use clearing::api::{Role, Tokens};
use system_tests::browser::{Browser, Element, Options, screens_directory};
use system_tests::clearing::{Clearing, serial_and_type};
use system_tests::{issue_card, issue_psam};
use terminal::CardSession;
use terminal::blacklist::Blacklist;
use terminal::bus::{BusSettings, Tap, Validator};
use terminal::journal::Journal;
use terminal::kiosk::{Bill, Kiosk, Utility};
use terminal::psam::PsamSession;
use terminal::reader::InProcess;
use terminal::tariff::Tariff;
use terminal::upload::{self, ClearingClient, DeviceKey, RetryPolicy};

const OPERATOR_TOKEN: &str = "TEST-operator-screen-token";
const ISSUER_TOKEN: &str = "TEST-issuer-screen-token";
const BUS: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x01]);
const SHOP: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x09, 0x02]);

fn client(address: SocketAddr, terminal: TerminalNumber, key: &str) -> ClearingClient {
    let key = DeviceKey::load(&card_host::issue::fixtures::directory().join("terminals").join(key)).expect("key");
    let retry =
        RetryPolicy { attempts: 2, backoff_initial: Duration::from_millis(5), backoff_max: Duration::from_millis(20) };
    ClearingClient::new(&format!("http://{address}"), terminal, key, retry)
}

fn validator(directory: &Path) -> Validator {
    let tariff = Tariff::load(&card_host::issue::fixtures::directory().join("tariffs/bus-flat.toml")).expect("tariff");
    let journal = Journal::open(&directory.join("bus.sqlite")).expect("journal");
    let settings = BusSettings { route: 42, station: 1, dedup_window_seconds: 10 };
    Validator::new(settings, tariff, Blacklist::empty(), journal, Duration::from_secs(86_400)).expect("validator")
}

/// The day the test makes: yesterday (UTC), so its uploads are on time.
struct Day {
    midnight: u64,
}

impl Day {
    fn at(&self, hour: u64, minute: u64) -> CardDateTime {
        CardDateTime::from_unix_seconds(self.midnight + hour * 3600 + minute * 60).expect("time")
    }

    fn date(&self) -> String {
        clearing::BusinessDay::of(&self.at(0, 0)).to_string()
    }
}

/// What the test put into clearing.
struct Made {
    day: Day,
    cards: Vec<ApplicationSerial>,
    lost: ApplicationSerial,
    /// Records per hour of the card's time, as made.
    hours: BTreeMap<u8, i64>,
}

/// A day of bus taps and kiosk bills, uploaded; the last card reported lost at
/// noon, before its evening tap.
fn make_day(clearing: &Clearing, address: SocketAddr, directory: &Path) -> Made {
    let day = Day { midnight: CardDateTime::now_utc().unix_seconds() / 86_400 * 86_400 - 86_400 };
    let balance = Fen(10_000);
    // Ordinary, student, disabled and ordinary cardholders (fixtures/profiles).
    let mut readers: Vec<InProcess<CitizenCard>> =
        [0, 1, 3, 5].iter().map(|&profile| InProcess::new(issue_card(directory, profile, balance).1)).collect();
    let mut cards = Vec::new();
    for (n, reader) in readers.iter_mut().enumerate() {
        let (serial, card_type) = serial_and_type(reader);
        clearing.issue(serial, card_type, balance, u32::try_from(n).expect("small"));
        cards.push(serial);
    }
    let lost = cards[3];
    clearing.runtime.block_on(clearing::registry::report_loss(&clearing.db, &lost, &day.at(12, 0))).expect("loss");

    let mut hours = BTreeMap::new();
    let mut bus_psam_reader = InProcess::new(issue_psam(directory, BUS).1);
    let mut bus_psam = PsamSession::open(CardSession::new(&mut bus_psam_reader)).expect("bus PSAM");
    let validator = validator(directory);
    for (card, hour, minute) in [(0, 7, 10), (1, 7, 25), (2, 7, 40), (0, 8, 5), (1, 17, 30), (3, 17, 45), (2, 18, 10)] {
        let tap = validator.tap(&mut readers[card], &mut bus_psam, day.at(hour, minute));
        assert!(matches!(tap, Tap::Paid { .. }), "{tap}");
        *hours.entry(hour as u8).or_default() += 1;
    }
    let sent =
        upload::upload_pending(validator.journal(), &client(address, BUS, "device-0901.key"), 100).expect("bus upload");
    assert_eq!(sent.records, 7);
    // A grey record of the bus: a fare it attempted at 18:05 on the third card
    // without learning whether the card took it. The card's 18:10 tap used the
    // same counter, so run-day voids it.
    let (counter, balance_before): (i64, i64) = clearing
        .runtime
        .block_on(
            sqlx::query_as(
                "SELECT counter, balance_before FROM transactions WHERE card_serial = $1 ORDER BY transaction_id DESC",
            )
            .bind(cards[2].to_hex())
            .fetch_one(&clearing.db.pool),
        )
        .expect("the third card's last tap");
    let grey = clearing::batch::GreyRecord {
        card_serial: cards[2],
        card_type: 1,
        counter: u16::try_from(counter).expect("counter"),
        balance_before: Fen(u32::try_from(balance_before).expect("balance")),
        amount: Fen(150),
        transaction_type: card_host::TransactionType::PursePurchase,
        terminal_number: BUS,
        terminal_serial: 9_999,
        at: day.at(18, 5),
    };
    let document = clearing::batch::document(&BUS, "grey-1", [grey]);
    let parsed = clearing::batch::parse(document.to_string().as_bytes()).expect("the grey batch parses");
    let received = CardDateTime::now_utc().unix_seconds() as i64;
    clearing.runtime.block_on(clearing::ingest(&clearing.db, &parsed, received)).expect("grey record stored");

    let kiosk = Kiosk::new(
        Journal::open(&directory.join("kiosk.sqlite")).expect("journal"),
        client(address, SHOP, "device-0902.key"),
    );
    let mut shop_psam_reader = InProcess::new(issue_psam(directory, SHOP).1);
    let mut shop_psam = PsamSession::open(CardSession::new(&mut shop_psam_reader)).expect("kiosk PSAM");
    for (card, utility, account, fen, hour, minute) in
        [(0, Utility::Gas, "GAS-0042", 321, 12, 15), (1, Utility::Water, "WATER-7781", 1_250, 19, 40)]
    {
        let bill = Bill { utility, account: account.into(), amount: Fen(fen) };
        kiosk.pay_bill(&mut readers[card], &mut shop_psam, &bill, day.at(hour, minute)).expect("bill paid");
        *hours.entry(hour as u8).or_default() += 1;
    }
    let sent = upload::upload_pending(kiosk.journal(), kiosk.client(), 100).expect("kiosk upload");
    assert_eq!(sent.records, 2);
    Made { day, cards, lost, hours }
}

/// The cells' texts of each row of a table's body.
fn rows(browser: &Browser, table: &str) -> Vec<Vec<String>> {
    browser
        .find_all(&format!("{table} tbody tr"))
        .expect("rows")
        .iter()
        .map(|row| row.find_all("td").expect("cells").iter().map(|c| c.text().expect("text")).collect())
        .collect()
}

fn without_separators(text: &str) -> String {
    text.replace(',', "")
}

fn sign_in(browser: &Browser, token: &str) {
    let field = browser.find("#token").expect("token field");
    field.clear().expect("clear");
    field.send_keys(token).expect("typed");
    browser.find("#sign-in").expect("sign-in button").click().expect("clicked");
}

fn visible(element: &Element<'_>) -> bool {
    element.property("hidden").expect("hidden").as_deref() == Some("false")
}

/// A GET with ureq: (status, headers we look at, body).
fn get(address: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(&format!("http://{address}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut answer = request.call().expect("clearing answers");
    let csp =
        answer.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = answer.body_mut().read_to_string().expect("body");
    (answer.status().as_u16(), csp, body)
}

#[test]
fn the_operator_screen_shows_a_cleared_day() {
    let clearing = Clearing::start();
    let mut tokens = Tokens::default();
    tokens.add(OPERATOR_TOKEN, Role::Operator);
    tokens.add(ISSUER_TOKEN, Role::Issuer);
    let (address, _server) = clearing.serve_with(tokens);
    let directory = tempfile::tempdir().expect("temp dir");
    let made = make_day(&clearing, address, directory.path());
    let date = made.day.date();
    let summary = clearing.run_day(&made.day.at(12, 0));
    assert_eq!((summary.records, summary.quarantined), (9, 1), "{summary:?}");
    assert_eq!(summary.quarantined_by_reason.get("blacklisted_card"), Some(&1));

    // The page and the routes behind it, over plain HTTP.
    let (status, csp, page) = get(address, "/operator/", None);
    assert_eq!(status, 200);
    assert!(csp.contains("script-src 'self'") && page.contains("Settlement"), "{csp}");
    assert_eq!(get(address, &format!("/v1/operator/days/{date}/hourly"), None).0, 401);
    assert_eq!(get(address, &format!("/v1/operator/days/{date}/hourly"), Some(ISSUER_TOKEN)).0, 403);
    let (status, _, body) = get(address, "/v1/operator/days/2026-13-01/hourly", Some(OPERATOR_TOKEN));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"date\""), "{body}");
    let (status, _, body) = get(address, "/v1/operator/blacklist?before=0", Some(OPERATOR_TOKEN));
    assert_eq!((status, body.contains("\"before\"")), (422, true), "{body}");

    let screens = screens_directory(env!("CARGO_TARGET_TMPDIR"), "operator_screen");
    let downloads = tempfile::tempdir().expect("downloads directory");
    let options =
        Options { lang: Some("zh-CN".into()), downloads: Some(downloads.path().to_owned()), ..Options::default() };
    let browser = Browser::start_with(options).expect("browser");
    browser.goto(&format!("http://{address}/operator/")).expect("page");
    assert!(!visible(&browser.find("#workspace").expect("workspace")), "nothing shown before signing in");

    // A wrong token, then the issuer's: refused with a clear message each.
    sign_in(&browser, "not-a-token");
    browser.wait_for_text("#signin-message", "Token refused (HTTP 401: unknown token)").expect("401 message");
    browser.wait_for_text("#signin-message", "令牌无效").expect("401 message in Chinese");
    sign_in(&browser, ISSUER_TOKEN);
    browser.wait_for_text("#signin-message", "not an operator's (HTTP 403").expect("403 message");
    browser.screenshot(&screens.join("refused.png")).expect("screenshot");
    assert!(!visible(&browser.find("#workspace").expect("workspace")));
    let stored = browser.execute("return sessionStorage.getItem('clearing.operator.token');", &[]).expect("script");
    assert_eq!(stored, serde_json::Value::Null, "a refused token is not kept");

    // The operator's token: the day.
    sign_in(&browser, OPERATOR_TOKEN);
    browser.wait_for_text("#blacklist tbody", &made.lost.to_hex()).expect("the blacklist");
    assert!(visible(&browser.find("#workspace").expect("workspace")));
    browser
        .execute("document.getElementById('day').value = arguments[0];", &[date.clone().into()])
        .expect("pick the day");
    browser.find("#show-day").expect("show").click().expect("clicked");
    browser.wait_for_text("#day-message", &format!("Business day {date}")).expect("the day loaded");
    assert_eq!(browser.url().expect("url"), format!("http://{address}/operator/#{date}"));

    // Settlement: the page's rows are the database's settlement lines.
    let settled =
        clearing.runtime.block_on(clearing::run_day::settlements(&clearing.db, &date)).expect("settlements table");
    assert_eq!(settled.len(), 2, "the bus and the kiosk's merchant");
    let yuan = clearing::money::yuan;
    let expected: Vec<Vec<String>> = settled
        .iter()
        .map(|line| {
            vec![
                line.settlement_run.to_string(),
                line.merchant_id.clone(),
                line.settlement_account.clone(),
                line.record_count.to_string(),
                yuan(line.gross_fen),
                line.fee_rate.clone(),
                yuan(line.fee_fen),
                yuan(line.net_fen),
            ]
        })
        .collect();
    let shown: Vec<Vec<String>> =
        rows(&browser, "#settlement").iter().map(|row| row.iter().map(|c| without_separators(c)).collect()).collect();
    assert_eq!(shown, expected);
    let gross: i64 = settled.iter().map(|line| line.gross_fen).sum();
    let net: i64 = settled.iter().map(|line| line.net_fen).sum();
    let total = |id: &str| without_separators(&browser.find(id).expect("total").text().expect("text"));
    assert_eq!(total("#total-gross"), clearing::money::yuan(gross));
    assert_eq!(total("#total-net"), clearing::money::yuan(net));
    assert_eq!(browser.find("#sum-quarantined").expect("count").text().expect("text"), "1");
    assert_eq!(browser.find("#sum-reconciled").expect("check").text().expect("text"), "Yes 是");
    // The signed settlement file, downloaded: the bytes run-day wrote, its digest shown.
    let written = std::fs::read(clearing.out.path().join(format!("settlement-{date}.csv"))).expect("settlement file");
    browser.find("#download-settlement").expect("download").click().expect("clicked");
    browser
        .wait_for_text(
            "#settlement-sha256",
            &hsm_sim::settlement_digest(&written).iter().map(|b| format!("{b:02x}")).collect::<String>(),
        )
        .expect("digest");
    let downloaded = downloads.path().join(format!("settlement-{date}.csv"));
    for _ in 0..100 {
        if downloaded.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&downloaded).expect("downloaded file"), written);

    // Quarantine: the lost card's tap, with its reason.
    let quarantine = rows(&browser, "#quarantine");
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    assert_eq!(quarantine[0][1], "310000000901");
    assert_eq!(quarantine[0][4], "blacklisted_card 黑名单卡");

    // The plot: bars at exactly the hours the records were made, heights in proportion.
    let bars = browser
        .execute(
            "return [...document.querySelectorAll('#hourly-plot g.hour')].map(g => {
               const bar = g.querySelector('rect.bar:not(.quarantined)');
               const held = g.querySelector('rect.quarantined');
               return [Number(g.dataset.hour), Number(g.dataset.records),
                       bar ? bar.getBBox().height : 0, held ? held.getBBox().height : 0];
             });",
            &[],
        )
        .expect("bars");
    let bars: Vec<(u8, i64, f64, f64)> = serde_json::from_value(bars).expect("bars parse");
    assert_eq!(bars.len(), 24);
    let drawn: BTreeMap<u8, i64> = bars.iter().filter(|b| b.2 > 0.0).map(|b| (b.0, b.1)).collect();
    assert_eq!(drawn, made.hours, "bars at the hours of the day's records");
    let unit = bars[8].2; // one record at 08:00
    assert_eq!(made.hours.get(&8), Some(&1));
    for (hour, records, height, _) in &bars {
        assert!((height - unit * *records as f64).abs() < 0.01, "hour {hour}: {records} records, {height} high");
    }
    let held: Vec<u8> = bars.iter().filter(|b| b.3 > 0.0).map(|b| b.0).collect();
    assert_eq!(held, vec![17], "the quarantined tap's hour is marked");
    browser.screenshot(&screens.join("day.png")).expect("screenshot");

    // The page's money formatting: text from integers only, as clearing's own.
    let fen: Vec<i64> = vec![0, 5, -5, 99, 100, 12_345, 100_000, 123_456_789, -1_000_001, 9_007_199_254_740_991];
    let formatted = browser.execute("return arguments[0].map(yuan);", &[fen.clone().into()]).expect("yuan");
    let formatted: Vec<String> = serde_json::from_value(formatted).expect("texts");
    let expected: Vec<String> = fen.iter().map(|f| clearing::money::yuan(*f)).collect();
    assert_eq!(formatted.iter().map(|t| without_separators(t)).collect::<Vec<_>>(), expected);
    assert_eq!(formatted[7], "1,234,567.89");
    let refused = browser
        .execute(
            "return [yuan(1.5), yuan(2 ** 53), yuan('12a'), yuan(null), yuanText('0.5'), yuanText('1234.50')];",
            &[],
        )
        .expect("refused");
    assert_eq!(refused, serde_json::json!(["—", "—", "—", "—", "—", "1,234.50"]), "not an integer amount: a dash");

    // A day with nothing: said so, no bars.
    browser.execute("location.hash = '#2026-01-01';", &[]).expect("another day");
    browser.wait_for_text("#day-message", "Business day 2026-01-01").expect("the empty day");
    browser.wait_for_text("#settlement-message", "not settled yet").expect("no settlement");
    browser.wait_for_text("#hourly-message", "No records").expect("no records");
    assert_eq!(browser.find_all("#hourly-plot rect.bar").expect("bars").len(), 0);
    assert_eq!(rows(&browser, "#settlement"), vec![vec!["No settlement 无结算".to_owned()]]);
    browser.execute("location.hash = '#' + arguments[0];", &[date.clone().into()]).expect("back");
    browser.wait_for_text("#day-message", &format!("Business day {date}")).expect("the day again");
    assert_eq!(rows(&browser, "#settlement").len(), 2);

    // The grey record, voided by the card's own later tap at its counter.
    let grey = rows(&browser, "#grey");
    assert_eq!(grey.len(), 1, "{grey:?}");
    assert_eq!((grey[0][1].as_str(), grey[0][2].as_str()), ("310000000901", made.cards[2].to_hex().as_str()));
    assert_eq!((grey[0][4].as_str(), grey[0][6].as_str(), grey[0][7].as_str()), ("1.50", "voided 未扣款作废", "—"));
    assert!(grey[0][8].contains("no debit"), "{grey:?}");
    browser.wait_for_text("#grey-message", "1 grey record(s)").expect("the grey count");

    // A card's account and history: its records, newest first.
    let serial = made.cards[1].to_hex();
    browser.find("#serial").expect("serial field").send_keys(&serial).expect("typed");
    browser.find("#show-card").expect("look up").click().expect("clicked");
    browser.wait_for_text("#history-message", &serial).expect("history loaded");
    // The cardholder, with the citizen ID masked (issued as 310101199000000001).
    assert_eq!(browser.find("#account-name").expect("name").text().expect("text"), "Citizen 1");
    let citizen = browser.find("#account-citizen").expect("citizen ID").text().expect("text");
    assert_eq!(citizen, "310*************01");
    assert!(!browser.find("#card-section").expect("section").text().expect("text").contains("310101199000000001"));
    assert_eq!(browser.find("#account-status").expect("status").text().expect("text"), "active 正常");
    let history = rows(&browser, "#history");
    let recorded = clearing
        .count(&format!("SELECT COUNT(*) FROM record_states WHERE card_serial = '{serial}' AND state = 'cleared'"));
    assert_eq!(i64::try_from(history.len()).expect("small"), recorded);
    assert_eq!(history.len(), 3, "two taps and a bill");
    assert!(history.iter().all(|row| row[1] == "purchase 消费" && row[7] == "cleared 已清算"), "{history:?}");
    assert_eq!(history[0][6], format!("{} 19:40:00", date), "newest first: the water bill");
    assert_eq!(history[0][4], "12.50");
    browser.screenshot(&screens.join("card.png")).expect("screenshot");
    // The lost card's: its tap held with the reason.
    let field = browser.find("#serial").expect("serial field");
    field.clear().expect("clear");
    field.send_keys(&made.lost.to_hex()).expect("typed");
    browser.find("#show-card").expect("look up").click().expect("clicked");
    browser.wait_for_text("#history tbody", "blacklisted_card").expect("the held tap");

    // The blacklist: the reported loss.
    let blacklist = rows(&browser, "#blacklist");
    assert_eq!(blacklist.len(), 1, "{blacklist:?}");
    assert_eq!(blacklist[0][1], made.lost.to_hex());
    assert_eq!(&blacklist[0][2..4], ["add 加入", "lost 挂失"]);
    assert_eq!(blacklist[0][4], format!("{date} 12:00:00"));
    assert_eq!(blacklist[0][5], "lost 挂失");
    browser.execute("window.scrollTo(0, document.body.scrollHeight);", &[]).expect("scroll");
    browser.screenshot(&screens.join("card-and-blacklist.png")).expect("screenshot");

    // An unknown card is said so.
    let field = browser.find("#serial").expect("serial field");
    field.clear().expect("clear");
    field.send_keys("31000000000000FF").expect("typed");
    browser.find("#show-card").expect("look up").click().expect("clicked");
    browser.wait_for_text("#history-message", "No card 31000000000000FF").expect("no such card");
    assert!(!visible(&browser.find("#card-account").expect("account")), "no account shown for no card");

    // A bad serial is refused on the page; signing out forgets the token.
    let field = browser.find("#serial").expect("serial field");
    field.clear().expect("clear");
    field.send_keys("12345").expect("typed");
    browser.find("#show-card").expect("look up").click().expect("clicked");
    browser.wait_for_text("#history-message", "16 hex digits").expect("refused serial");
    browser.find("#sign-out").expect("sign out").click().expect("clicked");
    browser.wait_for_text("#signin-message", "Signed out").expect("signed out");
    let stored = browser.execute("return sessionStorage.getItem('clearing.operator.token');", &[]).expect("script");
    assert_eq!(stored, serde_json::Value::Null);
}
