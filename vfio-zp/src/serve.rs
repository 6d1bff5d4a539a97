//! The agent's HTTP endpoints: `/metrics` (Prometheus text format),
//! `/healthz` and `/api/v1/snapshot` (JSON). Read-only; every handler
//! only reads the latest [`Snapshot`], so a slow or hostile client never
//! holds up the event path.
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::snapshot::Snapshot;

/// The default listen address: loopback, on a port above the range the
/// Prometheus exporter port list allocates (9100-9999).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10983";
/// `/healthz` fails when the event loop has not published for this long.
const STALE: Duration = Duration::from_secs(10);

/// One published snapshot and its renderings, each made at most once: the
/// handlers run on the event loop's thread, so a scrape storm costs one
/// render per publish, not one per request.
struct Published {
    at: Instant,
    snapshot: Arc<Snapshot>,
    metrics: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

#[derive(Default)]
pub struct Shared {
    latest: RwLock<Option<Arc<Published>>>,
}

impl Shared {
    pub fn publish(&self, s: Snapshot) {
        if let Ok(mut l) = self.latest.write() {
            *l = Some(Arc::new(Published {
                at: Instant::now(),
                snapshot: Arc::new(s),
                metrics: OnceLock::new(),
                json: OnceLock::new(),
            }));
        }
    }

    fn get(&self) -> Option<Arc<Published>> {
        self.latest.read().ok().and_then(|l| l.clone())
    }

    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.get().map(|p| p.snapshot.clone())
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/snapshot", get(snapshot))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "vfio-zp: /metrics, /healthz, /api/v1/snapshot\n",
            )
        })
        .with_state(shared)
}

fn starting() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "vfio-zp: starting (probes not attached yet)\n",
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    match s.get() {
        Some(p) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            p.metrics
                .get_or_init(|| crate::metrics::render(&p.snapshot).into())
                .clone(),
        )
            .into_response(),
        None => starting(),
    }
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match s.get() {
        Some(p) if p.at.elapsed() < STALE => (StatusCode::OK, "ok\n").into_response(),
        Some(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stale: no update for {:.0?}\n", p.at.elapsed()),
        )
            .into_response(),
        None => starting(),
    }
}

async fn snapshot(State(s): State<Arc<Shared>>) -> Response {
    match s.get() {
        Some(p) => (
            [(header::CONTENT_TYPE, "application/json")],
            p.json
                .get_or_init(|| {
                    serde_json::to_vec(p.snapshot.as_ref())
                        .unwrap_or_default()
                        .into()
                })
                .clone(),
        )
            .into_response(),
        None => starting(),
    }
}

/// Serves until the process ends; a failure is logged, never fatal to the
/// event path.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        tracing::error!("HTTP server stopped: {e}");
    }
}
