//! fleetctl, the operator CLI. Bootstrap commands talk to the database directly: the private
//! cluster of `--data-dir` (attaching to a running fleetd's) or the server of `--database-url`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use store::audit::{self, ChainVerdict};
use store::{tenants, Database, DatabaseSettings, Purpose, TenantId};

/// fleetplane operator CLI.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// fleetd's data directory, whose private PostgreSQL cluster to use.
    #[arg(
        long,
        env = "FLEETD_DATA_DIR",
        default_value = "fleetd-data",
        global = true
    )]
    data_dir: PathBuf,
    /// PostgreSQL URL of the owner role, instead of the private cluster.
    #[arg(long, env = "FLEETD_DATABASE_URL", global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The fleet PKI.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a root CA and an online issuing CA (keys at mode 0600) in DIR; refuses to
    /// overwrite. fleetd needs only the issuing CA: keep root-ca.key offline.
    Init {
        /// Directory for the PKI; created if missing.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and its audit chain; prints the tenant id.
    Create {
        /// Display name.
        name: String,
    },
    /// List tenants.
    List,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute audit chains and name the first broken row; exits 1 on any break.
    Verify {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<TenantId>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleetctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands that need no database.
    if let Command::Pki(PkiCommand::Init { dir }) = &cli.command {
        return init_pki(dir);
    }
    let settings = DatabaseSettings {
        url: cli.database_url.filter(|url| !url.is_empty()),
        data_dir: cli.data_dir,
        app_password: std::env::var("FLEETD_DATABASE__APP_PASSWORD").ok(),
        postgres_bindir: None,
        max_connections: 4,
        connect_timeout: Duration::from_secs(10),
    };
    let db = Database::open(&settings, Purpose::Tool)
        .await
        .context("opening the database")?;
    let outcome = match cli.command {
        Command::Tenant(TenantCommand::Create { name }) => create_tenant(&db, &name).await,
        Command::Tenant(TenantCommand::List) => list_tenants(&db).await,
        Command::Audit(AuditCommand::Verify { tenant }) => verify_audit(&db, tenant).await,
        Command::Pki(_) => unreachable!("handled before opening the database"),
    };
    db.close().await.context("closing the database")?;
    outcome
}

fn init_pki(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let pki = certs::Pki::generate(dir, &certs::PkiParams::default())
        .with_context(|| format!("creating a PKI in {}", dir.display()))?;
    let layout = certs::PkiLayout::in_dir(dir);
    println!(
        "root CA:    {} (key {})",
        layout.root_cert.display(),
        layout.root_key.display()
    );
    println!(
        "issuing CA: {} (key {})",
        layout.issuing_cert.display(),
        layout.issuing_key.display()
    );
    println!("issuing CA expires {}", pki.issuing_ca().not_after());
    println!("Set pki.dir = {:?} for fleetd; move root-ca.key offline, it is needed only to rotate the issuing CA.", dir.display().to_string());
    Ok(ExitCode::SUCCESS)
}

async fn create_tenant(db: &Database, name: &str) -> anyhow::Result<ExitCode> {
    let tenant = tenants::create(&db.app, name, &operator()).await?;
    println!("{}", tenant.id);
    Ok(ExitCode::SUCCESS)
}

async fn list_tenants(db: &Database) -> anyhow::Result<ExitCode> {
    for tenant in db.admin.list_tenants().await? {
        println!("{}\t{}\t{}", tenant.id, tenant.created_at, tenant.name);
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify_audit(db: &Database, only: Option<TenantId>) -> anyhow::Result<ExitCode> {
    let all = db.admin.list_tenants().await?;
    let chosen: Vec<_> = match only {
        Some(id) => all.into_iter().filter(|t| t.id == id).collect(),
        None => all,
    };
    if let (Some(id), true) = (only, chosen.is_empty()) {
        anyhow::bail!("no tenant {id}");
    }
    let mut broken = 0;
    for tenant in &chosen {
        let mut tx = db.app.begin(tenant.id).await?;
        let verdict = audit::verify(&mut tx).await?;
        tx.rollback().await?;
        match verdict {
            ChainVerdict::Intact { events } => {
                println!(
                    "tenant {} ({}): intact, {events} events",
                    tenant.id, tenant.name
                )
            }
            ChainVerdict::Broken { seq, reason } => {
                broken += 1;
                println!(
                    "tenant {} ({}): BROKEN at seq {seq}: {}",
                    tenant.id,
                    tenant.name,
                    reason.describe()
                );
            }
        }
    }
    if broken > 0 {
        eprintln!(
            "fleetctl: {broken} of {} audit chains are broken",
            chosen.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit actor for commands run here: the local user, as far as the OS tells.
fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("operator:{user}@fleetctl")
}
