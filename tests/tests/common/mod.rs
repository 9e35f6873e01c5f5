//! What the fleetd-level tests share: a fleetd configuration on ephemeral ports.

use fleet_tests::TestDb;

/// fleetd on `db` with its own data directory (private PKI) and every listener on an
/// ephemeral port of 127.0.0.1.
pub fn fleetd_config(db: &TestDb, data_dir: &tempfile::TempDir) -> fleetd::Config {
    fleetd::Config {
        data_dir: data_dir.path().to_path_buf(),
        database_url: Some(db.url().parse().expect("a postgres:// URL")),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        broker_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        ..fleetd::Config::default()
    }
}
