//! The web console in a real browser (headless Chromium driven through chromedriver) against
//! `eventfold serve` on the imported CDNOW log: sign in (a refused key, a customer who sees only
//! orders, staff who see everything), read each page, follow "explain" from a daily total to its
//! orders, watch a correction badge appear live after an upload, approve an exception, walk the
//! chain. Each page is saved as a screenshot under `$CARGO_TARGET_DIR/console-screenshots`
//! (or `EVENTFOLD_SCREENSHOTS`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::{free_port, start_serve, KillOnDrop};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test, which installs Chromium and chromedriver")
    })
}

/// Runs `eventfold` on `store`; its stdout as JSON.
fn eventfold_json(store: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(args)
        .arg("--json")
        .env("EVENTFOLD_STORE", store)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eventfold {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A headless Chromium session through a chromedriver of the test's own.
async fn browser() -> (Client, KillOnDrop) {
    let port = free_port();
    let driver = KillOnDrop(
        Command::new(var("EVENTFOLD_TEST_CHROMEDRIVER"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": var("EVENTFOLD_TEST_CHROMIUM"),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1366,768", "--lang=en-US"],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (client, driver),
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "chromedriver: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Where the screenshots go.
fn screenshots() -> PathBuf {
    let dir = std::env::var("EVENTFOLD_SCREENSHOTS").map_or_else(
        |_| {
            std::env::var("CARGO_TARGET_DIR")
                .map_or_else(|_| PathBuf::from("target"), PathBuf::from)
                .join("console-screenshots")
        },
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(client: &Client, name: &str) {
    client
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits (up to 30 s) until the text of the first element matching `css` satisfies `want`;
/// returns it.
async fn text_until(client: &Client, css: &str, want: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(el) = client.find(Locator::Css(css)).await {
            if let Ok(t) = el.text().await {
                if want(&t) {
                    return t;
                }
                last = t;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{css}: still {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(client: &Client, css: &str) -> usize {
    client.find_all(Locator::Css(css)).await.unwrap().len()
}

async fn fill(client: &Client, css: &str, text: &str) {
    let el = client.find(Locator::Css(css)).await.unwrap();
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn click(client: &Client, css: &str) {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// The page's accessibility basics, checked in the browser: every visible input has a label,
/// every canvas a role and a name, and body text, table text, badges and navigation links have
/// a contrast ratio of at least 4.5:1 against the background they sit on (WCAG AA).
async fn accessible(client: &Client, page: &str) {
    let found = client
        .execute(
            r#"
            const issues = [];
            for (const i of document.querySelectorAll("input, select, textarea")) {
              if (i.offsetParent === null) continue;
              if (!(i.labels && i.labels.length) && !i.getAttribute("aria-label")) issues.push(`unlabelled ${i.id || i.name || i.type}`);
            }
            for (const c of document.querySelectorAll("canvas")) {
              if (c.getAttribute("role") !== "img" || !c.getAttribute("aria-label")) issues.push("canvas without a name");
            }
            const rgb = (s) => (s.match(/[\d.]+/g) || []).slice(0, 4).map(Number);
            const lum = ([r, g, b]) => {
              const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
              return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
            };
            const background = (el) => {
              for (let e = el; e; e = e.parentElement) {
                const c = rgb(getComputedStyle(e).backgroundColor);
                if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c;
              }
              return [255, 255, 255];
            };
            for (const el of document.querySelectorAll("p, td, th, .badge, nav a, label, h2, h3, button")) {
              if (el.offsetParent === null || !el.textContent.trim()) continue;
              const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
              const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
              if (ratio < 4.5) issues.push(`contrast ${ratio.toFixed(2)} for ${el.tagName} ${el.className} "${el.textContent.trim().slice(0, 30)}"`);
            }
            return issues;
            "#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(found, json!([]), "{page}: accessibility issues");
}

/// `GET path` with `key` as bearer token.
async fn api(base: &str, key: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn api_post(base: &str, key: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn upload(base: &str, key: &str, csv: &str) {
    let r = reqwest::Client::new()
        .post(format!("{base}/stores/cdnow/uploads"))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(format!(
            "order_id,customer_id,occurred_at,sku,quantity,amount,currency\n{csv}\n"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_on_the_cdnow_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("console.db");
    let store = format!("sqlite://{}", db.display());
    let cdnow =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cdnow/CDNOW_master.txt");
    let imported = eventfold_json(
        &store,
        &["import", "cdnow", cdnow.to_str().unwrap(), "--backfill"],
    );
    assert_eq!(imported["orders_appended"], 69_659, "{imported}");
    let staff = eventfold_json(
        &store,
        &[
            "keys",
            "create",
            "--actor",
            "admin:console",
            "--role",
            "finance",
            "--role",
            "operator",
            "--role",
            "auditor",
            "--role",
            "support",
            "--role",
            "service",
        ],
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let customer = eventfold_json(
        &store,
        &[
            "keys", "create", "--actor", "user:c-1", "--role", "customer",
        ],
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // A signed anchor of the imported log's head, which every walk of the server checks.
    let (secret, public, anchor) = (
        dir.path().join("k.sec"),
        dir.path().join("k.pub"),
        dir.path().join("anchor.json"),
    );
    eventfold_json(
        &store,
        &[
            "anchor",
            "keygen",
            "--secret-key",
            secret.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ],
    );
    let signed = eventfold_json(
        &store,
        &[
            "anchor",
            "sign",
            "--secret-key",
            secret.to_str().unwrap(),
            "--out",
            anchor.to_str().unwrap(),
        ],
    );
    let anchored = signed["position"].as_u64().unwrap();
    assert!(anchored > 69_659, "{signed}");
    let (server, base) = start_serve(
        &db,
        &[
            "--verify-every",
            "6h",
            "--anchor",
            anchor.to_str().unwrap(),
            "--anchor-public-key",
            public.to_str().unwrap(),
        ],
        Stdio::null(),
    )
    .await;
    let _server = KillOnDrop(server);

    // An account to look at, and an exception to decide: period control on CDNOW's last month,
    // then a posting for it, long beyond its maximum delay, is held.
    let (status, _) = api_post(
        &base,
        &staff,
        "/accounts",
        json!({"account_id": "acc-console", "owner": "o", "currency": "USD"}),
    )
    .await;
    assert_eq!(status, 201);
    for (verb, amount) in [("deposit", "10.00"), ("withdraw", "2.50")] {
        let (status, body) = api_post(
            &base,
            &staff,
            &format!("/accounts/acc-console/{verb}"),
            json!({"amount": amount, "currency": "USD"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = api_post(
        &base,
        &staff,
        "/stores/cdnow/periods",
        json!({"from": "1998-06", "max_delay": "72h"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    upload(
        &base,
        &staff,
        "held-1,c-held,1998-06-10T12:00:00Z,cd,1,42.00,USD",
    )
    .await;
    let started = Instant::now();
    while api(&base, &staff, "/exceptions?store=cdnow&state=open")
        .await
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no exception was raised"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (client, _driver) = browser().await;
    let console = format!("{base}/console");

    // Sign in: a wrong key is refused; a customer sees only orders.
    client.goto(&console).await.unwrap();
    fill(&client, "#api-key", "ef_not-a-key").await;
    click(&client, "#sign-in-form button[type=submit]").await;
    text_until(&client, "#sign-in-error", |t| t.contains("not accepted")).await;
    accessible(&client, "sign in").await;
    shot(&client, "01-sign-in").await;
    fill(&client, "#api-key", &customer).await;
    click(&client, "#sign-in-form button[type=submit]").await;
    text_until(&client, "#who-text", |t| t.contains("user:c-1")).await;
    let visible = client
        .execute("return [...document.querySelectorAll('#nav li')].filter(l => !l.hidden).map(l => l.dataset.page)", vec![])
        .await
        .unwrap();
    assert_eq!(visible, json!(["orders"]));
    click(&client, "#sign-out").await;

    // Staff.
    fill(&client, "#api-key", &staff).await;
    click(&client, "#sign-in-form button[type=submit]").await;
    text_until(&client, "#who-text", |t| t.contains("admin:console")).await;
    let visible = client
        .execute("return [...document.querySelectorAll('#nav li')].filter(l => !l.hidden).map(l => l.dataset.page)", vec![])
        .await
        .unwrap();
    assert_eq!(
        visible,
        json!(["sales", "explain", "orders", "exceptions", "operations"])
    );

    // Sales: three views side by side for January 1997, each with its clock explained.
    client
        .goto(&format!(
            "{console}#/sales?store=cdnow&from=1997-01-01&to=1997-01-31"
        ))
        .await
        .unwrap();
    text_until(&client, "#daily-summary", |t| t == "31 days, 0 adjusted").await;
    assert_eq!(count(&client, "#daily-table tbody tr").await, 31);
    let daily = api(
        &base,
        &staff,
        "/sales/daily?store=cdnow&from=1997-01-05&to=1997-01-05",
    )
    .await;
    let before = daily[0]["total"].as_str().unwrap().to_owned();
    let row = text_until(&client, "#daily-table tr[data-date='1997-01-05']", |t| {
        !t.is_empty()
    })
    .await;
    assert!(row.contains(&format!("{before} USD")), "{row} vs {before}");
    for (tip, clock) in [
        ("#tip-realtime", "ingest time"),
        ("#tip-daily", "event time"),
        ("#tip-corrections", "already reported"),
    ] {
        let text = client
            .execute(
                &format!("return document.querySelector('{tip}').textContent"),
                vec![],
            )
            .await
            .unwrap();
        assert!(text.as_str().unwrap().contains(clock), "{tip}: {text}");
    }
    let charts = client
        .execute(
            "return [...document.querySelectorAll('.view canvas')].map(c => !!Chart.getChart(c))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(charts, json!([true, true, true]), "a chart per view");
    // The import arrived just now: the real-time view has it in the current hours.
    assert!(count(&client, "#realtime-table tbody tr").await >= 1);
    accessible(&client, "sales").await;
    shot(&client, "02-sales").await;

    // A late sale for 5 January: the notice arrives live, the day gets its badge.
    text_until(&client, "#live-status", |t| t.contains("waiting")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    upload(
        &base,
        &staff,
        "late-1,c-late,1997-01-05T15:00:00Z,cd,2,25.50,USD",
    )
    .await;
    text_until(&client, "#live-status", |t| t.contains("1 new correction")).await;
    text_until(
        &client,
        "#daily-table tr[data-date='1997-01-05'] .badge",
        |t| t == "adjusted",
    )
    .await;
    let notice = text_until(&client, "#corrections-table tbody tr", |t| {
        t.contains("1997-01-05")
    })
    .await;
    assert!(
        notice.contains("late-arrival")
            && notice.contains("25.50 USD")
            && notice.contains("years after the cutoff"),
        "{notice}"
    );
    text_until(&client, "#daily-summary", |t| t == "31 days, 1 adjusted").await;
    let day = api(
        &base,
        &staff,
        "/sales/daily?store=cdnow&from=1997-01-05&to=1997-01-05",
    )
    .await;
    let late_row = text_until(&client, "#daily-table tr[data-date='1997-01-05']", |t| {
        t.contains("25.50 (1)")
    })
    .await;
    assert!(
        late_row.contains(&format!("{} USD", day[0]["total"].as_str().unwrap())),
        "{late_row}"
    );
    // The charts follow the notice: 25.50 late on 5 January, a 25.50 change in the corrections.
    let charted = client
        .execute(
            "const d = Chart.getChart(document.querySelector('#view-daily canvas')); \
             const c = Chart.getChart(document.querySelector('#view-corrections canvas')); \
             return [d.data.datasets[1].data[4], c.data.labels, c.data.datasets[0].data]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(charted, json!([25.5, ["1997-01-05"], [25.5]]));
    shot(&client, "03-sales-correction").await;

    // Explain 5 January: every order of the day, the late one marked, summing to the total.
    click(&client, "#daily-table tr[data-date='1997-01-05'] a").await;
    let total = text_until(&client, "#explain-total", |t| !t.is_empty()).await;
    let after = api(
        &base,
        &staff,
        "/sales/daily?store=cdnow&from=1997-01-05&to=1997-01-05",
    )
    .await;
    assert_eq!(
        total,
        format!("{} USD", after[0]["total"].as_str().unwrap())
    );
    let explained = api(
        &base,
        &staff,
        "/sales/daily/explain?store=cdnow&date=1997-01-05",
    )
    .await;
    let contributions = explained[0]["contributions"].as_array().unwrap().len();
    assert!(contributions > 10, "{contributions}");
    assert_eq!(
        count(&client, "#explain-table tbody tr").await,
        contributions
    );
    let version = text_until(&client, "#explain-version-text", |t| !t.is_empty()).await;
    assert_eq!(
        version,
        "daily_sales_by_store version 1 (the version queries read)"
    );
    text_until(&client, ".explanation .badge", |t| t == "matches").await;
    let late_rows = client
        .execute("return [...document.querySelectorAll('#explain-table tbody tr')].filter(r => r.querySelector('.badge.late')).map(r => r.cells[1].textContent)", vec![])
        .await
        .unwrap();
    assert_eq!(late_rows, json!(["late-1"]));
    accessible(&client, "explain").await;
    shot(&client, "04-explain").await;

    // From the explanation to an order's audit timeline.
    let first = explained[0]["contributions"][0]["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    click(&client, &format!("#explain-table a[href*='order={first}']")).await;
    text_until(&client, "#order-status", |t| t == "COMPLETED").await;
    let steps = client
        .execute("return [...document.querySelectorAll('#timeline > li strong')].map(s => s.textContent)", vec![])
        .await
        .unwrap();
    // An imported sale is one event: recorded complete and paid.
    assert_eq!(steps, json!(["OrderRecorded"]));
    let diff = text_until(&client, "#timeline > li:nth-child(1) table.diff", |t| {
        !t.is_empty()
    })
    .await;
    assert!(
        diff.contains("status") && diff.contains("COMPLETED") && diff.contains("paid"),
        "{diff}"
    );
    accessible(&client, "order").await;
    shot(&client, "05-order").await;

    // An account now and as of a version.
    client
        .goto(&format!("{console}#/orders?account=acc-console"))
        .await
        .unwrap();
    text_until(&client, "#account-balance", |t| t == "7.50 USD").await;
    assert_eq!(count(&client, "#timeline > li").await, 3);
    client
        .goto(&format!("{console}#/orders?account=acc-console&version=2"))
        .await
        .unwrap();
    text_until(&client, "#account-balance", |t| t == "10.00 USD").await;
    shot(&client, "06-account").await;

    // The exception queue: approve the held posting with a reason.
    client
        .goto(&format!("{console}#/exceptions?state=open&store=cdnow"))
        .await
        .unwrap();
    text_until(&client, "#exceptions-table tbody", |t| {
        t.contains("42.00 USD")
    })
    .await;
    text_until(&client, "#periods-table", |t| t.contains("1998-06")).await;
    accessible(&client, "exceptions").await;
    shot(&client, "07-exceptions").await;
    fill(
        &client,
        "#exceptions-table input[id^='reason-']",
        "customer paid by wire",
    )
    .await;
    click(&client, "#exceptions-table button[value='approve']").await;
    text_until(&client, "#exceptions-table tbody", |t| {
        t.contains("No exceptions.")
    })
    .await;
    let approved = api(&base, &staff, "/exceptions?store=cdnow&state=approved").await;
    assert_eq!(
        approved[0]["decision_reason"], "customer paid by wire",
        "{approved}"
    );

    // Operations: health, projection versions, sagas, the chain walked on request.
    client
        .goto(&format!("{console}#/operations"))
        .await
        .unwrap();
    text_until(&client, "#health h3 .badge", |t| t == "ready").await;
    let versions = text_until(&client, "#projections-table", |t| {
        t.contains("daily_sales_by_store")
    })
    .await;
    assert!(
        versions.contains("active") && versions.contains("candidate"),
        "{versions}"
    );
    text_until(&client, "#sagas-stuck", |t| t == "0 stuck").await;
    click(&client, "#verify-now").await;
    let chain = text_until(&client, "#chain-result", |t| t.contains("events checked")).await;
    let head = api(&base, &staff, "/operations").await["head_position"]
        .as_u64()
        .unwrap();
    assert!(
        chain.starts_with("intact") && chain.contains(&format!("up to position {head}")),
        "{chain} (head {head})"
    );
    let anchor_state = text_until(&client, "#anchor-state", |t| !t.is_empty()).await;
    assert!(
        anchor_state.starts_with(&format!("Last signed anchor: position {anchored}, signed "))
            && anchor_state.ends_with("the log extends it"),
        "{anchor_state}"
    );
    accessible(&client, "operations").await;
    shot(&client, "08-operations").await;

    // Keyboard: the skip link and every navigation link take the focus in order.
    let order = client
        .execute(
            "const seen = []; for (const el of document.querySelectorAll('a.skip, #nav li:not([hidden]) a')) { el.focus(); seen.push(document.activeElement === el); } return seen",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(order, json!([true, true, true, true, true, true]));
    client.close().await.unwrap();
}

/// The quick start's server runs open (no key in the store): the console signs in with an empty
/// key and offers every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_signs_in_with_an_empty_key() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base) = start_serve(&dir.path().join("open.db"), &[], Stdio::null()).await;
    let _server = KillOnDrop(server);
    let (client, _driver) = browser().await;
    client.goto(&format!("{base}/console")).await.unwrap();
    click(&client, "#sign-in-form button[type=submit]").await;
    text_until(&client, "#who-text", |t| {
        t.starts_with("user:anonymous · tenant default")
    })
    .await;
    let visible = client
        .execute(
            "return [...document.querySelectorAll('#nav li')].filter(l => !l.hidden).map(l => l.dataset.page)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        visible,
        json!(["sales", "explain", "orders", "exceptions", "operations"])
    );
    text_until(&client, "#page-title", |t| t == "Sales").await;
    client.close().await.unwrap();
}
