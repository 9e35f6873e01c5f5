//! A real headless Chromium for the console's tests, driven through chromedriver (WebDriver).
//!
//! Each [`Browser`] starts its own chromedriver on a free loopback port (killed on drop, with
//! its browsers) and one Chromium session with the browser log switched on
//! (`goog:loggingPrefs`): Chromium writes every console error, uncaught exception, failed load
//! and Content-Security-Policy violation there, including those of a page's first load, before
//! any script of ours could listen.
//! [`Browser::finish`] asserts none was recorded.
//!
//! Screenshots go to `<target>/console-screenshots/<test>/NN-<step>.png` at each step the test
//! names; when a test panics, the page's HTML and a last screenshot are saved there too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use thirtyfour::prelude::*;
use thirtyfour::{ChromeCapabilities, LoggingPrefsLogLevel};

/// How long a wait for an element or a page may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);

/// The browser's time zone: not the server's UTC, and half an hour off whole hours, so a time
/// shown in the viewer's zone is told apart from one shown in UTC. No daylight saving time.
pub const VIEWER_TIME_ZONE: &str = "Asia/Kolkata";
/// [`VIEWER_TIME_ZONE`] as fleetd's charts write it under their time axis.
pub const VIEWER_UTC_OFFSET: &str = "UTC+05:30";

/// The message Chromium logs for a Content-Security-Policy violation contains this.
const CSP_MARK: &str = "Content Security Policy";

/// chromedriver on a free loopback port; killed (with its browsers) when dropped.
pub struct Chromedriver {
    child: Child,
    addr: SocketAddr,
}

impl Chromedriver {
    /// Starts `/usr/bin/chromedriver` (Debian's `chromium-driver`) logging to `log`, and waits
    /// until it accepts connections.
    pub fn start(log: &Path) -> Self {
        let addr = free_loopback_port();
        let child = Command::new("chromedriver")
            // A group of its own, with every Chromium it starts: one signal ends them all, even
            // a browser whose session was never ended.
            .process_group(0)
            // Chromium takes its zone from the environment chromedriver passes on.
            .env("TZ", VIEWER_TIME_ZONE)
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver package)");
        let mut driver = Chromedriver { child, addr };
        driver.wait_until_listening();
        driver
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromedriver exited before listening on {}: {status}",
                    self.addr
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not listening on {} within {WAIT:?}",
                self.addr
            );
            std::thread::sleep(POLL);
        }
    }

    /// One plain HTTP request to chromedriver, from any thread and without a runtime: what a
    /// `Drop` can still do. The answer's JSON `value`.
    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(WAIT)).ok();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let body = read_answer(&mut stream)?;
        let json: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        Ok(json["value"].clone())
    }
}

/// The body of one HTTP answer, by its `Content-Length` (chromedriver keeps the connection
/// open whatever the request asks, and never chunks).
fn read_answer(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
            if answer.len() >= at + 4 + length {
                return Ok(answer[at + 4..at + 4 + length].to_vec());
            }
        }
        let n = stream.read(&mut buffer).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed after {} bytes", answer.len()));
        }
        answer.extend_from_slice(&buffer[..n]);
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = Pid::from_raw(-(self.child.id() as i32));
        let _ = signal::kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn free_loopback_port() -> SocketAddr {
    // The port is free when the listener closes; chromedriver takes it right after.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().unwrap()
}

/// What the browser log held that a clean page never logs.
#[derive(Debug, Default, Clone)]
pub struct Problems {
    /// Content-Security-Policy violations.
    pub csp_violations: Vec<String>,
    /// Console errors, uncaught exceptions and failed loads (level SEVERE).
    pub errors: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.csp_violations.is_empty() && self.errors.is_empty()
    }
}

/// A headless Chromium session of one test.
pub struct Browser {
    driver: WebDriver,
    /// Kept after `driver`: fields drop in order, the session ends before chromedriver.
    chromedriver: Chromedriver,
    /// Where this test's screenshots go.
    dir: PathBuf,
    /// The origin pages are opened under (`https://127.0.0.1:port`).
    origin: String,
    step: AtomicU32,
    /// Log entries read so far and not yet judged by [`Browser::take_problems`].
    problems: Mutex<Problems>,
    quit: bool,
    /// This browser's place among the [`MAX_BROWSERS`] that may run at once.
    _running: tokio::sync::SemaphorePermit<'static>,
}

/// How many Chromium sessions of one test binary run at once: the tests of a binary run in
/// parallel, and more browsers than this on two cores make every wait a race with the clock.
pub const MAX_BROWSERS: usize = 3;

static BROWSERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_BROWSERS);

impl Browser {
    /// A new Chromium session for test `test`, opening pages under `origin`.
    pub async fn open(test: &str, origin: &str) -> Self {
        let dir = screenshot_root().join(test);
        // Screenshots of an earlier run would be mistaken for this one's.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let running = BROWSERS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let chromedriver = Chromedriver::start(&dir.join("chromedriver.log"));
        let driver = WebDriver::new(chromedriver.url(), capabilities())
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            driver,
            chromedriver,
            dir,
            origin: origin.trim_end_matches('/').to_owned(),
            step: AtomicU32::new(0),
            problems: Mutex::new(Problems::default()),
            quit: false,
            _running: running,
        }
    }

    pub fn driver(&self) -> &WebDriver {
        &self.driver
    }

    /// The directory of this test's screenshots.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens `path` (e.g. `/#/fleet`) under the origin.
    pub async fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.origin);
        self.driver
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Loads the current page again from the server, as the browser's reload button does. (A
    /// `goto` to the address the page is already on changes nothing: only its fragment would
    /// differ, and it does not, so the console is not asked to draw anything again.)
    pub async fn reload(&self) {
        self.driver
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("reload: {e}"));
    }

    /// The first element matching `css`, waiting for it up to [`WAIT`].
    pub async fn wait(&self, css: &str) -> WebElement {
        self.driver
            .query(By::Css(css))
            .wait(WAIT, POLL)
            .first()
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {WAIT:?}: {e}"))
    }

    /// Every element matching `css` now (none is fine).
    pub async fn all(&self, css: &str) -> Vec<WebElement> {
        self.driver
            .find_all(By::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        self.driver
            .query(By::Css(css))
            .wait(WAIT, POLL)
            .not_exists()
            .await
            .unwrap_or_else(|e| panic!("{css} still there after {WAIT:?}: {e}"));
    }

    /// Waits until the console has drawn page `name`: its `<main id="page-<name>">` without
    /// `data-loading` (api/CONSOLE.md).
    pub async fn wait_page(&self, name: &str) -> WebElement {
        self.wait(&format!("main#page-{name}:not([data-loading])"))
            .await
    }

    /// Waits until `condition` (a JavaScript expression) is true in the page.
    pub async fn wait_true(&self, condition: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self
                .script(&format!("return !!({condition});"), Vec::new())
                .await
                == Value::Bool(true)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not true within {WAIT:?}: {condition}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Types `text` into the field matching `css` (cleared first).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.wait(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clicks the element matching `css` once it is there.
    pub async fn click(&self, css: &str) {
        self.wait(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.driver
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
            .json()
            .clone()
    }

    /// Runs `script` asynchronously: it calls `arguments[arguments.length - 1]` with its result.
    pub async fn script_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.driver
            .execute_async(script, args)
            .await
            .unwrap_or_else(|e| panic!("async script failed: {e}\n{script}"))
            .json()
            .clone()
    }

    /// The page's HTML as it is now (the DOM serialised, not the bytes once served).
    pub async fn source(&self) -> String {
        self.driver
            .source()
            .await
            .unwrap_or_else(|e| panic!("page source: {e}"))
    }

    /// Saves a screenshot as `NN-<step>.png`; returns its path.
    pub async fn screenshot(&self, step: &str) -> PathBuf {
        let png = self
            .driver
            .screenshot_as_png()
            .await
            .unwrap_or_else(|e| panic!("screenshot {step}: {e}"));
        let path = self.next_file(step, "png");
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn next_file(&self, step: &str, extension: &str) -> PathBuf {
        let n = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        self.dir.join(format!("{n:02}-{step}.{extension}"))
    }

    /// Reads the browser log (chromedriver drains it on each read) into the problems seen so far.
    async fn read_log(&self) {
        let entries = self
            .driver
            .browser_log()
            .await
            .unwrap_or_else(|e| panic!("the browser log: {e}"));
        let mut problems = self.problems.lock().unwrap();
        for entry in entries {
            if entry.message.contains(CSP_MARK) {
                problems.csp_violations.push(entry.message);
            } else if entry.level == "SEVERE" {
                problems.errors.push(entry.message);
            }
        }
    }

    /// The problems logged since the last call, removed from the record.
    pub async fn take_problems(&self) -> Problems {
        self.read_log().await;
        std::mem::take(&mut *self.problems.lock().unwrap())
    }

    /// Removes from the record the errors that contain `expected` (e.g. the 403 of a request
    /// the test made to be refused); panics when there is none.
    pub async fn expect_error(&self, expected: &str) {
        self.read_log().await;
        let mut problems = self.problems.lock().unwrap();
        let before = problems.errors.len();
        problems.errors.retain(|e| !e.contains(expected));
        assert!(
            problems.errors.len() < before,
            "no logged error contains {expected:?}: {:?}",
            problems.errors
        );
    }

    /// Runs axe-core (the accessibility engine, `tests/a11y`) on the page as it is now, with the
    /// WCAG 2.1 A and AA rules (contrast, labels, names, landmarks, ARIA), and fails the test
    /// with every violation found, named by rule and element. `step` names the page.
    pub async fn assert_accessible(&self, step: &str) {
        let violations = self
            .script_async(
                &format!(
                    "{}\nconst done = arguments[arguments.length - 1];
                     axe.run(document, {{ runOnly: {{ type: 'tag',
                         values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] }} }})
                       .then((r) => done(r.violations.map((v) => ({{ id: v.id, help: v.help,
                           nodes: v.nodes.map((n) => n.target.join(' ')) }}))))
                       .catch((e) => done([{{ id: 'axe-failed', help: String(e), nodes: [] }}]));",
                    axe_source().await
                ),
                Vec::new(),
            )
            .await;
        let violations = violations.as_array().cloned().unwrap_or_default();
        if !violations.is_empty() {
            self.screenshot(&format!("{step}-inaccessible")).await;
        }
        assert!(
            violations.is_empty(),
            "{step}: WCAG A/AA violations found by axe-core: {}",
            serde_json::to_string_pretty(&violations).unwrap()
        );
    }

    /// Asserts that no CSP violation and no console error was logged, then ends the session.
    pub async fn finish(mut self) {
        let problems = self.take_problems().await;
        assert!(
            problems.is_empty(),
            "the browser logged problems: {problems:#?}"
        );
        self.quit = true;
        self.driver
            .clone()
            .quit()
            .await
            .expect("the Chromium session ends");
    }

    /// On a failing test: the page's HTML and a screenshot, through chromedriver directly
    /// (a `Drop` cannot await the client).
    fn save_failure(&self) {
        let session = self.driver.session_id().to_string();
        match self
            .chromedriver
            .raw("GET", &format!("/session/{session}/source"), None)
        {
            Ok(Value::String(html)) => {
                let path = self.next_file("failure", "html");
                let _ = std::fs::write(&path, html);
                eprintln!("the page at the failure: {}", path.display());
            }
            other => eprintln!("no page source at the failure: {other:?}"),
        }
        match self
            .chromedriver
            .raw("GET", &format!("/session/{session}/screenshot"), None)
        {
            Ok(Value::String(png)) => {
                let path = self.next_file("failure", "png");
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(png) {
                    let _ = std::fs::write(&path, bytes);
                    eprintln!("the screen at the failure: {}", path.display());
                }
            }
            other => eprintln!("no screenshot at the failure: {other:?}"),
        }
        if let Ok(problems) = self.problems.lock() {
            eprintln!("browser log problems read before the failure: {problems:#?}");
        }
        let log = json!({ "type": "browser" });
        match self
            .chromedriver
            .raw("POST", &format!("/session/{session}/log"), Some(log))
        {
            Ok(Value::Array(entries)) => {
                eprintln!("the browser log since:");
                for entry in entries {
                    eprintln!("  {} {}", entry["level"], entry["message"]);
                }
            }
            other => eprintln!("no browser log at the failure: {other:?}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.save_failure();
        }
        if !self.quit {
            // Ends the session (and its Chromium) through chromedriver directly; the client's
            // own fallback would block the test's runtime.
            let session = self.driver.session_id().to_string();
            let _ = self.driver.clone().leak();
            let _ = self
                .chromedriver
                .raw("DELETE", &format!("/session/{session}"), None);
        }
    }
}

/// Chromium as the tests run it.
fn capabilities() -> ChromeCapabilities {
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary("/usr/bin/chromium").unwrap();
    for arg in [
        // The tests run as root (CI too), where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--headless=new",
        "--window-size=1280,1000",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        // fleetd's certificate is issued by the test fleet's own CA, made for this run. The
        // browser only ever talks to that loopback fleetd, so certificate errors are ignored
        // rather than installing a throwaway CA into an NSS database; fleetd's TLS itself is
        // checked by the HTTPS tests, which trust exactly the fleet root.
        "--ignore-certificate-errors",
    ] {
        caps.add_arg(arg).unwrap();
    }
    // Every console message, error and CSP report, read back with `browser_log`.
    caps.set_browser_log_level(LoggingPrefsLogLevel::All)
        .unwrap();
    caps
}

/// `<target>/console-screenshots`: the target directory is the one holding this test binary
/// (`<target>/<profile>/deps/<binary>`).
pub fn screenshot_root() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps");
    target.join("console-screenshots")
}

/// axe-core's script, read once (its package installed from `tests/a11y`'s lock file).
async fn axe_source() -> &'static str {
    static SOURCE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    SOURCE
        .get_or_init(|| async {
            let dir = crate::npm::project_dir("a11y");
            crate::npm::ensure_installed(&dir, "axe-core").await;
            std::fs::read_to_string(dir.join("node_modules/axe-core/axe.min.js"))
                .expect("axe-core's script")
        })
        .await
}
