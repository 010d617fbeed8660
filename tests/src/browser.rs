//! A headless browser for the screens' tests: a minimal W3C WebDriver client
//! driving Debian's chromium through `/usr/bin/chromedriver` (packages
//! `chromium chromium-driver fonts-noto-cjk`, installed by `scripts/test.sh`).
//!
//! Each [`Browser`] starts its own chromedriver on a free loopback port with
//! one session, so tests run in parallel; dropping it ends the session and
//! kills chromedriver with everything it started (its process group).
//!
//! ```no_run
//! use system_tests::browser::{Browser, screens_directory};
//! let browser = Browser::start().expect("browser");
//! browser.goto("http://127.0.0.1:8080/operator/").expect("page");
//! browser.find("#token").expect("token field").send_keys("secret").expect("typed");
//! browser.find("button[type=submit]").expect("button").click().expect("clicked");
//! browser.wait_for_text("#status", "Signed in").expect("signed in");
//! // An integration test passes env!("CARGO_TARGET_TMPDIR") (not defined for doctests).
//! let screens = screens_directory("target/tmp", "operator_screen");
//! browser.screenshot(&screens.join("signed-in.png")).expect("screenshot");
//! ```
//!
//! **Screenshots** go where the test says: integration tests pass
//! `env!("CARGO_TARGET_TMPDIR")` (only defined for integration tests, hence
//! passed in) and their own name to [`screens_directory`], which gives
//! `target/tmp/screens/<test name>/`; [`Browser::screenshot`] writes a PNG
//! there (creating the directory).
//!
//! Finding waits: [`Browser::find`] and [`Browser::wait_for_text`] poll until
//! the element (or text) is there or the timeout ([`Options::timeout`],
//! 10 s by default) passes; the error then names the selector, the page's URL
//! and what the page showed.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The chromedriver and chromium Debian installs.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long chromedriver may take to answer `/status` after it is spawned.
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one WebDriver command may take (a page load included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often finding polls the page.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How much of the page's text an error shows.
const SNIPPET_CHARS: usize = 600;
/// The key WebDriver gives an element reference under.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Keys for [`Element::send_keys`] (WebDriver's code points).
pub mod keys {
    pub const ENTER: &str = "\u{E007}";
    pub const TAB: &str = "\u{E004}";
    pub const BACKSPACE: &str = "\u{E003}";
}

/// What went wrong driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("chromedriver did not start: {0}")]
    Start(String),
    #[error("WebDriver {command}: {error}: {message}")]
    WebDriver { command: String, error: String, message: String },
    #[error("WebDriver {command}: no answer: {detail}")]
    Transport { command: String, detail: String },
    #[error("WebDriver {command}: unexpected answer: {detail}")]
    BadAnswer { command: String, detail: String },
    #[error("no element matches {selector:?} after {waited:?} on {url}; the page shows: {body:?}")]
    NotFound { selector: String, url: String, waited: Duration, body: String },
    #[error("{selector:?} did not show {expected:?} after {waited:?} on {url}; it showed: {found:?}")]
    TextNotFound { selector: String, expected: String, url: String, waited: Duration, found: Vec<String> },
    #[error("the screenshot is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl BrowserError {
    /// The WebDriver error code (`no such element`, `stale element reference`…), if it is one.
    pub fn webdriver_error(&self) -> Option<&str> {
        match self {
            BrowserError::WebDriver { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, BrowserError>;

/// How the browser starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The page's viewport in CSS pixels (and so the screenshots' size).
    pub width: u32,
    pub height: u32,
    /// `--lang`, e.g. `zh-CN`; the system's language when None.
    pub lang: Option<String>,
    /// How long finding waits for an element or a text.
    pub timeout: Duration,
    /// Where downloads go (without asking); chromium's default when None.
    pub downloads: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options { width: 1280, height: 900, lang: None, timeout: Duration::from_secs(10), downloads: None }
    }
}

impl Options {
    /// A kiosk's 1024x768 touch screen.
    pub fn kiosk() -> Options {
        Options { width: 1024, height: 768, ..Options::default() }
    }
}

/// `<target tmp>/screens/<test>/`, created; `target_tmpdir` is the test's
/// `env!("CARGO_TARGET_TMPDIR")`.
pub fn screens_directory(target_tmpdir: &str, test: &str) -> PathBuf {
    let directory = Path::new(target_tmpdir).join("screens").join(test);
    std::fs::create_dir_all(&directory).unwrap_or_else(|e| panic!("creating {}: {e}", directory.display()));
    directory
}

/// A headless chromium with its own chromedriver and session.
pub struct Browser {
    driver: Child,
    agent: ureq::Agent,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    timeout: Duration,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("session", &self.session).finish()
    }
}

impl Browser {
    /// A 1280x900 headless chromium.
    pub fn start() -> Result<Browser> {
        Browser::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Result<Browser> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(COMMAND_TIMEOUT))
            .build()
            .into();
        let (driver, base) = spawn_driver(&agent)?;
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={},{}", options.width, options.height),
        ];
        if let Some(lang) = &options.lang {
            args.push(format!("--lang={lang}"));
        }
        let mut browser = Browser { driver, agent, session: String::new(), timeout: options.timeout };
        let mut chrome = json!({ "binary": CHROMIUM, "args": args });
        if let Some(directory) = &options.downloads {
            chrome["prefs"] = json!({
                "download.default_directory": directory,
                "download.prompt_for_download": false,
            });
        }
        let capabilities = json!({
            "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": chrome } }
        });
        let created = browser.command("new session", "POST", &format!("{base}/session"), Some(&capabilities))?;
        let id = created["sessionId"].as_str().ok_or_else(|| BrowserError::BadAnswer {
            command: "new session".into(),
            detail: format!("no sessionId in {created}"),
        })?;
        browser.session = format!("{base}/session/{id}");
        browser.set_window_size(options.width, options.height)?;
        Ok(browser)
    }

    /// Sends one command; its `value`, or the WebDriver error it answered.
    fn command(&self, command: &str, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        let transport = |detail: String| BrowserError::Transport { command: command.to_owned(), detail };
        let answer = match method {
            "GET" => self.agent.get(url).call(),
            "DELETE" => self.agent.delete(url).call(),
            _ => self
                .agent
                .post(url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(&json!({})).to_string()),
        };
        let mut answer = answer.map_err(|e| transport(e.to_string()))?;
        let status = answer.status().as_u16();
        let text =
            answer.body_mut().with_config().limit(64 << 20).read_to_string().map_err(|e| transport(e.to_string()))?;
        let mut parsed: Value = serde_json::from_str(&text).map_err(|e| BrowserError::BadAnswer {
            command: command.to_owned(),
            detail: format!("HTTP {status}, not JSON ({e}): {}", snippet(&text)),
        })?;
        let value = parsed.get_mut("value").map(Value::take).unwrap_or(Value::Null);
        if status >= 400 || value.get("error").is_some_and(Value::is_string) {
            return Err(BrowserError::WebDriver {
                command: command.to_owned(),
                error: value["error"].as_str().unwrap_or("unknown error").to_owned(),
                message: value["message"].as_str().map(|m| m.lines().next().unwrap_or(m)).unwrap_or("").to_owned(),
            });
        }
        Ok(value)
    }

    fn session_command(&self, command: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.command(command, method, &format!("{}{path}", self.session), body)
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_command(&format!("navigate to {url}"), "POST", "/url", Some(&json!({ "url": url })))?;
        Ok(())
    }

    /// The page's URL.
    pub fn url(&self) -> Result<String> {
        Ok(self.session_command("get URL", "GET", "/url", None)?.as_str().unwrap_or_default().to_owned())
    }

    /// The page's visible text (`document.body.innerText`).
    pub fn body_text(&self) -> Result<String> {
        let text = self.execute("return document.body ? document.body.innerText : '';", &[])?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// Sizes the window so that the page's viewport is `width` x `height`
    /// CSS pixels (headless chromium still counts a toolbar's height in the
    /// window), e.g. a kiosk's 1024x768.
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        let rect = |w: u32, h: u32| json!({ "width": w, "height": h });
        self.session_command("set window rect", "POST", "/window/rect", Some(&rect(width, height)))?;
        let frame = self
            .execute("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];", &[])?;
        let extra = |i: usize| frame[i].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        if extra(0) > 0 || extra(1) > 0 {
            let rect = rect(width + extra(0), height + extra(1));
            self.session_command("set window rect", "POST", "/window/rect", Some(&rect))?;
        }
        Ok(())
    }

    /// How long finding waits from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `script` (a function body: `return ...;`, its arguments in
    /// `arguments`) in the page; what it returned.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.session_command("execute script", "POST", "/execute/sync", Some(&json!({"script": script, "args": args})))
    }

    /// The elements matching `css` now (maybe none).
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>> {
        let found = self.session_command(
            &format!("find elements {css:?}"),
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        let list = found.as_array().ok_or_else(|| BrowserError::BadAnswer {
            command: format!("find elements {css:?}"),
            detail: format!("not a list: {found}"),
        })?;
        list.iter().map(|reference| self.element(css, reference)).collect()
    }

    fn element(&self, css: &str, reference: &Value) -> Result<Element<'_>> {
        let id = reference[ELEMENT_KEY].as_str().ok_or_else(|| BrowserError::BadAnswer {
            command: format!("find {css:?}"),
            detail: format!("not an element reference: {reference}"),
        })?;
        Ok(Element { browser: self, id: id.to_owned(), selector: css.to_owned() })
    }

    /// The first element matching `css`, waiting for it to appear.
    pub fn find(&self, css: &str) -> Result<Element<'_>> {
        let start = Instant::now();
        loop {
            if let Some(element) = self.find_all(css)?.into_iter().next() {
                return Ok(element);
            }
            if start.elapsed() >= self.timeout {
                return Err(BrowserError::NotFound {
                    selector: css.to_owned(),
                    url: self.url().unwrap_or_else(|e| format!("(URL unknown: {e})")),
                    waited: self.timeout,
                    body: snippet(&self.body_text().unwrap_or_else(|e| format!("(text unknown: {e})"))),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until an element matching `css` shows a text containing
    /// `expected`; that element.
    pub fn wait_for_text(&self, css: &str, expected: &str) -> Result<Element<'_>> {
        let start = Instant::now();
        loop {
            let mut found = Vec::new();
            for element in self.find_all(css)? {
                match element.text() {
                    Ok(text) if text.contains(expected) => return Ok(element),
                    Ok(text) => found.push(snippet(&text)),
                    // Replaced by the page's script while being read: look again.
                    Err(e) if e.webdriver_error() == Some("stale element reference") => {}
                    Err(e) => return Err(e),
                }
            }
            if start.elapsed() >= self.timeout {
                return Err(BrowserError::TextNotFound {
                    selector: css.to_owned(),
                    expected: expected.to_owned(),
                    url: self.url().unwrap_or_else(|e| format!("(URL unknown: {e})")),
                    waited: self.timeout,
                    found,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The page as a PNG at `path` (its directory created).
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let encoded = self.session_command("take screenshot", "GET", "/screenshot", None)?;
        let encoded = encoded.as_str().ok_or_else(|| BrowserError::BadAnswer {
            command: "take screenshot".into(),
            detail: "not a string".into(),
        })?;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, &png)
        };
        write(path).map_err(|source| BrowserError::Write { path: path.to_owned(), source })
    }

    /// Chromedriver's process id (for tests that check nothing is left behind).
    pub fn driver_pid(&self) -> u32 {
        self.driver.id()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty()
            && let Err(e) = self.command("delete session", "DELETE", &self.session, None)
        {
            eprintln!("browser: ending the session: {e}");
        }
        // Whatever chromedriver started is in its process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Spawns chromedriver on a free port in a process group of its own and waits
/// for `/status` to say it is ready; the process and its base URL.
fn spawn_driver(agent: &ureq::Agent) -> Result<(Child, String)> {
    let mut last = String::new();
    // The port is free when chosen but may be taken before chromedriver binds it: a few tries.
    for _ in 0..3 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| BrowserError::Start(format!("choosing a port: {e}")))?
            .port();
        let mut driver = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned(), "--log-level=WARNING".to_owned()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                BrowserError::Start(format!(
                    "{CHROMEDRIVER}: {e} (scripts/test.sh installs chromium, chromium-driver and fonts-noto-cjk)"
                ))
            })?;
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = driver.try_wait() {
                last = format!("chromedriver on port {port} exited: {status}");
                break;
            }
            match agent.get(&format!("{base}/status")).call() {
                Ok(mut answer) => {
                    let ready = answer
                        .body_mut()
                        .read_to_string()
                        .ok()
                        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                        .is_some_and(|v| v["value"]["ready"] == Value::Bool(true));
                    if ready {
                        return Ok((driver, base));
                    }
                    last = format!("chromedriver on port {port} is not ready");
                }
                Err(e) => last = format!("chromedriver on port {port}: {e}"),
            }
            if start.elapsed() > DRIVER_START_TIMEOUT {
                let _ = driver.kill();
                let _ = driver.wait();
                return Err(BrowserError::Start(format!("{last} after {DRIVER_START_TIMEOUT:?}")));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = driver.wait();
    }
    Err(BrowserError::Start(last))
}

fn as_text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(SNIPPET_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
    /// The selector that found it, for messages.
    selector: String,
}

impl std::fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Element").field("selector", &self.selector).finish()
    }
}

impl<'a> Element<'a> {
    fn command(&self, command: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.browser.session_command(
            &format!("{command} {:?}", self.selector),
            method,
            &format!("/element/{}{path}", self.id),
            body,
        )
    }

    pub fn click(&self) -> Result<()> {
        self.command("click", "POST", "/click", None)?;
        Ok(())
    }

    /// Types `text` into it (see [`keys`] for Enter and the like).
    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.command("send keys to", "POST", "/value", Some(&json!({ "text": text })))?;
        Ok(())
    }

    /// Empties an input.
    pub fn clear(&self) -> Result<()> {
        self.command("clear", "POST", "/clear", None)?;
        Ok(())
    }

    /// Its rendered text.
    pub fn text(&self) -> Result<String> {
        Ok(self.command("text of", "GET", "/text", None)?.as_str().unwrap_or_default().to_owned())
    }

    /// An attribute as the HTML has it (None when absent); an input's
    /// current text is its `value` [property](Element::property).
    pub fn attribute(&self, name: &str) -> Result<Option<String>> {
        let value = self.command(&format!("attribute {name} of"), "GET", &format!("/attribute/{name}"), None)?;
        Ok(as_text(value))
    }

    /// A DOM property (`value`, `checked`, `disabled`…) as text; None when undefined or null.
    pub fn property(&self, name: &str) -> Result<Option<String>> {
        let value = self.command(&format!("property {name} of"), "GET", &format!("/property/{name}"), None)?;
        Ok(as_text(value))
    }

    /// The elements matching `css` inside this one, now.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'a>>> {
        let found = self.command(
            &format!("find elements {css:?} in"),
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        let list = found.as_array().ok_or_else(|| BrowserError::BadAnswer {
            command: format!("find elements {css:?}"),
            detail: format!("not a list: {found}"),
        })?;
        list.iter().map(|reference| self.browser.element(css, reference)).collect()
    }

    /// Its reference as a script argument ([`Browser::execute`]).
    pub fn as_argument(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }
}
