//! Prometheus metrics: request counts and latencies by route and status (recorded by a
//! middleware around every route), the sizes of the state tables (read at scrape time, so
//! they are never stale and cost nothing between scrapes), and what the server refused to
//! protect itself: rate-limited requests by reason, failed authentications, open connections and
//! slow clients cut off.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    rows: Family<TableLabels, Gauge>,
    rate_limited: Family<ReasonLabels, Counter>,
    auth_failures: Counter,
    connections: Gauge,
    cut_off: Family<ReasonLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulwark");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let rows = Family::<TableLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route",
            latency.clone(),
        );
        registry.register(
            "state_rows",
            "Rows in the control plane's state tables (catalog sizes)",
            rows.clone(),
        );
        let rate_limited = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by reason (token, agent, address, auth_failures)",
            rate_limited.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Failed authentications outside agents' mutual TLS (401 answers)",
            auth_failures.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_open",
            "Open client connections (TLS handshake included)",
            connections.clone(),
        );
        let cut_off = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "slow_clients_cut_off",
            "Connections closed because the client was too slow, by stage (tls_handshake, header, body)",
            cut_off.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            rows,
            rate_limited,
            auth_failures,
            connections,
            cut_off,
        }
    }
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    pub fn set_rows(&self, table: &str, rows: u64) {
        self.rows
            .get_or_create(&TableLabels {
                table: table.to_string(),
            })
            .set(rows as i64);
    }

    pub fn rate_limited(&self, reason: &str) {
        self.rate_limited
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    /// A connection was accepted (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// A connection was closed because the client was too slow at `stage`.
    pub fn cut_off(&self, stage: &str) {
        self.cut_off
            .get_or_create(&ReasonLabels {
                reason: stage.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware: times every request and counts it under its route template (`/api/v1/policies/{id}`),
/// never the raw path, so ids do not explode the label set.
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    metrics.observe(&method, &route, status, seconds);
    if status >= 500 {
        tracing::error!(%method, %route, status, seconds, "request failed");
    } else {
        tracing::debug!(%method, %route, status, seconds, "request");
    }
    response
}
