//! The headless-browser kit (system_tests::browser) against a tiny page served
//! from a std TcpListener: typing, clicking, waiting for text, attributes,
//! scripts, screenshots, window size; a missing element's error names the
//! selector, the URL and the page's text; nothing is left running after drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use system_tests::browser::{Browser, BrowserError, Options, keys, screens_directory};

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kit test</title></head>
<body>
  <h1>Browser kit 浏览器</h1>
  <input id="name" name="name" placeholder="name">
  <button id="go" data-role="greet">Greet</button>
  <ul id="list"><li>one</li><li>two</li><li>three</li></ul>
  <p id="out"></p>
  <script>
    document.getElementById('go').addEventListener('click', () => {
      // Shown a little later, as a page answering from its server would.
      const name = document.getElementById('name').value;
      setTimeout(() => { document.getElementById('out').textContent = 'Hello, ' + name + '!'; }, 300);
    });
    document.getElementById('name').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') document.getElementById('out').textContent = 'entered';
    });
  </script>
</body></html>"#;

/// Serves PAGE to every GET from a thread; its address.
fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            // The request line and headers, up to the blank line.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
        }
    });
    address
}

#[test]
fn types_clicks_and_reads_a_page() {
    let address = serve_page();
    let browser = Browser::start().expect("browser");
    browser.goto(&format!("http://{address}/kit")).expect("page");
    assert_eq!(browser.url().expect("url"), format!("http://{address}/kit"));

    let name = browser.find("#name").expect("name field");
    name.send_keys("Li Lei").expect("typed");
    assert_eq!(name.property("value").expect("value").as_deref(), Some("Li Lei"));
    assert_eq!(name.attribute("value").expect("value attribute"), None, "typing sets the property only");
    assert_eq!(name.attribute("placeholder").expect("placeholder").as_deref(), Some("name"));
    assert_eq!(name.attribute("title").expect("title"), None);
    let button = browser.find("#go").expect("button");
    assert_eq!(button.attribute("data-role").expect("attribute").as_deref(), Some("greet"));
    assert_eq!(browser.find("#out").expect("out").text().expect("text"), "");
    button.click().expect("click");
    let out = browser.wait_for_text("#out", "Hello, Li Lei!").expect("greeting");
    assert_eq!(out.text().expect("text"), "Hello, Li Lei!");

    name.clear().expect("clear");
    name.send_keys(&format!("x{}", keys::ENTER)).expect("enter");
    browser.wait_for_text("#out", "entered").expect("enter pressed");

    let items = browser.find_all("#list li").expect("items");
    let texts: Vec<String> = items.iter().map(|i| i.text().expect("text")).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let list = browser.find("#list").expect("list");
    assert_eq!(list.find_all("li").expect("items in list").len(), 3);
    assert!(browser.find_all("#absent").expect("none").is_empty());
    assert!(browser.body_text().expect("body").contains("Browser kit 浏览器"));

    let sum = browser
        .execute("return arguments[0] + arguments[1].length;", &[serde_json::json!(40), serde_json::json!([1, 2])])
        .expect("script");
    assert_eq!(sum, serde_json::json!(42));
    let tag = browser.execute("return arguments[0].tagName;", &[list.as_argument()]).expect("element argument");
    assert_eq!(tag, serde_json::json!("UL"));

    let screens = screens_directory(env!("CARGO_TARGET_TMPDIR"), "browser");
    let path = screens.join("kit.png");
    let _ = std::fs::remove_file(&path);
    browser.screenshot(&path).expect("screenshot");
    let png = std::fs::read(&path).expect("read screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    // IHDR: width and height, big-endian, at bytes 16..24.
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    assert_eq!(width, 1280, "the default window is 1280 wide");
}

#[test]
fn a_kiosk_sized_window() {
    let address = serve_page();
    let browser = Browser::start_with(Options::kiosk()).expect("browser");
    browser.goto(&format!("http://{address}/")).expect("page");
    let size = browser.execute("return [window.innerWidth, window.innerHeight];", &[]).expect("size");
    assert_eq!(size, serde_json::json!([1024, 768]));
    browser.set_window_size(800, 600).expect("resize");
    let width = browser.execute("return window.innerWidth;", &[]).expect("width");
    assert_eq!(width, serde_json::json!(800));
}

#[test]
fn a_missing_element_names_the_selector_the_url_and_the_page() {
    let address = serve_page();
    let mut browser = Browser::start().expect("browser");
    browser.set_timeout(Duration::from_millis(400));
    browser.goto(&format!("http://{address}/missing")).expect("page");

    let error = browser.find("#no-such-thing").expect_err("not on the page");
    let BrowserError::NotFound { selector, url, body, .. } = &error else { panic!("not NotFound: {error}") };
    assert_eq!(selector, "#no-such-thing");
    assert_eq!(url, &format!("http://{address}/missing"));
    assert!(body.contains("Browser kit 浏览器"), "{body}");
    let message = error.to_string();
    assert!(
        message.contains("#no-such-thing") && message.contains("/missing") && message.contains("Greet"),
        "{message}"
    );

    let error = browser.wait_for_text("#list li", "four").expect_err("no fourth item");
    let BrowserError::TextNotFound { found, .. } = &error else { panic!("not TextNotFound: {error}") };
    assert_eq!(found, &["one", "two", "three"]);
    assert!(error.to_string().contains("\"four\""), "{error}");

    let error = browser.execute("throw new Error('boom');", &[]).expect_err("a throwing script");
    assert_eq!(error.webdriver_error(), Some("javascript error"), "{error}");
    assert!(error.to_string().contains("boom"), "{error}");
}

/// The process ids in process group `group`.
fn group_members(group: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp ...; comm may hold spaces, so after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if rest.split_whitespace().nth(2).and_then(|g| g.parse::<u32>().ok()) == Some(group) {
            members.push(pid);
        }
    }
    members
}

#[test]
fn dropping_the_browser_leaves_no_process() {
    let address = serve_page();
    let browser = Browser::start().expect("browser");
    browser.goto(&format!("http://{address}/")).expect("page");
    let driver = browser.driver_pid();
    let before = group_members(driver);
    assert!(before.contains(&driver) && before.len() > 2, "chromedriver and chromium's processes: {before:?}");
    drop(browser);
    // Killed processes linger in /proc until init reaps them: a moment.
    let mut after = group_members(driver);
    for _ in 0..100 {
        if after.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        after = group_members(driver);
    }
    let states: Vec<String> =
        after.iter().filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()).collect();
    assert!(after.is_empty(), "left running: {states:?}");
}
