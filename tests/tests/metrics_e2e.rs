//! fleetd's `/metrics` after a short scripted session (an enrollment, an API call, a device that
//! reports, one that is refused), and the operator files in `ops/` against it: every series the
//! Grafana dashboard and the Prometheus alerting rules use must be one fleetd exports, so a
//! renamed metric fails here.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleet_tests::https::https_request;
use fleet_tests::metrics::scrape_body;
use fleet_tests::mqtt::{connect_subscribed, wait_for_ack};
use fleet_tests::records::telemetry_batch;
use fleet_tests::TestDb;
use rumqttc::QoS;
use store::api_keys::KeyEnv;
use store::audit::Actor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One sample line of the text format: name, label text (without braces), value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

fn parse_samples(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Sample {
                name: name.to_owned(),
                labels: labels.to_owned(),
                value: value.parse().unwrap_or_else(|_| panic!("value of {line}")),
            }
        })
        .collect()
}

/// The sum of the samples named `name` whose labels contain every one of `labels`
/// (`reason="tls_handshake"`).
fn total(samples: &[Sample], name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
        .sum()
}

async fn samples(addr: SocketAddr) -> Vec<Sample> {
    parse_samples(&scrape_body(addr).await)
}

/// The series a scripted session must move, each with the labels it is summed over.
const MUST_MOVE: &[(&str, &[&str])] = &[
    // API: the enrollment and the management calls (one without a key), over TLS connections
    // of their own.
    ("fleet_api_requests_total", &[]),
    (
        "fleet_api_requests_total",
        &["route=\"/v1/enroll\"", "status=\"201\""],
    ),
    (
        "fleet_api_requests_total",
        &["route=\"/v1/devices\"", "status=\"200\""],
    ),
    ("fleet_api_request_duration_seconds_count", &[]),
    ("fleet_api_key_cache_total", &[]),
    ("fleet_api_auth_refusals_total", &["reason=\"missing\""]),
    ("fleet_api_refusals_total", &["route=\"/v1/devices\""]),
    ("fleet_api_connections_accepted_total", &[]),
    // Broker: the reporting device and the one refused without a certificate.
    ("fleet_broker_tcp_connections_accepted_total", &[]),
    ("fleet_broker_tls_handshakes_completed_total", &[]),
    ("fleet_broker_tls_handshakes_failed_total", &[]),
    ("fleet_broker_refusals_total", &["reason=\"tls_handshake\""]),
    ("fleet_broker_sessions_started_total", &[]),
    ("fleet_broker_publishes_received_total", &[]),
    ("fleet_broker_packets_sent_total", &[]),
    ("fleet_broker_received_bytes_total", &[]),
    ("fleet_broker_sent_bytes_total", &[]),
    // Ingest: one record committed and acknowledged, one undecodable message rejected.
    ("fleet_ingest_messages_total", &["topic=\"telemetry\""]),
    ("fleet_ingest_records_committed_total", &[]),
    ("fleet_ingest_acks_published_total", &[]),
    ("fleet_ingest_rejects_total", &[]),
    ("fleet_ingest_commit_lag_seconds_count", &[]),
    // Store and audit: the tenant, the token and the enrollment, each committed with its event.
    (
        "fleet_store_pool_acquire_duration_seconds_count",
        &["pool=\"app\""],
    ),
    (
        "fleet_store_transaction_duration_seconds_count",
        &["outcome=\"commit\""],
    ),
    ("fleet_audit_appends_total", &["action=\"tenant.create\""]),
    (
        "fleet_audit_appends_total",
        &["action=\"enrollment_token.create\""],
    ),
    ("fleet_audit_appends_total", &["action=\"device.enroll\""]),
];

#[tokio::test]
async fn a_scripted_session_moves_every_counter_and_ops_files_use_only_exported_series() {
    let db = TestDb::new().await;
    let data_dir = fleet_tests::data_dir();
    let config =
        fleetd::Config::on_ephemeral_loopback_ports(data_dir.path(), db.url().parse().unwrap());
    let running = fleetd::start(config).await.expect("fleetd starts");
    let metrics = running.metrics_addr();
    let ca = &running.pki().issuing_ca;
    let app = &running.database().app;
    let before = samples(metrics).await;

    // A tenant with its owner key, and an enrollment over HTTPS.
    let (tenant, key) =
        store::tenants::create_with_owner_key(app, "metrics", &KeyEnv::live(), &Actor::System)
            .await
            .unwrap();
    let device = fleet_tests::enroll::enroll(running.api_addr(), ca, app, tenant.id).await;

    // A management API call with the owner key.
    let auth = format!("Bearer {}", key.secret.expose());
    let listed = https_request(
        running.api_addr(),
        ca,
        "GET",
        "/v1/devices",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await;
    listed.assert_status(200);
    // And one without a key: refused.
    let refused = https_request(running.api_addr(), ca, "GET", "/v1/devices", &[], b"").await;
    refused.assert_status(401);

    // The enrolled device reports one record and is acknowledged after commit.
    let broker = running.broker_addr().expect("the embedded broker");
    let options = device.options(ca.root_der(), broker.ip().to_string(), broker.port());
    let (client, mut events) =
        connect_subscribed(options, wire::topic::ack(device.device_id), TIMEOUT).await;
    let topic = wire::topic::telemetry(device.device_id);
    client
        .publish(&topic, QoS::AtLeastOnce, false, telemetry_batch([1]))
        .await
        .unwrap();
    wait_for_ack(&mut events, 1, TIMEOUT).await;
    // Then a message that is not CBOR: rejected by ingest, counted, the session goes on.
    client
        .publish(&topic, QoS::AtLeastOnce, false, b"not cbor".to_vec())
        .await
        .unwrap();
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });

    // A device with a certificate of another CA: refused at the TLS handshake. (Without a
    // certificate it would be a live-stream subscriber, refused at CONNECT without a key.)
    refused_with_a_foreign_certificate(broker, ca).await;

    let after = wait_until_moved(metrics, &before).await;
    for (name, labels) in MUST_MOVE {
        assert!(
            total(&after, name, labels) > total(&before, name, labels),
            "{name}{labels:?} did not move: {} before, {} after",
            total(&before, name, labels),
            total(&after, name, labels),
        );
    }
    // Gauges read at scrape time.
    assert_eq!(
        total(&after, "fleet_broker_connections", &["state=\"session\""]),
        1.0,
        "the reporting device's session is open"
    );
    assert!(
        total(
            &after,
            "fleet_store_pool_max_connections",
            &["pool=\"app\""]
        ) >= 1.0
    );
    assert!(total(&after, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(total(&after, "process_threads", &[]) >= 1.0);
    let (open, max) = (
        total(&after, "process_open_fds", &[]),
        total(&after, "process_max_fds", &[]),
    );
    assert!(open >= 3.0 && open < max, "open {open}, max {max}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    for certificate in ["root_ca", "issuing_ca", "server"] {
        let label = format!("certificate=\"{certificate}\"");
        let expiry = total(
            &after,
            "fleet_certificate_expiry_timestamp_seconds",
            &[label.as_str()],
        );
        assert!(expiry > now, "{certificate} expires at {expiry}");
    }

    // The operator files, against the series this fleetd exports after the session.
    let exported: BTreeSet<String> = after.iter().map(|s| s.name.clone()).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = dashboard_expressions(&root.join("ops/grafana/fleetplane.json"));
    let alerts = alert_expressions(&root.join("ops/prometheus/alerts.yml"));
    assert!(
        dashboard.len() >= 30,
        "dashboard expressions: {dashboard:?}"
    );
    assert!(alerts.len() >= 5, "alert expressions: {alerts:?}");
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (file, expressions) in [("dashboard", &dashboard), ("alerts.yml", &alerts)] {
        for expr in expressions {
            for name in metric_names(expr) {
                if !exported.contains(&name) {
                    missing.push(format!("{file}: {name} (in `{expr}`)"));
                }
                used.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "series not exported by /metrics:\n{}",
        missing.join("\n")
    );
    assert!(used.len() >= 40, "series used: {used:?}");

    driver.abort();
    running.shutdown().await.unwrap();
}

/// Connects to the broker over TLS trusting the fleet root but presenting no certificate, and
/// waits for the connection to end.
async fn refused_with_a_foreign_certificate(broker: SocketAddr, ca: &certs::IssuingCa) {
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign =
        certs::Pki::generate(&foreign_dir.path().join("pki"), &Default::default()).unwrap();
    let identity = certs::DeviceIdentity {
        tenant_id: store::TenantId::new_random(),
        device_id: store::DeviceId::new_random(),
    };
    let validity = certs::Validity::from_now(Duration::from_secs(3600)).unwrap();
    let device = fleet_tests::device::issue(foreign.issuing_ca(), identity, validity);
    let tls = fleet_tests::device::device_tls(ca.root_der(), device.chain, &device.key);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(broker).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // With TLS 1.3 the client may finish first; the server's refusal then ends the read.
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(&[0x10, 0x00]).await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(TIMEOUT, tls.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a connection with a foreign certificate got an answer: {read:?}"
        );
    }
}

/// Scrapes until the asynchronous counters (ingest's reject, the broker's refusal) have moved,
/// or `TIMEOUT` passes; returns the last scrape.
async fn wait_until_moved(addr: SocketAddr, before: &[Sample]) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let now = samples(addr).await;
        let moved = MUST_MOVE
            .iter()
            .all(|(name, labels)| total(&now, name, labels) > total(before, name, labels));
        if moved || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every `expr` of the dashboard's panels (rows' nested panels included).
fn dashboard_expressions(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "schemaVersion"
    );
    assert_eq!(
        dashboard["__inputs"][0]["name"], "DS_PROMETHEUS",
        "imports with a Prometheus datasource input"
    );
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut expressions = Vec::new();
    for panel in panels {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {} uses the datasource input",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            expressions.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    expressions
}

/// Every `expr` of the alerting rules file.
fn alert_expressions(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("alerts.yml parses");
    let mut expressions = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            assert!(rule["alert"].as_str().is_some(), "every rule is an alert");
            expressions.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    expressions
}

/// PromQL words that are not metric names: operators, modifiers, and the aggregations, which
/// may stand before their `by (...)` clause instead of their parenthesis.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not functions (followed by
/// `(`), keywords, label names (inside `{...}` or a `by (...)` list), strings, numbers,
/// durations or Grafana variables (`$__rate_interval`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |from: usize, close: char| -> usize {
        let mut i = from + 1;
        let mut quote = None;
        while i < chars.len() {
            match (quote, chars[i]) {
                (Some(_), '\\') => i += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(chars[i]),
                (None, c) if c == close => return i + 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i, c);
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < chars.len() && (is_word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_word(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if call && LABEL_LISTS.contains(&word.as_str()) {
                i = skip_to(next, ')');
            } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_told_from_functions_labels_and_keywords() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route="/v1/x",b=~"c|d"}[$__rate_interval])))
           > 2 * sum(rate(b_total[1h] offset 10m)) and on (pool) c{state="idle"} == 0 or 14 * 86400 < d - time()"#,
    );
    let expected: BTreeSet<String> = ["a_seconds_bucket", "b_total", "c", "d"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn samples_parse_with_and_without_labels() {
    let samples = parse_samples(
        "# TYPE x counter\nx_total 3\ny{a=\"1\",b=\"2\"} 4.5\ny{a=\"1\",b=\"3\"} 1\n# EOF\n",
    );
    assert_eq!(total(&samples, "x_total", &[]), 3.0);
    assert_eq!(total(&samples, "y", &["a=\"1\""]), 5.5);
    assert_eq!(total(&samples, "y", &["b=\"3\""]), 1.0);
}
