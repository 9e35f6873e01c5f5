//! The web console in a real headless Chromium (Debian's `chromium` through `chromedriver`)
//! against a real fleetd (real TLS, real Postgres), found by the DOM contract of
//! api/CONSOLE.md. Every test saves screenshots under `<target>/console-screenshots/<test>/`
//! and ends asserting the browser logged no CSP violation and no console error.

use std::time::{Duration, Instant};

use fleet_tests::browser::{Browser, VIEWER_UTC_OFFSET, WAIT};
use fleet_tests::fleet::{Fleet, Person, PASSWORD};
use fleet_tests::mqtt::DeviceCredentials;
use rumqttc::QoS;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use wire::{
    Batch, Body, Disk, Memory, NetworkInterface, Package, PackageManager, PatchStatus, Record,
    Telemetry, Temperature, UnixMillis,
};

/// The policy fleetd sends on every response (api/src/console/mod.rs).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

fn origin(fleet: &Fleet) -> String {
    format!("https://{}", fleet.running.api_addr())
}

/// The asset paths (`/console/<version>/…`) the console's page names.
fn asset_paths(page: &str) -> Vec<String> {
    page.split('"')
        .filter(|part| part.starts_with("/console/"))
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_csp(path: &str, response: &fleet_tests::https::Response) {
    assert_eq!(
        response.header("content-security-policy"),
        Some(CSP),
        "{path}"
    );
    assert_eq!(response.header("x-frame-options"), Some("DENY"), "{path}");
}

#[tokio::test]
async fn every_page_and_asset_carries_the_content_security_policy() {
    let fleet = Fleet::start().await;
    let page = fleet.send("GET", "/", &[], None).await;
    page.assert_status(200);
    assert_csp("/", &page);
    let assets = asset_paths(&page.text());
    assert!(
        assets.iter().any(|a| a.ends_with("/app.js")),
        "the page names its script: {assets:?}"
    );
    for asset in &assets {
        let response = fleet.send("GET", asset, &[], None).await;
        response.assert_status(200);
        assert_csp(asset, &response);
    }
    // An asset this build does not have, and the answers the page's script reads, are under
    // the same policy.
    let missing = assets[0].rsplit_once('/').unwrap().0.to_owned() + "/missing.js";
    let not_found = fleet.send("GET", &missing, &[], None).await;
    not_found.assert_status(404);
    assert_csp(&missing, &not_found);
    let unsigned = fleet.send("GET", "/v1/session", &[], None).await;
    assert_csp("/v1/session", &unsigned);

    // And the browser, loading the page and everything it names, sees no violation.
    let browser = Browser::open("csp_header", &origin(&fleet)).await;
    browser.goto("/").await;
    browser.wait("body").await;
    browser.screenshot("first-page").await;
    browser.finish().await;
}

/// The proof that [`Browser`] hears what it must: a page made to break the policy (an image from
/// a `data:` URL and an inline script, both injected by WebDriver) and to log a console error is
/// reported, and `finish` would have failed on it.
#[tokio::test]
async fn the_browser_records_csp_violations_and_console_errors() {
    let fleet = Fleet::start().await;
    let browser = Browser::open("csp_violation_detected", &origin(&fleet)).await;
    browser.goto("/").await;
    browser.wait("body").await;
    assert!(
        browser.take_problems().await.is_empty(),
        "the page alone is clean"
    );

    browser
        .script(
            r#"
            const image = new Image();
            image.src = "data:image/gif;base64,R0lGODlhAQABAAAAACw=";
            document.body.append(image);
            const inline = document.createElement("script");
            inline.textContent = "window.inlineRan = true;";
            document.body.append(inline);
            console.error("a console error the test made");
            "#,
            Vec::new(),
        )
        .await;
    browser.screenshot("after-violations").await;

    let deadline = Instant::now() + WAIT;
    let mut seen = fleet_tests::browser::Problems::default();
    while seen.csp_violations.len() < 2 || seen.errors.is_empty() {
        assert!(
            Instant::now() < deadline,
            "violations not recorded within {WAIT:?}: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let more = browser.take_problems().await;
        seen.csp_violations.extend(more.csp_violations);
        seen.errors.extend(more.errors);
    }
    assert!(
        seen.csp_violations.iter().any(|v| v.contains("img-src")),
        "{seen:#?}"
    );
    assert!(
        seen.csp_violations.iter().any(|v| v.contains("script-src")),
        "{seen:#?}"
    );
    assert!(
        seen.errors
            .iter()
            .any(|e| e.contains("a console error the test made")),
        "{seen:#?}"
    );
    assert_eq!(
        browser
            .script("return window.inlineRan === true;", Vec::new())
            .await,
        json!(false),
        "the inline script was blocked"
    );
    browser.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The fleet the console shows: groups, devices that report over the real MQTT gateway, people.

/// A device enrolled through the API and connected to the MQTT gateway; the connection stays up
/// (its event loop is polled) until the value is dropped.
struct ReportingDevice {
    id: String,
    name: String,
    events: tokio::task::JoinHandle<()>,
}

impl Drop for ReportingDevice {
    fn drop(&mut self) {
        self.events.abort();
    }
}

/// Creates device group `name` as the owner key; its id.
async fn group(fleet: &Fleet, name: &str) -> String {
    let created = fleet
        .as_owner_key("POST", "/v1/device-groups", Some(json!({ "name": name })))
        .await;
    created.assert_status(201);
    created.json()["id"].as_str().unwrap().to_owned()
}

/// An enrollment token for one device of `group`, made as the owner key: its text.
async fn one_use_token(fleet: &Fleet, group: &str) -> String {
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = fleet
        .as_owner_key(
            "POST",
            "/v1/enrollment-tokens",
            Some(json!({
                "name": format!("for {group}"), "allowed_cidrs": ["127.0.0.0/8"], "daily_limit": 10,
                "max_uses": 1, "expires_at": expires, "device_group": group,
            })),
        )
        .await;
    created.assert_status(201);
    created.json()["token"].as_str().unwrap().to_owned()
}

/// Enrolls a device into `group` through `POST /v1/enroll`, names it `name`, connects it to the
/// gateway with its new certificate and publishes, as the agent would: an hour of telemetry (a
/// sample a minute, recorded_at spread over the hour, with no sample for minutes 30 to 44: a
/// hole the chart must show) and a patch status with a pending security update (openssl) and
/// a reboot required. Returns once the gateway acked every record.
async fn reporting_device(fleet: &Fleet, group: &str, name: &str) -> ReportingDevice {
    let ca = &fleet.running.pki().issuing_ca;
    let (key, csr) = fleet_tests::device::key_and_csr();
    let body = json!({ "token": one_use_token(fleet, group).await, "csr": csr }).to_string();
    let enrolled = fleet_tests::https::https_request(
        fleet.running.api_addr(),
        ca,
        "POST",
        "/v1/enroll",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    enrolled.assert_status(201);
    let answer = enrolled.json();
    let chain =
        CertificateDer::pem_slice_iter(answer["certificate_chain"].as_str().unwrap().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
    let device = DeviceCredentials {
        device_id: answer["device_id"].as_str().unwrap().parse().unwrap(),
        key,
        chain,
    };
    let id = device.device_id.to_string();
    fleet
        .as_owner_key(
            "PATCH",
            &format!("/v1/devices/{id}"),
            Some(json!({ "name": name })),
        )
        .await
        .assert_status(200);

    let broker = fleet
        .running
        .broker_addr()
        .expect("the embedded MQTT gateway");
    let options = device.options(ca.root_der(), broker.ip().to_string(), broker.port());
    let (client, mut events) = fleet_tests::mqtt::connect_subscribed(
        options,
        wire::topic::ack(device.device_id),
        Duration::from_secs(30),
    )
    .await;
    // One device sequence across topics: the telemetry first, then the patch status.
    let telemetry = an_hour_of_telemetry();
    let last = telemetry.len() as u64 + 1;
    let patch = Record {
        seq: last,
        recorded_at: UnixMillis::now(),
        body: Body::PatchStatus(patch_status()),
    };
    for (topic, records) in [
        (wire::topic::telemetry(device.device_id), telemetry),
        (wire::topic::patch_status(device.device_id), vec![patch]),
    ] {
        let batch = wire::encode_batch(&Batch::new(records));
        client
            .publish(topic, QoS::AtLeastOnce, false, batch)
            .await
            .unwrap();
    }
    fleet_tests::mqtt::wait_for_ack(&mut events, last, Duration::from_secs(30)).await;
    let events = tokio::spawn(async move {
        let _client = client;
        // Polled for as long as the device should stay connected; ends when the server
        // disconnects it for good (a revoked device).
        while events.poll().await.is_ok() {}
    });
    ReportingDevice {
        id,
        name: name.to_owned(),
        events,
    }
}

/// One telemetry sample a minute for the last hour except minutes 30 to 44 (seq 1, 2, …).
fn an_hour_of_telemetry() -> Vec<Record> {
    let now = UnixMillis::now().0;
    let minute = 60_000;
    (0..60u64)
        .filter(|m| !(30..45).contains(m))
        .enumerate()
        .map(|(i, m)| Record {
            seq: i as u64 + 1,
            recorded_at: UnixMillis(now - (60 - m) * minute),
            body: Body::Telemetry(sample(m)),
        })
        .collect()
}

/// A sample that changes with the minute `m`, every chart's metric present.
fn sample(m: u64) -> Telemetry {
    let gib = 1 << 30;
    Telemetry {
        cpu_usage_percent: Some(10.0 + (m % 20) as f32 * 3.0),
        memory: Some(Memory {
            total_bytes: 4 * gib,
            available_bytes: 2 * gib + m * (gib / 100),
        }),
        disks: vec![Disk {
            mount: "/".into(),
            total_bytes: 32 * gib,
            free_bytes: 20 * gib - m * (gib / 60),
        }],
        temperatures: vec![Temperature {
            zone: "cpu-thermal".into(),
            celsius: 45.0 + (m % 10) as f32,
        }],
        uptime_secs: Some(86_400 + m * 60),
        network: vec![NetworkInterface {
            name: "eth0".into(),
            rx_bytes: m * 1_000_000,
            tx_bytes: m * 250_000,
            rx_packets: m * 1_000,
            tx_packets: m * 400,
            rx_errors: 0,
            tx_errors: 0,
        }],
        ..Telemetry::default()
    }
}

/// Debian 12 with openssl's security update pending and a reboot due.
fn patch_status() -> PatchStatus {
    let package = |name: &str, installed: &str, candidate: Option<&str>, security| Package {
        name: name.into(),
        installed: installed.into(),
        candidate: candidate.map(Into::into),
        security,
    };
    PatchStatus {
        os_id: "debian".into(),
        os_version: "12".into(),
        package_manager: PackageManager::Apt,
        packages: vec![
            package(
                "openssl",
                "3.0.15-1~deb12u1",
                Some("3.0.17-1~deb12u2"),
                true,
            ),
            package("tzdata", "2024a-0+deb12u1", Some("2025b-0+deb12u1"), false),
            package("bash", "5.2.15-2+b7", None, false),
        ],
        reboot_required: true,
        lists_refreshed_at: Some(UnixMillis::now()),
    }
}

/// Invites `email` as `role` limited to `group_ids` (none: every group) and accepts with
/// [`PASSWORD`]; for roles without TOTP (operator, auditor).
async fn person_without_totp(fleet: &Fleet, email: &str, role: &str, group_ids: Option<&[&str]>) {
    let person = fleet.person_in_groups(email, role, group_ids).await;
    assert!(person.totp.is_none(), "{role} signs in without TOTP");
}

// ---------------------------------------------------------------------------------------------
// The console's steps.

/// Signs in through the console's forms: tenant, email, password, then the TOTP code of
/// `totp` (by fleetd's clock, one step ahead: the current code was used at enrolment) when the
/// person has one. Ends on the fleet page.
async fn sign_in(browser: &Browser, fleet: &Fleet, email: &str, totp: Option<&str>) {
    browser.goto("/#/sign-in").await;
    browser.wait_page("sign-in").await;
    browser
        .fill("#sign-in-form input[name=tenant]", "acme")
        .await;
    browser.fill("#sign-in-form input[name=email]", email).await;
    browser
        .fill("#sign-in-form input[name=password]", PASSWORD)
        .await;
    browser.screenshot("sign-in-password").await;
    browser.click("#sign-in-submit").await;
    if let Some(secret) = totp {
        browser
            .fill(
                "#second-factor-form input[name=code]",
                &fleet.code(secret, 1),
            )
            .await;
        browser.screenshot("sign-in-totp").await;
        browser.click("#second-factor-submit").await;
    }
    browser.wait_page("fleet").await;
    let whoami = browser.wait("#whoami").await.text().await.unwrap();
    assert!(whoami.contains(email), "signed in as {email}: {whoami:?}");
}

/// Searches the fleet page for `term` and waits until it lists `rows` devices.
async fn search_fleet(browser: &Browser, term: &str, rows: usize) {
    browser
        .fill("#fleet-filters input[name=search]", term)
        .await;
    browser.click("#fleet-apply").await;
    browser
        .wait_true(&format!(
            "document.querySelectorAll('#device-table tbody tr[data-id]').length === {rows}"
        ))
        .await;
}

/// Waits until the device page has a chart of every family (CPU, memory, disk, temperature,
/// network) and every chart is an image the browser decoded.
async fn charts_drawn(browser: &Browser, range: &str) {
    for metric in ["cpu", "memory", "disk", "temperature", "network"] {
        browser
            .wait(&format!(
                "#telemetry img[data-metric={metric}][data-range='{range}']"
            ))
            .await;
    }
    browser
        .wait_true(
            "[...document.querySelectorAll('#telemetry img[data-metric]')]
               .every((i) => i.complete && i.naturalWidth > 0)",
        )
        .await;
}

/// How Chromium logs a request to `path` (no query) the server answered with `status`.
fn refused_load(path: &str, status: u16) -> String {
    format!("{path} - Failed to load resource: the server responded with a status of {status}")
}

/// Opens `hash` and waits for page `name` to be drawn.
async fn open_page(browser: &Browser, hash: &str, name: &str) {
    browser.goto(&format!("/{hash}")).await;
    browser.wait_page(name).await;
}

/// The text of the first element matching `css`, once there (read in one script: the console
/// may draw the element again between a lookup and a read).
async fn text(browser: &Browser, css: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        browser.wait(css).await;
        let text = browser
            .script(
                "const e = document.querySelector(arguments[0]); return e && e.textContent;",
                vec![json!(css)],
            )
            .await;
        if let Some(text) = text.as_str() {
            return text.trim().to_owned();
        }
        // Drawn again between the lookup and the read: look again.
        assert!(
            Instant::now() < deadline,
            "{css} kept going away for {WAIT:?}"
        );
    }
}

/// Waits until the text of `css` is `expected` on `hash` (page `name`), reloading the page from
/// the server between looks: for what the server changes on its own time (a revoked device going
/// offline a moment after the revocation was answered). Twice [`WAIT`]:
/// on a loaded machine one look (a whole device page) can take most of one.
async fn wait_for_text_after_reloads(
    browser: &Browser,
    hash: &str,
    name: &str,
    css: &str,
    expected: &str,
) {
    let deadline = Instant::now() + 2 * WAIT;
    open_page(browser, hash, name).await;
    loop {
        let now = text(browser, css).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} is {now:?}, not {expected:?}, after {:?}",
            2 * WAIT
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        browser.reload().await;
        browser.wait_page(name).await;
    }
}

/// fleetd with a reporting device `device_name` in group `field`, and an admin (with TOTP)
/// signed in to the console of a browser for test `test`.
async fn admin_and_device(
    test: &str,
    device_name: &str,
) -> (Fleet, ReportingDevice, Person, Browser) {
    let fleet = Fleet::start().await;
    group(&fleet, "field").await;
    let device = reporting_device(&fleet, "field", device_name).await;
    let admin = fleet.person("ada@acme.example", "admin").await;
    let browser = Browser::open(test, &origin(&fleet)).await;
    sign_in(&browser, &fleet, &admin.email, admin.totp.as_deref()).await;
    (fleet, device, admin, browser)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn sign_in_with_totp_then_see_a_devices_telemetry_charts_and_patch_status() {
    let (_fleet, device, _admin, browser) = admin_and_device("sign_in_chart_patch", "pump-7").await;

    let row = format!("#device-table tr[data-id='{}']", device.id);
    browser.wait(&row).await;
    assert_eq!(
        text(&browser, &format!("{row} td[data-field=name]")).await,
        device.name
    );
    assert_eq!(
        text(&browser, &format!("{row} td[data-field=online]")).await,
        "online"
    );
    let field = |name: &str| format!("{row} td[data-field={name}]");
    let pending = text(&browser, &field("pending_security_updates")).await;
    assert!(["1", "yes"].contains(&&*pending), "pending: {pending:?}");
    assert_eq!(text(&browser, &field("reboot_required")).await, "yes");
    browser.screenshot("fleet").await;

    browser.click(&format!("{row} td[data-field=name] a")).await;
    browser.wait_page("device").await;
    assert_eq!(
        text(&browser, "#device-identity dd[data-field=name]").await,
        device.name
    );
    assert!(
        text(&browser, "table#presence tbody")
            .await
            .contains("connected"),
        "the presence history has the connection"
    );
    charts_drawn(&browser, "24h").await;
    // The last hour, where the samples are: one line per run of samples, the hole a gap.
    browser.click("#telemetry button[data-range='1h']").await;
    browser
        .wait("#telemetry button[data-range='1h'][aria-pressed=true]")
        .await;
    // Not the 24 h images still shown while the 1 h ones are being asked for.
    charts_drawn(&browser, "1h").await;
    browser
        .script(
            "document.getElementById('telemetry').scrollIntoView();",
            Vec::new(),
        )
        .await;
    browser.screenshot("device-telemetry").await;
    // What the images show: every series has data, the CPU's hole is a gap between two lines.
    let charts = browser
        .script_async(
            "const done = arguments[arguments.length - 1];
             const images = [...document.querySelectorAll('#telemetry img[data-metric]')];
             Promise.all(images.map(async (i) => [i.dataset.series, await (await fetch(i.src)).text()]))
               .then((pairs) => done(Object.fromEntries(pairs)), (e) => done(String(e)));",
            Vec::new(),
        )
        .await;
    let charts = charts.as_object().expect("the charts' SVG by series");
    for (series, svg) in charts {
        let svg = svg.as_str().unwrap();
        assert!(svg.starts_with("<svg"), "{series}: {svg}");
        assert!(
            !svg.contains("No data in this range"),
            "the {series} chart shows the hour's samples: {svg}"
        );
    }
    let cpu = charts["cpu_usage_percent"].as_str().unwrap();
    assert!(
        cpu.matches(r#"<path class="mean""#).count() >= 2,
        "the hour's hole is a gap between two lines: {cpu}"
    );
    assert!(cpu.contains('%'), "the value axis has its unit: {cpu}");
    assert!(
        cpu.contains(&format!("Time ({VIEWER_UTC_OFFSET})")),
        "the time axis is in the viewer's zone: {cpu}"
    );
    browser.wait("#patch-status #patch-packages").await;
    assert_eq!(
        text(&browser, "#patch-status dd[data-field=security_upgradable]").await,
        "1"
    );
    assert_eq!(
        text(&browser, "#patch-status dd[data-field=reboot_required]").await,
        "yes"
    );
    assert_eq!(
        text(
            &browser,
            "#patch-packages tr[data-id=openssl] td[data-field=security]"
        )
        .await,
        "yes"
    );
    assert!(
        browser
            .all("#patch-packages tr[data-id=bash]")
            .await
            .is_empty(),
        "an up-to-date package is not listed as an update"
    );
    browser
        .script(
            "document.getElementById('patch-status').scrollIntoView();",
            Vec::new(),
        )
        .await;
    browser.screenshot("device-patch-status").await;
    browser.finish().await;
}

#[tokio::test]
async fn an_enrollment_token_is_shown_once_then_listed_without_its_secret() {
    let fleet = Fleet::start().await;
    let admin = fleet.person("ada@acme.example", "admin").await;
    let browser = Browser::open("enrollment_token_once", &origin(&fleet)).await;
    sign_in(&browser, &fleet, &admin.email, admin.totp.as_deref()).await;

    open_page(&browser, "#/enrollment", "enrollment").await;
    browser
        .fill("#token-create-form input[name=name]", "line-4 batch")
        .await;
    browser
        .fill("#token-create-form input[name=max_uses]", "25")
        .await;
    browser.screenshot("create-form").await;
    browser.click("#token-create").await;

    let secret = text(&browser, "dialog#secret-dialog[open] #secret-value").await;
    assert!(
        secret.starts_with("fpe_"),
        "an enrollment token: {secret:?}"
    );
    let close = browser.wait("#secret-close").await;
    assert!(
        !close.is_enabled().await.unwrap(),
        "Close waits for \"I have stored it\""
    );
    browser.screenshot("token-shown-once").await;
    browser.click("#secret-stored").await;
    browser.click("#secret-close").await;
    browser.wait_gone("#secret-dialog").await;
    browser.wait_page("enrollment").await;

    let listed = fleet
        .as_owner_key("GET", "/v1/enrollment-tokens", None)
        .await
        .json();
    let token = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "line-4 batch")
        .expect("the token was created")
        .clone();
    let row = format!(
        "#token-table tr[data-id='{}']",
        token["id"].as_str().unwrap()
    );
    assert!(text(&browser, &row).await.contains("line-4 batch"));
    assert_eq!(
        text(&browser, &format!("{row} td[data-field=state]")).await,
        "active"
    );
    let page = browser.source().await;
    let secret_part = secret.rsplit('_').next().unwrap();
    assert!(
        !page.contains(&secret) && !page.contains(secret_part),
        "the token's secret is gone from the page"
    );
    browser.screenshot("token-listed").await;
    browser.finish().await;
}

#[tokio::test]
async fn revoking_a_device_takes_it_offline_writes_an_audit_event_and_the_csv_has_it() {
    let (fleet, device, admin, browser) = admin_and_device("revoke_audit_csv", "pump-9").await;

    let device_page = format!("#/devices/{}", device.id);
    open_page(&browser, &device_page, "device").await;
    assert_eq!(
        text(&browser, "#device-identity dd[data-field=online]").await,
        "online"
    );
    browser.click("#revoke-device").await;
    let question = text(&browser, "dialog#confirm-dialog[open] #confirm-message").await;
    assert!(question.contains(&device.name), "{question}");
    browser.screenshot("revoke-confirmation").await;
    browser.click("#confirm-ok").await;
    browser.wait_gone("#confirm-dialog").await;
    wait_for_text_after_reloads(
        &browser,
        &device_page,
        "device",
        "#device-identity dd[data-field=status]",
        "revoked",
    )
    .await;
    wait_for_text_after_reloads(
        &browser,
        &device_page,
        "device",
        "#device-identity dd[data-field=online]",
        "offline",
    )
    .await;
    browser.screenshot("device-revoked-offline").await;

    // The audit page, narrowed to the revocation.
    open_page(&browser, "#/audit", "audit").await;
    browser
        .fill("#audit-filters input[name=action]", "device.revoke")
        .await;
    browser.click("#audit-apply").await;
    browser
        .wait_true(
            "document.querySelectorAll('#audit-table tbody tr[data-id]').length === 1 && \
             document.querySelector('#audit-table td[data-field=action]').textContent === 'device.revoke'",
        )
        .await;
    let target = text(&browser, "#audit-table td[data-field=target]").await;
    assert_eq!(target, format!("device:{}", device.id));
    let actor = text(&browser, "#audit-table td[data-field=actor]").await;
    assert_eq!(actor, format!("user:{}", admin.id));
    assert_eq!(
        browser
            .wait("#audit-verify")
            .await
            .attr("data-status")
            .await
            .unwrap()
            .as_deref(),
        Some("intact")
    );
    browser.screenshot("audit-revocation").await;

    // The export link, fetched as the page would follow it: with the session's cookie only.
    let href = browser
        .wait("a#audit-csv")
        .await
        .attr("href")
        .await
        .unwrap()
        .expect("the export link has an address");
    let answer = browser
        .script_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], { credentials: 'same-origin' })
               .then(async (r) => done({ status: r.status, type: r.headers.get('content-type'), body: await r.text() }))
               .catch((e) => done({ error: String(e) }));",
            vec![json!(href)],
        )
        .await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        answer["type"].as_str().unwrap().starts_with("text/csv"),
        "{answer}"
    );
    let csv = answer["body"].as_str().unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("tenant_id,seq,occurred_at,occurred_at_micros,actor,action,target,details,prev_hash,hash,canonical_version,erased_by")
    );
    let revocations: Vec<&str> = lines.filter(|l| l.contains(",device.revoke,")).collect();
    assert_eq!(revocations.len(), 1, "{csv}");
    assert!(
        revocations[0].contains(&format!("device:{}", device.id)),
        "{csv}"
    );
    assert!(
        revocations[0].contains(&format!("user:{}", admin.id)),
        "{csv}"
    );

    // The admin ends an operator's two sessions from the Users page, behind the confirmation.
    let op = fleet.person("op@acme.example", "operator").await;
    let other = fleet.sign_in_fully(&op, 0).await;
    open_page(&browser, "#/users", "users").await;
    browser
        .click(&format!(
            "#user-table tr[data-id='{}'] a[data-action=sessions]",
            op.id
        ))
        .await;
    let rows = "document.querySelectorAll('#user-session-table tbody tr[data-id]').length";
    browser.wait_true(&format!("{rows} === 2")).await;
    browser.screenshot("user-sessions").await;
    browser.click("button[data-action=end-sessions]").await;
    let question = text(&browser, "dialog#confirm-dialog[open] #confirm-message").await;
    assert!(question.contains(&op.email), "{question}");
    browser.click("#confirm-ok").await;
    browser.wait_gone("#confirm-dialog").await;
    browser.wait_true(&format!("{rows} === 0")).await;
    assert!(browser
        .all("button[data-action=end-sessions]")
        .await
        .is_empty());
    for session in [&op.session, &other] {
        fleet
            .as_session(session, false, "GET", "/v1/session", None)
            .await
            .assert_problem(401, "session-required");
    }
    browser.screenshot("user-sessions-ended").await;
    browser.finish().await;
}

/// Buttons and forms that change nothing: navigation, paging, filters, chart ranges, sign-out.
const READ_ONLY_CONTROLS: &str = "#sign-out, #fleet-prev, #fleet-next, #fleet-apply, \
     #audit-next, #audit-apply, [data-range], form[role=search], form[role=search] *";

/// The mutation controls of api/CONSOLE.md, by page.
const MUTATION_CONTROLS: &str = "#rename-form, #labels-form, #move-form, #revoke-device, \
     #token-create-form, [data-action=revoke-token], #key-create-form, [data-action=revoke-key], \
     #invite-form, [data-action=change-role], [data-action=disable], [data-action=enable], \
     #confirm-dialog, #secret-dialog, [data-action=end-sessions]";

#[tokio::test]
async fn an_auditors_console_has_no_mutation_control_and_a_forged_mutation_is_refused() {
    let fleet = Fleet::start().await;
    group(&fleet, "field").await;
    let device = reporting_device(&fleet, "field", "pump-3").await;
    person_without_totp(&fleet, "aud@acme.example", "auditor", None).await;
    let browser = Browser::open("auditor_read_only", &origin(&fleet)).await;
    sign_in(&browser, &fleet, "aud@acme.example", None).await;

    let pages = [
        ("#/fleet", "fleet"),
        (&*format!("#/devices/{}", device.id), "device"),
        ("#/patch", "patch"),
        ("#/enrollment", "enrollment"),
        ("#/api-keys", "api-keys"),
        ("#/users", "users"),
        ("#/audit", "audit"),
    ];
    for (hash, name) in pages {
        open_page(&browser, hash, name).await;
        let changing = browser
            .script(
                "return [...document.querySelectorAll('button, form, input[type=submit], select, textarea')]
                   .filter((e) => !e.matches(arguments[0]))
                   .map((e) => e.outerHTML.slice(0, 160));",
                vec![json!(READ_ONLY_CONTROLS)],
            )
            .await;
        assert_eq!(changing, json!([]), "controls on the auditor's {name} page");
        assert!(browser.all(MUTATION_CONTROLS).await.is_empty(), "{name}");
        // What the page leaves out for an auditor leaves no trace either.
        let stray = browser
            .script(
                "return document.querySelector('main').innerText.split('\\n')
                   .filter((l) => ['null', 'undefined'].includes(l.trim()));",
                Vec::new(),
            )
            .await;
        assert_eq!(
            stray,
            json!([]),
            "placeholder text on the auditor's {name} page"
        );
        browser.screenshot(name).await;
    }

    // The server decides, not the page: a revocation and a token forged from the auditor's page
    // with its cookie and CSRF token are refused.
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let forged = browser
        .script_async(
            "const done = arguments[arguments.length - 1];
             const [device, expires] = arguments;
             (async () => {
               const session = await (await fetch('/v1/session')).json();
               const headers = { 'X-CSRF-Token': session.csrf_token, 'Content-Type': 'application/json' };
               const revoke = await fetch(`/v1/devices/${device}/revoke`, { method: 'POST', headers });
               const token = await fetch('/v1/enrollment-tokens', { method: 'POST', headers, body: JSON.stringify(
                 { name: 'forged', allowed_cidrs: ['0.0.0.0/0'], daily_limit: 1, expires_at: expires }) });
               return { csrf: Boolean(session.csrf_token), revoke: revoke.status, token: token.status };
             })().then(done, (e) => done({ error: String(e) }));",
            vec![json!(device.id), json!(expires)],
        )
        .await;
    assert_eq!(
        forged,
        json!({ "csrf": true, "revoke": 403, "token": 403 }),
        "forged mutations"
    );
    // Chromium logs each refused request as a failed load: those two, and nothing else.
    for path in [
        format!("/v1/devices/{}/revoke", device.id),
        "/v1/enrollment-tokens".into(),
    ] {
        browser.expect_error(&refused_load(&path, 403)).await;
    }
    let still = fleet
        .as_owner_key("GET", &format!("/v1/devices/{}", device.id), None)
        .await
        .json();
    assert_eq!(still["status"], "active");
    browser.screenshot("after-forged-requests").await;
    browser.finish().await;
}

#[tokio::test]
async fn a_group_scoped_user_never_sees_another_groups_device() {
    let fleet = Fleet::start().await;
    let north = group(&fleet, "north").await;
    group(&fleet, "south").await;
    let mine = reporting_device(&fleet, "north", "north-pump").await;
    let theirs = reporting_device(&fleet, "south", "south-pump").await;
    person_without_totp(&fleet, "op@acme.example", "operator", Some(&[&north])).await;
    let browser = Browser::open("group_scoped", &origin(&fleet)).await;
    sign_in(&browser, &fleet, "op@acme.example", None).await;

    let hidden = |page: &str| !page.contains(&theirs.id) && !page.contains(&theirs.name);
    // The fleet list and the counts per group.
    browser
        .wait(&format!("#device-table tr[data-id='{}']", mine.id))
        .await;
    assert_eq!(
        browser.all("#device-table tbody tr[data-id]").await.len(),
        1
    );
    assert!(browser
        .all("#group-counts li[data-group=south]")
        .await
        .is_empty());
    assert_eq!(
        text(&browser, "#group-counts li[data-group=north] .count").await,
        "1"
    );
    assert!(hidden(&browser.source().await), "fleet page");
    browser.screenshot("fleet").await;

    // The search for the other group's device by its name, then by its id: each time the list
    // goes from this group's device to nothing (an empty search in between brings it back).
    for (step, term) in [("search-name", &theirs.name), ("search-id", &theirs.id)] {
        search_fleet(&browser, term, 0).await;
        let results = browser
            .script(
                "return document.getElementById('fleet-results').innerHTML;",
                Vec::new(),
            )
            .await;
        assert!(hidden(results.as_str().unwrap()), "{step}");
        browser.screenshot(step).await;
        search_fleet(&browser, "", 1).await;
    }

    // The patch summary counts this group's device only.
    open_page(&browser, "#/patch", "patch").await;
    assert_eq!(
        text(&browser, "#patch-totals dd[data-field=devices]").await,
        "1"
    );
    assert_eq!(
        text(
            &browser,
            "#patch-totals dd[data-field=pending_security_updates]"
        )
        .await,
        "1"
    );
    assert!(browser
        .all("#patch-by-group tr[data-id=south]")
        .await
        .is_empty());
    // The packages most often pending: both devices have openssl and tzdata pending, but the
    // table counts this group's device only; the security update first.
    let pending = "#pending-packages tbody tr[data-id]";
    browser.wait(pending).await;
    let ids = browser
        .script(
            "return [...document.querySelectorAll(arguments[0])].map((r) => r.dataset.id);",
            vec![json!(pending)],
        )
        .await;
    assert_eq!(ids, json!(["openssl", "tzdata"]));
    let openssl = "#pending-packages tr[data-id=openssl]";
    let cell = |field: &str| format!("{openssl} td[data-field={field}]");
    assert_eq!(text(&browser, &cell("devices")).await, "1");
    assert_eq!(text(&browser, &cell("security_devices")).await, "1");
    assert!(hidden(&browser.source().await), "patch summary");
    browser.screenshot("patch").await;

    // The other device's own page, by its address, shows nothing of it.
    open_page(&browser, &format!("#/devices/{}", theirs.id), "device").await;
    assert!(browser.all("#device-identity").await.is_empty());
    let alert = text(&browser, "#alert").await;
    assert!(!alert.is_empty(), "the page says it was not found");
    assert!(!browser.source().await.contains(&theirs.name));
    browser.screenshot("other-groups-device").await;
    // The refused read is logged as a failed load.
    let read = format!("/v1/devices/{}", theirs.id);
    browser.expect_error(&refused_load(&read, 404)).await;
    browser.finish().await;
}

/// Adds `n` devices to tenant `acme` in one statement, as the database owner (a fleet of that
/// size enrolled one by one would take minutes): named `dev-00001`…, in groups `north` (three in
/// five) and `south`, every other one online.
async fn bulk_devices(fleet: &Fleet, n: i32) {
    let mut owner = fleet.db.connect_as_owner().await;
    let added = sqlx::query(
        "INSERT INTO devices (tenant_id, device_id, name, device_group, online, last_seen_at)
         SELECT t.tenant_id, gen_random_uuid(), format('dev-%s', lpad(i::text, 5, '0')),
                CASE WHEN i % 5 < 3 THEN 'north' ELSE 'south' END, i % 2 = 0, now()
           FROM tenants t, generate_series(1, $1) AS i
          WHERE t.name = 'acme'",
    )
    .bind(n)
    .execute(&mut owner)
    .await
    .unwrap();
    assert_eq!(added.rows_affected(), n as u64);
}

/// A tenant of 10,000 devices: the fleet page shows one page of 50 (paged on the server), counts
/// every device per group, pages on, finds one device by search, and stays small (the whole
/// document under 100 KB).
#[tokio::test]
async fn a_ten_thousand_device_fleet_is_paged_counted_and_searched_in_a_small_page() {
    let fleet = Fleet::start().await;
    group(&fleet, "north").await;
    group(&fleet, "south").await;
    bulk_devices(&fleet, 10_000).await;
    let admin = fleet.person("ada@acme.example", "admin").await;
    let browser = Browser::open("ten_thousand_devices", &origin(&fleet)).await;
    let started = Instant::now();
    sign_in(&browser, &fleet, &admin.email, admin.totp.as_deref()).await;
    let rows = "document.querySelectorAll('#device-table tbody tr[data-id]').length";
    browser.wait_true(&format!("{rows} === 50")).await;
    println!(
        "sign-in to a drawn fleet page of 10,000 devices: {:?}",
        started.elapsed()
    );
    browser.screenshot("fleet-first-page").await;
    assert_eq!(
        text(&browser, "#group-counts li[data-group=north] .count").await,
        "6000"
    );
    assert_eq!(
        text(&browser, "#group-counts li[data-group=south] .count").await,
        "4000"
    );
    let html_bytes = browser
        .script(
            "return new Blob([document.documentElement.outerHTML]).size;",
            vec![],
        )
        .await
        .as_u64()
        .unwrap();
    println!("fleet page of a 10,000-device tenant: {html_bytes} bytes of HTML");
    assert!(html_bytes < 100_000, "{html_bytes} bytes");

    let first = "document.querySelector('#device-table tbody tr[data-id]').dataset.id";
    let first_of_page_one = browser.script(&format!("return {first};"), vec![]).await;
    browser.click("#fleet-next").await;
    browser
        .wait_true(&format!("{rows} === 50 && {first} !== {first_of_page_one}"))
        .await;
    browser.screenshot("fleet-second-page").await;

    search_fleet(&browser, "dev-09999", 1).await;
    assert_eq!(
        text(&browser, "#device-table td[data-field=name]").await,
        "dev-09999"
    );
    browser.screenshot("fleet-search").await;
    browser.finish().await;
    fleet.running.shutdown().await.unwrap();
}

/// Presses Tab until the focused element matches `css` (at most 15 times): it is reachable from
/// the keyboard, in the page's order.
async fn tab_to(browser: &Browser, css: &str) {
    for _ in 0..15 {
        let focused = browser
            .script(
                "return document.activeElement && document.activeElement.matches(arguments[0]);",
                vec![json!(css)],
            )
            .await;
        if focused == json!(true) {
            return;
        }
        press(browser, thirtyfour::Key::Tab).await;
    }
    panic!("{css} not reached with 15 presses of Tab");
}

/// Types `keys` into whatever has the focus.
async fn press(browser: &Browser, keys: impl Into<thirtyfour::TypingData>) {
    browser
        .driver()
        .active_element()
        .await
        .expect("a focused element")
        .send_keys(keys)
        .await
        .expect("keys typed");
}

/// Every page an admin sees, the sign-in page and the display-once and confirmation dialogs
/// pass axe-core's WCAG 2.1 A and AA rules (contrast, labels, names, ARIA); and a person signs
/// in with the keyboard alone (Tab to each field, Enter to submit).
#[tokio::test]
async fn every_page_passes_the_wcag_aa_rules_and_sign_in_works_from_the_keyboard() {
    let fleet = Fleet::start().await;
    group(&fleet, "field").await;
    let device = reporting_device(&fleet, "field", "pump-3").await;
    let admin = fleet.person("ada@acme.example", "admin").await;
    let browser = Browser::open("accessible", &origin(&fleet)).await;
    browser.goto("/#/sign-in").await;
    browser.wait_page("sign-in").await;
    browser.assert_accessible("sign-in").await;

    tab_to(&browser, "#sign-in-form input[name=tenant]").await;
    press(&browser, "acme").await;
    tab_to(&browser, "#sign-in-form input[name=email]").await;
    press(&browser, admin.email.as_str()).await;
    tab_to(&browser, "#sign-in-form input[name=password]").await;
    press(&browser, PASSWORD).await;
    press(&browser, thirtyfour::Key::Enter).await;
    browser.wait("#second-factor-form").await;
    tab_to(&browser, "#second-factor-form input[name=code]").await;
    let code = fleet.code(admin.totp.as_deref().unwrap(), 1);
    press(&browser, code.as_str()).await;
    browser.screenshot("second-factor-by-keyboard").await;
    press(&browser, thirtyfour::Key::Enter).await;
    browser.wait_page("fleet").await;

    let device_page = format!("#/devices/{}", device.id);
    for (hash, name) in [
        ("#/fleet", "fleet"),
        (device_page.as_str(), "device"),
        ("#/patch", "patch"),
        ("#/enrollment", "enrollment"),
        ("#/api-keys", "api-keys"),
        ("#/users", "users"),
        ("#/profile", "profile"),
        ("#/audit", "audit"),
    ] {
        open_page(&browser, hash, name).await;
        browser.screenshot(name).await;
        browser.assert_accessible(name).await;
    }

    open_page(&browser, "#/enrollment", "enrollment").await;
    browser
        .fill("#token-create-form input[name=name]", "a11y batch")
        .await;
    browser.click("#token-create").await;
    browser.wait("dialog#secret-dialog[open]").await;
    browser.assert_accessible("secret-dialog").await;
    browser.click("#secret-stored").await;
    browser.click("#secret-close").await;
    browser.wait_gone("#secret-dialog").await;

    open_page(&browser, &device_page, "device").await;
    browser.click("#revoke-device").await;
    browser.wait("dialog#confirm-dialog[open]").await;
    browser.assert_accessible("confirm-dialog").await;
    browser.click("#confirm-cancel").await;
    browser.finish().await;
}

/// Signs in through the console's single sign-on form: the tenant's id, then the provider's
/// own login and consent pages as `login` (its development pages: any password).
async fn sign_in_with_sso(browser: &Browser, tenant_id: &str, login: &str) {
    browser.goto("/#/sign-in").await;
    browser.wait_page("sign-in").await;
    browser
        .fill("#sso-form input[name=tenant_id]", tenant_id)
        .await;
    browser.click("#sso-submit").await;
    browser.wait("input[name=login]").await;
    browser.fill("input[name=login]", login).await;
    browser.fill("input[name=password]", "any").await;
    browser.screenshot(&format!("provider-login-{login}")).await;
    browser.click("button[type=submit]").await;
    // The login page has gone before the next one is looked at: its own submit button would
    // pass for the consent page's, and the consent would never be given (seen in CI).
    browser.wait_gone("input[name=login]").await;
    // The consent page, then back to fleetd's callback and on to the console.
    browser
        .wait("form input[name=prompt][value=consent] ~ button, form button[type=submit]")
        .await;
    let on_consent = browser
        .script(
            "return !!document.querySelector('input[name=prompt][value=consent]');",
            vec![],
        )
        .await;
    if on_consent == json!(true) {
        browser.click("button[type=submit]").await;
    }
}

/// Single sign-on in a real browser against a real OpenID provider: the console's form sends
/// the person to the provider and back, fleetd's callback lands them on the fleet page signed
/// in (the user made just in time with the mapped role); a person the tenant does not admit is
/// sent back to the sign-in page, which says why.
#[tokio::test]
async fn single_sign_on_in_the_browser_lands_on_the_fleet_page_or_says_why_not() {
    let fleet = Fleet::start().await;
    let tenant = fleet.as_owner_key("GET", "/v1/tenant", None).await.json();
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let callback = format!("{}/v1/auth/oidc/{tenant_id}/callback", origin(&fleet));
    let provider = fleet_tests::oidc::Provider::start(&[callback], "console-sso-secret").await;
    fleet
        .as_owner_key(
            "PUT",
            "/v1/tenant/sso",
            Some(json!({
                "issuer": provider.issuer,
                "client_id": "fleet",
                "client_secret": "console-sso-secret",
                "role_mappings": [{"claim": "groups", "value": "fleet-admins", "role": "admin"}],
                "allowed_email_domains": ["example.com"],
                "extra_scopes": ["groups"],
            })),
        )
        .await
        .assert_status(200);
    let browser = Browser::open("single_sign_on", &origin(&fleet)).await;

    sign_in_with_sso(&browser, &tenant_id, "alice").await;
    browser.wait_page("fleet").await;
    let whoami = text(&browser, "#whoami").await;
    assert!(
        whoami.contains("alice@example.com") && whoami.contains("admin"),
        "{whoami}"
    );
    browser.screenshot("signed-in-through-sso").await;
    browser.click("#sign-out").await;
    browser.wait_page("sign-in").await;
    finish_after_provider_pages(browser, &fleet).await;

    // Another person, in a browser of their own (the provider remembers alice in this one).
    let browser = Browser::open("single_sign_on_refused", &origin(&fleet)).await;
    sign_in_with_sso(&browser, &tenant_id, "eve").await;
    browser.wait_page("sign-in").await;
    let alert = text(&browser, "#alert").await;
    assert!(
        alert.contains("sign-on refused: no user has this email"),
        "{alert}"
    );
    browser.screenshot("sso-refused").await;
    finish_after_provider_pages(browser, &fleet).await;
}

/// Ends a session that also showed the provider's pages: what those logged (their fonts and
/// favicon from elsewhere) is theirs; the console's pages, on fleetd's origin, logged nothing.
async fn finish_after_provider_pages(browser: Browser, fleet: &Fleet) {
    let problems = browser.take_problems().await;
    let ours: Vec<&String> = problems
        .csp_violations
        .iter()
        .chain(&problems.errors)
        .filter(|line| line.contains(&origin(fleet)))
        .collect();
    assert!(ours.is_empty(), "the console logged: {ours:?}");
    browser.finish().await;
}

/// The first person of a tenant, as the README says: invited with the owner key, they accept on
/// the console's invitation page, set a password, enrol TOTP (the secret and its otpauth URI
/// shown, a code from it confirms), see the recovery codes once, and land on the fleet page as
/// owner; neither the TOTP secret nor a recovery code is left in the page.
#[tokio::test]
async fn the_first_owner_accepts_an_invitation_enrols_totp_and_sees_the_recovery_codes_once() {
    let fleet = Fleet::start().await;
    let token = fleet.invite("first@acme.example", "owner").await;
    let browser = Browser::open("first_owner", &origin(&fleet)).await;
    browser.goto("/#/sign-in").await;
    browser.wait_page("sign-in").await;
    browser.click("#accept-invitation-link").await;
    browser.wait_page("accept-invitation").await;
    browser
        .fill("#accept-invitation-form input[name=token]", &token)
        .await;
    browser
        .fill("#accept-invitation-form input[name=password]", PASSWORD)
        .await;
    browser.click("#accept-invitation-submit").await;

    let secret = text(&browser, "#enrol-totp-form #totp-secret").await;
    let uri = text(&browser, "#enrol-totp-form #totp-uri").await;
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains(&secret),
        "{uri}"
    );
    browser
        .fill("#enrol-totp-form input[name=code]", &fleet.code(&secret, 0))
        .await;
    browser.screenshot("enrol-totp").await;
    browser.click("#enrol-totp-submit").await;

    let codes = text(&browser, "dialog#secret-dialog[open] #secret-value").await;
    let codes: Vec<&str> = codes.split_whitespace().collect();
    assert!(codes.len() >= 8, "recovery codes, one per line: {codes:?}");
    assert!(!browser
        .wait("#secret-close")
        .await
        .is_enabled()
        .await
        .unwrap());
    browser.screenshot("recovery-codes-once").await;
    browser.click("#secret-stored").await;
    browser.click("#secret-close").await;
    browser.wait_gone("#secret-dialog").await;
    browser.wait_page("fleet").await;
    let whoami = text(&browser, "#whoami").await;
    assert!(
        whoami.contains("first@acme.example") && whoami.contains("owner"),
        "{whoami}"
    );
    let page = browser.source().await;
    assert!(
        !page.contains(&secret),
        "the TOTP secret is gone from the page"
    );
    for code in codes {
        assert!(!page.contains(code), "a recovery code is left in the page");
    }
    browser.finish().await;
}
