//! The API's Prometheus series. Labels are low-cardinality: the route template (never a
//! concrete path with ids), the status code, the role, a refusal reason.
//!
//! | series | labels |
//! |---|---|
//! | `fleet_api_requests_total` | `route`, `method`, `status`, `role` (`none` when unauthenticated) |
//! | `fleet_api_request_duration_seconds` | `route`, `method` |
//! | `fleet_api_key_cache_total` | `outcome` (`hit`, `miss`) |
//! | `fleet_api_auth_refusals_total` | `reason` (`missing`, `malformed`, `unknown`, `wrong_secret`, `revoked`, `expired`, `source_not_allowed`, `slowed`) |
//! | `fleet_api_refusals_total` | `route`, `problem` (the problem type slug of every 4xx) |
//! | `fleet_api_connections_accepted_total` | none: TCP connections accepted by the listener, before any limit |
//! | `fleet_api_connections_active` | none: connections holding a place under `max_connections` now (handshaking, serving, or closing lingering) |
//! | `fleet_api_connections_refused_total` | `reason` (`connection_limit`, `address_handshake_limit`): closed at once by the accept loop |
//! | `fleet_api_tls_handshake_failures_total` | `reason` (`error`: no common version or suite, a client certificate that does not verify, garbage; `timeout`: not done within the handshake timeout) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    route: String,
    problem: &'static str,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The API's metrics; cheap to clone (the series are shared).
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    key_cache: Family<OutcomeLabels, Counter>,
    auth_refusals: Family<ReasonLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    pub(crate) listener: ListenerMetrics,
}

/// The TLS listener's series (see the module table); cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListenerMetrics {
    pub(crate) accepted: Counter,
    pub(crate) active: Gauge,
    refused: Family<ReasonLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
}

impl ListenerMetrics {
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

fn duration_histogram() -> Histogram {
    // 0.5 ms to about 8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl Default for ApiMetrics {
    /// Series that are counted but registered nowhere (tests, tools).
    fn default() -> Self {
        Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            key_cache: Family::default(),
            auth_refusals: Family::default(),
            refusals: Family::default(),
            listener: ListenerMetrics::default(),
        }
    }
}

impl ApiMetrics {
    /// Creates the series and registers them under `fleet_api_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let api = registry.sub_registry_with_prefix("fleet_api");
        api.register(
            "requests",
            "API requests by route template, method, status and caller role",
            metrics.requests.clone(),
        );
        api.register(
            "request_duration_seconds",
            "API request latency by route template and method",
            metrics.durations.clone(),
        );
        api.register(
            "key_cache",
            "Verified-key cache lookups by outcome",
            metrics.key_cache.clone(),
        );
        api.register(
            "auth_refusals",
            "Refused API key authentications by reason",
            metrics.auth_refusals.clone(),
        );
        api.register(
            "refusals",
            "API answers 4xx by route template and problem type",
            metrics.refusals.clone(),
        );
        let listener = &metrics.listener;
        api.register(
            "connections_accepted",
            "TCP connections accepted by the API listener, before any limit",
            listener.accepted.clone(),
        );
        api.register(
            "connections_active",
            "API connections holding a place under max_connections (handshaking, serving, closing)",
            listener.active.clone(),
        );
        api.register(
            "connections_refused",
            "API connections closed at once by the accept loop, by limit",
            listener.refused.clone(),
        );
        api.register(
            "tls_handshake_failures",
            "API TLS handshakes that failed (error) or did not finish in time (timeout)",
            listener.handshake_failures.clone(),
        );
        // Present from the first scrape, so dashboards and rate() see zeros, not gaps.
        for reason in ["connection_limit", "address_handshake_limit"] {
            drop(listener.refused.get_or_create(&ReasonLabels { reason }));
        }
        for reason in ["error", "timeout"] {
            drop(
                listener
                    .handshake_failures
                    .get_or_create(&ReasonLabels { reason }),
            );
        }
        metrics
    }

    pub(crate) fn request(
        &self,
        route: &str,
        method: &str,
        status: u16,
        role: &'static str,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
                role,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    pub(crate) fn refusal(&self, route: &str, problem: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                route: route.to_owned(),
                problem,
            })
            .inc();
    }

    pub(crate) fn key_cache(&self, outcome: &'static str) {
        self.key_cache
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(crate) fn auth_refusal(&self, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
