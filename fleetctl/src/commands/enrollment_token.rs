//! `fleetctl enrollment-token`: the tokens devices exchange for their certificate, over HTTPS.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::EnrollmentTokenId;
use time::OffsetDateTime;

use super::{get_one, more_notice, revoke, show, Ctx, Lifecycle, ListArgs};
use crate::error::Failure;
use crate::http;
use crate::output::{self, Fields, Table};
use crate::parse;

/// `fleetctl enrollment-token ...`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it this once (it is stored only as a hash).
    Create(CreateArgs),
    /// List the tenant's tokens (never their secrets).
    List(ListArgs),
    /// Show one token.
    Show {
        /// The token's id (shown by `list`).
        id: EnrollmentTokenId,
    },
    /// Revoke a token: it enrolls nothing more (the devices it enrolled stay).
    Revoke {
        /// The token's id.
        id: EnrollmentTokenId,
    },
}

/// `fleetctl enrollment-token create`.
#[derive(Args)]
pub struct CreateArgs {
    /// Display name.
    #[arg(long)]
    name: String,
    /// Source network allowed to enroll (repeatable, at least one; "anywhere" must be said:
    /// 0.0.0.0/0 and ::/0).
    #[arg(long = "cidr", value_name = "CIDR", required = true)]
    cidrs: Vec<IpNet>,
    /// Enrollments per UTC day.
    #[arg(long)]
    daily_limit: u32,
    /// How long the token works, e.g. 7d or 12h.
    #[arg(long, value_parser = parse::duration, required_unless_present = "expires_at")]
    expires_in: Option<Duration>,
    /// Until when the token works, as an RFC 3339 time.
    #[arg(long, value_parser = parse::moment, conflicts_with = "expires_in")]
    expires_at: Option<OffsetDateTime>,
    /// Enrollments in total (default: unlimited until expiry).
    #[arg(long)]
    max_uses: Option<u64>,
    /// Group of the devices it enrolls, by name.
    #[arg(long, default_value = "default")]
    group: String,
    /// Label of the devices it enrolls, key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::label)]
    labels: Vec<(String, String)>,
    /// Write the token to this new file (mode 0600) instead of printing it; `fleet-agent enroll
    /// --token-file` reads it.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
}

/// A token as the API shows it.
#[derive(Deserialize)]
struct TokenView {
    id: String,
    name: String,
    state: String,
    #[serde(default)]
    allowed_cidrs: Vec<String>,
    daily_limit: Option<u64>,
    used_today: Option<u64>,
    max_uses: Option<u64>,
    uses: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    expires_at: Option<OffsetDateTime>,
    device_group: Option<String>,
    #[serde(default)]
    device_labels: BTreeMap<String, String>,
    #[serde(flatten)]
    lifecycle: Lifecycle,
    /// Only in the answer to a creation.
    token: Option<String>,
}

impl TokenView {
    fn today(&self) -> String {
        format!(
            "{}/{}",
            output::opt(self.used_today),
            output::opt(self.daily_limit)
        )
    }

    fn uses(&self) -> String {
        match self.max_uses {
            Some(max) => format!("{}/{max}", output::opt(self.uses)),
            None => output::opt(self.uses),
        }
    }
}

/// Runs `fleetctl enrollment-token ...`.
pub async fn run(ctx: &Ctx, command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create(args) => {
            let api = ctx.api("enrollment-token create").await?;
            let token_file = output::SecretFile::create(args.token_file.as_deref())?;
            let expires_at = match (args.expires_in, args.expires_at) {
                (Some(d), _) => {
                    parse::from_now(d).map_err(|e| Failure::usage(format!("--expires-in: {e}")))?
                }
                (None, Some(at)) => parse::api_time(at),
                (None, None) => {
                    return Err(Failure::usage("--expires-in or --expires-at is required"))
                }
            };
            let cidrs: Vec<String> = args.cidrs.iter().map(ToString::to_string).collect();
            let mut body = Map::new();
            body.insert("name".into(), json!(args.name));
            body.insert("allowed_cidrs".into(), json!(cidrs));
            body.insert("daily_limit".into(), json!(args.daily_limit));
            body.insert("expires_at".into(), json!(expires_at));
            if let Some(max) = args.max_uses {
                body.insert("max_uses".into(), json!(max));
            }
            body.insert("device_group".into(), json!(args.group));
            if !args.labels.is_empty() {
                let labels: BTreeMap<_, _> = args.labels.into_iter().collect();
                body.insert("device_labels".into(), json!(labels));
            }
            let mut value = api
                .post("v1/enrollment-tokens", &Value::Object(body))
                .await?;
            output::stash_secret(&mut value, "token", token_file)?;
            render(ctx, value)?;
            output::notice(
                "The token is shown this once and cannot be recovered: hand it to the devices now \
                 (fleet-agent enroll reads it from FLEET_AGENT_TOKEN or --token-file).",
            );
            Ok(())
        }
        TokenCommand::List(args) => {
            let api = ctx.api("enrollment-token list").await?;
            let page = api
                .list("v1/enrollment-tokens", &[], &args.paging())
                .await?;
            show(ctx, &page, || {
                let mut table = Table::new(&[
                    "ID", "NAME", "STATE", "TODAY", "USES", "EXPIRES", "GROUP", "CIDRS",
                ]);
                for item in &page.items {
                    let t: TokenView = http::decode(item.clone())?;
                    table.row(vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.state.clone(),
                        t.today(),
                        t.uses(),
                        output::opt_time(t.expires_at),
                        output::opt(t.device_group.as_deref()),
                        output::list(&t.allowed_cidrs),
                    ]);
                }
                more_notice(page.next_cursor.as_deref());
                Ok(table.render())
            })
        }
        TokenCommand::Show { id } => render(
            ctx,
            get_one(
                ctx,
                "enrollment-token show",
                &format!("v1/enrollment-tokens/{id}"),
            )
            .await?,
        ),
        TokenCommand::Revoke { id } => {
            let path = format!("v1/enrollment-tokens/{id}");
            let id = id.to_string();
            revoke(
                ctx,
                "enrollment-token revoke",
                &path,
                "enrollment token",
                &id,
            )
            .await
        }
    }
}

fn render(ctx: &Ctx, value: Value) -> Result<(), Failure> {
    show(ctx, &value.clone(), || {
        let t: TokenView = http::decode(value)?;
        let mut fields = Fields::new();
        fields
            .field("id", t.id.clone())
            .field("name", t.name.clone())
            .field("state", t.state.clone())
            .field("enrollments today", t.today())
            .field("uses", t.uses())
            .field("expires", output::opt_time(t.expires_at))
            .field("allowed from", output::list(&t.allowed_cidrs))
            .field("device group", output::opt(t.device_group.as_deref()))
            .field("device labels", output::labels(&t.device_labels))
            .field("created", output::opt_time(t.lifecycle.created_at))
            .field("created by", output::opt(t.lifecycle.created_by.as_deref()))
            .field("last used", output::opt_time(t.lifecycle.last_used_at))
            .field("revoked", output::opt_time(t.lifecycle.revoked_at))
            .field("revoked by", output::opt(t.lifecycle.revoked_by.as_deref()));
        if let Some(token) = t.token {
            fields.field("token", token);
        }
        Ok(fields.render())
    })
}
