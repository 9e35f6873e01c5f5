//! Creates a tenant with its first owner key and a few devices, and prints the key (alone, on
//! stdout). For scripts that drive a fleetd they started (`.ci/schemathesis`).
//!
//! ```text
//! bootstrap_owner_key --database-url postgres://... NAME   # a server fleetd uses
//! bootstrap_owner_key --data-dir DIR NAME                  # a running fleetd's private cluster
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use store::api_keys::KeyEnv;
use store::audit::Actor;
use store::devices::{self, NewDevice};
use store::{tenants, Database, DatabaseSettings, Purpose};

/// Devices made so that lists and lookups have something to show.
const DEVICES: usize = 3;

fn usage() -> ExitCode {
    eprintln!("usage: bootstrap_owner_key (--database-url URL | --data-dir DIR) TENANT_NAME");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, data_dir, name) = match args.as_slice() {
        [flag, url, name] if flag == "--database-url" => (
            Some(url.parse().expect("a postgres:// URL")),
            PathBuf::from("fleetd-data"),
            name.clone(),
        ),
        [flag, dir, name] if flag == "--data-dir" => (None, PathBuf::from(dir), name.clone()),
        _ => return usage(),
    };
    let settings = DatabaseSettings {
        url,
        data_dir,
        app_password: None,
        postgres_bindir: None,
        max_connections: 2,
        connect_timeout: Duration::from_secs(10),
    };
    match bootstrap(&settings, &name).await {
        Ok(key) => {
            println!("{key}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bootstrap_owner_key: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bootstrap(settings: &DatabaseSettings, name: &str) -> Result<String, store::StoreError> {
    // As a tool: attaches to the running fleetd's private cluster instead of starting one.
    let db = Database::open(settings, Purpose::Tool).await?;
    let (tenant, key) =
        tenants::create_with_owner_key(&db.app, name, &KeyEnv::live(), &Actor::System).await?;
    let mut tx = db.app.begin(tenant.id).await?;
    for n in 0..DEVICES {
        let new = NewDevice {
            name: format!("device-{n}"),
            group: "default".into(),
            labels: BTreeMap::from([("site".into(), format!("site-{n}"))]),
        };
        devices::create(&mut tx, &new, &Actor::System).await?;
    }
    tx.commit().await?;
    let text = key.secret.expose().to_owned();
    db.close().await?;
    Ok(text)
}
