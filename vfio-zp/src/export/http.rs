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

use crate::export::snapshot::Snapshot;

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
                .get_or_init(|| crate::export::metrics::render(&p.snapshot).into())
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

/// The `--listen` value that takes the socket systemd passes.
pub const SOCKET_ACTIVATED: &str = "systemd";

/// Checks a `--listen` value: `HOST:PORT` (an IPv4 address, `[IPv6]`, or a
/// name), `:PORT` for every IPv4 address, or `systemd` for the socket
/// systemd passes (socket activation: deploy/systemd/vfio-zp.socket).
pub fn listen_spec(s: &str) -> Result<String, String> {
    if s == SOCKET_ACTIVATED {
        return Ok(s.to_string());
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` has no port: use HOST:PORT or :PORT"))?;
    port.parse::<u16>()
        .map_err(|_| format!("`{port}` is not a port (0-65535)"))?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "`{s}`: write an IPv6 address in brackets, [ADDR]:PORT"
        ));
    }
    Ok(s.to_string())
}

/// Binds a [`listen_spec`]: a name binds its first address that works.
pub async fn bind(spec: &str) -> Result<tokio::net::TcpListener, crate::error::Fatal> {
    let fail = |reason: String| crate::error::Fatal::Listen {
        addr: spec.to_string(),
        reason,
    };
    if spec == SOCKET_ACTIVATED {
        return passed_socket().map_err(fail);
    }
    let spec_all;
    let spec = match spec.strip_prefix(':') {
        Some(port) => {
            spec_all = format!("0.0.0.0:{port}");
            spec_all.as_str()
        }
        None => spec,
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(spec)
        .await
        .map_err(|e| fail(e.to_string()))?
        .collect();
    let mut last = "the name has no address".to_string();
    for a in addrs {
        match tokio::net::TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(fail(last))
}

/// The first socket systemd passed (`LISTEN_FDS`, for this process by
/// `LISTEN_PID`). The unit can then deny the agent every address family
/// and network: the socket is made and bound outside its sandbox.
fn passed_socket() -> Result<tokio::net::TcpListener, String> {
    let mut fds = listenfd::ListenFd::from_env();
    let std = fds
        .take_tcp_listener(0)
        .map_err(|e| format!("the socket passed by systemd: {e}"))?
        .ok_or_else(|| {
            "no socket passed (LISTEN_FDS is unset or for another process): start the agent from \
             vfio-zp.socket, or give --listen an address"
                .to_string()
        })?;
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpListener::from_std(std).map_err(|e| e.to_string())
}

/// Connections served at once, far below the descriptor limit (which
/// [`raise_nofile`] lifts). At the cap the agent stops accepting, so the
/// kernel's listen backlog queues newcomers, and asks the oldest
/// connection to make room once it has had [`FAIR_SHARE`]: idle or slow
/// clients can never lock out a scrape or a probe, and busy ones are never
/// cut off mid-response.
pub const MAX_CONNECTIONS: usize = 256;
/// A client that has not sent a whole request head in this long, on a new
/// connection or between keep-alive requests, is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection outlives this, busy or not (a scrape reconnects).
const MAX_AGE: Duration = Duration::from_secs(60);
/// At the cap, a connection this old gives its slot to a newcomer. Short,
/// so a flood of idle connections delays /healthz by a few of these at
/// most; long enough that a keep-alive client is served many times first.
/// Evicting the oldest on every accept instead (as before) closed
/// connections the server had not yet read: under `wrk -c500` almost no
/// request was answered.
const FAIR_SHARE: Duration = Duration::from_millis(250);
/// A connection asked to make room finishes the response it is writing
/// (hyper's graceful shutdown) within this, or is dropped.
const DRAIN: Duration = Duration::from_secs(1);

/// Raises the soft descriptor limit to the hard one: the default soft
/// limit (1024) is the whole budget of a busy agent otherwise.
pub fn raise_nofile() -> std::io::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    Ok(hard)
}

/// Runs the endpoints on a thread of their own, with a runtime of its own
/// and no capabilities at all, so a scrape storm never delays the event
/// loop and a flaw in the HTTP path holds nothing worth having.
pub fn spawn(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = listener.into_std()?;
    std::thread::Builder::new()
        .name("vfio-zp-http".into())
        .spawn(move || {
            if let Err(e) = drop_all_capabilities() {
                tracing::warn!("HTTP thread: could not drop capabilities: {e}");
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!("HTTP server not started: {e}"),
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, shared).await,
                    Err(e) => tracing::error!("HTTP server not started: {e}"),
                }
            });
        })
}

/// This thread's capabilities, every set (they are per thread).
fn drop_all_capabilities() -> Result<(), caps::errors::CapsError> {
    use caps::CapSet;
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)
}

/// The connections being served, oldest first: when each started, and
/// the sender whose send (or drop) asks it to make room.
type Live = std::collections::VecDeque<(u64, Instant, tokio::sync::oneshot::Sender<()>)>;

/// Serves until the process ends; a failure is logged, never fatal to the
/// event path. Each connection gets [`HEADER_TIMEOUT`] per request head
/// and [`MAX_AGE`] in all; [`MAX_CONNECTIONS`] are served at once.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    use std::sync::Mutex;
    let app = router(shared);
    let live: Arc<Mutex<Live>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut next_id = 0u64;
    loop {
        let slot = make_room(&slots, &live).await;
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors or memory: wait for connections to end.
                tracing::debug!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (evict, evicted) = tokio::sync::oneshot::channel();
        let id = next_id;
        next_id += 1;
        if let Ok(mut l) = live.lock() {
            l.push_back((id, Instant::now(), evict));
        }
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let live = live.clone();
        tokio::spawn(async move {
            connection(stream, svc, evicted).await;
            if let Ok(mut l) = live.lock() {
                l.retain(|(i, _, _)| *i != id);
            }
            drop(slot);
        });
    }
}

/// A free connection slot: at the cap, the oldest connection that has had
/// its [`FAIR_SHARE`] is asked to make room, and the slot it frees is
/// taken; until one has, nothing more is accepted.
async fn make_room(
    slots: &Arc<tokio::sync::Semaphore>,
    live: &std::sync::Mutex<Live>,
) -> tokio::sync::OwnedSemaphorePermit {
    loop {
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return p;
        }
        // The oldest still unasked, and when it will have had its share.
        let due = match live.lock() {
            Ok(mut l) => match l.front() {
                Some((_, at, _)) if at.elapsed() >= FAIR_SHARE => {
                    // Its task frees the slot within DRAIN.
                    l.pop_front().map(|(_, _, evict)| evict.send(()));
                    Instant::now() + DRAIN
                }
                Some((_, at, _)) => *at + FAIR_SHARE,
                None => Instant::now() + DRAIN,
            },
            Err(_) => Instant::now() + DRAIN,
        };
        tokio::select! {
            p = slots.clone().acquire_owned() => if let Ok(p) = p { return p },
            _ = tokio::time::sleep_until(due.into()) => {}
        }
    }
}

/// Serves one connection until it closes, times out, reaches [`MAX_AGE`],
/// or is asked to make room: then its current response is finished
/// (within [`DRAIN`]) before it closes.
async fn connection<S>(
    stream: tokio::net::TcpStream,
    svc: S,
    evicted: tokio::sync::oneshot::Receiver<()>,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = http.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = evicted => {}
        _ = tokio::time::sleep(MAX_AGE) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};

    /// A served agent on a loopback port, publishing as the event loop
    /// does; the runtime must outlive the test's connections.
    fn agent() -> (tokio::runtime::Runtime, std::net::SocketAddr) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let header: crate::stream::Header = serde_json::from_str(
            r#"{"format":"vfio-zp-recording","version":2,"agent_version":"t","kernel_release":"6.1.0","zero_pfn":0,"struct_page_size":64,"refcount_offset":52,"started_unix_ms":0,"started_t_ns":5,"probes":[]}"#,
        )
        .unwrap();
        let m = crate::model::Model::new(&header, crate::model::Config::default());
        let snapshot = Snapshot::new(m.verdicts(), &[], None);
        shared.publish(snapshot.clone());
        let publisher = shared.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                publisher.publish(snapshot.clone());
            }
        });
        {
            let _guard = rt.enter();
            spawn(listener, shared).unwrap();
        }
        (rt, addr)
    }

    /// One request on a connection of its own; the status line.
    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    }

    /// Whether the server has closed this connection (without waiting).
    fn closed(s: &std::net::TcpStream) -> bool {
        s.set_nonblocking(true).unwrap();
        match (&*s).read(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Issue 16: idle connections past the cap, and past the soft
    /// descriptor limit of old, never keep /healthz from answering.
    #[test]
    fn healthz_answers_under_a_flood_of_idle_connections() {
        if raise_nofile().map_or(true, |n| n < 4096) {
            return crate::testing::skip("nofile", "the hard descriptor limit is under 4096");
        }
        let (_rt, addr) = agent();
        // 1500 connections that never send a byte.
        let idle: Vec<_> = (0..1500)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        eprintln!("1500 idle connections made");
        let t0 = Instant::now();
        assert_eq!(get(addr, "/healthz"), "HTTP/1.1 200 OK");
        assert!(t0.elapsed() < HEADER_TIMEOUT, "{:?}", t0.elapsed());
        // The server closed all but its newest connections.
        let open = idle.iter().filter(|s| !closed(s)).count();
        assert!(
            open <= MAX_CONNECTIONS,
            "{open} idle connections still open"
        );
    }

    /// Issue 16: a client that sends half a request head and stops is
    /// dropped after the header timeout, not kept until MAX_AGE.
    #[test]
    fn half_a_request_is_dropped_at_the_header_timeout() {
        let (_rt, addr) = agent();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Ag")
            .unwrap();
        let t0 = Instant::now();
        c.set_read_timeout(Some(HEADER_TIMEOUT * 3)).unwrap();
        let mut rest = Vec::new();
        let r = c.read_to_end(&mut rest);
        let waited = t0.elapsed();
        // Closed (with or without a 408 first), not timed out on our side.
        assert!(
            !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "still open after {waited:?}"
        );
        assert!(
            waited >= HEADER_TIMEOUT - Duration::from_millis(500) && waited < HEADER_TIMEOUT * 2,
            "closed after {waited:?}, the header timeout is {HEADER_TIMEOUT:?}"
        );
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&rest)
        );
        // And the agent still serves.
        assert_eq!(get(addr, "/healthz"), "HTTP/1.1 200 OK");
    }

    /// Issue 16: more keep-alive clients than the cap, each asking again as
    /// soon as it is answered (as `wrk -c400` does), are all served, and
    /// /healthz answers in the storm. Evicting the oldest connection on
    /// every accept closed connections before they were read: hardly any
    /// request was answered.
    #[test]
    fn every_client_of_a_scrape_storm_above_the_cap_is_served() {
        const CLIENTS: usize = 400;
        if raise_nofile().map_or(true, |n| n < 4096) {
            return crate::testing::skip("nofile", "the hard descriptor limit is under 4096");
        }
        let (_rt, addr) = agent();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first_answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (stop, first) = (stop.clone(), first_answers.clone());
                std::thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn(move || storm_client(addr, &stop, &first))
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(get(addr, "/healthz"), "HTTP/1.1 200 OK");
        let healthz = t0.elapsed();
        // At least 4 s of storm, longer (30 s at most) until every client
        // had its turn: on a loaded machine turns come slower, and what
        // must fail is a client that never gets one, not a slow one.
        std::thread::sleep(Duration::from_secs(3));
        while first_answers.load(std::sync::atomic::Ordering::Relaxed) < CLIENTS
            && t0.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let storm = t0.elapsed() + Duration::from_secs(1);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let served: Vec<(u64, u64)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let answers: u64 = served.iter().map(|s| s.0).sum();
        let unserved = served.iter().filter(|s| s.0 == 0).count();
        let cut = served.iter().map(|s| s.1).sum::<u64>();
        eprintln!(
            "{answers} answers to {CLIENTS} clients in {storm:?}, {unserved} never answered, \
             {cut} connections closed mid-request, /healthz in {healthz:?}"
        );
        assert_eq!(
            unserved, 0,
            "{unserved} of {CLIENTS} clients never answered"
        );
        assert!(answers >= 10 * CLIENTS as u64, "{answers} answers");
        // A client is asked to make room only between responses.
        assert!(cut * 100 <= answers, "{cut} cut off, {answers} answered");
        // Answered during the storm, not after it: a bound in the tens of
        // seconds, as a loaded machine slows every answer.
        assert!(
            healthz < Duration::from_secs(10),
            "/healthz took {healthz:?}"
        );
    }

    /// One storm client: GET /metrics over keep-alive until `stop`,
    /// reconnecting whenever the server closes. Its answers, and the
    /// connections that closed with a request unanswered; its first
    /// answer counts in `first_answers`.
    fn storm_client(
        addr: std::net::SocketAddr,
        stop: &std::sync::atomic::AtomicBool,
        first_answers: &std::sync::atomic::AtomicUsize,
    ) -> (u64, u64) {
        use std::io::BufRead;
        let (mut answers, mut cut) = (0, 0);
        'connect: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(c) = std::net::TcpStream::connect(addr) else {
                continue;
            };
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = std::io::BufReader::new(c.try_clone().unwrap());
            let mut c = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .is_err()
                {
                    continue 'connect;
                }
                // Status line, headers up to Content-Length, then the body.
                let mut len = None;
                loop {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => {
                            cut += 1;
                            continue 'connect;
                        }
                        Ok(_) => {}
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse::<usize>().ok();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len.unwrap_or(0)];
                if r.read_exact(&mut body).is_err() {
                    cut += 1;
                    continue 'connect;
                }
                answers += 1;
                if answers == 1 {
                    first_answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        (answers, cut)
    }
}
