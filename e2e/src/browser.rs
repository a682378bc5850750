//! A real headless Chromium driven over the W3C WebDriver protocol (Debian's `chromedriver`,
//! `TOLLGATE_TEST_CHROMEDRIVER`, installed by `scripts/test`): the few commands a page test
//! needs — open a URL, find an element by CSS selector, type, click, read text, screenshot.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session on it; both end on drop.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session, 1280×1400.
    pub async fn start() -> anyhow::Result<Browser> {
        let driver_path = std::env::var("TOLLGATE_TEST_CHROMEDRIVER").context(
            "TOLLGATE_TEST_CHROMEDRIVER is not set: run the tests with scripts/test (it installs \
             Debian's chromium and chromium-driver) or point it at a chromedriver",
        )?;
        let port = crate::free_port()?;
        // Its own process group, which the Chromium it starts joins: dropping the browser
        // kills the whole group, so no Chromium outlives a test (killing chromedriver alone
        // left them running, reparented to init).
        let driver = Command::new(&driver_path)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {driver_path}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        crate::poll("chromedriver", Duration::from_secs(20), || async {
            let r = http.get(format!("{base}/status")).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        })
        .await?;
        let chromium =
            std::env::var("TOLLGATE_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--no-first-run", "--disable-extensions"
            ] }
        } } });
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            base,
        };
        let v = browser
            .send(reqwest::Method::POST, "/session", caps)
            .await?;
        browser.session = v["sessionId"].as_str().context("no session id")?.to_owned();
        Ok(browser)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = self.http.request(method.clone(), &url);
        let req = if method == reqwest::Method::GET {
            req
        } else {
            req.json(&body)
        };
        let r = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("webdriver {method} {path}: {status} {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.send(
            reqwest::Method::POST,
            &self.at("/url"),
            json!({ "url": url }),
        )
        .await
        .map(drop)
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        let v = self
            .send(reqwest::Method::GET, &self.at("/url"), Value::Null)
            .await?;
        v.as_str().map(str::to_owned).context("url")
    }

    /// The first element matching `css`.
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .send(
                reqwest::Method::POST,
                &self.at("/element"),
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .with_context(|| format!("find {css}"))?;
        v[ELEMENT].as_str().map(str::to_owned).context("element id")
    }

    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let el = self.find(css).await?;
        self.send(
            reqwest::Method::POST,
            &self.at(&format!("/element/{el}/value")),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let el = self.find(css).await?;
        self.send(
            reqwest::Method::POST,
            &self.at(&format!("/element/{el}/click")),
            json!({}),
        )
        .await
        .map(drop)
    }

    /// The rendered text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let el = self.find(css).await?;
        let v = self
            .send(
                reqwest::Method::GET,
                &self.at(&format!("/element/{el}/text")),
                Value::Null,
            )
            .await?;
        v.as_str().map(str::to_owned).context("text")
    }

    /// Ends the session (Chromium exits), then chromedriver.
    pub async fn quit(self) {
        let _ = self
            .send(reqwest::Method::DELETE, &self.at(""), Value::Null)
            .await;
    }

    /// The text of `css` once it contains `needle` (the page may still be loading after a
    /// click): polled for up to 15 s, then the last text seen in the error.
    pub async fn wait_text(&self, css: &str, needle: &str) -> anyhow::Result<String> {
        let found = crate::poll(
            &format!("{css} shows {needle:?}"),
            Duration::from_secs(15),
            || async { self.text(css).await.ok().filter(|t| t.contains(needle)) },
        )
        .await;
        match found {
            Ok(t) => Ok(t),
            Err(e) => {
                let last = self.text(css).await.unwrap_or_else(|e| e.to_string());
                Err(e.context(format!("{css} showed: {last}")))
            }
        }
    }

    /// The page's URL once it ends with `suffix` (polled for up to 15 s).
    pub async fn wait_url(&self, suffix: &str) -> anyhow::Result<String> {
        crate::poll(
            &format!("url ending {suffix}"),
            Duration::from_secs(15),
            || async { self.url().await.ok().filter(|u| u.ends_with(suffix)) },
        )
        .await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let v = self
            .send(reqwest::Method::GET, &self.at("/screenshot"), Value::Null)
            .await?;
        let b64 = v.as_str().context("screenshot")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The width and height a PNG's header declares, if `bytes` is a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let header = bytes.get(..24)?;
    if &header[..8] != b"\x89PNG\r\n\x1a\n" || &header[12..16] != b"IHDR" {
        return None;
    }
    let n = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    Some((n(16), n(20)))
}
