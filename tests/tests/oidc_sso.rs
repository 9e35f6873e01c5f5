//! OIDC single sign-on against a real OpenID provider (the certified `oidc-provider` package,
//! run with Node on loopback): the whole browser flow through fleetd, each refusal of the
//! callback, and forged ID tokens through fleetd's own verification path.

use api::oidc::{JwsError, OidcError, Refusal};
use fleet_tests::https::{https_request, Response};
use fleet_tests::logs::capture_logs;
use fleet_tests::oidc::{Browser, Provider};
use serde_json::{json, Value};
use store::api_keys::Role;
use store::sso::OidcProvider;
use store::TenantId;

const CLIENT_SECRET: &str = "client-secret-4f1d9c2a7e";
/// Where fleetd tells the provider to send the browser back (the tests' requests say
/// `Host: localhost`); the test then hands that URL to fleetd's listener.
const REDIRECT_PREFIX: &str = "https://localhost/";

/// fleetd with one tenant (and its owner key), and the provider with fleetd's callback of that
/// tenant registered for both its clients.
struct Sso {
    fleet: fleet_tests::fleet::Fleet,
    provider: Provider,
}

impl std::ops::Deref for Sso {
    type Target = fleet_tests::fleet::Fleet;

    fn deref(&self) -> &Self::Target {
        &self.fleet
    }
}

impl Sso {
    async fn start() -> Self {
        let fleet = fleet_tests::fleet::Fleet::start().await;
        let callback = format!("{REDIRECT_PREFIX}v1/auth/oidc/{}/callback", fleet.tenant);
        let provider = Provider::start(&[callback], CLIENT_SECRET).await;
        Sso { fleet, provider }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Response {
        let auth = format!("Bearer {}", self.owner_key);
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.send(method, path, &all, body).await
    }

    /// A request as a browser makes it: no API key.
    async fn browse(&self, path: &str, cookie: Option<&str>) -> Response {
        let cookie = cookie.map(|c| format!("__Host-fleet-oidc={c}"));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        https_request(
            self.running.api_addr(),
            &self.running.pki().issuing_ca,
            "GET",
            path,
            &headers,
            b"",
        )
        .await
    }

    /// A GET with a person's session cookie.
    async fn as_session(&self, session: &str, path: &str) -> Response {
        let cookie = format!("__Host-fleet_session={session}");
        https_request(
            self.running.api_addr(),
            &self.running.pki().issuing_ca,
            "GET",
            path,
            &[("Cookie", cookie.as_str())],
            b"",
        )
        .await
    }

    async fn configure(&self) -> Value {
        let set = self
            .call(
                "PUT",
                "/v1/tenant/sso",
                &[],
                Some(json!({
                    "issuer": self.provider.issuer,
                    "client_id": "fleet",
                    "client_secret": CLIENT_SECRET,
                    "role_mappings": [
                        {"claim": "groups", "value": "staff", "role": "operator"},
                        {"claim": "groups", "value": "fleet-admins", "role": "admin"},
                    ],
                    "allowed_email_domains": ["Example.com"],
                    "extra_scopes": ["groups"],
                })),
            )
            .await;
        set.assert_status(200);
        set.json()
    }

    /// `start`: the authorization URL and the browser cookie.
    async fn start_sign_in(&self) -> (String, String) {
        let started = self
            .browse(&format!("/v1/auth/oidc/{}/start", self.tenant), None)
            .await;
        assert_eq!(started.status, 302, "{}", started.text());
        let cookie = started.header("set-cookie").unwrap().to_owned();
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("Secure")
                && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        let value = cookie
            .strip_prefix("__Host-fleet-oidc=")
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .to_owned();
        (started.header("location").unwrap().to_owned(), value)
    }

    /// The callback URL the provider sent the browser to, handed to fleetd.
    async fn callback(&self, url: &str, cookie: Option<&str>) -> Response {
        let path = url
            .strip_prefix(REDIRECT_PREFIX.trim_end_matches('/'))
            .unwrap();
        self.browse(path, cookie).await
    }

    /// A whole sign-in as `login`: start, the provider's pages, the callback.
    async fn sign_in(&self, login: &str) -> (Response, String, String) {
        let (authorization, cookie) = self.start_sign_in().await;
        let back = Browser::default()
            .sign_in(&authorization, login, REDIRECT_PREFIX)
            .await;
        (self.callback(&back, Some(&cookie)).await, back, cookie)
    }
}

impl Sso {
    /// A whole sign-in as `login` by a web browser: the callback asks for HTML.
    async fn sign_in_as_browser(&self, login: &str) -> Response {
        let (authorization, cookie) = self.start_sign_in().await;
        let back = Browser::default()
            .sign_in(&authorization, login, REDIRECT_PREFIX)
            .await;
        let path = back
            .strip_prefix(REDIRECT_PREFIX.trim_end_matches('/'))
            .unwrap();
        let cookie = format!("__Host-fleet-oidc={cookie}");
        https_request(
            self.running.api_addr(),
            &self.running.pki().issuing_ca,
            "GET",
            path,
            &[("Cookie", &cookie), ("Accept", "text/html,*/*;q=0.8")],
            b"",
        )
        .await
    }
}

/// Every `Set-Cookie` of an answer.
fn cookies(answer: &Response) -> Vec<&str> {
    answer
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The session id of a signed-in answer's `__Host-fleet_session` cookie, its attributes checked.
fn session_cookie(answer: &Response) -> String {
    let cookie = cookies(answer)
        .into_iter()
        .find(|c| c.starts_with("__Host-fleet_session="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} not in {cookie}");
    }
    let (pair, _) = cookie.split_once(';').unwrap();
    pair.trim_start_matches("__Host-fleet_session=").to_owned()
}

/// A 401 `sso-refused` whose detail gives `reason`.
fn assert_refused(answer: &Response, reason: &str) {
    let problem = answer.assert_problem(401, "sso-refused");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(reason), "{reason:?} not in {problem}");
}

fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

#[tokio::test]
async fn signing_in_through_the_provider_starts_a_session_for_a_user_made_with_the_mapped_role() {
    let logs = capture_logs();
    let sso = Sso::start().await;
    // Nothing configured yet: start is refused as not configured.
    sso.browse(&format!("/v1/auth/oidc/{}/start", sso.tenant), None)
        .await
        .assert_problem(404, "sso-not-configured");
    let view = sso.configure().await;
    assert_eq!(view["client_secret_set"], true);
    assert_eq!(view["allowed_email_domains"], json!(["example.com"]));
    assert!(!view.to_string().contains(CLIENT_SECRET));

    let (answer, back, cookie) = sso.sign_in("alice").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["next"], "done");
    // The callback starts a session and clears the browser cookie.
    let session = session_cookie(&answer);
    assert!(cookies(&answer)
        .iter()
        .any(|c| c.starts_with("__Host-fleet-oidc=;") && c.contains("Max-Age=0")));
    let me = sso.as_session(&session, "/v1/session").await;
    assert_eq!(me.status, 200, "{}", me.text());
    let me = me.json();
    assert_eq!(me["user"]["email"], "alice@example.com", "{me}");
    assert_eq!(
        me["user"]["role"], "admin",
        "created just in time with the highest of the matching rules"
    );

    // The same callback again: the state is spent.
    let replay = sso.callback(&back, Some(&cookie)).await;
    assert_refused(&replay, "unknown or already used state");

    // A person in no mapped group, with no default role: refused.
    let (answer, _, _) = sso.sign_in("bob").await;
    assert_refused(&answer, "no role rule");
    // An address the provider has not verified: refused.
    let (answer, _, _) = sso.sign_in("mallory").await;
    assert_refused(&answer, "not verified");
    // A verified address outside the allowed domains, with no user: not created, refused.
    let (answer, _, _) = sso.sign_in("eve").await;
    assert_refused(&answer, "not open to new users");
    // A browser is sent on to the console: signed in, to the fleet page with the session
    // cookie; refused, to the sign-in page with the reason.
    let browsed = sso.sign_in_as_browser("alice").await;
    assert_eq!(browsed.status, 303, "{}", browsed.text());
    assert_eq!(browsed.header("location"), Some("/#/fleet"));
    let browser_session = session_cookie(&browsed);
    sso.as_session(&browser_session, "/v1/session")
        .await
        .assert_status(200);
    let browsed = sso.sign_in_as_browser("eve").await;
    assert_eq!(browsed.status, 303, "{}", browsed.text());
    let location = browsed.header("location").unwrap();
    assert!(
        location.starts_with("/#/sign-in?sso_error=") && location.contains("not+open+to+new+users"),
        "{location}"
    );
    assert!(!cookies(&browsed)
        .iter()
        .any(|c| c.starts_with("__Host-fleet_session=")));
    // Alice, once disabled, is refused although the provider vouches for her.
    let alice = me["user"]["id"].as_str().unwrap();
    sso.call("POST", &format!("/v1/users/{alice}/disable"), &[], None)
        .await
        .assert_status(200);
    let (answer, _, _) = sso.sign_in("alice").await;
    assert_refused(&answer, "the user is disabled");
    // Each sign-in, the creation and each refusal is in the audit trail.
    let events = sso
        .call("GET", "/v1/audit-events?limit=200", &[], None)
        .await
        .json();
    let actions: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["user.create", "user.sign_in", "user.sign_in_failed"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    assert!(
        actions
            .iter()
            .filter(|a| **a == "user.sign_in_failed")
            .count()
            >= 6,
        "the replay, bob, mallory, eve twice and disabled alice: {actions:?}"
    );
    let disabled_refusal = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "user.sign_in_failed" && e["details"]["reason"] == "disabled");
    assert!(
        disabled_refusal.is_some(),
        "the refusal of disabled alice is audited with its reason: {events}"
    );

    // A provider whose discovery document names another issuer (here: without the trailing
    // slash configured), and one that does not answer, are unavailable, not signed in through.
    let start = format!("/v1/auth/oidc/{}/start", sso.tenant);
    for (issuer, reason) in [
        (format!("{}/", sso.provider.issuer), "names issuer"),
        ("http://127.0.0.1:1".to_owned(), "127.0.0.1:1"),
    ] {
        let body = json!({"issuer": issuer, "client_id": "fleet", "extra_scopes": ["groups"]});
        sso.call("PUT", "/v1/tenant/sso", &[], Some(body))
            .await
            .assert_status(200);
        let problem = sso
            .browse(&start, None)
            .await
            .assert_problem(502, "sso-provider-unavailable");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{reason:?} not in {problem}");
    }

    // The secret is nowhere in the database in clear: every column of every table, as text
    // (bytea as hex), and the sealed column's raw bytes.
    let tables = sso.db.every_row_as_text().await;
    assert!(tables.contains_key("tenant_oidc_providers"));
    let secret_hex = hex_of(CLIENT_SECRET.as_bytes());
    for (table, rows) in tables {
        for row in rows {
            assert!(
                !row.contains(CLIENT_SECRET) && !row.contains(&secret_hex),
                "{table} holds the secret"
            );
        }
    }
    let mut owner = sso.db.connect_as_owner().await;
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT client_secret_sealed FROM tenant_oidc_providers")
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert!(!sealed
        .windows(CLIENT_SECRET.len())
        .any(|w| w == CLIENT_SECRET.as_bytes()));

    // Nor in the logs, nor any state or code of the run.
    let logged = logs.text();
    assert!(
        logged.contains("OIDC sign-in verified"),
        "the capture works"
    );
    assert!(
        !logged.contains(CLIENT_SECRET),
        "the client secret was logged"
    );
    for secret in [
        query_param(&back, "state"),
        query_param(&back, "code"),
        cookie,
    ] {
        assert!(
            !logged.contains(&secret),
            "a state, code or cookie was logged"
        );
    }
    sso.fleet.running.shutdown().await.unwrap();
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_replayed_nonce_another_browser_and_a_provider_refusal_are_each_refused() {
    let mut sso = Sso::start().await;
    sso.configure().await;
    let (first, _, _) = sso.sign_in("alice").await;
    assert_eq!(first.status, 200, "{}", first.text());

    // A nonce of an earlier sign-in, replayed into a new attempt's authorization request: the
    // provider signs a token with it, and fleetd refuses it for this attempt.
    let (old_authorization, _) = sso.start_sign_in().await;
    let old_nonce = query_param(&old_authorization, "nonce");
    let (authorization, cookie) = sso.start_sign_in().await;
    let mut url = url::Url::parse(&authorization).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "nonce" {
                old_nonce.clone()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let back = Browser::default()
        .sign_in(url.as_str(), "alice", REDIRECT_PREFIX)
        .await;
    assert_refused(
        &sso.callback(&back, Some(&cookie)).await,
        "nonce is not this sign-in",
    );

    // A callback in a browser that did not start the attempt (no cookie, or another's).
    let (authorization, _) = sso.start_sign_in().await;
    let back = Browser::default()
        .sign_in(&authorization, "alice", REDIRECT_PREFIX)
        .await;
    let (_, other_cookie) = sso.start_sign_in().await;
    assert_refused(
        &sso.callback(&back, Some(&other_cookie)).await,
        "did not start",
    );
    // That attempt is spent too: the right cookie does not revive it.
    assert_refused(&sso.callback(&back, None).await, "already used");

    // The provider refusing (the person cancels): its error code, not a sign-in.
    let (authorization, cookie) = sso.start_sign_in().await;
    let state = query_param(&authorization, "state");
    let path = format!(
        "/v1/auth/oidc/{}/callback?error=access_denied&state={state}&error_description=whatever",
        sso.tenant
    );
    assert_refused(&sso.browse(&path, Some(&cookie)).await, "access_denied");
    // A code the provider never issued, with a good state: the token endpoint refuses it.
    let (authorization, cookie) = sso.start_sign_in().await;
    let state = query_param(&authorization, "state");
    let path = format!(
        "/v1/auth/oidc/{}/callback?code=made-up&state={state}",
        sso.tenant
    );
    assert_refused(&sso.browse(&path, Some(&cookie)).await, "invalid_grant");
    // An attempt past its lifetime (recorded as `start` would, already expired).
    let mut tx = sso.running.database().app.begin(sso.tenant).await.unwrap();
    store::sso::record_attempt(
        &mut tx,
        &store::sso::NewAttempt {
            state_hash: sha256("old-state"),
            nonce_hash: sha256("old-nonce"),
            browser_hash: sha256("old-cookie"),
            redirect_uri: "https://localhost/cb",
            expires_at: time::OffsetDateTime::now_utc() - time::Duration::seconds(1),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let path = format!(
        "/v1/auth/oidc/{}/callback?code=x&state=old-state",
        sso.tenant
    );
    assert_refused(
        &sso.browse(&path, Some("old-cookie")).await,
        "attempt has expired",
    );
    // No state at all.
    let path = format!("/v1/auth/oidc/{}/callback?code=x", sso.tenant);
    assert_refused(
        &sso.browse(&path, Some(&cookie)).await,
        "the callback has no state",
    );

    // A restarted fleetd on the same data directory opens the stored secret with the same key
    // file: sign-in still works.
    let restarted = fleetd::start(fleetd::Config::on_ephemeral_loopback_ports(
        sso.dir.path(),
        sso.db.url().parse().unwrap(),
    ))
    .await
    .expect("fleetd starts again");
    let old = std::mem::replace(&mut sso.fleet.running, restarted);
    old.shutdown().await.unwrap();
    let (again, _, _) = sso.sign_in("alice").await;
    assert_eq!(again.status, 200, "{}", again.text());
    sso.fleet.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn sso_changes_are_owner_only_audited_and_the_secret_is_write_only() {
    let sso = Sso::start().await;
    // A bad issuer is refused before anything is stored.
    for bad in [
        "http://idp.example.com",
        "ftp://x",
        "https://idp.example.com/?a=b",
    ] {
        sso.call(
            "PUT",
            "/v1/tenant/sso",
            &[],
            Some(json!({
                "issuer": bad, "client_id": "fleet", "client_secret": "s",
            })),
        )
        .await
        .assert_problem(422, "invalid-field");
    }
    // The first setting needs a secret.
    sso.call(
        "PUT",
        "/v1/tenant/sso",
        &[],
        Some(json!({
            "issuer": sso.provider.issuer, "client_id": "fleet",
        })),
    )
    .await
    .assert_problem(422, "invalid-field");
    sso.configure().await;
    // Later changes may keep it: disabling closes sign-in.
    let kept = sso
        .call(
            "PUT",
            "/v1/tenant/sso",
            &[],
            Some(json!({
                "issuer": sso.provider.issuer, "client_id": "fleet", "enabled": false,
                "default_role": "auditor",
            })),
        )
        .await;
    kept.assert_status(200);
    assert_eq!(kept.json()["enabled"], false);
    sso.browse(&format!("/v1/auth/oidc/{}/start", sso.tenant), None)
        .await
        .assert_problem(404, "sso-not-configured");
    // The start route is open to anyone: one address may start 60 sign-ins a minute.
    let start = format!("/v1/auth/oidc/{}/start", sso.tenant);
    for _ in 1..api::oidc::MAX_STARTS_PER_SOURCE {
        assert_eq!(sso.browse(&start, None).await.status, 404);
    }
    let slowed = sso.browse(&start, None).await;
    slowed.assert_problem(429, "too-many-sign-in-starts");
    assert!(slowed.header("retry-after").is_some());
    let shown = sso.call("GET", "/v1/tenant/sso", &[], None).await;
    shown.assert_status(200);
    assert!(shown.json().get("client_secret").is_none());
    assert!(!shown.text().contains(CLIENT_SECRET));

    // An admin may not read or change it.
    let admin = sso
        .call(
            "POST",
            "/v1/api-keys",
            &[],
            Some(json!({"name": "a", "role": "admin"})),
        )
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {admin}");
    let answer = https_request(
        sso.running.api_addr(),
        &sso.running.pki().issuing_ca,
        "GET",
        "/v1/tenant/sso",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await;
    answer.assert_problem(403, "forbidden");

    assert_eq!(
        sso.call("DELETE", "/v1/tenant/sso", &[], None).await.status,
        204
    );
    sso.call("DELETE", "/v1/tenant/sso", &[], None)
        .await
        .assert_problem(404, "not-found");
    let events = sso.call("GET", "/v1/audit-events", &[], None).await.json();
    let actions: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "tenant.sso_set").count(),
        2,
        "{actions:?}"
    );
    assert!(actions.contains(&"tenant.sso_delete"), "{actions:?}");
    let set = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "tenant.sso_set")
        .unwrap();
    assert!(
        set["actor"].as_str().unwrap().starts_with("api_key:"),
        "{set}"
    );
    assert!(!events.to_string().contains(CLIENT_SECRET));
    sso.fleet.running.shutdown().await.unwrap();
}

/// The tenant's provider as the verification path sees it.
fn stored(issuer: &str) -> OidcProvider {
    OidcProvider {
        issuer: issuer.to_owned(),
        client_id: "fleet".into(),
        client_secret_sealed: Vec::new(),
        role_mappings: Vec::new(),
        default_role: Some(Role::Auditor),
        allowed_email_domains: Vec::new(),
        extra_scopes: Vec::new(),
        enabled: true,
        updated_at: time::OffsetDateTime::now_utc(),
    }
}

fn sha256(text: &str) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn forged_id_tokens_are_refused_by_the_verification_path() {
    let provider = Provider::start(&["https://localhost/cb".into()], CLIENT_SECRET).await;
    let providers = api::oidc::Providers::default().with_loopback_http(true);
    let tenant = TenantId(uuid::Uuid::new_v4());
    let config = stored(&provider.issuer);
    let now = time::OffsetDateTime::now_utc();
    let t = now.unix_timestamp();
    let nonce = sha256("n-1");
    let claims = |change: Value| {
        let mut c = json!({
            "iss": provider.issuer, "aud": "fleet", "exp": t + 300, "iat": t, "nonce": "n-1",
            "sub": "alice", "email": "alice@example.com", "email_verified": true,
        });
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let verify = |token: String| {
        let providers = providers.clone();
        let config = config.clone();
        async move { api::oidc::verify_id_token(&providers, tenant, &config, &token, &nonce, now).await }
    };
    let refusal = |result: Result<_, OidcError>| match result {
        Err(OidcError::Refused(refusal)) => refusal,
        other => panic!("not a refusal: {other:?}"),
    };

    // Signed with the provider's own key: accepted (the control).
    let good = verify(provider.sign(&claims(json!({})))).await.unwrap();
    assert_eq!(good["sub"], "alice");
    // Signed by the provider's key, for another client: the audience decides.
    assert_eq!(
        refusal(verify(provider.sign(&claims(json!({"aud": "other"})))).await),
        Refusal::WrongAudience
    );
    // Expired.
    assert_eq!(
        refusal(verify(provider.sign(&claims(json!({"exp": t - 3600, "iat": t - 3900})))).await),
        Refusal::Expired
    );
    // Another issuer.
    assert!(matches!(
        refusal(verify(provider.sign(&claims(json!({"iss": "http://127.0.0.1:1"})))).await),
        Refusal::WrongIssuer(_)
    ));
    // Another nonce.
    assert_eq!(
        refusal(verify(provider.sign(&claims(json!({"nonce": "n-0"})))).await),
        Refusal::WrongNonce
    );
    // A bad signature: the payload changed after signing.
    let token = provider.sign(&claims(json!({})));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = base64_url(&claims(json!({"sub": "mallory"})).to_string());
    assert_eq!(
        refusal(verify(parts.join(".")).await),
        Refusal::Signature(JwsError::BadSignature)
    );
    // A key the provider's JWKS does not hold (fetched again once, still absent).
    let stranger = es256_token("stranger", &claims(json!({})));
    assert_eq!(
        refusal(verify(stranger).await),
        Refusal::Signature(JwsError::UnknownKey(Some("stranger".into())))
    );
    // `none`, and HS256 with the client secret as the key.
    let unsigned = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none"}"#),
        base64_url(&claims(json!({})).to_string())
    );
    assert_eq!(
        refusal(verify(unsigned).await),
        Refusal::Signature(JwsError::AlgorithmNotAllowed("none".into()))
    );
    let hs256 = hs256_token(CLIENT_SECRET, &claims(json!({})));
    assert_eq!(
        refusal(verify(hs256).await),
        Refusal::Signature(JwsError::AlgorithmNotAllowed("HS256".into()))
    );
}

fn base64_url(text: &str) -> String {
    base64_bytes(text.as_bytes())
}

/// A compact JWS of `header` and `claims`, signed by `sign`.
fn token(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let signed = format!(
        "{}.{}",
        base64_url(&header.to_string()),
        base64_url(&claims.to_string())
    );
    let sig = sign(signed.as_bytes());
    format!("{signed}.{}", base64_bytes(&sig))
}

fn base64_bytes(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed ES256 with a key made here (not the provider's).
fn es256_token(kid: &str, claims: &Value) -> String {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    token(&json!({"alg": "ES256", "kid": kid}), claims, |signed| {
        pair.sign(&rng, signed).unwrap().as_ref().to_vec()
    })
}

/// A token "signed" HS256 with the client secret as the key.
fn hs256_token(secret: &str, claims: &Value) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    token(&json!({"alg": "HS256"}), claims, |signed| {
        ring::hmac::sign(&key, signed).as_ref().to_vec()
    })
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_once_and_unknown_kids_do_not_refetch_on_every_token() {
    let first =
        Provider::start_with(&["https://localhost/cb".into()], CLIENT_SECRET, "k1", 0).await;
    let port = first.port();
    let issuer = first.issuer.clone();
    let providers = api::oidc::Providers::default().with_loopback_http(true);
    let tenant = TenantId(uuid::Uuid::new_v4());
    let config = stored(&issuer);
    let now = time::OffsetDateTime::now_utc();
    let t = now.unix_timestamp();
    let claims = json!({
        "iss": issuer, "aud": "fleet", "exp": t + 300, "iat": t, "nonce": "n-1", "sub": "alice",
    });
    let nonce = sha256("n-1");
    api::oidc::verify_id_token(
        &providers,
        tenant,
        &config,
        &first.sign(&claims),
        &nonce,
        now,
    )
    .await
    .expect("the first key verifies (and its JWKS is now cached)");

    // The provider restarts on the same address with a new key, as a rotation looks from here.
    drop(first);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let second =
        Provider::start_with(&["https://localhost/cb".into()], CLIENT_SECRET, "k2", port).await;
    assert_eq!(second.issuer, issuer);
    let verified = api::oidc::verify_id_token(
        &providers,
        tenant,
        &config,
        &second.sign(&claims),
        &nonce,
        now,
    )
    .await
    .expect("an unknown kid makes one fetch of the keys, which has the new one");
    assert_eq!(verified["sub"], "alice");

    // Right after that fetch, another unknown kid is refused without fetching again.
    let stranger = es256_token("k3", &claims);
    let refused =
        api::oidc::verify_id_token(&providers, tenant, &config, &stranger, &nonce, now).await;
    assert!(
        matches!(
            refused,
            Err(OidcError::Refused(Refusal::Signature(JwsError::UnknownKey(Some(ref kid))))) if kid == "k3"
        ),
        "{refused:?}"
    );
}
