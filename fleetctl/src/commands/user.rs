//! `fleetctl user`: break-glass for people, on the database, for a tenant locked out of its
//! console (the only owner lost their authenticator, forgot their password, or left). Each
//! command is audited as break-glass with the person at the terminal as actor, so no one ever
//! edits the users table by hand.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use store::audit::Action;
use store::users::{self, Email, Password};

use super::Ctx;
use crate::db;
use crate::error::{Exit, Failure};

/// `fleetctl user ...` (on the database: --data-dir or --database-url, and --tenant).
#[derive(Subcommand)]
pub enum UserCommand {
    /// Remove a user's TOTP and recovery codes and end its sessions: it enrols TOTP again at
    /// its next sign-in. Audited as user.break_glass_reset_mfa.
    ResetMfa(Who),
    /// Set a user's password (from --password-file) and end its sessions. Audited as
    /// user.break_glass_set_password.
    SetPassword(WithPassword),
    /// Create an owner with a password (from --password-file); it enrols TOTP at its first
    /// sign-in. Audited as user.break_glass_create_owner.
    CreateOwner(WithPassword),
}

/// Which user.
#[derive(Args)]
pub struct Who {
    /// The user's email.
    #[arg(long)]
    email: String,
}

/// A user and a password.
#[derive(Args)]
pub struct WithPassword {
    /// The user's email.
    #[arg(long)]
    email: String,
    /// A file whose first line is the password (never an argument: arguments show in `ps`).
    /// At least 12 characters, not a common password.
    #[arg(long, value_name = "FILE")]
    password_file: PathBuf,
}

/// Runs `fleetctl user ...`.
pub async fn run(ctx: &Ctx, command: UserCommand) -> Result<(), Failure> {
    let location = ctx.database_location()?.ok_or_else(|| {
        Failure::usage("fleetctl user works on the database: give --data-dir or --database-url")
    })?;
    let wanted = ctx
        .tenant()
        .ok_or_else(|| Failure::usage("--tenant ID_OR_NAME is required: whose user"))?
        .to_owned();
    let actor = db::operator()?;
    let (email, password) = match &command {
        UserCommand::ResetMfa(who) => (who.email.clone(), None),
        UserCommand::SetPassword(w) | UserCommand::CreateOwner(w) => {
            (w.email.clone(), Some(read_password(&w.password_file)?))
        }
    };
    let email = Email::parse(&email).map_err(|e| Failure::usage(format!("--email: {e}")))?;
    let database = db::open(&location).await?;
    let outcome = act(&database, &wanted, &email, password, &command, &actor).await;
    db::close(database).await?;
    let (done, user_id) = outcome?;
    super::show(
        ctx,
        &json!({ "user_id": user_id, "email": email.as_str(), "done": done }),
        || Ok(format!("user {} ({}): {done}\n", email.as_str(), user_id)),
    )
}

async fn act(
    database: &store::Database,
    wanted: &str,
    email: &Email,
    password: Option<Password>,
    command: &UserCommand,
    actor: &store::audit::Actor,
) -> Result<(&'static str, store::UserId), Failure> {
    let tenant = db::find_tenant(database, wanted).await?;
    let mut tx = database.app.begin(tenant.id).await?;
    let now = time::OffsetDateTime::now_utc();
    let existing = users::get_by_email(&mut tx, email).await?;
    let outcome = match (command, existing, password) {
        (UserCommand::CreateOwner(_), None, Some(password)) => {
            let user =
                users::create_owner_break_glass(&mut tx, email, &password, actor, now).await?;
            ("owner created; TOTP is enrolled at first sign-in", user.id)
        }
        (UserCommand::CreateOwner(_), Some(_), _) => {
            return Err(Failure::new(
                Exit::Refused,
                "conflict",
                format!(
                    "a user {} exists: use set-password or reset-mfa",
                    email.as_str()
                ),
            ))
        }
        (_, None, _) => return Err(unknown_user(email)),
        (UserCommand::ResetMfa(_), Some(user), _) => {
            users::reset_mfa_break_glass(&mut tx, user.id, actor).await?;
            ("TOTP and recovery codes removed, sessions ended", user.id)
        }
        (UserCommand::SetPassword(_), Some(user), Some(password)) => {
            let action = Action::UserBreakGlassSetPassword;
            users::set_password(&mut tx, user.id, &password, None, actor, action).await?;
            ("password set, sessions ended", user.id)
        }
        _ => return Err(Failure::usage("a password is needed (--password-file)")),
    };
    tx.commit().await?;
    Ok(outcome)
}

fn unknown_user(email: &Email) -> Failure {
    Failure::new(
        Exit::NotFound,
        "not-found",
        format!("no user {} in this tenant", email.as_str()),
    )
}

/// The first line of `path`, wiped when dropped.
fn read_password(path: &std::path::Path) -> Result<Password, Failure> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("--password-file {}: {e}", path.display())))?,
    );
    let line = text.lines().next().unwrap_or("").to_owned();
    Ok(Password::new(line))
}
