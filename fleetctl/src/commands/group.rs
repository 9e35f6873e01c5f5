//! `fleetctl group`: device groups, over HTTPS. A group is named by its id or its name.

use clap::Subcommand;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{more_notice, show, Ctx, ListArgs};
use crate::error::{Exit, Failure};
use crate::http::{self, ApiClient, Paging};
use crate::output::{self, Fields, Table};

/// `fleetctl group ...`.
#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a group.
    Create {
        /// Its name, unique in the tenant.
        name: String,
    },
    /// List the groups and how many devices each holds.
    List(ListArgs),
    /// Rename a group (its devices and tokens follow).
    Rename {
        /// The group, by id or name.
        group: String,
        /// The new name.
        new_name: String,
    },
    /// Delete an empty group (refused while devices or enrollment tokens name it).
    Delete {
        /// The group, by id or name.
        group: String,
    },
}

/// A device group as the API shows it.
#[derive(Deserialize)]
pub struct GroupView {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    created_at: Option<OffsetDateTime>,
    #[serde(default)]
    device_count: Option<u64>,
}

/// Runs `fleetctl group ...`.
pub async fn run(ctx: &Ctx, command: GroupCommand) -> Result<(), Failure> {
    match command {
        GroupCommand::Create { name } => {
            let api = ctx.api("group create").await?;
            let value = api
                .post("v1/device-groups", &json!({ "name": name }))
                .await?;
            render_one(ctx, value)
        }
        GroupCommand::List(args) => {
            let api = ctx.api("group list").await?;
            let page = api.list("v1/device-groups", &[], &args.paging()).await?;
            show(ctx, &page, || {
                let mut table = Table::new(&["ID", "NAME", "DEVICES", "CREATED"]);
                for item in &page.items {
                    let g: GroupView = http::decode(item.clone())?;
                    table.row(vec![
                        g.id.to_string(),
                        g.name,
                        output::opt(g.device_count),
                        output::opt_time(g.created_at),
                    ]);
                }
                more_notice(page.next_cursor.as_deref());
                Ok(table.render())
            })
        }
        GroupCommand::Rename { group, new_name } => {
            let api = ctx.api("group rename").await?;
            let id = resolve(&api, &group).await?.id;
            let value = api
                .patch(
                    &format!("v1/device-groups/{id}"),
                    &json!({ "name": new_name }),
                )
                .await?;
            render_one(ctx, value)
        }
        GroupCommand::Delete { group } => {
            let api = ctx.api("group delete").await?;
            let found = resolve(&api, &group).await?;
            api.delete(&format!("v1/device-groups/{}", found.id))
                .await?;
            show(ctx, &json!({ "id": found.id, "deleted": true }), || {
                Ok(format!("group {} ({}) deleted\n", found.name, found.id))
            })
        }
    }
}

fn render_one(ctx: &Ctx, value: Value) -> Result<(), Failure> {
    show(ctx, &value.clone(), || {
        let g: GroupView = http::decode(value)?;
        let mut fields = Fields::new();
        fields
            .field("id", g.id.to_string())
            .field("name", g.name)
            .field("devices", output::opt(g.device_count))
            .field("created", output::opt_time(g.created_at));
        Ok(fields.render())
    })
}

/// The group named by `text`: its id, or its exact name.
pub async fn resolve(api: &ApiClient, text: &str) -> Result<GroupView, Failure> {
    let page = api
        .list("v1/device-groups", &[], &Paging::default())
        .await?;
    let by_id = text.parse::<Uuid>().ok();
    for item in page.items {
        let group: GroupView = http::decode(item)?;
        if Some(group.id) == by_id || group.name == text {
            return Ok(group);
        }
    }
    Err(Failure::new(
        Exit::NotFound,
        "not-found",
        format!("no device group {text:?} (fleetctl group list shows them)"),
    ))
}
