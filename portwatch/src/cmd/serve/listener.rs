//! The HTTP listener of `portwatch serve`, bounded: every connection has a
//! time limit for its first request's header, for each request, and for the
//! quiet between requests; at most `max_connections` are open at once (the
//! longest-quiet one makes room for a new one, so idle or slow clients can
//! never lock Prometheus out); request headers are capped in size and
//! bodies are never read. Optionally TLS, with client certificates.
//!
//! A connection's task is aborted (its socket closed) by a sweep that runs
//! every quarter second, so a client that sends half a header, or nothing
//! at all, holds its file descriptor for at most the header time-out.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch, task::AbortHandle};
use tower::ServiceExt as _;

use super::tls::Reloading;

/// What a connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From accept to the end of the first request's header (TLS handshake
    /// included).
    pub header_timeout: Duration,
    /// From a request's header to its response.
    pub request_timeout: Duration,
    /// Quiet between two requests of a kept-alive connection.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Request line and headers, in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 128,
            max_header_bytes: 8 * 1024,
        }
    }
}

/// What the sweep knows of one connection.
struct ConnState {
    /// Milliseconds since the registry's start of the last request's end
    /// (or of the accept).
    last_ms: AtomicU64,
    /// Milliseconds since the registry's start when the request now in
    /// flight began.
    started_ms: AtomicU64,
    in_flight: AtomicU32,
    requests: AtomicU64,
}

struct Entry {
    state: Arc<ConnState>,
    abort: AbortHandle,
}

/// Every open connection, by id.
struct Registry {
    epoch: Instant,
    next: u64,
    conns: HashMap<u64, Entry>,
}

/// Why the sweep would close a connection now (None: it may stay).
fn overdue(
    last_ms: u64,
    started_ms: u64,
    in_flight: u32,
    requests: u64,
    now_ms: u64,
    l: &Limits,
) -> Option<&'static str> {
    let ms = |d: Duration| d.as_millis() as u64;
    if in_flight > 0 {
        (now_ms.saturating_sub(started_ms) > ms(l.request_timeout)).then_some("request time-out")
    } else if requests == 0 {
        (now_ms.saturating_sub(last_ms) > ms(l.header_timeout)).then_some("header time-out")
    } else {
        (now_ms.saturating_sub(last_ms) > ms(l.idle_timeout)).then_some("idle time-out")
    }
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Closes the connections past their limits; how many.
    fn sweep(&mut self, l: &Limits) -> usize {
        let now = self.now_ms();
        let before = self.conns.len();
        self.conns.retain(|_, e| {
            let s = &e.state;
            let why = overdue(
                s.last_ms.load(Ordering::Relaxed),
                s.started_ms.load(Ordering::Relaxed),
                s.in_flight.load(Ordering::Relaxed),
                s.requests.load(Ordering::Relaxed),
                now,
                l,
            );
            if why.is_some() {
                e.abort.abort();
            }
            why.is_none() && !e.abort.is_finished()
        });
        before - self.conns.len()
    }

    /// Makes room for one more connection: closes the one quiet for longest
    /// when full. False when every connection has a request in flight.
    fn make_room(&mut self, max: usize) -> bool {
        self.conns.retain(|_, e| !e.abort.is_finished());
        if self.conns.len() < max {
            return true;
        }
        let quietest = self
            .conns
            .iter()
            .filter(|(_, e)| e.state.in_flight.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, e)| e.state.last_ms.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match quietest.and_then(|id| self.conns.remove(&id)) {
            Some(e) => {
                e.abort.abort();
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) within
/// `limits`, until `stop` turns true; then requests in flight get a second
/// to finish and every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Reloading>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let reg = Arc::new(Mutex::new(Registry {
        epoch: Instant::now(),
        next: 0,
        conns: HashMap::new(),
    }));
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused_said = false;
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of fds, say: keep serving the connections
                        // there are, try again shortly.
                        log::warn!("serve: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut r = reg.lock().unwrap();
                if !r.make_room(limits.max_connections) {
                    if !refused_said {
                        eprintln!(
                            "portwatch: serve: {} connections, every one with a request in flight: refusing {peer} (said once)",
                            limits.max_connections
                        );
                        refused_said = true;
                    }
                    continue;
                }
                let now = r.now_ms();
                let state = Arc::new(ConnState {
                    last_ms: AtomicU64::new(now),
                    started_ms: AtomicU64::new(now),
                    in_flight: AtomicU32::new(0),
                    requests: AtomicU64::new(0),
                });
                let id = r.next;
                r.next += 1;
                let task = tokio::spawn(connection(
                    stream,
                    peer,
                    app.clone(),
                    tls.clone(),
                    limits,
                    state.clone(),
                    reg.clone(),
                ));
                r.conns.insert(id, Entry { state, abort: task.abort_handle() });
            }
            _ = sweep.tick() => {
                let closed = reg.lock().unwrap().sweep(&limits);
                if closed > 0 {
                    log::debug!("serve: closed {closed} connections past their time limits");
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    // Requests in flight get a second; quiet connections go now.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let busy = {
            let mut r = reg.lock().unwrap();
            r.conns.retain(|_, e| {
                let quiet = e.state.in_flight.load(Ordering::Relaxed) == 0;
                if quiet {
                    e.abort.abort();
                }
                !quiet && !e.abort.is_finished()
            });
            r.conns.len()
        };
        if busy == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for e in reg.lock().unwrap().conns.values() {
        e.abort.abort();
    }
    Ok(())
}

/// One connection: the TLS handshake if any, then HTTP/1.1 requests until
/// the client closes, or the sweep aborts this task.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<Arc<Reloading>>,
    limits: Limits,
    state: Arc<ConnState>,
    reg: Arc<Mutex<Registry>>,
) {
    let epoch = reg.lock().unwrap().epoch;
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let st = state.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        st.started_ms.store(now_ms(), Ordering::Relaxed);
        st.in_flight.fetch_add(1, Ordering::Relaxed);
        st.requests.fetch_add(1, Ordering::Relaxed);
        let st = st.clone();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await;
            st.last_ms.store(now_ms(), Ordering::Relaxed);
            st.in_flight.fetch_sub(1, Ordering::Relaxed);
            resp
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let res = match tls {
        None => http
            .serve_connection(TokioIo::new(stream), svc)
            .await
            .map_err(anyhow::Error::from),
        Some(tls) => match tls.acceptor().accept(stream).await {
            Ok(s) => http
                .serve_connection(TokioIo::new(s), svc)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e).context("TLS handshake")),
        },
    };
    if let Err(e) = res {
        log::debug!("serve: connection from {peer}: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_closes_at_its_own_limit() {
        let l = Limits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        // No request yet: the header time-out.
        assert_eq!(overdue(0, 0, 0, 0, 10_000, &l), None);
        assert_eq!(overdue(0, 0, 0, 0, 10_001, &l), Some("header time-out"));
        // Between requests: the idle time-out, counted from the last one.
        assert_eq!(overdue(5_000, 4_000, 0, 3, 35_000, &l), None);
        assert_eq!(
            overdue(5_000, 4_000, 0, 3, 35_001, &l),
            Some("idle time-out")
        );
        // A request in flight: the request time-out, from its start.
        assert_eq!(overdue(0, 20_000, 1, 1, 25_000, &l), None);
        assert_eq!(
            overdue(0, 20_000, 1, 1, 25_001, &l),
            Some("request time-out")
        );
    }

    /// A registry entry whose task never ends on its own (spawned on `rt`).
    fn entry(rt: &tokio::runtime::Runtime, last_ms: u64, in_flight: u32) -> Entry {
        let task = rt.spawn(std::future::pending::<()>());
        Entry {
            state: Arc::new(ConnState {
                last_ms: AtomicU64::new(last_ms),
                started_ms: AtomicU64::new(last_ms),
                in_flight: AtomicU32::new(in_flight),
                requests: AtomicU64::new(1),
            }),
            abort: task.abort_handle(),
        }
    }

    #[test]
    fn a_full_listener_closes_the_longest_quiet_connection() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let registry = |conns: Vec<(u64, Entry)>| Registry {
            epoch: Instant::now(),
            next: 0,
            conns: conns.into_iter().collect(),
        };
        let mut r = registry(vec![
            (1, entry(&rt, 500, 0)),
            (2, entry(&rt, 100, 1)), // the oldest, but busy
            (3, entry(&rt, 200, 0)), // the longest quiet
        ]);
        assert!(r.make_room(4), "room left");
        assert_eq!(r.conns.len(), 3);
        assert!(r.make_room(3));
        let mut left: Vec<u64> = r.conns.keys().copied().collect();
        left.sort();
        assert_eq!(left, [1, 2]);
        // Only busy connections: no room.
        let mut busy = registry(vec![(1, entry(&rt, 1, 1)), (2, entry(&rt, 2, 1))]);
        assert!(!busy.make_room(2));
        assert_eq!(busy.conns.len(), 2);
    }
}
