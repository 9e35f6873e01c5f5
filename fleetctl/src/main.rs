//! fleetctl, the operator CLI. Bootstrap commands talk to the database directly: the private
//! cluster of `--data-dir` (attaching to a running fleetd's) or the server of `--database-url`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use store::audit::{self, ChainVerdict};
use store::devices::{self, DeviceRevocation};
use store::enrollment_tokens::{self, NewEnrollmentToken, TokenRevocation};
use store::{tenants, Database, DatabaseSettings, DeviceId, EnrollmentTokenId, Purpose, TenantId};

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
    /// Enrollment tokens: what devices exchange for their certificate.
    #[command(subcommand)]
    EnrollmentToken(EnrollmentTokenCommand),
    /// Devices.
    #[command(subcommand)]
    Device(DeviceCommand),
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

#[derive(Subcommand)]
enum EnrollmentTokenCommand {
    /// Create a token; prints its secret once (it is stored only as a hash).
    Create {
        /// The tenant whose devices it enrolls.
        #[arg(long)]
        tenant: TenantId,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Source network allowed to enroll (repeatable; 0.0.0.0/0 and ::/0 must be explicit).
        #[arg(long = "cidr", required = true)]
        cidrs: Vec<IpNet>,
        /// Enrollments per UTC day.
        #[arg(long)]
        daily_limit: u32,
        /// How long the token works, e.g. 7d, 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Duration,
        /// Enrollments in total (default: unlimited until expiry).
        #[arg(long)]
        max_uses: Option<u64>,
        /// Group of the enrolled devices.
        #[arg(long, default_value = "default")]
        group: String,
        /// Label of the enrolled devices, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List a tenant's tokens (never their secrets).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke a token: it enrolls nothing more (devices it enrolled stay).
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: TenantId,
        /// The token's id (the second field of the token string; shown by `list`).
        token_id: EnrollmentTokenId,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// List a tenant's devices.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke a device: its next handshake fails and live connections are closed.
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: TenantId,
        /// The device.
        device_id: DeviceId,
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
        Command::EnrollmentToken(command) => enrollment_token(&db, command).await,
        Command::Device(command) => device(&db, command).await,
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

async fn enrollment_token(
    db: &Database,
    command: EnrollmentTokenCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        EnrollmentTokenCommand::Create {
            tenant,
            name,
            cidrs,
            daily_limit,
            expires_in,
            max_uses,
            group,
            labels,
        } => {
            let expires_in = time::Duration::try_from(expires_in).context("--expires-in")?;
            let new = NewEnrollmentToken {
                name,
                allowed_cidrs: cidrs,
                daily_limit,
                max_uses,
                expires_at: time::OffsetDateTime::now_utc() + expires_in,
                device_group: group,
                device_labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let mut tx = db.app.begin(tenant).await?;
            let issued = enrollment_tokens::create(&mut tx, &new, &operator()).await?;
            tx.commit().await?;
            let token = &issued.token;
            eprintln!("enrollment token {} created for tenant {tenant}", token.id);
            eprintln!(
                "  expires {}, {} per day",
                token.expires_at, token.daily_limit
            );
            eprintln!("The secret below is shown once and cannot be recovered; store it now.");
            println!("{}", issued.secret.expose());
        }
        EnrollmentTokenCommand::List { tenant } => {
            let mut tx = db.app.begin(tenant).await?;
            let tokens = enrollment_tokens::list(&mut tx).await?;
            tx.rollback().await?;
            println!("ID\tNAME\tSTATE\tEXPIRES\tTODAY\tUSES\tCIDRS\tGROUP");
            let now = time::OffsetDateTime::now_utc();
            for t in tokens {
                let state = match (t.revoked_at, t.expires_at <= now) {
                    (Some(_), _) => "revoked",
                    (None, true) => "expired",
                    (None, false) => "active",
                };
                let cidrs: Vec<String> = t.allowed_cidrs.iter().map(ToString::to_string).collect();
                let max = t.max_uses.map_or("-".to_string(), |m| m.to_string());
                println!(
                    "{}\t{}\t{state}\t{}\t{}/{}\t{}/{max}\t{}\t{}",
                    t.id,
                    t.name,
                    t.expires_at,
                    t.used_today,
                    t.daily_limit,
                    t.uses,
                    cidrs.join(","),
                    t.device_group
                );
            }
        }
        EnrollmentTokenCommand::Revoke { tenant, token_id } => {
            let mut tx = db.app.begin(tenant).await?;
            let outcome = enrollment_tokens::revoke(&mut tx, token_id, &operator()).await?;
            tx.commit().await?;
            match outcome {
                TokenRevocation::Revoked => println!("enrollment token {token_id} revoked"),
                TokenRevocation::AlreadyRevoked => {
                    println!("enrollment token {token_id} was already revoked")
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn device(db: &Database, command: DeviceCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeviceCommand::List { tenant } => {
            let mut tx = db.app.begin(tenant).await?;
            println!("ID\tSTATUS\tONLINE\tGROUP\tNAME");
            let mut after = None;
            loop {
                let page = devices::list(&mut tx, after, 500).await?;
                for d in &page {
                    println!(
                        "{}\t{:?}\t{}\t{}\t{}",
                        d.id, d.status, d.online, d.group, d.name
                    );
                }
                match page.last() {
                    Some(last) if page.len() == 500 => after = Some(last.id),
                    _ => break,
                }
            }
            tx.rollback().await?;
        }
        DeviceCommand::Revoke { tenant, device_id } => {
            let mut tx = db.app.begin(tenant).await?;
            let outcome = devices::revoke(&mut tx, device_id, &operator()).await?;
            tx.commit().await?;
            match outcome {
                DeviceRevocation::Revoked => println!("device {device_id} revoked"),
                DeviceRevocation::AlreadyRevoked => {
                    println!("device {device_id} was already revoked (notified again)")
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// The audit actor for commands run here: the local user, as far as the OS tells.
fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("operator:{user}@fleetctl")
}
