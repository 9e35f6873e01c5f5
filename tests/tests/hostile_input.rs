//! Hostile input on every route of the management API (the permission table, which a test holds
//! equal to the router and the OpenAPI document): malformed, mistyped and oversized bodies;
//! broken, overflowing and repeated query strings; path ids that are not ids; broken and huge
//! headers. Each is sent with the owner's key (and the header cases also without one). Never a
//! server error, always an answer, no hostile body accepted (a route that takes no body refuses
//! one rather than ignore it), and fleetd serves normally afterwards. Prints the counts.

use api::permissions::{RouteRule, ROUTES};
use fleet_tests::fleet::Fleet;
use fleet_tests::https::Response;

/// Bodies for every route that is not a GET.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("truncated JSON", b"{\"name\":".to_vec()),
        ("an array", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("a string", b"\"x\"".to_vec()),
        ("invalid UTF-8", b"{\"name\":\"\xff\xfe\"}".to_vec()),
        (
            "a NUL in a string",
            b"{\"name\":\"a\\u0000b\",\"reason\":\"a\\u0000b\"}".to_vec(),
        ),
        (
            "a number beyond f64",
            b"{\"daily_limit\":1e400,\"role\":1e400}".to_vec(),
        ),
        (
            "wrong types",
            br#"{"name":7,"role":[],"group_ids":"x","expires_at":true}"#.to_vec(),
        ),
        ("nested 100,000 deep", "[".repeat(100_000).into_bytes()),
        ("unknown fields only", br#"{"zzz":1}"#.to_vec()),
    ]
}

/// Query strings for every route.
fn hostile_queries() -> Vec<(&'static str, String)> {
    vec![
        ("a broken percent escape", "?%zz=1".into()),
        ("a negative limit", "?limit=-1".into()),
        ("a limit beyond u64", "?limit=184467440737095516160".into()),
        ("a NUL cursor", "?cursor=%00".into()),
        ("a parameter repeated", "?limit=1&limit=2".into()),
        ("2,000 parameters", format!("?{}", "a=1&".repeat(2_000))),
        (
            "a date that is not one",
            "?since=yesterday&until=%FF".into(),
        ),
    ]
}

/// Values put where a route takes an id or a seq.
fn hostile_ids() -> Vec<(&'static str, String)> {
    vec![
        ("not an id", "not-an-id".into()),
        ("a NUL", "%00".into()),
        ("a traversal", "..%2F..%2Fetc%2Fpasswd".into()),
        ("5,000 digits", "9".repeat(5_000)),
        ("a negative number", "-1".into()),
        ("an emoji", "%F0%9F%98%80".into()),
    ]
}

/// Headers sent on every route (with the owner's key, unless the case replaces it).
fn hostile_headers(owner: &str) -> Vec<(&'static str, Vec<(String, String)>)> {
    let auth = |value: String| vec![("Authorization".to_owned(), value)];
    vec![
        ("a bare Bearer", auth("Bearer".into())),
        (
            "a 10,000-character key",
            auth(format!("Bearer fpk_{}", "A".repeat(10_000))),
        ),
        ("another scheme", auth("Basic YWxpY2U6c2VjcmV0".into())),
        ("a NUL in the key", auth("Bearer fpk_%00".into())),
        (
            "a 60 KiB header",
            vec![
                ("Authorization".into(), format!("Bearer {owner}")),
                ("X-Padding".into(), "x".repeat(60 * 1024)),
            ],
        ),
        (
            "an unknown charset",
            vec![
                ("Authorization".into(), format!("Bearer {owner}")),
                (
                    "Content-Type".into(),
                    "application/json; charset=ebcdic".into(),
                ),
            ],
        ),
        (
            "a forged CSRF cookie session",
            vec![
                ("Cookie".into(), "__Host-fleet_session=%00%00".into()),
                ("X-CSRF-Token".into(), "\u{7f}".into()),
            ],
        ),
    ]
}

fn with_id(rule: &RouteRule, id: &str) -> String {
    rule.path.replace("{id}", id).replace("{seq}", id)
}

/// A syntactically valid path for `rule` (ids that name nothing).
fn plain_path(rule: &RouteRule) -> String {
    let id = if rule.path.contains("{seq}") {
        "999999".to_owned()
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    with_id(rule, &id)
}

#[derive(Default)]
struct Tally {
    sent: std::collections::BTreeMap<&'static str, usize>,
    statuses: std::collections::BTreeMap<(&'static str, u16), usize>,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, surface: &'static str, request: String, answer: &Response) {
        *self.sent.entry(surface).or_default() += 1;
        *self.statuses.entry((surface, answer.status)).or_default() += 1;
        if answer.status >= 500 {
            self.failures
                .push(format!("{request}: {} {}", answer.status, answer.text()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_answers_hostile_input_with_a_server_error() {
    let fleet = Fleet::start().await;
    let owner = fleet.owner_key.clone();
    let bearer = format!("Bearer {owner}");
    let json = ("Content-Type", "application/json");
    let mut tally = Tally::default();

    for (n, rule) in ROUTES.iter().enumerate() {
        let path = plain_path(rule);
        if rule.method != "GET" {
            for (case, body) in hostile_bodies() {
                let answer = fleet
                    .send_raw(
                        rule.method,
                        &path,
                        &[("Authorization", &bearer), json],
                        &body,
                    )
                    .await;
                let request = format!("{} {path} ({case})", rule.method);
                // None of them is a body any route takes: refused, never ignored.
                if answer.status < 400 {
                    tally
                        .failures
                        .push(format!("{request}: accepted ({})", answer.status));
                }
                tally.check("body", request, &answer);
            }
            // More than any body limit: refused before it is read whole.
            let big = vec![b'a'; 3 * 1024 * 1024];
            let answer = fleet
                .send_raw(
                    rule.method,
                    &path,
                    &[("Authorization", &bearer), json],
                    &big,
                )
                .await;
            tally.check("body", format!("{} {path} (3 MiB)", rule.method), &answer);
            let answer = fleet
                .send_raw(
                    rule.method,
                    &path,
                    &[("Authorization", &bearer), ("Content-Type", "text/plain")],
                    b"{}",
                )
                .await;
            tally.check(
                "body",
                format!("{} {path} (text/plain)", rule.method),
                &answer,
            );
        }
        for (case, query) in hostile_queries() {
            let target = format!("{path}{query}");
            let answer = fleet
                .send_raw(rule.method, &target, &[("Authorization", &bearer)], b"")
                .await;
            tally.check("query", format!("{} {path} ({case})", rule.method), &answer);
        }
        if rule.path.contains('{') {
            for (case, id) in hostile_ids() {
                let target = with_id(rule, &id);
                let answer = fleet
                    .send_raw(rule.method, &target, &[("Authorization", &bearer)], b"")
                    .await;
                tally.check(
                    "path id",
                    format!("{} {} ({case})", rule.method, rule.path),
                    &answer,
                );
            }
        }
        for (case, headers) in hostile_headers(&owner) {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            // From an address per route: the refused keys among them would get one address
            // slowed (429) before the later routes' headers were read.
            let answer = fleet_tests::https::https_request_from(
                std::net::IpAddr::from([127, 0, 1, u8::try_from(n).unwrap()]),
                fleet.running.api_addr(),
                &fleet.running.pki().issuing_ca,
                rule.method,
                &path,
                &headers,
                b"",
            )
            .await;
            tally.check(
                "header",
                format!("{} {path} ({case})", rule.method),
                &answer,
            );
        }
    }

    // Still serving, for the key that sent all of it.
    fleet
        .as_owner_key("GET", "/v1/tenant", None)
        .await
        .assert_status(200);
    println!("hostile input: {} routes", ROUTES.len());
    for (surface, sent) in &tally.sent {
        let statuses: Vec<String> = tally
            .statuses
            .iter()
            .filter(|((s, _), _)| s == surface)
            .map(|((_, status), n)| format!("{status}: {n}"))
            .collect();
        println!(
            "  {surface:<8} {sent:>5} requests ({})",
            statuses.join(", ")
        );
    }
    for failure in &tally.failures {
        println!("  SERVER ERROR {failure}");
    }
    assert!(
        tally.failures.is_empty(),
        "{} server errors or accepted hostile bodies (listed above)",
        tally.failures.len()
    );
    fleet.running.shutdown().await.unwrap();
}
