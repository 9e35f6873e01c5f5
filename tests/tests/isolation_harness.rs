//! The isolation harness, API surface: two synthetic tenants, and every route of the OpenAPI
//! document (which a test holds equal to the router's permission table) attacked as tenant A
//! (an owner key, an admin's session) with tenant B's ids, and as a group-scoped key of A with the
//! ids of A's other group, in the path, in every documented query parameter and in the bodies
//! that carry ids. A leak is: an answer other than 404 (or 403 where the role may not call the
//! route at all) for another's object, any of the victim's ids or names in any answer, a server
//! error, or any change to B's rows in any tenant table (a digest of each, found from the
//! catalog, before and after). The harness prints what it tried and fails on any leak.
//!
//! A route it does not know how to attack fails it: a path parameter under an unknown prefix, or
//! a request body it has not been taught. Teach it in `object_kind` or `body_for`.

use std::collections::BTreeMap;

use api::permissions::{Callers, RouteRule, ROUTES};
use fleet_tests::fleet::{Fleet, Session};
use fleet_tests::https::Response;
use serde_json::{json, Value};
use store::api_keys::Role;
use store::audit::Actor;
use store::devices::{self, NewDevice};
use store::enrollment_tokens::{self, NewEnrollmentToken};
use store::{patch_inventory, tenants, users, TenantId};
use time::OffsetDateTime;

/// The objects of one victim: the ids that go into requests, and every text that must never
/// come back to the attacker.
struct Victim {
    label: &'static str,
    device: String,
    group: String,
    group_name: String,
    key: String,
    token: String,
    user: String,
    markers: Vec<String>,
    /// Secrets made for the victim (named), which no log line may hold.
    secrets: Vec<(&'static str, String)>,
}

/// Who attacks, and how it authenticates.
struct Attacker {
    name: &'static str,
    role: Role,
    scoped: bool,
    credential: Credential,
}

enum Credential {
    Key(String),
    Session(Session),
}

/// One finding.
struct Leak {
    surface: &'static str,
    attacker: &'static str,
    request: String,
    what: String,
}

/// What the harness tried, by surface.
#[derive(Default)]
struct Tally {
    attempts: BTreeMap<&'static str, usize>,
    leaks: Vec<Leak>,
}

async fn device_in(app: &store::AppDb, tenant: TenantId, group: &str, name: &str) -> String {
    let mut tx = app.begin(tenant).await.unwrap();
    fleet_tests::ensure_group(&mut tx, group).await;
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
    // Telemetry and a patch inventory, as ingest stores them.
    let now = OffsetDateTime::now_utc();
    let mut records = store::records::NewRecords::default();
    let record = fleet_tests::records::telemetry(1);
    records.push(
        device.id,
        1,
        now,
        now,
        store::records::RecordKind::Telemetry,
        wire::encode_body(&record.body),
    );
    store::records::insert(&mut tx, &records).await.unwrap();
    let report = patch_inventory::PatchReport {
        seq: 2,
        recorded_at: now,
        received_at: now,
        os_id: "debian".into(),
        os_version: "12".into(),
        package_manager: "apt".into(),
        reboot_required: false,
        lists_refreshed_at: None,
        packages: vec![patch_inventory::PackageRow {
            name: format!("{name}-pkg"),
            installed: "1".into(),
            candidate: Some("2".into()),
            security: true,
        }],
    };
    patch_inventory::apply(&mut tx, device.id, report)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    device.id.to_string()
}

async fn group_id(app: &store::AppDb, tenant: TenantId, name: &str) -> String {
    let mut tx = app.begin(tenant).await.unwrap();
    let group = store::device_groups::find_by_name(&mut tx, name)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    group.id.to_string()
}

async fn token_in(app: &store::AppDb, tenant: TenantId, group: &str, name: &str) -> String {
    let mut tx = app.begin(tenant).await.unwrap();
    let token = NewEnrollmentToken {
        name: name.into(),
        allowed_cidrs: vec!["198.51.100.0/24".parse().unwrap()],
        daily_limit: 5,
        max_uses: None,
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(2),
        device_group: group.into(),
        device_labels: BTreeMap::new(),
    };
    let issued = enrollment_tokens::create(&mut tx, &token, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    issued.token.id.to_string()
}

async fn user_in(app: &store::AppDb, tenant: TenantId, email: &str) -> String {
    let mut tx = app.begin(tenant).await.unwrap();
    let (user, _) = users::find_or_create_verified(
        &mut tx,
        &users::Email::parse(email).unwrap(),
        Role::Operator,
        &Actor::System,
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    user.id.to_string()
}

/// Tenant B, with a group, a device with telemetry and patch data, a token, a user and keys.
async fn tenant_b(app: &store::AppDb) -> (TenantId, Victim) {
    let (tenant, owner) = tenants::create_with_owner_key(
        app,
        "globex",
        &store::api_keys::KeyEnv::live(),
        &Actor::System,
    )
    .await
    .unwrap();
    let device = device_in(app, tenant.id, "globex-plant", "globex-press").await;
    let group = group_id(app, tenant.id, "globex-plant").await;
    let token = token_in(app, tenant.id, "globex-plant", "globex-token").await;
    let user = user_in(app, tenant.id, "spy@globex.example").await;
    let key =
        fleet_tests::tenancy::api_key(app, tenant.id, Role::Admin, Some(&["globex-plant"])).await;
    let victim = Victim {
        label: "tenant B",
        // What the attacker never sends: its ids go into requests and may be echoed back in
        // the answer or in A's own audit trail, which tells A nothing it did not know.
        markers: vec![
            tenant.id.to_string(),
            owner.key.id.to_string(),
            "globex-press".into(),
            "globex-token".into(),
            "spy@globex.example".into(),
        ],
        secrets: vec![
            ("B's owner key", owner.secret.expose().to_owned()),
            ("B's admin key", key.secret.expose().to_owned()),
        ],
        device,
        group,
        group_name: "globex-plant".into(),
        key: key.key.id.to_string(),
        token,
        user,
    };
    (tenant.id, victim)
}

/// A's other group, "plant", as the victim of a key scoped to A's "lab".
async fn other_group_of_a(fleet: &Fleet) -> Victim {
    let app = &fleet.running.database().app;
    let device = device_in(app, fleet.tenant, "plant", "plant-press").await;
    let group = group_id(app, fleet.tenant, "plant").await;
    Victim {
        label: "A's other group",
        markers: vec!["plant-press".into()],
        secrets: Vec::new(),
        device,
        group,
        group_name: "plant".into(),
        // Keys, tokens and users are tenant-wide objects, which a scoped caller may not
        // address at all (the permission table): these are A's own, reached through 403s.
        key: String::new(),
        token: String::new(),
        user: String::new(),
    }
}

/// Which object a route's `{id}` names, by its prefix. An unknown prefix fails the harness.
fn object_kind(path: &str) -> &'static str {
    for (prefix, kind) in [
        ("/v1/api-keys/", "key"),
        ("/v1/enrollment-tokens/", "token"),
        ("/v1/device-groups/", "group"),
        ("/v1/users/", "user"),
        ("/v1/devices/", "device"),
    ] {
        if path.starts_with(prefix) {
            return kind;
        }
    }
    panic!("the isolation harness does not know what {path} names: teach object_kind")
}

fn id_of<'a>(victim: &'a Victim, kind: &str) -> &'a str {
    match kind {
        "key" => &victim.key,
        "token" => &victim.token,
        "group" => &victim.group,
        "user" => &victim.user,
        _ => &victim.device,
    }
}

/// The route's path aimed at the victim's object; `{seq}` is tenant-relative (it always names
/// the caller's own chain), so it gets a seq no chain has.
fn path_for(rule: &RouteRule, victim: &Victim) -> String {
    let mut path = rule.path.replace("{seq}", "999999");
    if path.contains("{id}") {
        let id = id_of(victim, object_kind(rule.path));
        // A scoped caller's victim has no tenant-wide objects: its own tenant's fresh id.
        let id = if id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            id.to_owned()
        };
        path = path.replace("{id}", &id);
    }
    path
}

/// The query parameters the OpenAPI document lists for the operation: (name, required).
fn query_parameters(doc: &Value, rule: &RouteRule) -> Vec<(String, bool)> {
    let op = &doc["paths"][rule.path][rule.method.to_lowercase()];
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["required"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// A value for query parameter `name`: the victim's object where the parameter names one,
/// otherwise a valid value, so that validation does not hide the scope check.
fn query_value(name: &str, victim: &Victim) -> String {
    match name {
        "group" | "group_id" => victim.group.clone(),
        "device" | "device_id" => victim.device.clone(),
        "target" => format!("device:{}", victim.device),
        "actor" => format!("api_key:{}", victim.key),
        "metric" => "cpu_usage_percent".into(),
        "from" | "since" => rfc3339(OffsetDateTime::now_utc() - time::Duration::days(1)),
        "to" | "until" => rfc3339(OffsetDateTime::now_utc() + time::Duration::days(1)),
        "bucket" => "1h".into(),
        "label" => format!("site={}", victim.group_name),
        "search" | "q" | "name" => victim.group_name.clone(),
        _ => "1".into(),
    }
}

/// The query string: the required parameters, plus `attacked` (if any) set to the victim's.
fn query_string(doc: &Value, rule: &RouteRule, victim: &Victim, attacked: Option<&str>) -> String {
    let params: Vec<String> = query_parameters(doc, rule)
        .into_iter()
        .filter(|(name, required)| *required || Some(name.as_str()) == attacked)
        .map(|(name, _)| {
            let value = query_value(&name, victim);
            format!("{name}={}", urlencode(&value))
        })
        .collect();
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A body for each route that takes one, carrying the victim's ids wherever the body can name
/// an object. A route with a request body not taught here fails the harness.
fn body_for(doc: &Value, rule: &RouteRule, victim: &Victim, run: usize) -> Option<Value> {
    let op = &doc["paths"][rule.path][rule.method.to_lowercase()];
    op.get("requestBody")?;
    let expires = rfc3339(OffsetDateTime::now_utc() + time::Duration::days(1));
    let body = match (rule.method, rule.path) {
        ("PATCH", "/v1/tenant") => json!({ "record_retention_days": 30 }),
        ("POST", "/v1/audit-events/{seq}/erase") => json!({ "reason": "isolation harness" }),
        ("POST", "/v1/api-keys") => json!({
            "name": format!("stolen-{run}"), "role": "auditor", "group_ids": [victim.group],
        }),
        ("POST", "/v1/enrollment-tokens") => json!({
            "name": format!("stolen-{run}"), "allowed_cidrs": ["127.0.0.0/8"], "daily_limit": 1,
            "expires_at": expires, "device_group": victim.group_name,
        }),
        ("POST", "/v1/device-groups") => json!({ "name": victim.group_name }),
        ("PATCH", "/v1/device-groups/{id}") => json!({ "name": format!("renamed-{run}") }),
        ("PATCH", "/v1/devices/{id}") => json!({ "group": victim.group_name }),
        ("PATCH", "/v1/users/{id}") => json!({ "role": "auditor", "group_ids": [victim.group] }),
        ("POST", "/v1/invitations") => json!({
            "email": format!("invited-{run}@acme.example"), "role": "auditor",
            "group_ids": [victim.group],
        }),
        ("PUT", "/v1/tenant/sso") => json!({
            "issuer": "https://idp.example.com", "client_id": "fleet", "client_secret": "s",
        }),
        (method, path) => panic!(
            "the isolation harness has no body for {method} {path}: teach body_for, putting the \
             victim's ids wherever the body can name an object"
        ),
    };
    Some(body)
}

/// The session-only routes that act on the caller's own session: nothing of another tenant or
/// group can be named in them. Their GETs are still scanned for the victim's markers.
fn acts_on_own_session_only(rule: &RouteRule) -> bool {
    rule.callers == Callers::SessionsOnly && rule.method != "GET"
}

async fn send(
    fleet: &Fleet,
    attacker: &Attacker,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Response {
    match &attacker.credential {
        Credential::Key(key) => {
            let auth = format!("Bearer {key}");
            fleet
                .send(method, path, &[("Authorization", &auth)], body)
                .await
        }
        Credential::Session(session) => fleet.as_session(session, true, method, path, body).await,
    }
}

/// Counts, as surface "secrets in logs", whether the log lines captured in this test binary
/// (every level from DEBUG, every test of the file) hold any of `secrets`.
fn check_logs(tally: &mut Tally, secrets: &[(&'static str, String)]) {
    let logged = fleet_tests::logs::capture_logs().text();
    assert!(logged.len() > 1_000, "the log capture is live");
    for (name, secret) in secrets {
        assert!(secret.len() >= 8, "{name} is a real secret");
        let leaked = logged
            .contains(secret.as_str())
            .then(|| "logged".to_owned());
        tally.record("secrets in logs", "logs", (*name).to_owned(), leaked);
    }
}

/// Every tenant table (every public table with a `tenant_id` column, from the catalog): the
/// number and digest of `tenant`'s rows, read as the owner.
async fn digest(test_db: &fleet_tests::TestDb, tenant: TenantId) -> BTreeMap<String, String> {
    let mut owner = test_db.connect_as_owner().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
          WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
            AND a.attname = 'tenant_id' AND NOT a.attisdropped
          ORDER BY 1",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert!(tables.len() >= 15, "tenant tables: {tables:?}");
    let mut digests = BTreeMap::new();
    for table in tables {
        let row: (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))
               FROM public.{table} t WHERE tenant_id = $1"
        ))
        .bind(tenant)
        .fetch_one(&mut owner)
        .await
        .unwrap();
        digests.insert(table, format!("{} rows, md5 {}", row.0, row.1));
    }
    digests
}

/// What an attack must get back, beyond no server error and none of the victim's markers.
#[derive(Clone, Copy)]
enum Expect {
    /// The role or scope may not call the route at all.
    Forbidden,
    /// The route names the victim's object: it does not exist for the attacker.
    NotFound,
    /// The route names no object (a list, a summary, a create): anything but a leak.
    NoLeak,
}

impl Expect {
    fn of(rule: &RouteRule, attacker: &Attacker) -> Self {
        if !rule.allows(attacker.role, attacker.scoped) {
            Expect::Forbidden
        } else if rule.path.contains("{id}") || rule.path.contains("{seq}") {
            Expect::NotFound
        } else {
            Expect::NoLeak
        }
    }
}

impl Tally {
    /// Counts one attempt on `surface`, and a leak when `leaked` says what leaked.
    fn record(
        &mut self,
        surface: &'static str,
        attacker: &'static str,
        request: String,
        leaked: Option<String>,
    ) {
        *self.attempts.entry(surface).or_default() += 1;
        if let Some(what) = leaked {
            self.leaks.push(Leak {
                surface,
                attacker,
                request,
                what,
            });
        }
    }

    /// Prints the attempts and leaks by surface; fails when there is any leak.
    fn report(&self, title: &str) {
        println!("isolation harness, {title}");
        for (surface, attempts) in &self.attempts {
            let leaks = self.leaks.iter().filter(|l| l.surface == *surface).count();
            println!("  {surface:<24} {attempts:>5} attempts, {leaks} leaks");
        }
        for leak in &self.leaks {
            println!(
                "  LEAK [{}] {} via {}: {}",
                leak.surface, leak.attacker, leak.request, leak.what
            );
        }
        assert!(
            self.leaks.is_empty(),
            "{} leaks found (listed above)",
            self.leaks.len()
        );
    }

    fn check(
        &mut self,
        surface: &'static str,
        attacker: &Attacker,
        victim: &Victim,
        request: String,
        answer: &Response,
        expect: Expect,
    ) {
        *self.attempts.entry(surface).or_default() += 1;
        let mut leak = |what: String| {
            self.leaks.push(Leak {
                surface,
                attacker: attacker.name,
                request: request.clone(),
                what,
            })
        };
        if answer.status >= 500 {
            leak(format!("server error {}: {}", answer.status, answer.text()));
        }
        let expected = match expect {
            Expect::Forbidden => Some(403),
            Expect::NotFound => Some(404),
            Expect::NoLeak => None,
        };
        if let Some(expected) = expected.filter(|e| *e != answer.status) {
            leak(format!(
                "{} for {}'s object (expected {expected}): {}",
                answer.status,
                victim.label,
                answer.text()
            ));
        }
        let text = answer.text();
        for marker in &victim.markers {
            if text.contains(marker.as_str()) {
                leak(format!("the answer shows {}'s {marker:?}", victim.label));
            }
        }
    }
}

/// Every route, every way, as `attacker` against `victim`.
async fn attack(
    fleet: &Fleet,
    doc: &Value,
    attacker: &Attacker,
    victim: &Victim,
    tally: &mut Tally,
    run: &mut usize,
) {
    let session = matches!(attacker.credential, Credential::Session(_));
    for rule in ROUTES.iter().filter(|r| r.callers != Callers::Anonymous) {
        if !rule.takes(session) || (session && acts_on_own_session_only(rule)) {
            continue;
        }
        *run += 1;
        let expect = Expect::of(rule, attacker);
        // The path.
        let path = format!(
            "{}{}",
            path_for(rule, victim),
            query_string(doc, rule, victim, None)
        );
        let body = body_for(doc, rule, victim, *run);
        let answer = send(fleet, attacker, rule.method, &path, body.clone()).await;
        let surface = if body.is_some() { "path+body" } else { "path" };
        let request = format!(
            "{} {path} {}",
            rule.method,
            body.clone().unwrap_or_default()
        );
        tally.check(surface, attacker, victim, request, &answer, expect);
        // Each documented query parameter set to the victim's object (reads only: a write's
        // query has no parameters today, and the path attack covers it).
        if rule.method != "GET" {
            continue;
        }
        // A cursor is opaque, issued by the server for its own list: nothing to aim.
        for (name, _) in query_parameters(doc, rule)
            .into_iter()
            .filter(|(name, _)| name != "cursor")
        {
            let path = format!(
                "{}{}",
                path_for(rule, victim),
                query_string(doc, rule, victim, Some(&name))
            );
            let answer = send(fleet, attacker, "GET", &path, None).await;
            let request = format!("GET {path}");
            tally.check("query", attacker, victim, request, &answer, expect);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_lets_tenant_a_or_a_group_scoped_caller_reach_another_tenants_or_groups_data() {
    let fleet = Fleet::start().await;
    let app = fleet.running.database().app.clone();
    let doc = serde_json::to_value(api::openapi()).unwrap();
    let (b, victim_b) = tenant_b(&app).await;
    device_in(&app, fleet.tenant, "lab", "lab-press").await;
    let victim_plant = other_group_of_a(&fleet).await;
    let lab = group_id(&app, fleet.tenant, "lab").await;

    let admin = fleet.person("admin@acme.example", "admin").await;
    let scoped_operator =
        fleet_tests::tenancy::api_key(&app, fleet.tenant, Role::Operator, Some(&["lab"])).await;
    let scoped_admin = fleet
        .person_in_groups("lab-admin@acme.example", "admin", Some(&[lab.as_str()]))
        .await;
    let against_b = [
        Attacker {
            name: "A's owner key",
            role: Role::Owner,
            scoped: false,
            credential: Credential::Key(fleet.owner_key.clone()),
        },
        Attacker {
            name: "A's admin session",
            role: Role::Admin,
            scoped: false,
            credential: Credential::Session(admin.session.clone()),
        },
    ];
    let against_plant = [
        Attacker {
            name: "A's operator key scoped to lab",
            role: Role::Operator,
            scoped: true,
            credential: Credential::Key(scoped_operator.secret.expose().to_owned()),
        },
        Attacker {
            name: "A's admin session scoped to lab",
            role: Role::Admin,
            scoped: true,
            credential: Credential::Session(scoped_admin.session.clone()),
        },
    ];

    let before = digest(&fleet.db, b).await;
    let mut tally = Tally::default();
    let mut run = 0;
    for attacker in &against_b {
        attack(&fleet, &doc, attacker, &victim_b, &mut tally, &mut run).await;
    }
    for attacker in &against_plant {
        attack(&fleet, &doc, attacker, &victim_plant, &mut tally, &mut run).await;
        // A scoped caller is another tenant's attacker too.
        attack(&fleet, &doc, attacker, &victim_b, &mut tally, &mut run).await;
    }
    let after = digest(&fleet.db, b).await;
    for (table, was) in &before {
        let changed = (after.get(table) != Some(was))
            .then(|| format!("{was} before, {:?} after", after.get(table)));
        tally.record(
            "B's rows unchanged",
            "all",
            format!("table {table}"),
            changed,
        );
    }

    let mut secrets = victim_b.secrets.clone();
    secrets.extend([
        ("A's owner key", fleet.owner_key.clone()),
        (
            "A's scoped operator key",
            scoped_operator.secret.expose().to_owned(),
        ),
        ("a password", fleet_tests::fleet::PASSWORD.to_owned()),
    ]);
    for person in [&admin, &scoped_admin] {
        secrets.push(("a session cookie", person.session.cookie.clone()));
        secrets.push(("a CSRF token", person.session.csrf.clone()));
        secrets.extend(person.totp.clone().map(|t| ("a TOTP secret", t)));
        secrets.extend(
            person
                .recovery_codes
                .iter()
                .map(|c| ("a recovery code", c.clone())),
        );
    }
    check_logs(&mut tally, &secrets);
    tally.report(&format!("API surface: {} routes", ROUTES.len()));
    fleet.running.shutdown().await.unwrap();
}

/// How long a refused attempt may take, and how long the harness waits for what must not come.
const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
const QUIET: std::time::Duration = std::time::Duration::from_millis(1_500);

/// The broker's answer to one connection attempt.
#[derive(Debug, PartialEq)]
enum Connected {
    /// CONNACK success, then these SUBACK codes; then the connection ended or stayed up.
    Subscribed(Vec<rumqttc::SubscribeReasonCode>),
    /// CONNACK refused with this code.
    Refused(rumqttc::ConnectReturnCode),
    /// The server closed the connection after CONNACK (a refused PUBLISH).
    Closed,
    /// Still up after the publish, with nothing refused.
    StillUp,
}

/// Connects with `options`, then subscribes to `filters` (if any) or publishes `publish` (if
/// any), and reports what the broker did. Every message that arrives is kept in `received`.
async fn broker_attempt(
    options: rumqttc::MqttOptions,
    filters: &[String],
    publish: Option<(String, bool)>,
    received: &mut Vec<String>,
) -> Connected {
    use rumqttc::{ConnectionError, Event, Packet, QoS};
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    for filter in filters {
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    if let Some((topic, retain)) = &publish {
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                *retain,
                fleet_tests::records::telemetry_batch(1..=1),
            )
            .await
            .unwrap();
    }
    let mut codes = Vec::new();
    let outcome = tokio::time::timeout(BROKER_TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack)))
                    if ack.code != rumqttc::ConnectReturnCode::Success =>
                {
                    return Connected::Refused(ack.code)
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    codes.extend(suback.return_codes);
                    if codes.len() == filters.len() && publish.is_none() {
                        return Connected::Subscribed(codes.clone());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => received.push(p.topic),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Connected::Refused(code),
                Err(_) => return Connected::Closed,
            }
        }
    })
    .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(_) if publish.is_some() => Connected::StillUp,
        Err(_) => panic!("no answer from the broker within {BROKER_TIMEOUT:?}"),
    };
    // What a granted subscription would deliver meanwhile.
    if matches!(outcome, Connected::Subscribed(_)) {
        let _ = tokio::time::timeout(QUIET, async {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    received.push(p.topic);
                }
            }
        })
        .await;
    }
    client.disconnect().await.ok();
    outcome
}

/// The first base64 line of a PEM document: what any logged copy of the key would contain.
fn pem_body(pem: &str) -> String {
    pem.lines().nth(1).expect("a PEM body").to_owned()
}

/// An API-key (live stream) client of the broker: TLS without a client certificate.
fn stream_options(
    fleet: &Fleet,
    client_id: &str,
    key: &store::api_keys::IssuedKey,
) -> rumqttc::MqttOptions {
    let addr = fleet.running.broker_addr().expect("the embedded broker");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(fleet.running.pki().issuing_ca.root_der().clone())
        .unwrap();
    let tls = certs::tls::client_builder(roots)
        .unwrap()
        .with_no_client_auth();
    let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    options.set_credentials(key.key.id.as_str(), key.secret.expose());
    options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        std::sync::Arc::new(tls),
    )));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_or_stream_key_of_tenant_a_reaches_tenant_bs_topics_or_records() {
    use fleet_tests::mqtt::DeviceCredentials;
    use rumqttc::{ConnectReturnCode, LastWill, QoS, SubscribeReasonCode};
    use wire::topic;

    let fleet = Fleet::start().await;
    let app = fleet.running.database().app.clone();
    let ca = &fleet.running.pki().issuing_ca;
    let addr = fleet.running.broker_addr().expect("the embedded broker");
    let b = fleet_tests::tenancy::tenant(&app, "globex").await;
    let b1 = fleet_tests::tenancy::add_device_in_group(&app, b, "globex-plant").await;
    let a1 = fleet_tests::tenancy::add_device_in_group(&app, fleet.tenant, "lab").await;
    let a1_creds = DeviceCredentials::issued(ca, fleet.tenant, a1);
    let b1_creds = DeviceCredentials::issued(ca, b, b1);
    let a_options = || a1_creds.options(ca.root_der(), addr.ip().to_string(), addr.port());
    let a_key = fleet_tests::tenancy::api_key(&app, fleet.tenant, Role::Auditor, None).await;
    let b_key = fleet_tests::tenancy::api_key(&app, b, Role::Auditor, None).await;
    let mut tally = Tally::default();
    let mut a_received = Vec::new();
    let leak_unless = |ok: bool, what: &dyn Fn() -> String| (!ok).then(what);

    // Subscriptions: a device may hold only its own down topics; everything else is refused.
    let own = topic::device_subscription(a1);
    let foreign = [
        topic::ack(b1),
        topic::command(b1),
        topic::device_subscription(b1),
        topic::telemetry(b1),
        format!("{}/{b1}/#", topic::ROOT),
        format!("{}/+/down/#", topic::ROOT),
        format!("{}/#", topic::ROOT),
        "#".into(),
        "+/#".into(),
        "$share/harness/fleet/v1/+/up/#".into(),
        "$share/harness/#".into(),
        "$SYS/#".into(),
        format!("fleet/v1/stream/{b}/#"),
        "fleet/v1/stream/+/#".into(),
        "fleet/v1/stream/#".into(),
    ];
    let mut device_filters = vec![own.clone()];
    device_filters.extend(foreign.iter().cloned());
    let answer = broker_attempt(a_options(), &device_filters, None, &mut a_received).await;
    let Connected::Subscribed(codes) = answer else {
        panic!("A's device was not admitted: {answer:?}");
    };
    assert_eq!(
        codes[0],
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "its own topics"
    );
    for (filter, code) in foreign.iter().zip(&codes[1..]) {
        let leaked = leak_unless(*code == SubscribeReasonCode::Failure, &|| {
            format!("granted {code:?}")
        });
        tally.record(
            "device subscribe",
            "A's device",
            format!("SUBSCRIBE {filter}"),
            leaked,
        );
    }

    // Publishes (plain and retained) to B's topics and to topics no device may write: the
    // connection is closed.
    let publishes = [
        topic::telemetry(b1),
        topic::patch_status(b1),
        topic::events(b1),
        topic::presence(b1),
        topic::ack(b1),
        topic::command(b1),
        format!("fleet/v1/stream/{b}/{b1}/telemetry"),
        "$SYS/broker/clients".into(),
    ];
    for publish in &publishes {
        for retain in [false, true] {
            let answer = broker_attempt(
                a_options(),
                &[],
                Some((publish.clone(), retain)),
                &mut a_received,
            )
            .await;
            let leaked = leak_unless(answer == Connected::Closed, &|| format!("{answer:?}"));
            let request = format!("PUBLISH {publish} retain={retain}");
            tally.record("device publish", "A's device", request, leaked);
        }
    }

    // A will on B's topic, and B's device id as the client id: CONNACK refused.
    let mut options = a_options();
    options.set_last_will(LastWill::new(
        topic::telemetry(b1),
        "x",
        QoS::AtLeastOnce,
        false,
    ));
    let answer = broker_attempt(options, std::slice::from_ref(&own), None, &mut a_received).await;
    let leaked = leak_unless(matches!(answer, Connected::Refused(_)), &|| {
        format!("{answer:?}")
    });
    tally.record(
        "device will",
        "A's device",
        format!("WILL {}", topic::telemetry(b1)),
        leaked,
    );
    let mut options = a_options();
    options.set_client_id(b1.to_string());
    let answer = broker_attempt(options, std::slice::from_ref(&own), None, &mut a_received).await;
    let leaked = leak_unless(
        answer == Connected::Refused(ConnectReturnCode::BadClientId),
        &|| format!("{answer:?}"),
    );
    tally.record(
        "device client id",
        "A's device",
        format!("CONNECT client_id={b1}"),
        leaked,
    );

    // A's stream key: B's stream, wildcards across tenants and device topics are refused; its
    // own tenant's stream is granted (and must carry nothing of B).
    let mut stream_received = Vec::new();
    let own_stream = format!("fleet/v1/stream/{}/#", fleet.tenant);
    let foreign_stream = [
        format!("fleet/v1/stream/{b}/#"),
        format!("fleet/v1/stream/{b}/{b1}/telemetry"),
        "fleet/v1/stream/+/#".into(),
        "fleet/v1/stream/#".into(),
        "#".into(),
        topic::telemetry(b1),
        "$share/harness/fleet/v1/+/up/#".into(),
        "$SYS/#".into(),
    ];
    let mut filters = vec![own_stream.clone()];
    filters.extend(foreign_stream.iter().cloned());
    let (a_stream, mut a_stream_events) =
        rumqttc::AsyncClient::new(stream_options(&fleet, "a-integration", &a_key), 16);
    for filter in &filters {
        a_stream.subscribe(filter, QoS::AtMostOnce).await.unwrap();
    }
    let mut codes = Vec::new();
    tokio::time::timeout(BROKER_TIMEOUT, async {
        while codes.len() < filters.len() {
            match a_stream_events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s))) => {
                    codes.extend(s.return_codes)
                }
                Ok(_) => {}
                Err(e) => panic!("A's stream session ended: {e}"),
            }
        }
    })
    .await
    .expect("SUBACKs for A's stream key");
    assert_eq!(
        codes[0],
        SubscribeReasonCode::Success(QoS::AtMostOnce),
        "its own stream"
    );
    for (filter, code) in foreign_stream.iter().zip(&codes[1..]) {
        let leaked = leak_unless(*code == SubscribeReasonCode::Failure, &|| {
            format!("granted {code:?}")
        });
        tally.record(
            "stream subscribe",
            "A's stream key",
            format!("SUBSCRIBE {filter}"),
            leaked,
        );
    }
    // B's device id as a stream client's id changes nothing for B's device (below).
    let answer = broker_attempt(
        stream_options(&fleet, &b1.to_string(), &a_key),
        std::slice::from_ref(&own_stream),
        None,
        &mut stream_received,
    )
    .await;
    let leaked = leak_unless(
        matches!(answer, Connected::Subscribed(_) | Connected::Refused(_)),
        &|| format!("{answer:?}"),
    );
    tally.record(
        "stream client id",
        "A's stream key",
        format!("CONNECT client_id={b1}"),
        leaked,
    );

    // A's device, subscribed to every filter again (after its other attempts, which would take
    // over its session), listens while B's device reports: whatever a wrongly granted filter
    // delivers is caught.
    let listened = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (listener, mut listener_events) = rumqttc::AsyncClient::new(a_options(), 16);
    for filter in &device_filters {
        listener.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    let heard = listened.clone();
    let listening = tokio::spawn(async move {
        while let Ok(event) = listener_events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                heard.lock().unwrap().push(p.topic);
            }
        }
    });

    // Then B's device reports and B's own stream sees it (so the silence on A's side means
    // something), while A's stream, still subscribed, gets nothing of B.
    let (b_stream, mut b_stream_events) =
        rumqttc::AsyncClient::new(stream_options(&fleet, "b-integration", &b_key), 16);
    b_stream
        .subscribe(format!("fleet/v1/stream/{b}/#"), QoS::AtMostOnce)
        .await
        .unwrap();
    let granted = tokio::time::timeout(BROKER_TIMEOUT, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s))) =
                b_stream_events.poll().await
            {
                return s.return_codes;
            }
        }
    })
    .await
    .expect("SUBACK for B's stream key");
    assert_eq!(granted, [SubscribeReasonCode::Success(QoS::AtMostOnce)]);
    let b1_options = b1_creds.options(ca.root_der(), addr.ip().to_string(), addr.port());
    let (b1_client, mut b1_events) =
        fleet_tests::mqtt::connect_subscribed(b1_options, topic::ack(b1), BROKER_TIMEOUT).await;
    b1_client
        .publish(
            topic::telemetry(b1),
            QoS::AtLeastOnce,
            false,
            fleet_tests::records::telemetry_batch(1..=3),
        )
        .await
        .unwrap();
    fleet_tests::mqtt::wait_for_ack(&mut b1_events, 3, BROKER_TIMEOUT).await;
    let b_seen = tokio::time::timeout(BROKER_TIMEOUT, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) =
                b_stream_events.poll().await
            {
                return p.topic;
            }
        }
    })
    .await
    .expect("B's own stream carries B's record");
    assert!(
        b_seen.starts_with(&format!("fleet/v1/stream/{b}/{b1}/")),
        "{b_seen}"
    );
    let _ = tokio::time::timeout(QUIET, async {
        while let Ok(event) = a_stream_events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                stream_received.push(p.topic);
            }
        }
    })
    .await;
    listening.abort();
    a_received.extend(listened.lock().unwrap().iter().cloned());
    drop(listener);
    for (who, received) in [
        ("A's device", &a_received),
        ("A's stream key", &stream_received),
    ] {
        let of_b: Vec<&String> = received
            .iter()
            .filter(|t| t.contains(&b.to_string()) || t.contains(&b1.to_string()))
            .collect();
        let leaked = leak_unless(of_b.is_empty(), &|| format!("received {of_b:?}"));
        tally.record("deliveries", who, "every message received".into(), leaked);
    }
    // Nothing A published reached B's records: only B's own three.
    let mut tx = app.begin(b).await.unwrap();
    let stored = store::records::count(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    tally.record(
        "B's records",
        "all",
        "device_records of B".into(),
        leak_unless(stored == 3, &|| format!("{stored} rows, 3 expected")),
    );
    b1_client.disconnect().await.ok();
    check_logs(
        &mut tally,
        &[
            ("A's stream key", a_key.secret.expose().to_owned()),
            ("B's stream key", b_key.secret.expose().to_owned()),
            (
                "A's device private key",
                pem_body(&a1_creds.key.serialize_pem()),
            ),
            (
                "B's device private key",
                pem_body(&b1_creds.key.serialize_pem()),
            ),
        ],
    );
    tally.report("broker and live streams");
    fleet.running.shutdown().await.unwrap();
}

/// `POST /v1/enroll` with `token` and a fresh CSR, from the loopback address `source`.
async fn enroll_from(fleet: &Fleet, source: [u8; 4], token: &str) -> Response {
    let (_key, csr) = fleet_tests::device::key_and_csr();
    let body = json!({ "token": token, "csr": csr }).to_string();
    fleet_tests::https::https_request_from(
        std::net::IpAddr::from(source),
        fleet.running.api_addr(),
        &fleet.running.pki().issuing_ca,
        "POST",
        "/v1/enroll",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// A token string of `tenant` and `token` carrying `secret_from`'s secret, with a valid
/// checksum, so only the lookup can refuse it.
fn forged_token(tenant: &str, token: &str, secret_from: &str) -> String {
    let prefix = store::enrollment_tokens::secret::TOKEN_PREFIX;
    let secret_at = prefix.len() + 32 + 1 + 32 + 1;
    let secret = &secret_from[secret_at..secret_from.len() - store::credentials::CHECKSUM_LEN];
    let body = format!("{prefix}{tenant}_{token}_{secret}");
    let sum = store::credentials::checksum(&body);
    format!("{body}{}", String::from_utf8_lossy(&sum))
}

async fn new_token(
    app: &store::AppDb,
    tenant: TenantId,
    group: &str,
    cidrs: &[&str],
    daily_limit: u32,
) -> enrollment_tokens::IssuedToken {
    let mut tx = app.begin(tenant).await.unwrap();
    fleet_tests::ensure_group(&mut tx, group).await;
    let token = NewEnrollmentToken {
        name: format!("{group}-token"),
        allowed_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        daily_limit,
        max_uses: Some(10),
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(1),
        device_group: group.into(),
        device_labels: BTreeMap::new(),
    };
    let issued = enrollment_tokens::create(&mut tx, &token, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    issued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_hold_their_limits_and_never_open_another_tenant() {
    let fleet = Fleet::start().await;
    let app = fleet.running.database().app.clone();
    let b = fleet_tests::tenancy::tenant(&app, "globex").await;
    let a_token = new_token(&app, fleet.tenant, "lab", &["127.0.0.0/24"], 2).await;
    let b_token = new_token(&app, b, "globex-plant", &["127.0.0.0/8"], 100).await;
    let expired = new_token(&app, fleet.tenant, "lab", &["127.0.0.0/8"], 100).await;
    let mut owner = fleet.db.connect_as_owner().await;
    sqlx::query(
        "UPDATE enrollment_tokens SET expires_at = now() - interval '1 second' WHERE token_id = $1",
    )
    .bind(expired.token.id)
    .execute(&mut owner)
    .await
    .unwrap();
    let revoked = new_token(&app, fleet.tenant, "lab", &["127.0.0.0/8"], 100).await;
    let mut tx = app.begin(fleet.tenant).await.unwrap();
    enrollment_tokens::revoke(&mut tx, revoked.token.id, &Actor::System)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let b_before = digest(&fleet.db, b).await;

    let a_secret = a_token.secret.expose();
    let b_secret = b_token.secret.expose();
    let (a_tenant, a_id) = (&a_secret[4..36], &a_secret[37..69]);
    let (b_tenant, b_id) = (&b_secret[4..36], &b_secret[37..69]);
    assert_eq!(a_tenant, fleet.tenant.0.simple().to_string());
    let random = forged_token(
        &uuid::Uuid::new_v4().simple().to_string(),
        &uuid::Uuid::new_v4().simple().to_string(),
        a_secret,
    );
    let unknown = enroll_from(&fleet, [127, 0, 0, 30], &random).await;
    unknown.assert_status(401);

    let mut tally = Tally::default();
    let cases: Vec<(&str, [u8; 4], String, Option<u16>)> = vec![
        (
            "within its CIDR and limits",
            [127, 0, 0, 11],
            a_secret.to_owned(),
            Some(201),
        ),
        (
            "from outside its CIDR",
            [127, 0, 1, 12],
            a_secret.to_owned(),
            Some(403),
        ),
        (
            "second of its daily 2",
            [127, 0, 0, 13],
            a_secret.to_owned(),
            Some(201),
        ),
        (
            "over its daily limit",
            [127, 0, 0, 14],
            a_secret.to_owned(),
            Some(429),
        ),
        (
            "expired",
            [127, 0, 0, 15],
            expired.secret.expose().to_owned(),
            Some(410),
        ),
        (
            "revoked",
            [127, 0, 0, 16],
            revoked.secret.expose().to_owned(),
            Some(410),
        ),
        // Another tenant's ids with A's secret: answered exactly as an unknown token.
        (
            "B's tenant and token id, A's secret",
            [127, 0, 0, 17],
            forged_token(b_tenant, b_id, a_secret),
            None,
        ),
        (
            "A's tenant, B's token id",
            [127, 0, 0, 18],
            forged_token(a_tenant, b_id, a_secret),
            None,
        ),
        (
            "B's tenant, A's token id",
            [127, 0, 0, 19],
            forged_token(b_tenant, a_id, a_secret),
            None,
        ),
    ];
    for (case, source, token, expected) in cases {
        let answer = enroll_from(&fleet, source, &token).await;
        let leaked = match expected {
            Some(status) => (answer.status != status)
                .then(|| format!("{} (expected {status}): {}", answer.status, answer.text())),
            None => (answer.status != unknown.status || answer.body != unknown.body).then(|| {
                format!(
                    "answered {} {} where an unknown token gets {} {}",
                    answer.status,
                    answer.text(),
                    unknown.status,
                    unknown.text()
                )
            }),
        };
        tally.record(
            "enrollment token",
            "a device with A's token",
            case.into(),
            leaked,
        );
    }
    let enrolled: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE tenant_id = $1")
        .bind(fleet.tenant)
        .fetch_one(&mut owner)
        .await
        .unwrap();
    tally.record(
        "enrollment token",
        "all",
        "devices enrolled into A".into(),
        (enrolled != 2).then(|| format!("{enrolled}, 2 expected")),
    );
    let changed = digest(&fleet.db, b).await != b_before;
    tally.record(
        "B's rows unchanged",
        "all",
        "every tenant table".into(),
        changed.then(|| "B's rows changed".into()),
    );
    check_logs(
        &mut tally,
        &[
            ("A's enrollment token", a_secret.to_owned()),
            ("B's enrollment token", b_secret.to_owned()),
            ("an expired token", expired.secret.expose().to_owned()),
            ("a revoked token", revoked.secret.expose().to_owned()),
        ],
    );
    tally.report("enrollment tokens");
    fleet.running.shutdown().await.unwrap();
}

/// The SQLSTATE of a statement's error, or `None` when it succeeded.
fn sqlstate<T>(result: &Result<T, sqlx::Error>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some(e.code().map(|c| c.into_owned()).unwrap_or_default()),
        Err(e) => panic!("not a database error: {e}"),
    }
}

/// How to call a `SECURITY DEFINER` function with B's ids (as the application role, tenant A
/// set), and why what it returns is what it may return. A function not listed here fails the
/// harness: teach it here.
fn definer_call(name: &str) -> (&'static str, &'static str) {
    match name {
        "fleet_audit_checkpoints_due" | "fleet_audit_prune_due" => (
            "SELECT x::text FROM public.{name}(100000) x",
            "tenant ids only, for fleetd's tasks, which then work in each tenant's own transaction",
        ),
        "fleet_siem_tenants" => (
            "SELECT x::text FROM public.{name}() x",
            "tenant ids only, of the tenants that opted in",
        ),
        "fleet_audit_erase" => (
            "SELECT public.{name}(1, 2)::text",
            "works on the transaction's tenant only, through the erasure trigger",
        ),
        "fleet_audit_prune" => (
            "SELECT x::text FROM public.{name}() x",
            "works on the transaction's tenant only",
        ),
        "fleet_device_directory" => (
            "SELECT x::text FROM public.{name}(ARRAY['{b_device}']::uuid[]) x",
            "the device gateway's admission: tenant and state of a presented device id, no names",
        ),
        "fleet_tenant_by_name" => (
            "SELECT x::text FROM public.{name}('globex') x",
            "sign-in and fleetctl find a tenant by its name: its id only",
        ),
        "fleet_api_key_locate" => (
            "SELECT x::text FROM public.{name}('{b_key}') x",
            "one fingerprint, computable only from the whole key: tenant and key id only",
        ),
        "fleet_tenant_name_taken" => (
            "SELECT public.{name}('globex')::text",
            "whether a tenant name is taken (names are one namespace): yes or no",
        ),
        "fleet_certificate_revocations" => (
            "SELECT x::text FROM public.{name}('0 seconds'::interval) x",
            "the CRL's revoked serials and times, which the CRL publishes anyway",
        ),
        "fleet_last_backup_verification" => (
            "SELECT x::text FROM public.{name}() x",
            "the installation's last backup verification: no tenant's data",
        ),
        "fleet_delete_expired_records" => (
            "SELECT public.{name}(1000)::text",
            "retention: deletes only rows past their tenant's retention (B's are new)",
        ),
        "fleet_ensure_record_partitions" => (
            "SELECT public.{name}(1)::text",
            "creates next weeks' record partitions: no rows",
        ),
        "fleet_drop_expired_record_partitions" => (
            "SELECT public.{name}(1)::text",
            "drops only partitions wholly past every tenant's retention",
        ),
        other => panic!(
            "the isolation harness does not know how to call the definer function {other} with \
             another tenant's ids: teach definer_call"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_application_role_tenant_a_reaches_no_row_of_b_in_any_table_or_definer_function() {
    let fleet = Fleet::start().await;
    let app = fleet.running.database().app.clone();
    let (b, victim) = tenant_b(&app).await;
    let before = digest(&fleet.db, b).await;
    let mut owner = fleet.db.connect_as_owner().await;
    let mut app_conn = fleet.db.connect_as_app().await;
    fleet_tests::tenancy::set_tenant(&mut app_conn, fleet.tenant).await;
    let mut tally = Tally::default();

    for table in before.keys() {
        let count = sqlx::query_scalar::<_, i64>(&format!(
            "SELECT count(*) FROM public.{table} WHERE tenant_id = $1"
        ))
        .bind(b)
        .fetch_one(&mut app_conn)
        .await;
        let leaked = match (&count, sqlstate(&count)) {
            (Ok(0), _) => None,
            (_, Some(code)) if code == "42501" => None,
            (Ok(n), _) => Some(format!("{n} of B's rows readable")),
            (_, code) => Some(format!("SQLSTATE {code:?}")),
        };
        tally.record(
            "SQL select",
            "app role as A",
            format!("SELECT {table}"),
            leaked,
        );
        for statement in [
            format!("UPDATE public.{table} SET tenant_id = tenant_id WHERE tenant_id = $1"),
            format!("DELETE FROM public.{table} WHERE tenant_id = $1"),
        ] {
            let done = sqlx::query(&statement).bind(b).execute(&mut app_conn).await;
            let leaked = match (&done, sqlstate(&done)) {
                (Ok(r), _) if r.rows_affected() == 0 => None,
                // No privilege at all, or the append-only triggers refusing every change.
                (_, Some(code)) if code == "42501" => None,
                (Ok(r), _) => Some(format!("{} of B's rows changed", r.rows_affected())),
                (_, code) => Some(format!("SQLSTATE {code:?}")),
            };
            tally.record("SQL update/delete", "app role as A", statement, leaked);
        }
        // One of B's own rows inserted again as A: refused by the policy (or the grants) before
        // any unique index could say whether it exists.
        let row: Option<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM public.{table} t WHERE tenant_id = $1 LIMIT 1"
        ))
        .bind(b)
        .fetch_optional(&mut owner)
        .await
        .unwrap();
        if let Some(row) = row {
            let insert = format!(
                "INSERT INTO public.{table} SELECT * FROM json_populate_record(NULL::public.{table}, $1::json)"
            );
            let done = sqlx::query(&insert).bind(&row).execute(&mut app_conn).await;
            let leaked = match sqlstate(&done) {
                Some(code) if code == "42501" => None,
                code => Some(format!("SQLSTATE {code:?} (expected 42501)")),
            };
            tally.record(
                "SQL insert",
                "app role as A",
                format!("INSERT {table}"),
                leaked,
            );
        }
    }

    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p
          WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef ORDER BY 1",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert!(functions.len() >= 8, "definer functions: {functions:?}");
    let secrets = ["globex-press", "globex-token", "spy@globex.example"];
    for name in &functions {
        let (call, why) = definer_call(name);
        let sql = call
            .replace("{name}", name)
            .replace("{b_device}", &victim.device)
            .replace("{b_key}", &victim.key);
        let rows: Result<Vec<Option<String>>, _> =
            sqlx::query_scalar(&sql).fetch_all(&mut app_conn).await;
        let text = match &rows {
            Ok(rows) => rows.iter().flatten().cloned().collect::<Vec<_>>().join(" "),
            Err(e) => e.to_string(),
        };
        let leaked = secrets
            .iter()
            .find(|s| text.contains(*s))
            .map(|s| format!("returned B's {s:?} ({why})"));
        tally.record("SQL definer function", "app role as A", sql, leaked);
    }

    let after = digest(&fleet.db, b).await;
    for (table, was) in &before {
        let changed = (after.get(table) != Some(was))
            .then(|| format!("{was} before, {:?} after", after.get(table)));
        tally.record(
            "B's rows unchanged",
            "all",
            format!("table {table}"),
            changed,
        );
    }
    tally.report("SQL layer (application role)");
    fleet.running.shutdown().await.unwrap();
}
