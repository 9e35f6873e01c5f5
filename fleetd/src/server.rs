//! Start-up in order (PKI, database, then listeners), and shutdown in reverse.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use broker::{Broker, BrokerConfig, BrokerHooks, RunningBroker};
use rustls::pki_types::PrivateKeyDer;
use store::{Database, Purpose};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::descriptors::DescriptorBudget;
use crate::device_sessions::{self, OnlineDevices};
use crate::pki::ServerPki;
use crate::Config;

/// A started fleetd.
pub struct Running {
    config: Config,
    pki: ServerPki,
    database: Database,
    api_addr: SocketAddr,
    stop: watch::Sender<bool>,
    api: JoinHandle<std::io::Result<()>>,
    devices: DeviceServices,
    /// The API's clock (people's session expiry), which tests advance.
    clock: api::Clock,
    /// Signs audit checkpoints every `audit.checkpoint_interval` and once at shutdown.
    checkpoints: JoinHandle<()>,
    /// Prunes audit events past each tenant's retention, at start and every `audit.prune_interval`.
    audit_prune: JoinHandle<()>,
}

/// The device side: where device messages come from, ingest, and the background tasks.
struct DeviceServices {
    front: DeviceFront,
    ingest: ingest::IngestHandle,
    /// The test seam on the hand-off into ingest (off unless a test arms it).
    loss: ingest::LossInjector,
    retention: JoinHandle<()>,
    /// Keeps `pki.crl_file` current, when configured.
    crl_file: Option<JoinHandle<()>>,
    /// Scheduled backups, when enabled.
    backups: Option<JoinHandle<()>>,
    /// Forwards opted-in tenants' audit trails, when `[siem]` names a collector.
    siem: Option<JoinHandle<()>>,
    metrics: JoinHandle<std::io::Result<()>>,
    metrics_addr: SocketAddr,
    stop_background: watch::Sender<bool>,
    /// The broker's live-stream key check, set once the API has started.
    stream_keys: crate::live_streams::StreamKeys,
}

/// Where device messages come from.
enum DeviceFront {
    /// The embedded broker, with admission, presence and revocation wired to the store.
    Embedded {
        broker: Arc<RunningBroker>,
        presence: JoinHandle<()>,
        revocations: JoinHandle<()>,
    },
    /// An external broker, consumed through a shared subscription (ingest-only instance).
    External(ingest::ExternalHandle),
}

/// Loads the PKI, opens the database (creating and starting the private cluster when no URL is
/// configured, applying migrations, checking every tenant's audit chain head) and starts the
/// listeners. A failure after the database is open closes it again.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    crate::production::check(&config)?;
    let pki = crate::pki::prepare(&config)?;
    let descriptors = crate::descriptors::raise_and_split(
        config.broker.max_connections,
        config.connections.api_max_connections,
    );
    // One registry for every component, served on metrics_listen (fleetd/METRICS.md).
    let mut registry = prometheus_client::registry::Registry::default();
    let store_metrics = store::StoreMetrics::register(&mut registry);
    let database =
        Database::open_observed(&config.database_settings(), Purpose::Server, store_metrics)
            .await
            .context("opening the database")?;
    if let Err(e) = check_chain_tails(&database, config.database.audit_tail_check_rows).await {
        database.close().await.ok();
        return Err(e);
    }
    registry.register_collector(Box::new(database.app.pool_collector()));
    registry.register_collector(Box::new(crate::metrics::ProcessCollector));
    crate::metrics::register_certificates(&mut registry, &pki);
    let (stop, stopped) = watch::channel(false);
    let api_metrics = api::ApiMetrics::register(&mut registry);
    let devices = match start_devices(&config, &pki, &database, registry, descriptors).await {
        Ok(devices) => devices,
        Err(e) => {
            database.close().await.ok();
            return Err(e);
        }
    };
    let api = start_api(
        &config,
        &pki,
        &database,
        &devices,
        api_metrics,
        stopped.clone(),
        descriptors,
    )
    .await;
    let (api_addr, api, clock, checkpointer) = match api {
        Ok(api) => api,
        Err(e) => {
            devices.stop().await;
            database.close().await.ok();
            return Err(e);
        }
    };
    let checkpoints = crate::audit_checkpoints::spawn(
        checkpointer,
        database.app.clone(),
        config.audit.checkpoint_interval,
        stopped.clone(),
    );
    let audit_prune =
        crate::audit_retention::spawn(database.app.clone(), config.audit.prune_interval, stopped);
    tracing::info!(
        api = %format!("https://{api_addr}"),
        broker = %devices.broker_addr().map_or_else(|| config.external_broker.url.as_ref().map(ToString::to_string).unwrap_or_default(), |addr| format!("mqtts://{addr}")),
        metrics = %format!("http://{}/metrics", devices.metrics_addr),
        database = if config.database_url.is_none() { "private cluster" } else { "external" },
        data_dir = %config.data_dir.display(),
        "fleetd ready",
    );
    Ok(Running {
        config,
        pki,
        database,
        api_addr,
        stop,
        api,
        devices,
        clock,
        checkpoints,
        audit_prune,
    })
}

/// Verifies the last `rows` events of every tenant's audit chain (0: skipped). A broken chain
/// is logged at ERROR with its tenant and exported (`fleet_audit_chains_broken`), and fleetd
/// starts all the same: the chain is the evidence, not a gate, and refusing would take every
/// tenant's devices offline for one tenant's tampered row while the operator needs fleetd (and
/// `fleetctl audit verify`) to investigate. New events keep chaining from the head, so the
/// break stays where it was found.
async fn check_chain_tails(database: &Database, rows: u32) -> anyhow::Result<()> {
    if rows == 0 {
        tracing::info!("audit chain tail check skipped (database.audit_tail_check_rows = 0)");
        return Ok(());
    }
    let started = std::time::Instant::now();
    let verdicts = database
        .verify_chain_tails(rows)
        .await
        .context("verifying the tail of every tenant's audit chain")?;
    let mut broken = 0;
    for (tenant, verdict) in &verdicts {
        if let store::audit::ChainVerdict::Broken { seq, reason } = verdict {
            broken += 1;
            tracing::error!(
                tenant_id = %tenant.id,
                tenant = %tenant.name,
                seq,
                reason = reason.as_str(),
                "audit chain broken: {}; fleetd starts anyway, see `fleetctl audit verify --tenant {}`",
                reason.describe(),
                tenant.id,
            );
        }
    }
    let elapsed_ms = started.elapsed().as_millis();
    if broken == 0 {
        tracing::info!(
            tenants = verdicts.len(),
            rows_per_tenant = rows,
            elapsed_ms,
            "audit chain tails verified: intact"
        );
    } else {
        tracing::warn!(
            tenants = verdicts.len(),
            broken,
            rows_per_tenant = rows,
            elapsed_ms,
            "audit chain tails verified: broken chains found"
        );
    }
    Ok(())
}

/// The device side: the embedded broker or an external one, ingest, retention, metrics.
async fn start_devices(
    config: &Config,
    pki: &ServerPki,
    database: &Database,
    mut registry: prometheus_client::registry::Registry,
    descriptors: DescriptorBudget,
) -> anyhow::Result<DeviceServices> {
    let metrics = ingest::Metrics::register(&mut registry);
    // Filled once the API starts (it needs the device side's readiness first).
    let stream_keys = crate::live_streams::StreamKeys::default();
    let start_ingest = |acks: Arc<dyn ingest::AckSink>, streams: Arc<dyn ingest::StreamSink>| {
        ingest::start_with_streams(
            config.ingest.clone(),
            database.app.clone(),
            acks,
            streams,
            metrics.clone(),
        )
        .context("starting ingest")
    };
    let (front, ingest, loss) = match config.external_broker.host_port() {
        None => {
            let broker_slot = crate::data_path::BrokerSlot::default();
            let acks = crate::data_path::BrokerAcks(Arc::clone(&broker_slot));
            let streams =
                crate::live_streams::StreamRecords::start(Arc::clone(&broker_slot), &mut registry)
                    .context("starting the live-stream encoder")?;
            let (sender, ingest) = start_ingest(Arc::new(acks), Arc::new(streams))?;
            let loss = sender.loss_injector();
            let sink = Arc::new(crate::data_path::IngestSink(sender));
            let (broker, presence_rx) = start_embedded_broker(
                config,
                pki,
                database,
                descriptors,
                sink,
                stream_keys.clone(),
            )
            .await?;
            let _ = broker_slot.set(Arc::clone(&broker));
            registry.register_collector(Box::new(crate::metrics::BrokerCollector(
                broker.stats_reader(),
            )));
            let online = OnlineDevices::default();
            let presence = tokio::spawn(device_sessions::record_presence(
                database.app.clone(),
                online,
                presence_rx,
            ));
            let revocations = tokio::spawn(device_sessions::enforce_revocations(
                database.app.clone(),
                broker.clone(),
            ));
            (
                DeviceFront::Embedded {
                    broker,
                    presence,
                    revocations,
                },
                ingest,
                loss,
            )
        }
        Some((host, port)) => {
            let source = external_source(config, pki, host, port)?;
            let (sender, ingest) = start_ingest(source.ack_sink(), Arc::new(ingest::NoStreams))?;
            let loss = sender.loss_injector();
            (DeviceFront::External(source.run(sender)), ingest, loss)
        }
    };
    let (stop_background, stopped) = watch::channel(false);
    let retention =
        ingest::Retention::new(database.app.clone(), config.retention.to_ingest(), metrics)
            .spawn(stopped);
    let crl_file = match &config.pki.crl_file {
        Some(path) => Some(
            crate::crl_file::CrlFile {
                app: database.app.clone(),
                ca: pki.issuing_ca.clone(),
                superseded_grace: config.pki.superseded_grace,
                path: path.clone(),
            }
            .start(stop_background.subscribe())
            .await?,
        ),
        None => None,
    };
    let backups = crate::backups::start(
        &config.backup,
        config.backup.dir_in(&config.data_dir),
        database.owner_access().clone(),
        stop_background.subscribe(),
    )?;
    let siem = match config.siem.collector {
        Some(_) => {
            let metrics = crate::siem::SiemMetrics::register(&mut registry);
            crate::siem::Forwarder::new(database.app.clone(), &config.siem, metrics)?
                .map(|forwarder| forwarder.spawn(stop_background.subscribe()))
        }
        None => None,
    };
    let listener = TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding metrics_listen {}", config.metrics_listen))?;
    let metrics_addr = listener.local_addr()?;
    let metrics = tokio::spawn(crate::metrics::serve(
        listener,
        registry,
        stop_background.subscribe(),
    ));
    Ok(DeviceServices {
        front,
        ingest,
        loss,
        retention,
        crl_file,
        backups,
        siem,
        metrics,
        metrics_addr,
        stop_background,
        stream_keys,
    })
}

/// The embedded broker on `broker_listen`, admitting active devices only.
async fn start_embedded_broker(
    config: &Config,
    pki: &ServerPki,
    database: &Database,
    descriptors: DescriptorBudget,
    device_publishes: Arc<crate::data_path::IngestSink>,
    stream_keys: crate::live_streams::StreamKeys,
) -> anyhow::Result<(
    Arc<RunningBroker>,
    mpsc::UnboundedReceiver<broker::PresenceEvent>,
)> {
    let mut broker_config = BrokerConfig::new(
        pki.server_cert.chain_der(),
        PrivateKeyDer::Pkcs8(pki.server_cert.key().to_pkcs8_der()),
        pki.issuing_ca.root_der().clone(),
    );
    broker_config.listen = config.broker_listen;
    config
        .broker
        .apply(&mut broker_config, descriptors.broker_connections);
    let (presence_tx, presence_rx) = mpsc::unbounded_channel();
    let hooks = BrokerHooks {
        admission: device_sessions::admission_check(
            database.app.clone(),
            config.pki.superseded_grace,
        ),
        presence: Some(presence_tx),
        device_publishes: Some(device_publishes),
        streams: Some(Arc::new(stream_keys)),
    };
    let broker = Broker::start(broker_config, hooks).await.with_context(|| {
        format!(
            "starting the broker on broker_listen {}",
            config.broker_listen
        )
    })?;
    Ok((Arc::new(broker), presence_rx))
}

/// The external broker's consumer, authenticated as `fleetd-ingest` with a client certificate
/// issued at start from the issuing CA (the broker's ACL grants that name the shared group).
fn external_source(
    config: &Config,
    pki: &ServerPki,
    host: String,
    port: u16,
) -> anyhow::Result<ingest::ExternalSource> {
    let identity = pki
        .issuing_ca
        .issue_service_client_cert(INGEST_IDENTITY)
        .context("issuing ingest's client certificate")?;
    let mut external = ingest::ExternalBrokerConfig::new(
        host,
        port,
        // Load refuses an external_broker.url without a client_id.
        config.external_broker.client_id.clone().unwrap_or_default(),
        pki.issuing_ca.root_pem(),
        identity.chain_pem(),
        identity.key().to_pkcs8_pem().to_string(),
    );
    external.share_group = config.external_broker.share_group.clone();
    tracing::info!(url = %config.external_broker.url.as_ref().map(ToString::to_string).unwrap_or_default(), client_id = %external.client_id, share_group = %external.share_group, "ingest-only: consuming from the external broker");
    ingest::ExternalSource::new(&external).context("external_broker")
}

/// The identity ingest presents to an external broker (its certificate's common name).
const INGEST_IDENTITY: &str = "fleetd-ingest";

impl DeviceServices {
    /// Stops taking device messages, lets ingest commit (and acknowledge) what it holds, then
    /// lets the presence recorder write the resulting offline states.
    async fn stop(self) {
        let _ = self.stop_background.send(true);
        match self.front {
            DeviceFront::Embedded {
                broker,
                presence,
                revocations,
            } => {
                revocations.abort();
                let _ = revocations.await;
                // Sessions still hand publishes in until ingest stops; from then on they end
                // (ingest closed) unacknowledged, and their devices replay them.
                self.ingest.shutdown().await;
                match Arc::try_unwrap(broker) {
                    Ok(broker) => broker.shutdown().await,
                    Err(_) => tracing::warn!(
                        "broker still shared at shutdown; sessions end with the process"
                    ),
                }
                if tokio::time::timeout(std::time::Duration::from_secs(5), presence)
                    .await
                    .is_err()
                {
                    tracing::warn!("presence updates did not finish within 5 s");
                }
            }
            DeviceFront::External(source) => {
                source.shutdown().await;
                self.ingest.shutdown().await;
            }
        }
        let _ = self.retention.await;
        if let Some(crl_file) = self.crl_file {
            let _ = crl_file.await;
        }
        if let Some(backups) = self.backups {
            let _ = backups.await;
        }
        if let Some(siem) = self.siem {
            let _ = siem.await;
        }
        let _ = self.metrics.await;
    }

    /// What `/readyz` checks beside the database: the broker takes devices (the embedded one
    /// serves, or the external one is connected), and ingest's lag is at most `max_lag`.
    fn readiness(&self, max_lag: std::time::Duration) -> api::Readiness {
        let readiness = match &self.front {
            DeviceFront::Embedded { broker, .. } => {
                // Weak: the broker must be unshared at shutdown.
                let broker = Arc::downgrade(broker);
                api::Readiness::default().with("broker", move || {
                    broker.upgrade().is_some_and(|broker| broker.is_serving())
                })
            }
            DeviceFront::External(source) => {
                api::Readiness::default().with("broker", source.connection_probe())
            }
        };
        let lag = self.ingest.lag_probe();
        readiness.with("ingest_lag", move || lag() <= max_lag)
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        match &self.front {
            DeviceFront::Embedded { broker, .. } => Some(broker.local_addr()),
            DeviceFront::External(_) => None,
        }
    }
}

/// The HTTPS API: enrollment, management, health (its readiness checks the device side).
/// The API's address, its serving task, and its clock.
type StartedApi = (
    SocketAddr,
    JoinHandle<std::io::Result<()>>,
    api::Clock,
    Arc<store::audit_checkpoints::Checkpointer>,
);

async fn start_api(
    config: &Config,
    pki: &ServerPki,
    database: &Database,
    devices: &DeviceServices,
    metrics: api::ApiMetrics,
    mut stopped: watch::Receiver<bool>,
    descriptors: DescriptorBudget,
) -> anyhow::Result<StartedApi> {
    let bound_port = devices
        .broker_addr()
        .map_or(config.broker_listen.port(), |addr| addr.port());
    let broker_url = config.broker_url(bound_port);
    let readiness = devices.readiness(config.api.ready_max_ingest_lag);
    let listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding api_listen {}", config.api_listen))?;
    let addr = listener.local_addr()?;
    let tls = api::tls_server_config_for(&pki.server_cert, pki.issuing_ca.root_der().clone())
        .context("API TLS configuration")?;
    // The dummy hashes that unknown keys and users are verified against, made before the first
    // request, which would otherwise pay for them and so be told apart.
    tokio::task::spawn_blocking(store::credentials::warm_up)
        .await
        .context("preparing the dummy hashes")?;
    let clock = api::Clock::system();
    let key_cache = api::KeyCache::new(config.api.key_cache_ttl, config.api.key_cache_capacity);
    let revoked_keys = store::revocations::ApiKeyRevocationListener::connect(&database.app)
        .await
        .context("listening for API key revocations")?;
    let follower = tokio::spawn(key_cache.clone().follow_revocations(revoked_keys));
    let sealing_key = crate::sealing_key::load_or_create(&config.data_dir)
        .context("the key that seals stored secrets (TOTP, OIDC client secrets)")?;
    // The API signs checkpoints on request; the caller runs the periodic task with the same one.
    let checkpointer = crate::audit_checkpoints::prepare(config)?;
    let state = api::ApiState {
        key_cache,
        device_cert_lifetime: config.pki.device_cert_lifetime,
        trusted_proxies: config.enrollment.trusted_proxies.clone(),
        renewal: api::RenewalPolicy {
            min_interval: config.pki.renewal_min_interval,
            superseded_grace: config.pki.superseded_grace,
        },
        enroll_limits: api::EnrollLimits {
            failures_per_window: config.enrollment.max_failed_attempts_per_source,
            failure_window: config.enrollment.failed_attempts_window,
            max_concurrent_verifications: config.enrollment.max_concurrent_verifications,
            max_wait: config.enrollment.max_wait,
        },
        auth_limits: api::AuthLimits {
            failures_per_window: config.api.max_failed_auth_per_source,
            failure_window: config.api.failed_auth_window,
            verify_concurrency: config.api.key_verify_concurrency,
        },
        // Checked at load.
        key_env: store::api_keys::KeyEnv::new(&config.api.key_env).context("api.key_env")?,
        metrics: metrics.clone(),
        readiness,
        people: api::PeopleSettings {
            clock: clock.clone(),
            seal_key: std::sync::Arc::new(api::people::SealKey::from_bytes(&sealing_key)),
            ..api::PeopleSettings::default()
        },
        oidc: api::oidc::OidcSettings {
            key: Some(Arc::new(api::oidc::SsoKey::from_bytes(&sealing_key))),
            // A provider on this host's loopback over plain HTTP only outside production mode.
            providers: api::oidc::Providers::default().with_loopback_http(!config.production),
        },
        audit_checkpoints: Some(checkpointer.clone()),
        ..api::ApiState::new(database.app.clone(), pki.issuing_ca.clone(), broker_url)
    };
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let limits = config.connections.api_limits(descriptors.api_connections);
    let (router, stream_auth) = api::router_and_stream_auth(state);
    // Live-stream subscribers are refused as unavailable until this is set.
    let _ = devices.stream_keys.0.set(stream_auth);
    let serve = api::serve_tls_observed(listener, tls, router, limits, metrics, shutdown);
    let task = tokio::spawn(async move {
        let served = serve.await;
        follower.abort();
        served
    });
    Ok((addr, task, clock, checkpointer))
}

impl Running {
    /// Where the embedded broker listens (useful with port 0); `None` in ingest-only mode.
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        self.devices.broker_addr()
    }

    /// The embedded broker's counters (sessions started, publishes received, refusals);
    /// `None` in ingest-only mode.
    pub fn broker_stats(&self) -> Option<broker::BrokerStats> {
        match &self.devices.front {
            DeviceFront::Embedded { broker, .. } => Some(broker.stats()),
            DeviceFront::External(_) => None,
        }
    }

    /// A test seam: the hand-off from the broker into ingest discards the next `count` record
    /// messages, as a loss in transit would. Not reachable from the configuration.
    #[doc(hidden)]
    pub fn inject_ingest_loss(&self, count: u64) -> ingest::LossInjector {
        self.devices.loss.drop_next(count);
        self.devices.loss.clone()
    }

    /// Where the Prometheus listener is (useful with port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.devices.metrics_addr
    }

    /// Where the HTTPS API listens (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The PKI in use.
    pub fn pki(&self) -> &ServerPki {
        &self.pki
    }

    /// The API's clock: a test advances it to see sessions expire.
    pub fn clock(&self) -> &api::Clock {
        &self.clock
    }

    /// The open database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Resolves if the private cluster dies under us: fleetd cannot go on without it.
    pub async fn fatal(&self) -> String {
        match self.database.cluster() {
            Some(cluster) => cluster.exited().await,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), closes the
    /// database and stops the private cluster.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("fleetd stopping");
        let _ = self.stop.send(true);
        match tokio::time::timeout(self.config.shutdown_grace, self.api).await {
            Ok(joined) => joined.context("API task")?.context("API listener")?,
            Err(_) => tracing::warn!("in-flight requests did not finish within shutdown_grace"),
        }
        // The last checkpoint covers what the requests just finished wrote.
        if let Err(e) = self.checkpoints.await {
            tracing::error!(error = %e, "audit checkpoint task failed");
        }
        if let Err(e) = self.audit_prune.await {
            tracing::error!(error = %e, "audit retention task failed");
        }
        self.devices.stop().await;
        self.database
            .close()
            .await
            .context("closing the database")?;
        tracing::info!("fleetd stopped");
        Ok(())
    }
}
