//! An admin sees and ends another user's sessions (issue 14, the console's Users page) against
//! a real fleetd: `GET /v1/users/{id}/sessions` lists them without their ids, `DELETE` ends all
//! of them at once and is audited, and the people rules of disabling hold (no higher role, not
//! oneself; operators and auditors may not).

use fleet_tests::fleet::{Fleet, Person, Session};
use serde_json::Value;

/// A well-formed user id that no user has.
const UNKNOWN_USER: &str = "0191d3f0-0000-7000-8000-000000000000";

fn sessions_path(person: &Person) -> String {
    format!("/v1/users/{}/sessions", person.id)
}

/// `GET /v1/session` with `session`: its status.
async fn status_of(fleet: &Fleet, session: &Session) -> u16 {
    fleet
        .as_session(session, false, "GET", "/v1/session", None)
        .await
        .status
}

#[tokio::test]
async fn an_admin_lists_a_users_sessions_without_ids_and_ends_them_all_at_once() {
    let fleet = Fleet::start().await;
    let admin = fleet.person("admin@acme.example", "admin").await;
    let op = fleet.person("op@acme.example", "operator").await;
    let first = op.session.clone();
    let second = fleet.sign_in_fully(&op, 0).await;

    let listed = fleet
        .as_session(&admin.session, false, "GET", &sessions_path(&op), None)
        .await;
    listed.assert_status(200);
    let sessions = listed.json();
    let items = sessions.as_array().unwrap();
    assert_eq!(items.len(), 2, "{sessions}");
    for item in items {
        let mut fields: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "address",
                "created_at",
                "current",
                "handle",
                "last_used_at",
                "user_agent"
            ],
            "{item}"
        );
        assert_eq!(item["current"], false, "neither is the admin's own");
        assert_eq!(item["address"], "127.0.0.1");
        assert_eq!(item["user_agent"], "people-test/1");
    }
    for session in [&first, &second] {
        // The cookie's value is the session id.
        let id = session.cookie.as_str();
        assert!(id.starts_with("fps_"), "{id}");
        let secret = id.rsplit('_').next().unwrap();
        for part in [id, secret] {
            assert!(!listed.text().contains(part), "a session id in {sessions}");
        }
    }
    // An owner key reads them too; an unknown user is not found.
    let by_key = fleet.as_owner_key("GET", &sessions_path(&op), None).await;
    by_key.assert_status(200);
    assert_eq!(by_key.json().as_array().unwrap().len(), 2);
    let unknown = format!("/v1/users/{UNKNOWN_USER}/sessions");
    fleet
        .as_owner_key("GET", &unknown, None)
        .await
        .assert_problem(404, "not-found");

    let ended = fleet
        .as_session(&admin.session, true, "DELETE", &sessions_path(&op), None)
        .await;
    ended.assert_status(200);
    assert_eq!(ended.json()["sessions_ended"], 2);
    assert_eq!(status_of(&fleet, &first).await, 401);
    assert_eq!(status_of(&fleet, &second).await, 401);
    assert_eq!(
        status_of(&fleet, &admin.session).await,
        200,
        "the admin's own stays"
    );
    let left = fleet.as_owner_key("GET", &sessions_path(&op), None).await;
    assert_eq!(left.json(), Value::Array(Vec::new()));

    // One audit event, by the admin, naming the user and how many ended.
    let events = fleet
        .as_owner_key(
            "GET",
            "/v1/audit-events?action=user.sign_out_everywhere",
            None,
        )
        .await
        .json();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{events}");
    assert_eq!(items[0]["actor"], format!("user:{}", admin.id));
    assert_eq!(items[0]["target"], format!("user:{}", op.id));
    assert_eq!(items[0]["details"]["sessions_ended"], 2);
    fleet.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_owners_and_admins_end_sessions_and_never_a_higher_roles_or_their_own() {
    let fleet = Fleet::start().await;
    let owner = fleet.person("owner@acme.example", "owner").await;
    let admin = fleet.person("admin@acme.example", "admin").await;
    let auditor = fleet.person("auditor@acme.example", "auditor").await;
    let op = fleet.person("op@acme.example", "operator").await;

    // An auditor reads (ADMINISTER_READ) but may not end; an operator may do neither.
    fleet
        .as_session(&auditor.session, false, "GET", &sessions_path(&op), None)
        .await
        .assert_status(200);
    for (who, method) in [(&auditor, "DELETE"), (&op, "GET"), (&op, "DELETE")] {
        fleet
            .as_session(
                &who.session,
                method == "DELETE",
                method,
                &sessions_path(&admin),
                None,
            )
            .await
            .assert_problem(403, "forbidden");
    }
    // An admin may not end an owner's sessions, nor its own here.
    for target in [&owner, &admin] {
        fleet
            .as_session(&admin.session, true, "DELETE", &sessions_path(target), None)
            .await
            .assert_problem(403, "forbidden");
    }
    for person in [&owner, &admin, &auditor, &op] {
        assert_eq!(
            status_of(&fleet, &person.session).await,
            200,
            "{}",
            person.email
        );
    }
    // The owner may end the admin's.
    let ended = fleet
        .as_session(&owner.session, true, "DELETE", &sessions_path(&admin), None)
        .await;
    ended.assert_status(200);
    assert_eq!(ended.json()["sessions_ended"], 1);
    assert_eq!(status_of(&fleet, &admin.session).await, 401);
    fleet.running.shutdown().await.unwrap();
}
