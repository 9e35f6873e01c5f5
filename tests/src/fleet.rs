//! A real fleetd (real Postgres, real TLS) with the tenant `acme` and its owner key, and the
//! people of it: invitations accepted, TOTP enrolled where required, sessions signed in. For
//! tests of people, the console and anything else a signed-in person does.

use api::people::totp::{TotpSecret, STEP_SECS};
use serde_json::{json, Value};
use store::api_keys::KeyEnv;
use store::audit::Actor;
use store::tenants;

use crate::https::{https_request, Response};
use crate::logs::capture_logs;
use crate::TestDb;

/// The password every person of these tests is given.
pub const PASSWORD: &str = "violet-harbour-lantern-42";

pub struct Fleet {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub running: fleetd::Running,
    /// The tenant `acme`.
    pub tenant: store::TenantId,
    /// The secret of the owner key `acme` was created with.
    pub owner_key: String,
}

/// A signed-in person: the cookie, its CSRF token, and what was shown once.
#[derive(Clone, Debug)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// A user made through an invitation, with its password and TOTP secret (if enrolled).
pub struct Person {
    pub email: String,
    pub id: String,
    pub totp: Option<String>,
    pub recovery_codes: Vec<String>,
    pub session: Session,
}

impl Fleet {
    pub async fn start() -> Self {
        capture_logs();
        let db = TestDb::new().await;
        let dir = crate::data_dir();
        let running = fleetd::start(fleetd::Config::on_ephemeral_loopback_ports(
            dir.path(),
            db.url().parse().unwrap(),
        ))
        .await
        .expect("fleetd starts");
        let (tenant, key) = tenants::create_with_owner_key(
            &running.database().app,
            "acme",
            &KeyEnv::live(),
            &Actor::System,
        )
        .await
        .unwrap();
        Fleet {
            db,
            dir,
            running,
            tenant: tenant.id,
            owner_key: key.secret.expose().to_owned(),
        }
    }

    /// A request with exactly these headers and body bytes (no JSON encoding, no added
    /// headers): for hostile input.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        https_request(
            self.running.api_addr(),
            &self.running.pki().issuing_ca,
            method,
            path,
            headers,
            body,
        )
        .await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Response {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut headers = headers.to_vec();
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
        {
            headers.push(("User-Agent", "people-test/1"));
        }
        if !bytes.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        https_request(
            self.running.api_addr(),
            &self.running.pki().issuing_ca,
            method,
            path,
            &headers,
            &bytes,
        )
        .await
    }

    pub async fn as_owner_key(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let auth = format!("Bearer {}", self.owner_key);
        self.send(method, path, &[("Authorization", &auth)], body)
            .await
    }

    /// A request with the session's cookie and, when `csrf`, its CSRF token.
    pub async fn as_session(
        &self,
        session: &Session,
        csrf: bool,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let cookie = format!("__Host-fleet_session={}", session.cookie);
        let mut headers = vec![("Cookie", cookie.as_str())];
        if csrf {
            headers.push(("X-CSRF-Token", session.csrf.as_str()));
        }
        self.send(method, path, &headers, body).await
    }

    /// The current TOTP code of `secret` by fleetd's clock, `steps` steps ahead.
    pub fn code(&self, secret: &str, steps: i64) -> String {
        let secret = TotpSecret::from_base32(secret).unwrap();
        let step = self.running.clock().now().unix_timestamp() / STEP_SECS + steps;
        format!("{:06}", secret.code_at(step))
    }

    /// Invites `email` with `role` as the owner key; returns the invitation token.
    pub async fn invite(&self, email: &str, role: &str) -> String {
        self.invite_to_groups(email, role, None).await
    }

    /// [`Self::invite`], the person limited to `group_ids` (`None`: every group).
    pub async fn invite_to_groups(
        &self,
        email: &str,
        role: &str,
        group_ids: Option<&[&str]>,
    ) -> String {
        let created = self
            .as_owner_key(
                "POST",
                "/v1/invitations",
                Some(json!({ "email": email, "role": role, "group_ids": group_ids })),
            )
            .await;
        created.assert_status(201);
        created.json()["token"].as_str().unwrap().to_owned()
    }

    /// Accepts invitation `token` with `password` (anonymous, as the invited person).
    pub async fn accept(&self, token: &str, password: &str) -> Response {
        self.send(
            "POST",
            "/v1/invitations/accept",
            &[],
            Some(json!({ "token": token, "password": password })),
        )
        .await
    }

    /// Invites, accepts, enrols TOTP where required: a signed-in user.
    pub async fn person(&self, email: &str, role: &str) -> Person {
        self.person_in_groups(email, role, None).await
    }

    /// [`Self::person`], limited to `group_ids` (`None`: every group).
    pub async fn person_in_groups(
        &self,
        email: &str,
        role: &str,
        group_ids: Option<&[&str]>,
    ) -> Person {
        let token = self.invite_to_groups(email, role, group_ids).await;
        let accepted = self.accept(&token, PASSWORD).await;
        accepted.assert_status(201);
        let answer = accepted.json();
        let (totp, recovery_codes, done) = if answer["next"] == "enrol_totp" {
            let secret = answer["totp_secret"].as_str().unwrap().to_owned();
            let enrolled = self
                .send(
                    "POST",
                    "/v1/sign-in/enrol-totp",
                    &[],
                    Some(
                        json!({ "challenge": answer["challenge"], "code": self.code(&secret, 0) }),
                    ),
                )
                .await;
            enrolled.assert_status(200);
            let codes = enrolled.json()["recovery_codes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect();
            (Some(secret), codes, enrolled)
        } else {
            (None, Vec::new(), accepted)
        };
        let session = session_of(&done);
        let me = self
            .as_session(&session, false, "GET", "/v1/session", None)
            .await;
        me.assert_status(200);
        Person {
            email: email.to_owned(),
            id: me.json()["user"]["id"].as_str().unwrap().to_owned(),
            totp,
            recovery_codes,
            session,
        }
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> Response {
        self.send(
            "POST",
            "/v1/sign-in",
            &[],
            Some(json!({ "tenant": "acme", "email": email, "password": password })),
        )
        .await
    }

    /// Signs in with the password and, when the user has TOTP, the code `steps` ahead.
    pub async fn sign_in_fully(&self, person: &Person, steps: i64) -> Session {
        let first = self.sign_in(&person.email, PASSWORD).await;
        first.assert_status(200);
        let answer = first.json();
        if answer["next"] == "done" {
            return session_of(&first);
        }
        assert_eq!(answer["next"], "second_factor");
        let second = self
            .send(
                "POST",
                "/v1/sign-in/second-factor",
                &[],
                Some(json!({
                    "challenge": answer["challenge"],
                    "code": self.code(person.totp.as_deref().unwrap(), steps),
                })),
            )
            .await;
        second.assert_status(200);
        session_of(&second)
    }

    pub async fn audit_actions(&self) -> Vec<String> {
        let events = self
            .as_owner_key("GET", "/v1/audit-events?limit=500", None)
            .await
            .json();
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// The session cookie and CSRF token of a `done` answer, with the cookie's attributes checked.
#[track_caller]
pub fn session_of(done: &Response) -> Session {
    assert_eq!(done.json()["next"], "done", "{}", done.text());
    let set_cookie = done.header("set-cookie").expect("a session cookie");
    let (pair, attributes) = set_cookie.split_once(';').unwrap();
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, "__Host-fleet_session");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            attributes.split(';').any(|a| a.trim() == attribute),
            "{set_cookie}: no {attribute}"
        );
    }
    assert!(!attributes.contains("Domain"), "{set_cookie}");
    Session {
        cookie: value.to_owned(),
        csrf: done.json()["csrf_token"].as_str().unwrap().to_owned(),
    }
}
