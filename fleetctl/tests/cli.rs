//! fleetctl run as the binary: bootstrap and break-glass on a real database here, every HTTPS
//! command against a fleetd started in the test in `cli/https.rs`.

#[path = "cli/backup.rs"]
mod backup;
#[path = "cli/https.rs"]
mod https;
#[path = "cli/migrations.rs"]
mod migrations;
#[path = "cli/report.rs"]
mod report;

use std::path::Path;
use std::process::Output;

use fleet_tests::TestDb;
use store::api_keys::{self, PresentedKey};
use store::TenantId;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The fleetctl binary with a clean environment: no server, key or database from the machine
/// running the tests, and `alice` at the terminal.
pub fn fleetctl() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    for var in [
        "FLEETCTL_SERVER",
        "FLEETCTL_CA",
        "FLEETCTL_API_KEY",
        "FLEETD_DATA_DIR",
        "FLEETD_DATABASE_URL",
        "FLEETD_DATABASE_URL_FILE",
        "SUDO_USER",
    ] {
        command.env_remove(var);
    }
    command.env("USER", "alice").kill_on_drop(true);
    command
}

/// A finished run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Self {
        Self {
            code: out.status.code().expect("fleetctl exited, not killed"),
            stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
        }
    }

    /// Asserts success; returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "fleetctl failed: {}", self.stderr);
        self.stdout
    }

    /// Asserts success and the notice that a new secret is shown this once (on stderr, so the
    /// secret itself stays alone on stdout); returns stdout.
    pub fn ok_shown_once(self) -> String {
        assert!(self.stderr.contains("shown this once"), "{}", self.stderr);
        self.ok()
    }

    /// Asserts this exit code and a one-line error naming `slug`; returns the line.
    pub fn fails(self, code: i32, slug: &str) -> String {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let line = self.stderr.trim_end();
        assert!(!line.contains('\n'), "one line: {line:?}");
        assert!(line.starts_with("fleetctl: "), "{line}");
        assert!(line.ends_with(&format!("({slug})")), "{line}");
        line.to_owned()
    }

    /// stdout as JSON.
    pub fn json(self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

/// Runs fleetctl with `args`.
pub async fn run(mut command: tokio::process::Command, args: &[&str]) -> Run {
    Run::from(command.args(args).output().await.expect("fleetctl runs"))
}

/// A fresh test database migrated by `fleetctl db migrate`, as before fleetctl's other database
/// commands (fleetd migrates at start; fleetctl never does on its own).
async fn migrated_db() -> TestDb {
    let db = TestDb::new().await;
    let out = on_db(&db, &["db", "migrate"]).await.ok();
    let expected = store::expected_schema_version();
    assert_eq!(out, format!("database schema is at version {expected}\n"));
    db
}

/// Runs fleetctl on the test database.
async fn on_db(db: &TestDb, args: &[&str]) -> Run {
    let mut command = fleetctl();
    command.arg("--database-url").arg(db.url());
    run(command, args).await
}

/// The data rows of a table (after its header), split into cells at runs of two spaces.
pub fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// Whether `text` is a time as fleetctl prints it: RFC 3339, UTC, to the second.
pub fn is_display_time(text: &str) -> bool {
    text.len() == 20 && text.ends_with('Z') && OffsetDateTime::parse(text, &Rfc3339).is_ok()
}

/// `tenant create NAME` on `db`: the tenant id and its owner key.
async fn create_tenant(db: &TestDb, name: &str) -> (TenantId, String) {
    let out = on_db(db, &["tenant", "create", name]).await.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let id = lines[0]
        .strip_prefix("tenant ")
        .expect("tenant line")
        .parse()
        .unwrap();
    let key = lines[1]
        .strip_prefix("owner key ")
        .expect("owner key line")
        .to_owned();
    (id, key)
}

async fn audit_events(db: &TestDb, tenant: TenantId) -> Vec<store::audit::AuditEvent> {
    let database = db.open().await;
    let mut tx = database.app.begin(tenant).await.unwrap();
    let events = store::audit::list_after(&mut tx, 0, 100).await.unwrap();
    tx.rollback().await.unwrap();
    database.close().await.unwrap();
    events
}

#[tokio::test]
async fn tenant_create_prints_the_tenant_and_its_first_owner_key_once() {
    let db = migrated_db().await;
    let created = on_db(&db, &["tenant", "create", "acme"]).await;
    assert!(
        !created.stderr.contains("fpk_"),
        "the key goes to stdout only"
    );
    let out = created.ok_shown_once();
    let (tenant, key) = {
        let mut lines = out.lines();
        let tenant: TenantId = lines
            .next()
            .unwrap()
            .strip_prefix("tenant ")
            .unwrap()
            .parse()
            .unwrap();
        let key = lines
            .next()
            .unwrap()
            .strip_prefix("owner key ")
            .unwrap()
            .to_owned();
        assert_eq!(lines.next(), None, "{out}");
        (tenant, key)
    };
    assert!(key.starts_with("fpk_live_"), "{key}");

    // The key is a working owner key of that tenant, recorded as made by alice on the database.
    let presented = PresentedKey::parse(&key).expect("well-formed key");
    let database = db.open().await;
    let (found_tenant, key_id) = api_keys::locate(&database.app, &presented)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found_tenant, tenant);
    let mut tx = database.app.begin(tenant).await.unwrap();
    let stored = api_keys::get(&mut tx, &key_id).await.unwrap().unwrap();
    tx.rollback().await.unwrap();
    database.close().await.unwrap();
    assert_eq!(stored.role, api_keys::Role::Owner);
    let events = audit_events(&db, tenant).await;
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("operator:alice@fleetctl", "tenant.create"),
            ("operator:alice@fleetctl", "api_key.break_glass_create"),
        ]
    );

    // For scripts: the same two values as JSON.
    let json = on_db(&db, &["--json", "tenant", "create", "beta"])
        .await
        .json();
    assert!(
        json["tenant_id"]
            .as_str()
            .unwrap()
            .parse::<TenantId>()
            .is_ok(),
        "{json}"
    );
    assert!(
        json["owner_key"].as_str().unwrap().starts_with("fpk_live_"),
        "{json}"
    );
}

#[tokio::test]
async fn a_duplicate_tenant_name_is_refused_with_exit_1() {
    let db = migrated_db().await;
    create_tenant(&db, "acme").await;
    let line = on_db(&db, &["tenant", "create", "Acme"])
        .await
        .fails(1, "conflict");
    assert!(
        line.contains(r#"a tenant named "Acme" exists already"#),
        "{line}"
    );
    let listed = on_db(&db, &["tenant", "list"]).await.ok();
    assert_eq!(rows(&listed).len(), 1, "{listed}");
}

#[tokio::test]
async fn the_database_url_comes_from_a_file_and_its_password_is_never_shown() {
    const PASSWORD: &str = "pw-5e1d-never-shown";
    let db = migrated_db().await;
    create_tenant(&db, "acme").await;
    // The test server trusts the connection and ignores the password.
    let (scheme, rest) = db.url().split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    let with_password = format!("{scheme}://{user}:{PASSWORD}@{host}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("database-url");
    std::fs::write(&file, format!("{with_password}\n")).unwrap();

    let mut command = fleetctl();
    command.arg("--database-url-file").arg(&file);
    let listed = run(command, &["tenant", "list"]).await.ok();
    assert!(listed.contains("acme"), "{listed}");
    let mut command = fleetctl();
    command.env("FLEETD_DATABASE_URL_FILE", &file);
    assert!(run(command, &["tenant", "list"])
        .await
        .ok()
        .contains("acme"));

    let unreachable = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/x");
    let not_postgres = format!("mysql://root:{PASSWORD}@db/x");
    for (url, code) in [(unreachable.as_str(), 5), (not_postgres.as_str(), 2)] {
        let mut command = fleetctl();
        command.arg("--database-url").arg(url);
        let failed = run(command, &["tenant", "list"]).await;
        assert_eq!(
            failed.code,
            code,
            "{}",
            failed.stderr.replace(PASSWORD, "<PASSWORD>")
        );
        assert!(!failed.stderr.contains(PASSWORD) && !failed.stdout.contains(PASSWORD));
        let mut command = fleetctl();
        command.env("FLEETD_DATABASE_URL", url);
        let failed = run(command, &["tenant", "list"]).await;
        assert_eq!(failed.code, code);
        assert!(!failed.stderr.contains(PASSWORD) && !failed.stdout.contains(PASSWORD));
    }

    let mut command = fleetctl();
    command
        .arg("--database-url-file")
        .arg(dir.path().join("absent"));
    let failed = run(command, &["tenant", "list"]).await;
    assert_eq!(failed.code, 2, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("--database-url-file"),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("absent"), "{}", failed.stderr);
}

#[tokio::test]
async fn tenant_list_has_a_header_and_rfc3339_times() {
    let db = migrated_db().await;
    let (acme, _) = create_tenant(&db, "acme").await;
    let (beta, _) = create_tenant(&db, "beta corp").await;
    let listed = on_db(&db, &["tenant", "list"]).await.ok();
    let header: Vec<&str> = listed.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "CREATED"], "{listed}");
    let rows = rows(&listed);
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(rows[0][..2], [acme.to_string(), "acme".to_owned()]);
    assert_eq!(rows[1][..2], [beta.to_string(), "beta corp".to_owned()]);
    for row in &rows {
        assert!(is_display_time(&row[2]), "{listed}");
    }
    // Columns are aligned: every row starts its name where the header does.
    let name_at = listed.lines().next().unwrap().find("NAME").unwrap();
    for line in listed.lines().skip(1) {
        assert!(
            line[name_at..].starts_with("acme") || line[name_at..].starts_with("beta"),
            "{listed}"
        );
    }

    let json = on_db(&db, &["--json", "tenant", "list"]).await.json();
    assert_eq!(json["items"][1]["name"], "beta corp");
}

#[tokio::test]
async fn tenants_are_named_by_id_or_unique_name_and_an_unknown_one_exits_3() {
    let db = migrated_db().await;
    let (acme, _) = create_tenant(&db, "acme").await;
    for name in [acme.to_string(), "acme".into(), "ACME".into()] {
        let out = on_db(&db, &["audit", "verify", "--tenant", &name])
            .await
            .ok();
        assert_eq!(rows(&out).len(), 1, "{out}");
        assert!(
            out.contains(&acme.to_string()) && out.contains("intact"),
            "{out}"
        );
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    for name in ["nope", unknown.as_str()] {
        let line = on_db(&db, &["audit", "verify", "--tenant", name])
            .await
            .fails(3, "not-found");
        assert!(line.contains(name), "{line}");
        on_db(
            &db,
            &["api-key", "create", "--tenant", name, "--role", "owner"],
        )
        .await
        .fails(3, "not-found");
    }
}

#[tokio::test]
async fn break_glass_makes_an_owner_key_on_the_database_audited_as_such() {
    let db = migrated_db().await;
    let (acme, _) = create_tenant(&db, "acme").await;
    let mut command = fleetctl();
    command
        .env("SUDO_USER", "bob")
        .arg("--database-url")
        .arg(db.url());
    let created = run(
        command,
        &[
            "api-key",
            "create",
            "--tenant",
            "acme",
            "--role",
            "owner",
            "--name",
            "locked out",
        ],
    )
    .await;
    let out = created.ok_shown_once();
    let key_line = out
        .lines()
        .find(|l| l.starts_with("key "))
        .expect("key field");
    let key = key_line.split_whitespace().nth(1).unwrap();
    assert!(PresentedKey::parse(key).is_ok(), "{key}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["role", "owner"])),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["name", "locked", "out"])),
        "{out}"
    );

    let last = audit_events(&db, acme).await.pop().unwrap();
    assert_eq!(last.action, "api_key.break_glass_create");
    assert_eq!(
        last.actor, "operator:bob@fleetctl",
        "the person behind sudo"
    );

    // Only unrestricted owner keys are made here, and only for a named tenant.
    for args in [
        &["api-key", "create", "--tenant", "acme", "--role", "admin"][..],
        &["api-key", "create", "--role", "owner"],
        &[
            "api-key",
            "create",
            "--tenant",
            "acme",
            "--role",
            "owner",
            "--cidr",
            "10.0.0.0/8",
        ],
    ] {
        on_db(&db, args).await.fails(2, "usage");
    }
}

#[tokio::test]
async fn a_broken_audit_chain_on_the_database_exits_1_naming_the_row() {
    let db = migrated_db().await;
    let (acme, _) = create_tenant(&db, "acme").await;
    let (beta, _) = create_tenant(&db, "beta").await;
    let mut owner = db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    let changed = sqlx::query(
        "UPDATE audit_events SET details = '{\"name\":\"evil\"}' WHERE tenant_id = $1 AND seq = 1",
    )
    .bind(beta)
    .execute(&mut owner)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);

    let verified = on_db(&db, &["audit", "verify"]).await;
    let table = verified.stdout.clone();
    let line = verified.fails(1, "audit-chain-broken");
    assert!(line.contains("1 of 2 audit chains are broken"), "{line}");
    let rows = rows(&table);
    assert_eq!(
        rows[0][..4],
        [acme.to_string(), "acme".into(), "intact".into(), "2".into()],
        "{table}"
    );
    assert_eq!(
        rows[1][..5],
        [
            beta.to_string(),
            "beta".into(),
            "broken".into(),
            "-".into(),
            "1".into()
        ],
        "{table}"
    );

    let json = on_db(&db, &["--json", "audit", "verify", "--tenant", "acme"])
        .await
        .json();
    assert_eq!(json["items"][0]["status"], "intact");
}

#[tokio::test]
async fn a_mistyped_data_dir_is_refused_naming_it_and_nothing_is_created() {
    let base = tempfile::tempdir().unwrap();
    let typo = base.path().join("fleetd-dta");
    let line = run(
        fleetctl(),
        &["--data-dir", typo.to_str().unwrap(), "tenant", "list"],
    )
    .await
    .fails(5, "no-cluster");
    assert!(line.contains(&typo.display().to_string()), "{line}");
    assert!(line.contains("only fleetd creates one"), "{line}");
    assert!(!typo.exists(), "fleetctl created {}", typo.display());

    // A relative one is named as the absolute path it was taken for.
    let mut command = fleetctl();
    command.current_dir(base.path());
    let line = run(command, &["--data-dir", "typo", "tenant", "create", "acme"])
        .await
        .fails(5, "no-cluster");
    assert!(
        line.contains(&base.path().join("typo").display().to_string()),
        "{line}"
    );
    assert!(!base.path().join("typo").exists());
}

#[tokio::test]
async fn a_relative_data_dir_is_resolved_before_the_cluster_starts() {
    // fleetd's data directory, relative to where fleetctl runs, with a cluster that is stopped.
    let base = fleet_tests::data_dir();
    let data_dir = base.path().join("fleetd-data");
    std::fs::create_dir(&data_dir).unwrap();
    set_mode(&data_dir, 0o755);
    let cluster = store::cluster::PrivateCluster::start(&store::cluster::ClusterOptions {
        durable: false,
        ..store::cluster::ClusterOptions::new(data_dir.join("postgres"))
    })
    .await
    .expect("a cluster as fleetd makes it");
    cluster.stop().await.unwrap();

    // fleetctl starts it for the command (postgres changes into its data directory, so a
    // relative socket directory used to fail with "could not create lock file"); the cluster
    // was never migrated (fleetd would have), so that comes first.
    let mut command = fleetctl();
    command.current_dir(base.path());
    run(command, &["--data-dir", "fleetd-data", "db", "migrate"])
        .await
        .ok();
    let mut command = fleetctl();
    command.current_dir(base.path());
    let out = run(
        command,
        &["--data-dir", "fleetd-data", "tenant", "create", "acme"],
    )
    .await
    .ok();
    assert!(out.starts_with("tenant "), "{out}");
    // And the default data directory is the same relative fleetd-data.
    let mut command = fleetctl();
    command.current_dir(base.path());
    let listed = run(command, &["tenant", "list"]).await.ok();
    assert_eq!(rows(&listed).len(), 1, "{listed}");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn a_database_behind_or_ahead_of_fleetctl_is_refused_with_exit_6_and_never_migrated() {
    let expected = store::expected_schema_version();
    // Never migrated: every database command refuses, and nothing is created.
    let db = TestDb::new().await;
    for args in [
        &["tenant", "list"][..],
        &["tenant", "create", "acme"],
        &["audit", "verify"],
        &[
            "api-key", "create", "--tenant", "acme", "--role", "owner", "--name", "x",
        ],
    ] {
        let line = on_db(&db, args).await.fails(6, "schema-mismatch");
        assert!(
            line.contains(&format!(
                "database schema is at version 0, this fleetctl expects {expected}: run \
                 `fleetctl db migrate`"
            )),
            "{args:?}: {line}"
        );
    }
    let mut owner = db.connect_as_owner().await;
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert_eq!(tables, 0, "nothing was migrated");

    // Behind by one migration (the newest was never applied, as after an upgrade of fleetctl).
    on_db(&db, &["db", "migrate"]).await.ok();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(expected)
        .execute(&mut owner)
        .await
        .unwrap();
    // The one before the newest, which need not be `expected - 1`: numbers may have gaps while
    // branches land in another order.
    let previous: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    let line = on_db(&db, &["tenant", "list"])
        .await
        .fails(6, "schema-mismatch");
    assert!(
        line.contains(&format!(
            "database schema is at version {previous}, this fleetctl expects {expected}: run `fleetctl db migrate`"
        )),
        "{line}"
    );

    // Ahead: migrated by a newer release. Refused by every command, `db migrate` included.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         SELECT $1, 'from the future', true, checksum, 0 FROM _sqlx_migrations
          ORDER BY version LIMIT 1",
    )
    .bind(expected + 1)
    .execute(&mut owner)
    .await
    .unwrap();
    for args in [&["tenant", "list"][..], &["db", "migrate"]] {
        let line = on_db(&db, args).await.fails(6, "schema-mismatch");
        assert!(
            line.contains(&format!(
                "database schema is at version {}, this fleetctl expects {expected}: the \
                 database was migrated by a newer release",
                expected + 1
            )),
            "{args:?}: {line}"
        );
    }
}

#[tokio::test]
async fn help_documents_the_exit_codes_and_what_revocation_does() {
    let help = run(fleetctl(), &["--help"]).await.ok();
    assert!(help.contains("Exit codes:"), "{help}");
    for code in [
        "0  success",
        "1  refused",
        "2  usage",
        "3  not found",
        "4  authentication",
        "5  cannot reach",
        "6  the database's schema",
    ] {
        assert!(help.contains(code), "{code}: {help}");
    }
    let help = run(fleetctl(), &["device", "revoke", "--help"]).await.ok();
    assert!(
        help.contains(r#"its next connection is refused with CONNACK 5 "not authorized""#),
        "{help}"
    );
    assert!(
        help.contains("live session is closed within seconds"),
        "{help}"
    );
    assert!(!help.contains("handshake"), "{help}");
}

#[tokio::test]
async fn usage_errors_exit_2_before_anything_is_reached() {
    // clap's own, and fleetctl's.
    let out = run(fleetctl(), &["device", "show", "not-a-uuid"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(
        fleetctl(),
        &["--server", "http://127.0.0.1:1", "tenant", "show"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("HTTPS only"), "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    run(
        fleetctl(),
        &[
            "--tenant",
            "acme",
            "pki",
            "init",
            "--dir",
            pki.to_str().unwrap(),
        ],
    )
    .await
    .fails(2, "usage");
    run(
        fleetctl(),
        &["--data-dir", "/nonexistent", "device", "list"],
    )
    .await
    .fails(2, "usage");
}

#[tokio::test]
async fn pki_init_makes_a_pki_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = run(fleetctl(), &["pki", "init", "--dir", pki.to_str().unwrap()])
        .await
        .ok();
    assert!(
        out.contains("root-ca.pem") && out.contains("issuing-ca.pem"),
        "{out}"
    );
    let expires = out
        .lines()
        .find_map(|l| l.strip_prefix("issuing CA expires "))
        .unwrap();
    assert!(is_display_time(expires), "{out}");
    run(fleetctl(), &["pki", "init", "--dir", pki.to_str().unwrap()])
        .await
        .fails(1, "pki");
}

#[tokio::test]
async fn a_shell_without_user_still_names_the_operator_from_the_user_id() {
    // Tried as a new user would: a non-interactive shell (cron, a container, CI) often sets no
    // USER, and `tenant create` refused to run.
    let db = migrated_db().await;
    let mut command = fleetctl();
    command
        .env_remove("USER")
        .arg("--database-url")
        .arg(db.url());
    let key_file = tempfile::tempdir().unwrap();
    let key_path = key_file.path().join("owner.key");
    let out = run(
        command,
        &[
            "tenant",
            "create",
            "nameless",
            "--key-file",
            key_path.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    // The key went to the file (mode 0600), not to stdout.
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert!(key.starts_with("fpk_live_"), "{key}");
    assert!(!out.contains(key.trim()), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let tenant: TenantId = out
        .lines()
        .find_map(|l| l.strip_prefix("tenant "))
        .unwrap()
        .parse()
        .unwrap();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let events = audit_events(&db, tenant).await;
    assert_eq!(events[0].actor, format!("operator:{user}@fleetctl"));
    // An existing file is never overwritten, and then nothing is created.
    let mut again = fleetctl();
    again.arg("--database-url").arg(db.url());
    run(
        again,
        &[
            "tenant",
            "create",
            "other",
            "--key-file",
            key_path.to_str().unwrap(),
        ],
    )
    .await
    .fails(1, "secret-file");
    let mut owner = db.connect_as_owner().await;
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE name = 'other'")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert_eq!(others, 0);
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key);
}

#[tokio::test]
async fn user_break_glass_creates_an_owner_sets_a_password_and_resets_mfa_audited_as_such() {
    let db = migrated_db().await;
    let (acme, _) = create_tenant(&db, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    let weak = dir.path().join("weak");
    std::fs::write(&password_file, "violet-harbour-lantern-42\n").unwrap();
    std::fs::write(&weak, "q1w2e3r4t5y6\n").unwrap();
    let file = password_file.to_str().unwrap();
    let with = |command: &'static str, file: &str| {
        [
            "--tenant",
            "acme",
            "user",
            command,
            "--email",
            "Root@Acme.example",
            "--password-file",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([file.to_owned()])
        .collect::<Vec<String>>()
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    let weak_args = with("create-owner", weak.to_str().unwrap());
    on_db(&db, &args(&weak_args))
        .await
        .fails(1, "invalid-field");
    // Nothing was created by the refusal, so the reset finds no one.
    on_db(
        &db,
        &[
            "--tenant",
            "acme",
            "user",
            "reset-mfa",
            "--email",
            "root@acme.example",
        ],
    )
    .await
    .fails(3, "not-found");
    let create = with("create-owner", file);
    let out = on_db(&db, &args(&create)).await.ok();
    assert!(out.contains("owner created"), "{out}");
    on_db(&db, &args(&create)).await.fails(1, "conflict");
    let set = with("set-password", file);
    assert!(on_db(&db, &args(&set)).await.ok().contains("password set"));
    on_db(
        &db,
        &[
            "--tenant",
            "acme",
            "user",
            "reset-mfa",
            "--email",
            "root@acme.example",
        ],
    )
    .await
    .ok();
    // On the database only, and for a named tenant.
    on_db(&db, &["user", "reset-mfa", "--email", "root@acme.example"])
        .await
        .fails(2, "usage");

    let database = db.open().await;
    let mut tx = database.app.begin(acme).await.unwrap();
    let email = store::users::Email::parse("root@acme.example").unwrap();
    let (user, hash) = store::users::load_for_sign_in(&mut tx, &email)
        .await
        .unwrap()
        .expect("the owner exists");
    tx.rollback().await.unwrap();
    database.close().await.unwrap();
    assert_eq!(user.role, store::api_keys::Role::Owner);
    assert!(store::credentials::verify_password(
        hash.as_ref(),
        b"violet-harbour-lantern-42"
    ));
    let events = audit_events(&db, acme).await;
    let tail: Vec<(&str, &str)> = events
        .iter()
        .rev()
        .take(3)
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            ("user.break_glass_reset_mfa", "operator:alice@fleetctl"),
            ("user.break_glass_set_password", "operator:alice@fleetctl"),
            ("user.break_glass_create_owner", "operator:alice@fleetctl"),
        ]
    );
}

#[tokio::test]
async fn verify_on_the_database_with_checkpoints_names_a_cut_tail_and_a_url_is_refused() {
    let db = migrated_db().await;
    let (acme, _) = create_tenant(&db, "acme").await;
    let (beta, _) = create_tenant(&db, "beta").await;
    let key = store::audit_checkpoints::CheckpointKey::from_seed(&[5; 32]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("checkpoint.pem");
    std::fs::write(&pem, key.public_key().to_pem()).unwrap();
    let database = db.open().await;
    for tenant in [acme, beta] {
        let mut tx = database.app.begin(tenant).await.unwrap();
        let written = store::audit_checkpoints::write(&mut tx, &key)
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
        store::audit_checkpoints::push_to_dir(dir.path(), &written).unwrap();
    }
    database.close().await.unwrap();
    let checkpoints = dir.path().to_str().unwrap();
    let args = [
        "audit",
        "verify",
        "--checkpoints",
        checkpoints,
        "--public-key",
        pem.to_str().unwrap(),
    ];
    let out = on_db(&db, &args).await.ok();
    assert!(rows(&out).iter().all(|r| r[2] == "intact"), "{out}");

    // Beta's newest event removed and its head rewound to the one before: the plain chain holds.
    let mut owner = db.connect_as_owner().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut owner)
        .await
        .unwrap();
    let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_events WHERE tenant_id = $1")
        .bind(beta)
        .fetch_one(&mut owner)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1 AND seq = $2")
        .bind(beta)
        .bind(last)
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_chain_heads h SET last_seq = e.seq, last_hash = e.hash
           FROM audit_events e WHERE h.tenant_id = $1 AND e.tenant_id = $1 AND e.seq = $2",
    )
    .bind(beta)
    .bind(last - 1)
    .execute(&mut owner)
    .await
    .unwrap();
    on_db(&db, &["audit", "verify", "--tenant", "beta"])
        .await
        .ok();
    let line = on_db(&db, &args).await.fails(1, "audit-chain-broken");
    assert!(
        line.contains(&format!("tenant {beta} at seq {last}: behind_checkpoint")),
        "{line}"
    );

    let line = on_db(
        &db,
        &[
            "audit",
            "verify",
            "--checkpoints",
            "https://127.0.0.1:1/v1/audit-checkpoints",
            "--public-key",
            pem.to_str().unwrap(),
        ],
    )
    .await
    .fails(2, "usage");
    assert!(line.contains("on the database"), "{line}");
}
