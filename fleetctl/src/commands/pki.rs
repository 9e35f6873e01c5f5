//! `fleetctl pki`: the fleet PKI, made locally (no server, no database).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;

use super::{show, Ctx};
use crate::error::{Exit, Failure};

/// `fleetctl pki ...`.
#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a root CA and an online issuing CA (keys at mode 0600) in DIR; refuses to
    /// overwrite. fleetd needs only the issuing CA: keep root-ca.key offline.
    Init {
        /// Directory for the PKI; created if missing.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs `fleetctl pki ...`.
pub fn run(ctx: &Ctx, command: PkiCommand) -> Result<(), Failure> {
    match command {
        PkiCommand::Init { dir } => init(ctx, &dir),
    }
}

fn init(ctx: &Ctx, dir: &Path) -> Result<(), Failure> {
    ctx.refuse_tenant("pki init")?;
    let pki = certs::Pki::generate(dir, &certs::PkiParams::default()).map_err(|e| {
        Failure::new(
            Exit::Refused,
            "pki",
            format!("creating a PKI in {}: {e}", dir.display()),
        )
    })?;
    let layout = certs::PkiLayout::in_dir(dir);
    let expires = crate::output::time(pki.issuing_ca().not_after());
    show(
        ctx,
        &json!({
            "root_cert": layout.root_cert,
            "root_key": layout.root_key,
            "issuing_cert": layout.issuing_cert,
            "issuing_key": layout.issuing_key,
            "issuing_ca_expires_at": expires,
        }),
        || {
            Ok(format!(
                "root CA:    {} (key {})\nissuing CA: {} (key {})\nissuing CA expires {expires}\n",
                layout.root_cert.display(),
                layout.root_key.display(),
                layout.issuing_cert.display(),
                layout.issuing_key.display(),
            ))
        },
    )?;
    crate::output::notice(&format!(
        "Set pki.dir = {:?} for fleetd; move root-ca.key offline, it is needed only to rotate the issuing CA.",
        dir.display().to_string()
    ));
    Ok(())
}
