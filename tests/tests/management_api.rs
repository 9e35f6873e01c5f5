//! The management API against a real fleetd (real Postgres, real TLS): the permission table as
//! a matrix, display-once secrets, revocation/expiry/CIDR on the next request and on a second
//! fleetd, group scopes, bad input, and the OpenAPI document against the router's table.

use std::collections::BTreeMap;
use std::time::Duration;

use api::permissions::{Callers, RouteRule, ROUTES};
use fleet_tests::https::{https_request, Response};
use fleet_tests::logs::capture_logs;
use fleet_tests::mqtt::DeviceCredentials;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Packet};
use serde_json::{json, Value};
use store::api_keys::Role;
use store::audit::Actor;
use store::devices::{self, NewDevice};

/// fleetd with tenant `acme` and its owner key (`fleet_tests::fleet`), with this file's calls.
struct Fleet(fleet_tests::fleet::Fleet);

impl std::ops::Deref for Fleet {
    type Target = fleet_tests::fleet::Fleet;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Fleet {
    async fn start() -> Self {
        Self(fleet_tests::fleet::Fleet::start().await)
    }

    async fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> Response {
        call(&self.running, key, method, path, body).await
    }

    /// Creates a key with `role` (and optionally a group scope) as the owner; returns its text.
    async fn key(&self, role: &str, group_ids: Option<Vec<String>>) -> (String, String) {
        let mut body = json!({ "name": format!("{role} key"), "role": role });
        if let Some(groups) = group_ids {
            body["group_ids"] = json!(groups);
        }
        let created = self
            .call(&self.owner_key, "POST", "/v1/api-keys", Some(body))
            .await;
        created.assert_status(201);
        let json = created.json();
        (
            json["key"].as_str().unwrap().to_owned(),
            json["id"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates the device group `name` as the owner; returns it as the API answered.
    async fn group(&self, name: &str) -> Value {
        let created = self
            .call(
                &self.owner_key,
                "POST",
                "/v1/device-groups",
                Some(json!({ "name": name })),
            )
            .await;
        created.assert_status(201);
        created.json()
    }

    async fn device_in(&self, group: &str, name: &str) -> String {
        let mut tx = self
            .running
            .database()
            .app
            .begin(self.tenant)
            .await
            .unwrap();
        let device = devices::create(
            &mut tx,
            &NewDevice {
                name: name.into(),
                group: group.into(),
                labels: BTreeMap::from([("site".into(), name.into())]),
            },
            &Actor::System,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        device.id.to_string()
    }
}

async fn call(
    running: &fleetd::Running,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Response {
    call_as(
        running,
        &Credential::Key(key.to_owned()),
        method,
        path,
        body,
    )
    .await
}

/// A concrete path for a route template, with ids of real objects.
fn concrete(rule: &RouteRule, ids: &BTreeMap<&str, String>) -> String {
    let id = match rule.path {
        p if p.starts_with("/v1/api-keys/") => &ids["key"],
        p if p.starts_with("/v1/enrollment-tokens/") => &ids["token"],
        p if p.starts_with("/v1/device-groups/") => &ids["group"],
        p if p.starts_with("/v1/users/") => &ids["user"],
        _ => &ids["device"],
    };
    let path = rule.path.replace("{id}", id).replace("{seq}", &ids["seq"]);
    // The routes with required query parameters.
    if rule.path.ends_with("/chart.svg") {
        return format!("{path}?metric=cpu_usage_percent");
    }
    if rule.path == "/v1/reports/evidence" {
        return format!("{path}?from=2026-01-01T00:00:00Z&to=2100-01-01T00:00:00Z");
    }
    path
}

/// A body that passes validation for the mutating routes, so a 403 can only come from the table.
fn body_for(rule: &RouteRule, run: usize) -> Option<Value> {
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    match (rule.method, rule.path) {
        ("PATCH", "/v1/tenant") => Some(json!({ "record_retention_days": 30 })),
        ("POST", "/v1/audit-events/{seq}/erase") => Some(json!({ "reason": "matrix" })),
        ("POST", "/v1/api-keys") => Some(json!({ "name": "made", "role": "auditor" })),
        ("POST", "/v1/enrollment-tokens") => Some(json!({
            "name": "t", "allowed_cidrs": ["127.0.0.0/8"], "daily_limit": 1, "expires_at": expires,
        })),
        ("POST", "/v1/device-groups") => Some(json!({ "name": format!("made-{run}") })),
        ("PATCH", "/v1/device-groups/{id}") => Some(json!({ "name": "lab" })),
        ("PATCH", "/v1/devices/{id}") => Some(json!({ "name": "lab-1" })),
        ("PATCH", "/v1/users/{id}") => Some(json!({ "role": "auditor" })),
        ("POST", "/v1/invitations") => Some(json!({
            "email": format!("invited-{run}@acme.example"), "role": "auditor",
        })),
        ("PUT", "/v1/tenant/sso") => Some(json!({
            "issuer": "https://idp.example.com", "client_id": "fleet", "client_secret": "s",
        })),
        _ => None,
    }
}

/// How a caller of the matrix authenticates: an API key, or a person's session cookie with its
/// CSRF token.
enum Credential {
    Key(String),
    Session { cookie: String, csrf: String },
}

async fn call_as(
    running: &fleetd::Running,
    credential: &Credential,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Response {
    let (name, value, csrf) = match credential {
        Credential::Key(key) => ("Authorization", format!("Bearer {key}"), None),
        Credential::Session { cookie, csrf } => (
            "Cookie",
            format!("__Host-fleet_session={cookie}"),
            Some(csrf.as_str()),
        ),
    };
    let mut headers = vec![(name, value.as_str())];
    headers.extend(csrf.map(|csrf| ("X-CSRF-Token", csrf)));
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    if !bytes.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    https_request(
        running.api_addr(),
        &running.pki().issuing_ca,
        method,
        path,
        &headers,
        &bytes,
    )
    .await
}

impl Fleet {
    /// A person with `role` (and optionally a group scope), invited by the owner key, signed in
    /// (enrolling TOTP where the role requires it).
    async fn person(&self, role: &str, group_ids: Option<Vec<String>>, n: usize) -> Credential {
        let groups: Option<Vec<&str>> = group_ids
            .as_ref()
            .map(|ids| ids.iter().map(String::as_str).collect());
        let email = format!("{role}{n}@acme.example");
        let person = self.person_in_groups(&email, role, groups.as_deref()).await;
        Credential::Session {
            cookie: person.session.cookie,
            csrf: person.session.csrf,
        }
    }

    /// A user with no password (as single sign-on creates them), to be disabled, changed or
    /// removed by the matrix.
    async fn spare_user(&self, run: usize) -> String {
        let mut tx = self
            .running
            .database()
            .app
            .begin(self.tenant)
            .await
            .unwrap();
        let email = store::users::Email::parse(&format!("spare{run}@acme.example")).unwrap();
        let (user, _) = store::users::find_or_create_verified(
            &mut tx,
            &email,
            Role::Auditor,
            &Actor::System,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        user.id.to_string()
    }
}

#[tokio::test]
async fn every_route_answers_every_role_exactly_as_the_permission_table_says() {
    let fleet = Fleet::start().await;
    let lab = fleet.group("lab").await;
    let lab_id = lab["id"].as_str().unwrap().to_owned();
    let mut callers = Vec::new();
    for role in Role::ALL {
        let unscoped = fleet.key(role.as_str(), None).await.0;
        let scoped = fleet.key(role.as_str(), Some(vec![lab_id.clone()])).await.0;
        callers.push((role, false, Credential::Key(unscoped)));
        callers.push((role, true, Credential::Key(scoped)));
    }
    run_matrix(&fleet, &lab_id, &callers).await;
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_route_answers_every_role_of_signed_in_users_exactly_as_the_permission_table_says() {
    let fleet = Fleet::start().await;
    let lab = fleet.group("lab").await;
    let lab_id = lab["id"].as_str().unwrap().to_owned();
    let mut callers = Vec::new();
    for (n, role) in Role::ALL.into_iter().enumerate() {
        let unscoped = fleet.person(role.as_str(), None, n * 2).await;
        let scoped = fleet
            .person(role.as_str(), Some(vec![lab_id.clone()]), n * 2 + 1)
            .await;
        callers.push((role, false, unscoped));
        callers.push((role, true, scoped));
    }
    run_matrix(&fleet, &lab_id, &callers).await;
    fleet.0.running.shutdown().await.unwrap();
}

/// Every route of the table (but the sign-in steps, which take no caller) for every caller:
/// success where the table allows the role, the scope and the kind of caller, 403 elsewhere.
/// A person's own state-changing session routes (sign out, password) would end the session the
/// matrix goes on with: tests/people.rs covers them.
async fn run_matrix(fleet: &Fleet, lab_id: &str, callers: &[(Role, bool, Credential)]) {
    let device = fleet.device_in("lab", "lab-1").await;
    let mut run = 0;
    for rule in ROUTES.iter().filter(|r| r.callers != Callers::Anonymous) {
        for (role, scoped, credential) in callers {
            let session = matches!(credential, Credential::Session { .. });
            if session && rule.callers == Callers::SessionsOnly && rule.method != "GET" {
                continue;
            }
            run += 1;
            // Objects that a DELETE may consume are made fresh for each call.
            let (spare_key, spare_key_id) = fleet.key("auditor", None).await;
            drop(spare_key);
            let token = fleet
                .call(
                    &fleet.owner_key,
                    "POST",
                    "/v1/enrollment-tokens",
                    body_for(
                        &RouteRule {
                            method: "POST",
                            path: "/v1/enrollment-tokens",
                            ..*rule
                        },
                        run,
                    ),
                )
                .await
                .json();
            let spare_group = fleet.group(&format!("spare-{run}")).await;
            let group_id = if rule.method == "DELETE" {
                spare_group["id"].as_str().unwrap().to_owned()
            } else {
                lab_id.to_owned()
            };
            let user = if rule.path.starts_with("/v1/users/") {
                fleet.spare_user(run).await
            } else {
                String::new()
            };
            let ids = BTreeMap::from([
                ("key", spare_key_id),
                ("token", token["id"].as_str().unwrap().to_owned()),
                ("group", group_id),
                ("device", device.clone()),
                ("user", user),
                // Every run appends events (the spare key, token and group above), so event
                // 2 + run exists and no earlier run erased it.
                ("seq", (run + 2).to_string()),
            ]);
            let path = concrete(rule, &ids);
            let answer = call_as(
                &fleet.running,
                credential,
                rule.method,
                &path,
                body_for(rule, run),
            )
            .await;
            let allowed = rule.allows(*role, *scoped) && rule.takes(session);
            if allowed {
                assert!(
                    answer.status < 400
                        || (rule.path.contains("patch-status") && answer.status == 404),
                    "{} {path} as {role:?} scoped={scoped} session={session}: expected success, got {} {}",
                    rule.method,
                    answer.status,
                    answer.text()
                );
            } else {
                answer.assert_problem(403, "forbidden");
            }
        }
    }
}

#[tokio::test]
async fn secrets_appear_only_in_the_creating_response_never_in_the_database_or_the_logs() {
    let logs = capture_logs();
    let fleet = Fleet::start().await;
    let (key, key_id) = fleet.key("admin", None).await;
    let expires = "2099-01-01T00:00:00Z";
    let token_created = fleet
        .call(&key, "POST", "/v1/enrollment-tokens", Some(json!({
            "name": "line", "allowed_cidrs": ["0.0.0.0/0"], "daily_limit": 5, "expires_at": expires,
        })))
        .await;
    token_created.assert_status(201);
    let token = token_created.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("fpe_"));
    let secrets = [fleet.owner_key.clone(), key.clone(), token.clone()];
    // The secret parts alone, too: a column holding just the secret would also leak.
    let secret_parts: Vec<String> = secrets
        .iter()
        .map(|s| s[s.len() - 49..s.len() - 6].to_owned())
        .collect();

    // Every other response.
    let token_id = token_created.json()["id"].as_str().unwrap().to_owned();
    for path in [
        "/v1/api-keys".to_owned(),
        format!("/v1/api-keys/{key_id}"),
        "/v1/enrollment-tokens".to_owned(),
        format!("/v1/enrollment-tokens/{token_id}"),
        "/v1/audit-events".to_owned(),
        "/v1/audit-events.csv".to_owned(),
        "/v1/tenant".to_owned(),
    ] {
        let answer = fleet.call(&fleet.owner_key, "GET", &path, None).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        for secret in secrets.iter().chain(&secret_parts) {
            assert!(
                !answer.text().contains(secret.as_str()),
                "{path} shows a secret"
            );
        }
    }

    // Every column of every table, as text.
    let tables = fleet.db.every_row_as_text().await;
    assert!(tables.contains_key("api_keys"));
    for (table, rows) in tables {
        for row in rows {
            for secret in secrets.iter().chain(&secret_parts) {
                assert!(
                    !row.contains(secret.as_str()),
                    "table {table} holds a secret"
                );
            }
        }
    }

    // Everything logged during the test run, including failed uses of the keys.
    let _ = fleet
        .call(&format!("{key}x"), "GET", "/v1/devices", None)
        .await;
    let logged = logs.text();
    assert!(logged.contains("API key created"), "the capture works");
    for secret in secrets.iter().chain(&secret_parts) {
        assert!(!logged.contains(secret.as_str()), "a secret was logged");
    }
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn revocation_expiry_and_cidrs_take_effect_on_the_next_request_on_every_fleetd() {
    let fleet = Fleet::start().await;
    // A second fleetd on the same database.
    let dir_b = fleet_tests::data_dir();
    let mut config_b =
        fleetd::Config::on_ephemeral_loopback_ports(dir_b.path(), fleet.db.url().parse().unwrap());
    config_b.pki.dir = Some(fleet.dir.path().join("pki"));
    let b = fleetd::start(config_b).await.expect("second fleetd");

    let (key, key_id) = fleet.key("operator", None).await;
    // Both instances have verified (and cached) the key.
    for running in [&fleet.running, &b] {
        for _ in 0..2 {
            assert_eq!(
                call(running, &key, "GET", "/v1/devices", None).await.status,
                200
            );
        }
    }
    let revoked = fleet
        .call(
            &fleet.owner_key,
            "DELETE",
            &format!("/v1/api-keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(revoked.json()["state"], "revoked");
    for running in [&fleet.running, &b] {
        call(running, &key, "GET", "/v1/devices", None)
            .await
            .assert_problem(401, "invalid-api-key");
        // Also on a route its role may not use: it is told the key is no good, not its role.
        call(
            running,
            &key,
            "PATCH",
            "/v1/tenant",
            Some(json!({"name": "x"})),
        )
        .await
        .assert_problem(401, "invalid-api-key");
    }

    // Expiry.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = fleet
        .call(
            &fleet.owner_key,
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "brief", "role": "auditor", "expires_at": soon})),
        )
        .await
        .json();
    let brief = created["key"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&b, &brief, "GET", "/v1/devices", None).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    call(&b, &brief, "GET", "/v1/devices", None)
        .await
        .assert_problem(401, "invalid-api-key");

    // A CIDR allowlist without the test's address.
    let elsewhere = fleet
        .call(
            &fleet.owner_key,
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "lan only", "role": "auditor", "allowed_cidrs": ["10.0.0.0/8"]})),
        )
        .await
        .json();
    let lan = elsewhere["key"].as_str().unwrap();
    for running in [&fleet.running, &b] {
        call(running, lan, "GET", "/v1/devices", None)
            .await
            .assert_problem(401, "invalid-api-key");
    }
    b.shutdown().await.unwrap();
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_group_scoped_key_sees_nothing_of_other_groups() {
    let fleet = Fleet::start().await;
    let lab = fleet.group("lab").await;
    let mine = fleet.device_in("lab", "mine").await;
    let theirs = fleet.device_in("default", "theirs").await;
    let (key, _) = fleet
        .key(
            "operator",
            Some(vec![lab["id"].as_str().unwrap().to_owned()]),
        )
        .await;

    let listed = fleet.call(&key, "GET", "/v1/devices", None).await.json();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    let groups = fleet
        .call(&key, "GET", "/v1/device-groups", None)
        .await
        .json();
    assert_eq!(groups["items"].as_array().unwrap().len(), 1, "{groups}");
    let summary = fleet
        .call(&key, "GET", "/v1/patch-summary", None)
        .await
        .json();
    assert_eq!(summary["devices"], 1, "{summary}");

    for (method, path, body) in [
        ("GET", format!("/v1/devices/{theirs}"), None),
        ("GET", format!("/v1/devices/{theirs}/health"), None),
        ("GET", format!("/v1/devices/{theirs}/telemetry"), None),
        ("GET", format!("/v1/devices/{theirs}/patch-status"), None),
        (
            "PATCH",
            format!("/v1/devices/{theirs}"),
            Some(json!({"name": "x"})),
        ),
        ("POST", format!("/v1/devices/{theirs}/revoke"), None),
    ] {
        fleet
            .call(&key, method, &path, body)
            .await
            .assert_problem(404, "not-found");
    }
    // Nor can it move its device out of its groups.
    let moved = fleet
        .call(
            &key,
            "PATCH",
            &format!("/v1/devices/{mine}"),
            Some(json!({"group": "default"})),
        )
        .await;
    moved.assert_problem(422, "invalid-field");
    // And its revocation did not happen.
    let other = fleet
        .call(
            &fleet.owner_key,
            "GET",
            &format!("/v1/devices/{theirs}"),
            None,
        )
        .await
        .json();
    assert_eq!(other["status"], "active");
    assert_eq!(other["name"], "theirs");
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_never_a_server_error() {
    let fleet = Fleet::start().await;
    let owner = fleet.owner_key.clone();
    // (method, path, body, status, problem type, field named)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<Value>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "x", "role": "root"})),
            422,
            "invalid-field",
            Some("role"),
        ),
        (
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "x", "role": "admin", "colour": 1})),
            422,
            "invalid-field",
            None,
        ),
        (
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "", "role": "admin"})),
            422,
            "invalid-field",
            Some("name"),
        ),
        (
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "x", "role": "admin", "allowed_cidrs": ["10.0.0.0/33"]})),
            422,
            "invalid-field",
            Some("allowed_cidrs[0]"),
        ),
        (
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "x", "role": "admin", "expires_at": "yesterday"})),
            422,
            "invalid-field",
            Some("expires_at"),
        ),
        (
            "POST",
            "/v1/enrollment-tokens",
            Some(
                json!({"name": "t", "allowed_cidrs": [], "daily_limit": 1, "expires_at": "2099-01-01T00:00:00Z"}),
            ),
            422,
            "invalid-field",
            None,
        ),
        (
            "POST",
            "/v1/enrollment-tokens",
            Some(
                json!({"name": "t", "allowed_cidrs": ["0.0.0.0/0"], "daily_limit": 1, "expires_at": "2099-01-01T00:00:00Z", "device_group": "nope"}),
            ),
            422,
            "invalid-field",
            Some("device_group"),
        ),
        (
            "PATCH",
            "/v1/tenant",
            Some(json!({"record_retention_days": 0})),
            422,
            "invalid-field",
            Some("record_retention_days"),
        ),
        (
            "GET",
            "/v1/devices?limit=0",
            None,
            422,
            "invalid-field",
            Some("limit"),
        ),
        (
            "GET",
            "/v1/devices?limit=501",
            None,
            422,
            "invalid-field",
            Some("limit"),
        ),
        (
            "GET",
            "/v1/devices?cursor=garbage",
            None,
            400,
            "invalid-cursor",
            None,
        ),
        (
            "GET",
            "/v1/devices?colour=red",
            None,
            422,
            "invalid-field",
            Some("colour"),
        ),
        (
            "GET",
            "/v1/devices?online=maybe",
            None,
            422,
            "invalid-field",
            Some("online"),
        ),
        (
            "GET",
            "/v1/devices?last_seen_before=noon",
            None,
            422,
            "invalid-field",
            Some("last_seen_before"),
        ),
        (
            "GET",
            "/v1/devices/not-a-uuid",
            None,
            404,
            "not-found",
            None,
        ),
        ("GET", "/v1/api-keys/short", None, 404, "not-found", None),
        (
            "GET",
            "/v1/enrollment-tokens/not-a-uuid",
            None,
            404,
            "not-found",
            None,
        ),
        (
            "DELETE",
            "/v1/device-groups/not-a-uuid",
            None,
            404,
            "not-found",
            None,
        ),
        (
            "GET",
            "/v1/devices/not-a-uuid/patch-status",
            None,
            404,
            "not-found",
            None,
        ),
        (
            "GET",
            "/v1/tenant?verbose=1",
            None,
            422,
            "invalid-field",
            Some("verbose"),
        ),
        (
            "POST",
            "/v1/device-groups?dry_run=1",
            Some(json!({"name": "g"})),
            422,
            "invalid-field",
            Some("dry_run"),
        ),
    ];
    for (method, path, body, status, slug, field) in cases {
        let answer = fleet.call(&owner, method, path, body).await;
        let problem = answer.assert_problem(status, slug);
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{method} {path}: {problem}");
        }
    }
    // Labels can be cleared: an empty map is a valid value.
    let device = fleet.device_in("default", "labelled").await;
    let cleared = fleet
        .call(
            &owner,
            "PATCH",
            &format!("/v1/devices/{device}"),
            Some(json!({"labels": {}})),
        )
        .await;
    cleared.assert_status(200);
    assert_eq!(cleared.json()["labels"], json!({}));
    // Oversize and not JSON.
    let big = json!({"name": "x".repeat(70 * 1024), "role": "admin"});
    fleet
        .call(&owner, "POST", "/v1/api-keys", Some(big))
        .await
        .assert_problem(413, "body-too-large");
    let not_json = https_request(
        fleet.running.api_addr(),
        &fleet.running.pki().issuing_ca,
        "POST",
        "/v1/api-keys",
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "text/plain"),
        ],
        b"name=x",
    )
    .await;
    not_json.assert_problem(415, "unsupported-media-type");
    // No key, a malformed key, a key whose checksum fails.
    for auth in [
        "",
        "Bearer nope",
        "Bearer fpk_live_AAAAAAAAAAAA_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000",
    ] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("Authorization", auth)]
        };
        https_request(
            fleet.running.api_addr(),
            &fleet.running.pki().issuing_ca,
            "GET",
            "/v1/devices",
            &headers,
            b"",
        )
        .await
        .assert_problem(401, "invalid-api-key");
    }
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_slowed_without_starving_good_keys() {
    let fleet = Fleet::start().await;
    let mut slowed = None;
    for _ in 0..40 {
        let answer = fleet
            .call(
                "fpk_live_AAAAAAAAAAAA_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000",
                "GET",
                "/v1/devices",
                None,
            )
            .await;
        if answer.status == 429 {
            slowed = Some(answer);
            break;
        }
        answer.assert_problem(401, "invalid-api-key");
    }
    let slowed = slowed.expect("slowed after repeated failures");
    slowed.assert_problem(429, "too-many-failures");
    assert!(slowed.header("retry-after").is_some());
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_key_never_creates_a_key_with_more_power_than_its_own() {
    let fleet = Fleet::start().await;
    let (admin, _) = fleet.key("admin", None).await;
    fleet
        .call(
            &admin,
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "up", "role": "owner"})),
        )
        .await
        .assert_problem(403, "forbidden");
    let owner_id = fleet
        .call(&fleet.owner_key, "GET", "/v1/api-keys", None)
        .await
        .json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fleet
        .call(&admin, "DELETE", &format!("/v1/api-keys/{owner_id}"), None)
        .await
        .assert_problem(403, "forbidden");
    let made = fleet
        .call(
            &admin,
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "down", "role": "operator"})),
        )
        .await;
    assert_eq!(made.status, 201);
    // The audit trail names the key that did it.
    let events = fleet
        .call(
            &fleet.owner_key,
            "GET",
            "/v1/audit-events?action=api_key.create",
            None,
        )
        .await
        .json();
    let actors: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(actors.iter().any(|a| a.starts_with("api_key:")), "{events}");
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_has_exactly_the_routes_of_the_permission_table() {
    let doc = api::openapi();
    let json = serde_json::to_value(&doc).unwrap();
    assert_eq!(json["openapi"].as_str().unwrap().get(..3), Some("3.1"));
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in json["paths"].as_object().unwrap() {
        for method in ["get", "post", "patch", "delete", "put"] {
            if let Some(op) = item.get(method) {
                documented.insert((method.to_uppercase(), path.clone()));
                assert!(
                    op["x-fleet-roles"].is_array(),
                    "{method} {path} lacks its roles"
                );
            }
        }
    }
    let table: std::collections::BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, table);

    // And fleetd serves it without authentication.
    let fleet = Fleet::start().await;
    let served = https_request(
        fleet.running.api_addr(),
        &fleet.running.pki().issuing_ca,
        "GET",
        "/v1/openapi.json",
        &[],
        b"",
    )
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(
        served.json()["paths"].as_object().unwrap().len(),
        json["paths"].as_object().unwrap().len()
    );
    fleet.0.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_refusals_and_the_key_cache_are_counted_and_refused_enrollments_logged() {
    // Tried as a new user would: /metrics held ingest series only, and a refused enrollment
    // was not even logged.
    let logs = capture_logs();
    let fleet = Fleet::start().await;
    for _ in 0..2 {
        assert_eq!(
            fleet
                .call(&fleet.owner_key, "GET", "/v1/devices", None)
                .await
                .status,
            200
        );
    }
    let (auditor, _) = fleet.key("auditor", None).await;
    fleet
        .call(
            &auditor,
            "POST",
            "/v1/device-groups",
            Some(json!({"name": "x"})),
        )
        .await
        .assert_problem(403, "forbidden");
    let refused = https_request(
        fleet.running.api_addr(),
        &fleet.running.pki().issuing_ca,
        "POST",
        "/v1/enroll",
        &[("Content-Type", "application/json")],
        br#"{"token": "fpe_nope", "csr": "x"}"#,
    )
    .await;
    refused.assert_status(400);

    let metrics = fleet_tests::metrics::scrape(fleet.running.metrics_addr()).await;
    let has = |needle: &str| {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains(needle) && !l.starts_with('#')),
            "no {needle} in\n{metrics}"
        )
    };
    has(r#"fleet_api_requests_total{route="/v1/devices",method="GET",status="200",role="owner"}"#);
    has(r#"fleet_api_refusals_total{route="/v1/device-groups",problem="forbidden"}"#);
    has(r#"fleet_api_refusals_total{route="/v1/enroll",problem="invalid-csr"}"#);
    has(r#"fleet_api_key_cache_total{outcome="hit"}"#);
    has(r#"fleet_api_key_cache_total{outcome="miss"}"#);
    has("fleet_api_request_duration_seconds_bucket");
    // Route templates, never concrete ids, label the series.
    assert!(!metrics.contains(&fleet.tenant.to_string()));

    let logged = logs.text();
    assert!(
        logged.contains("enrollment refused") && logged.contains("invalid-csr"),
        "the refused enrollment was not logged"
    );
    fleet.0.running.shutdown().await.unwrap();
}

/// The CONNACK code a device of fleetd's embedded broker got (`None`: no CONNACK at all); a
/// connected device's client is returned, driven, so that its session stays live.
async fn device_connect(
    fleet: &Fleet,
    device: &DeviceCredentials,
) -> (
    Option<ConnectReturnCode>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let addr = fleet.running.broker_addr().expect("the embedded broker");
    let options = device.options(
        fleet.running.pki().issuing_ca.root_der(),
        addr.ip().to_string(),
        addr.port(),
    );
    let (client, mut events) = AsyncClient::new(options, 8);
    let connack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => return Some(connack.code),
                Ok(_) => continue,
                Err(ConnectionError::ConnectionRefused(code)) => return Some(code),
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("a CONNACK or an error within 10 s");
    if connack != Some(ConnectReturnCode::Success) {
        return (connack, None);
    }
    let driver = tokio::spawn(async move {
        let _client = client;
        while events.poll().await.is_ok() {}
    });
    (connack, Some(driver))
}

#[tokio::test]
async fn the_connection_quota_is_set_through_the_api_audited_and_applies_to_the_next_connect() {
    let fleet = Fleet::start().await;
    let shown = fleet
        .call(&fleet.owner_key, "GET", "/v1/tenant", None)
        .await;
    shown.assert_status(200);
    assert_eq!(
        shown.json()["max_device_connections"],
        100_000,
        "the default"
    );
    let ids =
        fleet_tests::tenancy::add_devices(&fleet.running.database().app, fleet.tenant, "q-", 2)
            .await;
    let ca = &fleet.running.pki().issuing_ca;
    let [first, second] =
        [ids[0], ids[1]].map(|id| DeviceCredentials::issued(ca, fleet.tenant, id));
    let (code, _first_session) = device_connect(&fleet, &first).await;
    assert_eq!(code, Some(ConnectReturnCode::Success));

    let set = |quota: i64| {
        fleet.call(
            &fleet.owner_key,
            "PATCH",
            "/v1/tenant",
            Some(json!({ "max_device_connections": quota })),
        )
    };
    let changed = set(1).await;
    changed.assert_status(200);
    assert_eq!(changed.json()["max_device_connections"], 1);
    // At once, for the next CONNECT: no cache to wait out.
    let (code, _) = device_connect(&fleet, &second).await;
    assert_eq!(code, Some(ConnectReturnCode::ServiceUnavailable));
    // The connected device reconnecting takes over its own place.
    let (code, _first_again) = device_connect(&fleet, &first).await;
    assert_eq!(code, Some(ConnectReturnCode::Success));
    // Out of range: refused naming the field and the range, nothing changed, nothing audited.
    for quota in [0, -1, 10_000_001] {
        let refused = set(quota).await;
        let problem = refused.assert_problem(422, "invalid-field");
        assert_eq!(problem["field"], "max_device_connections", "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("outside 1 to 10000000"), "{detail}");
    }
    set(2).await.assert_status(200);
    let (code, _second_session) = device_connect(&fleet, &second).await;
    assert_eq!(code, Some(ConnectReturnCode::Success));

    let events = fleet
        .call(
            &fleet.owner_key,
            "GET",
            "/v1/audit-events?action=tenant.settings_update",
            None,
        )
        .await
        .json();
    let changes: Vec<(i64, i64)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let quota = &e["details"]["max_device_connections"];
            (
                quota["from"].as_i64().unwrap(),
                quota["to"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(changes.contains(&(100_000, 1)), "{events}");
    assert!(changes.contains(&(1, 2)), "{events}");
    assert_eq!(changes.len(), 2, "{events}");
    fleet.0.running.shutdown().await.unwrap();
}
