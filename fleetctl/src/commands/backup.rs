//! `fleetctl backup`: encrypted backups of fleetd's database, proven by restoring them
//! (store::backup has the format and the work; this is the command line).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use store::audit::ChainVerdict;
use store::backup::{
    self, BackupError, BackupKey, BackupSecret, Passphrase, PgAccess, Verification,
};

use super::{show, Ctx};
use crate::db::{self, Location};
use crate::error::{Exit, Failure};
use crate::output::{self, Table};

/// The environment variable that may hold the key (64 hex digits) instead of a key file.
const KEY_ENV: &str = "FLEETCTL_BACKUP_KEY";
/// The environment variable that may hold a passphrase instead of a key.
const PASSPHRASE_ENV: &str = "FLEETPLANE_BACKUP_PASSPHRASE";

/// `fleetctl backup ...`.
#[derive(Subcommand)]
pub enum BackupCommand {
    /// Write a new random backup key to a file (mode 0600; never overwrites).
    Keygen {
        /// The key file to create.
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
    },
    /// Dump the database (--data-dir or --database-url) into an encrypted backup file.
    Create {
        /// The backup file (written beside as a temporary file, renamed when complete).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Restore a backup into a scratch database on the server of --data-dir or --database-url,
    /// check its row counts and every tenant's audit chain, and record the result there. Exits
    /// 0 only when the backup is intact and verified.
    Verify {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Restore a backup into the empty database of --database-url; fleetd then starts on it.
    Restore {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
}

/// Where the key is: a key file, a passphrase file, else the environment. Never an argument
/// holding the secret itself.
#[derive(Args)]
pub struct KeyArgs {
    /// The key file (`fleetctl backup keygen`), mode 0600 [default: the key in hex in
    /// FLEETCTL_BACKUP_KEY, else a passphrase in FLEETPLANE_BACKUP_PASSPHRASE].
    #[arg(long, value_name = "KEYFILE", conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
    /// A file (mode 0600) whose first line is a passphrase (at least 12 characters), stretched
    /// with argon2id, instead of a key file.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> Result<BackupSecret, Failure> {
        if let Some(path) = &self.key_file {
            return BackupKey::load(path)
                .map(BackupSecret::Key)
                .map_err(failure);
        }
        if let Some(path) = &self.passphrase_file {
            let text = backup::read_secret_file(path).map_err(failure)?;
            let first = zeroize::Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
            return Passphrase::new(first)
                .map(BackupSecret::Passphrase)
                .map_err(|reason| Failure::usage(format!("{}: {reason}", path.display())));
        }
        if let Some(hex) = std::env::var(KEY_ENV).ok().filter(|v| !v.is_empty()) {
            let hex = zeroize::Zeroizing::new(hex);
            return BackupKey::from_hex(hex.trim())
                .map(BackupSecret::Key)
                .map_err(|reason| Failure::usage(format!("{KEY_ENV}: {reason}")));
        }
        if let Some(text) = std::env::var(PASSPHRASE_ENV).ok().filter(|v| !v.is_empty()) {
            return Passphrase::new(zeroize::Zeroizing::new(text))
                .map(BackupSecret::Passphrase)
                .map_err(|reason| Failure::usage(format!("{PASSPHRASE_ENV}: {reason}")));
        }
        Err(Failure::usage(format!(
            "no backup key: give --key-file KEYFILE (fleetctl backup keygen makes one) or \
             --passphrase-file FILE, or set {KEY_ENV} or {PASSPHRASE_ENV}"
        )))
    }
}

/// Runs `fleetctl backup ...`.
pub async fn run(ctx: &Ctx, command: BackupCommand) -> Result<(), Failure> {
    ctx.refuse_tenant("backup")?;
    match command {
        BackupCommand::Keygen { out } => keygen(ctx, &out),
        BackupCommand::Create { out, key } => create(ctx, &out, &key.load()?).await,
        BackupCommand::Verify { file, key } => verify(ctx, &file, &key.load()?).await,
        BackupCommand::Restore { file, key } => restore(ctx, &file, &key.load()?).await,
    }
}

fn keygen(ctx: &Ctx, out: &Path) -> Result<(), Failure> {
    BackupKey::write_new(out).map_err(failure)?;
    show(ctx, &json!({ "key_file": out }), || {
        Ok(format!(
            "backup key written to {} (mode 0600): keep a copy apart from the backups\n",
            out.display()
        ))
    })
}

async fn create(ctx: &Ctx, out: &Path, key: &BackupSecret) -> Result<(), Failure> {
    let database = db::open(&ctx.bootstrap_location()?).await?;
    let outcome = backup::create(database.owner_access(), out, key).await;
    db::close(database).await?;
    let created = outcome.map_err(failure)?;
    let rows: i64 = created.header.row_counts.values().sum();
    show(
        ctx,
        &json!({
            "file": out,
            "created_at": store::audit::rfc3339_micros(created.header.created_at),
            "schema_version": created.header.schema_version,
            "row_counts": created.header.row_counts,
            "dump_bytes": created.trailer.dump_bytes,
            "dump_sha256": created.trailer.dump_sha256,
        }),
        || {
            Ok(format!(
                "backup written to {}: {} tables, {rows} rows, dump of {} bytes, sha256 {}\n",
                out.display(),
                created.header.row_counts.len(),
                created.trailer.dump_bytes,
                created.trailer.dump_sha256
            ))
        },
    )
}

async fn verify(ctx: &Ctx, file: &Path, key: &BackupSecret) -> Result<(), Failure> {
    let database = db::open(&ctx.bootstrap_location()?).await?;
    let outcome = backup::verify(file, key, &database).await;
    let file_name = file.display().to_string();
    let recorded = backup::record_verification(&database, &file_name, &outcome).await;
    db::close(database).await?;
    if let Err(e) = &recorded {
        output::notice(&format!("the result was not recorded in the database: {e}"));
    }
    let verification = outcome.map_err(failure)?;
    let verified = verification.verified();
    show(
        ctx,
        &verification_json(&verification, recorded.is_ok()),
        || Ok(verification_text(&verification)),
    )?;
    if verified {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Refused,
            "backup-not-verified",
            backup::summary(&verification),
        ))
    }
}

fn verification_json(v: &Verification, recorded: bool) -> serde_json::Value {
    let chains: Vec<_> = v
        .chains
        .iter()
        .map(|c| match c.verdict {
            ChainVerdict::Intact { events } => json!({
                "tenant_id": c.tenant_id, "name": c.name, "status": "intact", "events": events,
            }),
            ChainVerdict::Broken { seq, reason } => json!({
                "tenant_id": c.tenant_id, "name": c.name, "status": "broken", "seq": seq,
                "reason": reason.as_str(),
            }),
        })
        .collect();
    json!({
        "verified": v.verified(),
        "recorded": recorded,
        "created_at": store::audit::rfc3339_micros(v.header.created_at),
        "schema_version": v.header.schema_version,
        "dump_sha256": v.trailer.dump_sha256,
        "tables": v.tables,
        "chains": chains,
    })
}

fn verification_text(v: &Verification) -> String {
    let mut tables = Table::new(&["TABLE", "RECORDED", "RESTORED", "MATCH"]);
    for t in &v.tables {
        tables.row(vec![
            t.table.clone(),
            if t.recorded < 0 {
                "-".into()
            } else {
                t.recorded.to_string()
            },
            output::opt(t.restored),
            output::yes_no(t.restored == Some(t.recorded)),
        ]);
    }
    let mut chains = Table::new(&["TENANT", "NAME", "CHAIN", "EVENTS", "BROKEN AT"]);
    for c in &v.chains {
        let (status, events, seq) = match c.verdict {
            ChainVerdict::Intact { events } => ("intact", events.to_string(), "-".to_owned()),
            ChainVerdict::Broken { seq, reason } => (
                "broken",
                "-".to_owned(),
                format!("{seq} ({})", reason.describe()),
            ),
        };
        chains.row(vec![
            c.tenant_id.to_string(),
            output::printable(&c.name),
            status.into(),
            events,
            seq,
        ]);
    }
    format!(
        "backup of {} (schema {}), dump sha256 {}\n\n{}\n{}\n{}\n",
        output::time(v.header.created_at),
        v.header.schema_version,
        v.trailer.dump_sha256,
        tables.render(),
        chains.render(),
        backup::summary(v)
    )
}

async fn restore(ctx: &Ctx, file: &Path, key: &BackupSecret) -> Result<(), Failure> {
    let Some(Location::Url(url)) = ctx.database_location()? else {
        return Err(Failure::usage(
            "backup restore needs --database-url (or --database-url-file) of an empty database, \
             as its owner role",
        ));
    };
    let bindir = std::env::var_os("FLEETD_DATABASE__POSTGRES_BINDIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let target = PgAccess::from_url(&url, bindir)?;
    let restored = backup::restore(file, key, &target).await.map_err(failure)?;
    show(
        ctx,
        &json!({
            "created_at": store::audit::rfc3339_micros(restored.header.created_at),
            "schema_version": restored.header.schema_version,
            "dump_sha256": restored.trailer.dump_sha256,
            "app_role": restored.app_role,
        }),
        || {
            Ok(format!(
                "restored the backup of {} (schema {}) into {}; its application role is {}: \
                 start fleetd on it\n",
                output::time(restored.header.created_at),
                restored.header.schema_version,
                url.redacted(),
                restored.app_role
            ))
        },
    )
}

/// A backup failure as fleetctl reports it.
fn failure(e: BackupError) -> Failure {
    let slug = match e {
        BackupError::Store(store) => return Failure::from(store),
        BackupError::WrongKey => "backup-wrong-key",
        BackupError::Truncated => "backup-truncated",
        BackupError::Altered { .. } => "backup-altered",
        BackupError::NotABackup => "not-a-backup",
        BackupError::UnsupportedFormat { .. } => "backup-unsupported",
        BackupError::Invalid(_) => "backup-invalid",
        BackupError::KeyFile { .. } => "backup-key-file",
        BackupError::OtherKeySource { .. } => "backup-wrong-key",
        BackupError::NotEmpty { .. } => "database-not-empty",
        BackupError::Io { .. } => "backup-io",
        BackupError::Tool { .. } | BackupError::Random => {
            return Failure::new(Exit::Unavailable, "backup-tool", e.to_string())
        }
    };
    Failure::new(Exit::Refused, slug, e.to_string())
}
