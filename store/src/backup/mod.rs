//! Encrypted backups of the fleetplane database, proven by restoring them (issue 17).
//!
//! - [`create`]: `pg_dump --format=custom` of the database, in the snapshot in which the rows of
//!   every table were counted (`pg_export_snapshot()` + `pg_dump --snapshot`), streamed through
//!   ChaCha20-Poly1305 ([`format`] documents the framing) to a temporary file renamed into place.
//!   The authenticated header records the format, when, the schema version, the row count of
//!   every table and the application role's privileges; the trailer the dump's SHA-256.
//! - [`restore`]: into an empty database. The whole file is authenticated first, so a bad file
//!   touches nothing; then `pg_restore --single-transaction` as the target's owner, without the
//!   source's owners and grants (the source's application role is another database's), and the
//!   header's privileges are granted to the target's own application role.
//! - [`verify`]: restores into a scratch database on the source's server (dropped afterwards,
//!   whatever happens), compares the row counts with the header's and verifies every tenant's
//!   audit chain there; [`record_verification`] keeps the outcome in `backup_verifications`.
//!
//! Memory stays flat: a few [`format::CHUNK`]s, whatever the database's size.

pub mod format;
mod pg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use format::{read_secret_file, BackupKey, BackupSecret, Passphrase};
use format::{Reader, RecordKind, Writer, CHUNK};
pub use pg::PgAccess;

use crate::audit::{self, ChainVerdict};
use crate::{Database, StoreError, TenantId};

/// Why a backup could not be made, read, verified or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The key check of the file does not match the key given.
    #[error("the key does not open this backup (wrong key file)")]
    WrongKey,
    /// The file ends before its trailer.
    #[error("the backup file is truncated (it ends before its final record)")]
    Truncated,
    /// A record fails authentication, is out of place, or bytes follow the trailer.
    #[error("the backup file was altered or damaged (record {record} fails authentication)")]
    Altered {
        /// The number of the first bad record.
        record: u64,
    },
    /// The file was made with the other kind of secret.
    #[error("this backup was made with {made_with}: give that instead")]
    OtherKeySource {
        /// "a key file" or "a passphrase".
        made_with: &'static str,
    },
    /// The file does not start with the magic bytes.
    #[error("not a fleetplane backup file")]
    NotABackup,
    /// A framing or key source this build does not know.
    #[error(
        "backup format version {version} (key source {key_source}) is not supported by this build"
    )]
    UnsupportedFormat {
        /// The file's format version.
        version: u16,
        /// The file's key source byte.
        key_source: u8,
    },
    /// The authenticated contents do not hold together (a bug, or a key holder's forgery).
    #[error("the backup's {0} is invalid")]
    Invalid(&'static str),
    /// The key file is missing, unreadable, readable by others, or malformed.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The target of a restore already holds tables.
    #[error("database {database} is not empty ({tables} tables in schema public): restore needs an empty database")]
    NotEmpty {
        /// The target database.
        database: String,
        /// How many tables it has.
        tables: i64,
    },
    /// pg_dump or pg_restore was not found in a usable version, or failed.
    #[error("{program}: {detail}")]
    Tool {
        /// The program.
        program: &'static str,
        /// What happened (its last lines of stderr).
        detail: String,
    },
    /// The system's random source failed.
    #[error("the system's random number generator failed")]
    Random,
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

/// One privilege of the application role (or of PUBLIC, on a function), as recorded at backup
/// time and granted at restore to the target's own application role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "snake_case")]
pub enum Grant {
    /// A table privilege.
    Table { table: String, privilege: String },
    /// A column privilege.
    Column {
        table: String,
        column: String,
        privilege: String,
    },
    /// A sequence privilege.
    Sequence { sequence: String, privilege: String },
    /// EXECUTE on a function (its signature).
    Function { function: String },
    /// EXECUTE on a function for PUBLIC (the default the migrations left in place).
    PublicFunction { function: String },
}

/// The authenticated header of a backup (record 0).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    /// When the snapshot was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The newest migration applied to the source.
    pub schema_version: i64,
    /// The source server's `server_version`.
    pub server_version: String,
    /// Rows per table of schema `public`, in the dump's snapshot.
    pub row_counts: BTreeMap<String, i64>,
    /// The application role's privileges.
    pub app_grants: Vec<Grant>,
}

/// The authenticated trailer (the last record).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trailer {
    /// SHA-256 of the dump, hex.
    pub dump_sha256: String,
    /// The dump's length.
    pub dump_bytes: u64,
}

/// What [`create`] wrote.
pub struct Created {
    /// The header written.
    pub header: Header,
    /// The trailer written.
    pub trailer: Trailer,
}

/// Dumps the database of `access` (its owner role: [`Database::owner_access`]) into `out`
/// (mode 0600, written to a temporary name beside it and renamed when complete: `out` is either
/// the whole backup or untouched).
pub async fn create(
    access: &PgAccess,
    out: &Path,
    key: &BackupSecret,
) -> Result<Created, BackupError> {
    let mut conn = PgConnection::connect_with(&access.options).await?;
    let outcome = create_in_snapshot(&mut conn, access, out, key).await;
    // The snapshot's transaction ends only after pg_dump has finished with it.
    conn.close().await.ok();
    outcome
}

async fn create_in_snapshot(
    conn: &mut PgConnection,
    access: &PgAccess,
    out: &Path,
    key: &BackupSecret,
) -> Result<Created, BackupError> {
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *conn)
        .await?;
    let header = Header {
        created_at: OffsetDateTime::now_utc(),
        schema_version: sqlx::query_scalar(
            "SELECT coalesce(max(version), 0) FROM public._sqlx_migrations WHERE success",
        )
        .fetch_one(&mut *conn)
        .await?,
        server_version: sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(&mut *conn)
            .await?,
        row_counts: pg::row_counts(conn).await?,
        app_grants: pg::app_grants(conn).await?,
    };
    let pg_dump = pg::find_tool("pg_dump", access, pg::server_major(conn).await?).await?;
    let partial = partial_path(out)?;
    let written = write_dump(&pg_dump, access, &snapshot, &partial, key, &header).await;
    let trailer = match written {
        Ok(trailer) => trailer,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    if let Err(e) = tokio::fs::rename(&partial, out).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(BackupError::Io {
            context: format!("renaming the backup to {}", out.display()),
            source: e,
        });
    }
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(Created { header, trailer })
}

fn partial_path(out: &Path) -> Result<PathBuf, BackupError> {
    let name = out
        .file_name()
        .ok_or_else(|| BackupError::Io {
            context: format!("{}", out.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        })?
        .to_string_lossy();
    Ok(out.with_file_name(format!(".{name}.partial")))
}

async fn write_dump(
    pg_dump: &Path,
    access: &PgAccess,
    snapshot: &str,
    partial: &Path,
    key: &BackupSecret,
    header: &Header,
) -> Result<Trailer, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)
        .map_err(|e| BackupError::Io {
            context: format!("creating {}", partial.display()),
            source: e,
        })?;
    let file = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
    let mut writer = Writer::start(file, key).await?;
    let header_json = serde_json::to_vec(header).map_err(|_| BackupError::Invalid("header"))?;
    if header_json.len() > CHUNK {
        return Err(BackupError::Invalid("header (too many tables or grants)"));
    }
    writer.record(RecordKind::Header, &header_json).await?;

    let mut child = access
        .command(pg_dump)
        .args(["--format=custom", "--no-password"])
        .arg(format!("--snapshot={snapshot}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| pg::spawn_failed("pg_dump", e))?;
    let stderr = pg::collect_stderr(child.stderr.take());
    let mut stdout = child.stdout.take().expect("piped");
    let mut digest = Sha256::new();
    let mut bytes = 0u64;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = fill(&mut stdout, &mut chunk)
            .await
            .map_err(|e| pg::tool_io("pg_dump", e))?;
        if n == 0 {
            break;
        }
        digest.update(&chunk[..n]);
        bytes += n as u64;
        writer.record(RecordKind::Data, &chunk[..n]).await?;
    }
    let status = child.wait().await.map_err(|e| pg::tool_io("pg_dump", e))?;
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(pg::tool_failed("pg_dump", status, &stderr));
    }
    let trailer = Trailer {
        dump_sha256: hex::encode(digest.finalize()),
        dump_bytes: bytes,
    };
    let trailer_json = serde_json::to_vec(&trailer).map_err(|_| BackupError::Invalid("trailer"))?;
    writer.record(RecordKind::Trailer, &trailer_json).await?;
    let mut file = writer.finish().await?;
    file.flush().await.map_err(|e| BackupError::Io {
        context: format!("writing {}", partial.display()),
        source: e,
    })?;
    file.get_ref()
        .sync_all()
        .await
        .map_err(|e| BackupError::Io {
            context: format!("syncing {}", partial.display()),
            source: e,
        })?;
    Ok(trailer)
}

/// Reads until `buf` is full or the input ends; the bytes read.
async fn fill<R: tokio::io::AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

async fn open_backup(
    file: &Path,
    key: &BackupSecret,
) -> Result<Reader<tokio::io::BufReader<tokio::fs::File>>, BackupError> {
    let input = tokio::fs::File::open(file)
        .await
        .map_err(|e| BackupError::Io {
            context: format!("opening {}", file.display()),
            source: e,
        })?;
    Reader::start(tokio::io::BufReader::new(input), key).await
}

/// Reads every record of `file`, handing the dump's bytes to `sink`; checks the trailer's digest
/// and length. Returns the header and trailer.
async fn read_backup<F, Fut>(
    file: &Path,
    key: &BackupSecret,
    mut sink: F,
) -> Result<(Header, Trailer), BackupError>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), BackupError>>,
{
    let mut reader = open_backup(file, key).await?;
    let mut header = None;
    let mut digest = Sha256::new();
    let mut bytes = 0u64;
    let mut trailer = None;
    while let Some((kind, plain)) = reader.next().await? {
        match kind {
            RecordKind::Header => {
                header = Some(
                    serde_json::from_slice::<Header>(&plain)
                        .map_err(|_| BackupError::Invalid("header"))?,
                )
            }
            RecordKind::Data => {
                digest.update(&plain);
                bytes += plain.len() as u64;
                sink(plain).await?;
            }
            RecordKind::Trailer => {
                trailer = Some(
                    serde_json::from_slice::<Trailer>(&plain)
                        .map_err(|_| BackupError::Invalid("trailer"))?,
                )
            }
        }
    }
    let (header, trailer) = match (header, trailer) {
        (Some(h), Some(t)) => (h, t),
        _ => return Err(BackupError::Truncated),
    };
    if trailer.dump_sha256 != hex::encode(digest.finalize()) || trailer.dump_bytes != bytes {
        return Err(BackupError::Invalid("dump digest"));
    }
    Ok((header, trailer))
}

/// Authenticates the whole file without restoring it: the header and trailer.
pub async fn check_file(file: &Path, key: &BackupSecret) -> Result<(Header, Trailer), BackupError> {
    read_backup(file, key, |_| async { Ok(()) }).await
}

/// What [`restore`] did.
pub struct Restored {
    /// The backup's header.
    pub header: Header,
    /// The backup's trailer.
    pub trailer: Trailer,
    /// The target's application role, now holding the header's privileges.
    pub app_role: String,
}

/// Restores `file` into the empty database of `target` (its owner role). The file is
/// authenticated in full before anything is written; the restore is one transaction.
pub async fn restore(
    file: &Path,
    key: &BackupSecret,
    target: &PgAccess,
) -> Result<Restored, BackupError> {
    check_file(file, key).await?;
    restore_after_check(file, key, target).await
}

/// [`restore`] of a file [`check_file`] accepted. Its second reading authenticates every record
/// again before pg_restore sees it: a file changed in between fails, and nothing is committed.
async fn restore_after_check(
    file: &Path,
    key: &BackupSecret,
    target: &PgAccess,
) -> Result<Restored, BackupError> {
    let mut conn = PgConnection::connect_with(&target.options).await?;
    let outcome = restore_checked(file, key, target, &mut conn).await;
    conn.close().await.ok();
    outcome
}

async fn restore_checked(
    file: &Path,
    key: &BackupSecret,
    target: &PgAccess,
    conn: &mut PgConnection,
) -> Result<Restored, BackupError> {
    let major = pg::server_major(conn).await?;
    let num: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut *conn)
        .await?;
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(&mut *conn)
        .await?;
    crate::check_server_version(num, &version)?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
    )
    .fetch_one(&mut *conn)
    .await?;
    if tables > 0 {
        return Err(BackupError::NotEmpty {
            database: target.options.get_database().unwrap_or("?").to_owned(),
            tables,
        });
    }
    let pg_restore = pg::find_tool("pg_restore", target, major).await?;
    let mut child = target
        .command(&pg_restore)
        .args([
            "--no-owner",
            "--no-acl",
            "--single-transaction",
            "--exit-on-error",
            "--no-password",
        ])
        .arg(format!(
            "--dbname={}",
            target.options.get_database().unwrap_or("postgres")
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| pg::spawn_failed("pg_restore", e))?;
    let stderr = pg::collect_stderr(child.stderr.take());
    let stdin = std::sync::Arc::new(tokio::sync::Mutex::new(child.stdin.take().expect("piped")));
    let fed = read_backup(file, key, |plain| {
        let stdin = stdin.clone();
        async move {
            stdin
                .lock()
                .await
                .write_all(&plain)
                .await
                .map_err(|e| pg::tool_io("pg_restore", e))
        }
    })
    .await;
    let (header, trailer) = match fed {
        Ok(read) => read,
        Err(e) => {
            // Killed before its input ends, pg_restore never commits its one transaction.
            child.start_kill().ok();
            child.wait().await.ok();
            return Err(e);
        }
    };
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(|e| pg::tool_io("pg_restore", e))?;
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(pg::tool_failed("pg_restore", status, &stderr));
    }
    let app_role = pg::grant_to_app_role(conn, &header.app_grants).await?;
    Ok(Restored {
        header,
        trailer,
        app_role,
    })
}

/// The name of a scheduled backup made at `at`: `fleetplane-20261202T153000Z.backup`, so that
/// names sort by time.
pub fn scheduled_file_name(at: OffsetDateTime) -> String {
    format!(
        "fleetplane-{:04}{:02}{:02}T{:02}{:02}{:02}Z.backup",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Rotation: removes all but the `keep` newest scheduled backups in `dir` (by name, which sorts
/// by time), and any partial file a crash left. Other files are never touched. Returns what was
/// removed.
pub fn rotate(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let io = |e: std::io::Error| BackupError::Io {
        context: format!("rotating backups in {}", dir.display()),
        source: e,
    };
    let mut scheduled = Vec::new();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("fleetplane-") && name.ends_with(".backup");
        if name.starts_with(".fleetplane-") && name.ends_with(".backup.partial") {
            removed.push(entry.path());
        } else if ours && name.len() == scheduled_file_name(OffsetDateTime::UNIX_EPOCH).len() {
            scheduled.push(name);
        }
    }
    scheduled.sort_unstable();
    let excess = scheduled.len().saturating_sub(keep);
    removed.extend(scheduled.drain(..excess).map(|name| dir.join(name)));
    for path in &removed {
        std::fs::remove_file(path).map_err(io)?;
    }
    Ok(removed)
}

/// A table's rows: as the header recorded them, and as restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableCheck {
    /// The table.
    pub table: String,
    /// Rows at backup time.
    pub recorded: i64,
    /// Rows in the restored copy (`None`: the table is missing there).
    pub restored: Option<i64>,
}

/// A tenant's audit chain in the restored copy.
#[derive(Clone, Debug)]
pub struct ChainCheck {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Its name.
    pub name: String,
    /// The verdict.
    pub verdict: ChainVerdict,
}

/// What [`verify`] found.
pub struct Verification {
    /// The backup's header.
    pub header: Header,
    /// The backup's trailer.
    pub trailer: Trailer,
    /// Every table of the header, and any the restored copy has beyond them.
    pub tables: Vec<TableCheck>,
    /// Every tenant's chain.
    pub chains: Vec<ChainCheck>,
}

impl Verification {
    /// Whether every count matches and every chain is intact.
    pub fn verified(&self) -> bool {
        self.tables.iter().all(|t| t.restored == Some(t.recorded))
            && self
                .chains
                .iter()
                .all(|c| matches!(c.verdict, ChainVerdict::Intact { .. }))
    }
}

/// Restores `file` into a scratch database on the server of `source` and checks it there: the
/// row counts against the header's, every tenant's audit chain. The scratch database and its
/// application role are dropped afterwards, whatever happens.
pub async fn verify(
    file: &Path,
    key: &BackupSecret,
    source: &Database,
) -> Result<Verification, BackupError> {
    check_file(file, key).await?;
    let access = source.owner_access();
    let scratch = format!("fleet_backup_verify_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&access.options).await?;
    // DDL: the name is ours, lower-case letters, digits and underscores.
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&mut admin)
        .await?;
    let target = access.for_database(&scratch);
    let outcome = verify_in(file, key, &target).await;
    let dropped = drop_scratch(&mut admin, &scratch).await;
    admin.close().await.ok();
    let verification = outcome?;
    dropped?;
    Ok(verification)
}

async fn drop_scratch(admin: &mut PgConnection, scratch: &str) -> Result<(), BackupError> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        .execute(&mut *admin)
        .await?;
    // The restore made the scratch database's application role (roles are server-wide).
    sqlx::query(&format!("DROP ROLE IF EXISTS fleet_app_{scratch}"))
        .execute(&mut *admin)
        .await?;
    Ok(())
}

async fn verify_in(
    file: &Path,
    key: &BackupSecret,
    target: &PgAccess,
) -> Result<Verification, BackupError> {
    let restored = restore_after_check(file, key, target).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(target.options.clone())
        .await?;
    let outcome = check_restored(&pool, restored).await;
    pool.close().await;
    outcome
}

async fn check_restored(
    pool: &sqlx::PgPool,
    restored: Restored,
) -> Result<Verification, BackupError> {
    let mut conn = pool.acquire().await?;
    let found = pg::row_counts(&mut conn).await?;
    let tenants: Vec<(TenantId, String)> =
        sqlx::query_as("SELECT tenant_id, name FROM public.tenants ORDER BY created_at, tenant_id")
            .fetch_all(&mut *conn)
            .await?;
    drop(conn);
    let mut tables: Vec<TableCheck> = restored
        .header
        .row_counts
        .iter()
        .map(|(table, &recorded)| TableCheck {
            table: table.clone(),
            recorded,
            restored: found.get(table).copied(),
        })
        .collect();
    // A table the header does not know is a difference as well.
    for (table, &rows) in &found {
        if !restored.header.row_counts.contains_key(table) {
            tables.push(TableCheck {
                table: table.clone(),
                recorded: -1,
                restored: Some(rows),
            });
        }
    }
    let mut chains = Vec::with_capacity(tenants.len());
    for (tenant_id, name) in tenants {
        // The store's own verifier, in a tenant transaction as the restored application role:
        // the chain is read through row-level security exactly as fleetd reads it. The role's
        // name is lower-case letters, digits and underscores (fleet_app_role()).
        let begin = format!(
            "{}; SET LOCAL ROLE \"{}\"",
            crate::TenantTx::begin_statement(tenant_id),
            restored.app_role
        );
        let connection = pool.acquire().await?;
        let tx = sqlx::Transaction::begin(connection, Some(begin.into())).await?;
        let mut tx = crate::TenantTx::opened(tx, tenant_id, crate::StoreMetrics::default());
        let verdict = audit::verify(&mut tx).await?;
        tx.rollback().await?;
        chains.push(ChainCheck {
            tenant_id,
            name,
            verdict,
        });
    }
    Ok(Verification {
        header: restored.header,
        trailer: restored.trailer,
        tables,
        chains,
    })
}

/// The outcome of one `fleetctl backup verify`, as kept in `backup_verifications`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct VerificationRecord {
    /// When it ran.
    pub verified_at: OffsetDateTime,
    /// The backup file's name.
    pub file_name: String,
    /// When the backup was made (unknown when the file could not be read).
    pub backup_created_at: Option<OffsetDateTime>,
    /// The dump's SHA-256 (unknown when the file could not be read).
    pub dump_sha256: Option<String>,
    /// Whether the backup was intact and verified.
    pub verified: bool,
    /// A one-line summary: what failed, or what was checked.
    pub detail: String,
    /// Per table: recorded and restored rows; per tenant: the chain's verdict.
    pub checks: serde_json::Value,
}

/// Keeps the outcome of a verification in `backup_verifications` of `db`.
pub async fn record_verification(
    db: &Database,
    file_name: &str,
    outcome: &Result<Verification, BackupError>,
) -> Result<(), StoreError> {
    let (created, digest, verified, detail, checks) = match outcome {
        Ok(v) => {
            let chains: Vec<serde_json::Value> = v
                .chains
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "tenant_id": c.tenant_id.to_string(),
                        "intact": matches!(c.verdict, ChainVerdict::Intact { .. }),
                        "verdict": format!("{:?}", c.verdict),
                    })
                })
                .collect();
            (
                Some(v.header.created_at),
                Some(v.trailer.dump_sha256.clone()),
                v.verified(),
                summary(v),
                serde_json::json!({ "tables": v.tables, "chains": chains }),
            )
        }
        Err(e) => (None, None, false, e.to_string(), serde_json::json!({})),
    };
    sqlx::query(
        "INSERT INTO public.backup_verifications
             (file_name, backup_created_at, dump_sha256, verified, detail, checks)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(file_name)
    .bind(created)
    .bind(digest)
    .bind(verified)
    .bind(detail)
    .bind(checks)
    .execute(db.admin()?.pool())
    .await?;
    Ok(())
}

/// The most recent verification recorded in `db`, for the compliance report.
pub async fn last_verification(db: &Database) -> Result<Option<VerificationRecord>, StoreError> {
    Ok(sqlx::query_as::<_, VerificationRecord>(
        "SELECT verified_at, file_name, backup_created_at, dump_sha256, verified, detail, checks
           FROM public.backup_verifications ORDER BY verified_at DESC, verification_id DESC LIMIT 1",
    )
    .fetch_optional(db.admin()?.pool())
    .await?)
}

/// One line saying what a verification found.
pub fn summary(v: &Verification) -> String {
    let mismatched = v
        .tables
        .iter()
        .filter(|t| t.restored != Some(t.recorded))
        .count();
    let broken = v
        .chains
        .iter()
        .filter(|c| !matches!(c.verdict, ChainVerdict::Intact { .. }))
        .count();
    if mismatched == 0 && broken == 0 {
        format!(
            "verified: {} tables match their recorded row counts, {} audit chains intact",
            v.tables.len(),
            v.chains.len()
        )
    } else {
        format!(
            "NOT verified: {mismatched} of {} tables differ from their recorded row counts, \
             {broken} of {} audit chains broken",
            v.tables.len(),
            v.chains.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_newest_scheduled_backups_and_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let names: Vec<String> = (0..5)
            .map(|h| scheduled_file_name(start + time::Duration::hours(h)))
            .collect();
        // Written out of order: the names, not the files' times, decide.
        for name in names.iter().rev() {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("manual.backup"), b"x").unwrap();
        std::fs::write(dir.path().join("fleetplane-notes.backup"), b"x").unwrap();
        let partial = format!(".{}.partial", scheduled_file_name(start));
        std::fs::write(dir.path().join(&partial), b"x").unwrap();

        let removed = rotate(dir.path(), 2).unwrap();
        assert_eq!(removed.len(), 4, "{removed:?}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = vec![
            names[3].clone(),
            names[4].clone(),
            "fleetplane-notes.backup".to_owned(),
            "manual.backup".to_owned(),
        ];
        expected.sort();
        assert_eq!(left, expected);
        assert!(
            rotate(dir.path(), 2).unwrap().is_empty(),
            "a second run removes nothing"
        );
        assert_eq!(
            scheduled_file_name(start),
            "fleetplane-20270115T080000Z.backup"
        );
    }
}
