//! Pod and container names from the container runtime, over the CRI gRPC
//! API (`runtime.v1`) on its unix socket.
//!
//! The cgroup path gives a pod uid and a container id (`pods`); the runtime
//! knows their names. Look-ups run on a thread of their own (`pw-cri`, with
//! its own single-threaded tokio runtime), never on the event path: the
//! pipeline asks [`Cri::names`], which answers at once from the cache or
//! hands back a [`Slot`] the thread fills later (and then wakes the pipeline
//! through [`Cri::wake`]). An event waits for its slot no longer than the
//! detail budget (`cause::Detailer`); later events of the same container hit
//! the cache. Every call has a time limit, so a hung runtime costs names,
//! never the stream.
//!
//! Per container: `ListContainers` (filter: the id) gives the container's
//! name and its sandbox id; the pod's name, namespace and uid come from the
//! kubelet's labels on the container when they are there, else from
//! `PodSandboxStatus` (cached per sandbox). A process in the pod's own
//! cgroup (no container id) is named through `ListPodSandbox`, by uid.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerFilter, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    VersionRequest,
};
use tokio::sync::{mpsc, Notify, Semaphore};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::k8s::pods::Pod;

/// Tried in this order when no `--cri-endpoint` is given.
pub const DEFAULT_ENDPOINTS: &[&str] =
    &["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];
/// Where crictl reads the runtime's endpoint from; portwatch reads it the
/// same way when `--cri-endpoint` is not given.
pub const ENDPOINT_ENV: &str = "CONTAINER_RUNTIME_ENDPOINT";

/// A CRI endpoint as kubelet's `--container-runtime-endpoint` and crictl
/// write it (`unix:///run/containerd/containerd.sock`), or a bare socket
/// path. Any other scheme is refused: the CRI is reached over a unix socket.
pub fn parse_endpoint(s: &str) -> Result<std::path::PathBuf, String> {
    const FORMS: &str =
        "unix:///PATH or a socket PATH, e.g. unix:///run/containerd/containerd.sock";
    if s.trim().is_empty() {
        return Err(format!("empty endpoint: give {FORMS}"));
    }
    let path = match s.split_once("://") {
        Some(("unix", rest)) => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix endpoint takes an absolute path after unix:// ({FORMS})"
                ));
            }
            rest
        }
        Some((scheme, _)) => {
            return Err(format!(
                "{s:?}: scheme {scheme:?} is not supported: the CRI runtime is reached over a unix socket ({FORMS})"
            ))
        }
        None => s.strip_prefix("unix:").unwrap_or(s),
    };
    Ok(std::path::PathBuf::from(path))
}

/// Connecting to a socket.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// One whole look-up (up to two calls), and the start-up Version call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// "Not found" / "no answer" is believed this long, then asked again.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// With no runtime found, look again at most this often.
pub const REPROBE_EVERY: Duration = Duration::from_secs(30);
/// Cached answers (containers and pods), and sandboxes the thread knows.
const CACHE_MAX: usize = 4096;
/// Look-ups waiting for the thread; beyond this, events go without names.
const QUEUE: usize = 256;
/// Look-ups in flight at once.
const CONCURRENT: usize = 8;

/// What the runtime says about a container or a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub container: Option<String>,
}

impl Names {
    /// Fills the pod's unknown names. The uid stays the cgroup's.
    pub fn apply(&self, pod: &mut Pod) {
        if pod.namespace.is_none() {
            pod.namespace.clone_from(&self.namespace);
        }
        if pod.name.is_none() {
            pod.name.clone_from(&self.name);
        }
        if pod.container.is_none() && pod.container_id.is_some() {
            pod.container.clone_from(&self.container);
        }
    }
}

/// What is looked up: a container by id, or a pod (its own cgroup) by uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Container(String),
    Pod(String),
}

impl Key {
    pub fn of(pod: &Pod) -> Key {
        match &pod.container_id {
            Some(id) => Key::Container(id.clone()),
            None => Key::Pod(pod.uid.clone()),
        }
    }
}

/// A finished look-up: the names (None: unknown to the runtime, or no
/// answer) and when it finished.
#[derive(Debug, Clone)]
pub struct Answer {
    pub names: Option<Names>,
    pub at: Instant,
}

/// A look-up's answer, filled once by the CRI thread, shared by every event
/// waiting for it and by the cache.
pub type Slot = Arc<OnceLock<Answer>>;

/// The names in a filled slot, if it has any.
pub fn names_in(slot: &Slot) -> Option<&Names> {
    slot.get().and_then(|a| a.names.as_ref())
}

pub enum Lookup {
    /// Known now (from the cache): the names, or that there are none.
    Known(Option<Names>),
    /// Asked; the slot fills when the runtime answers.
    Pending(Slot),
}

/// Which runtime answers, as found at start-up.
#[derive(Debug, Clone)]
pub enum Status {
    Found {
        endpoint: PathBuf,
        runtime: String,
    },
    /// None answered: each endpoint tried, and why it did not answer.
    NotFound(Vec<(PathBuf, String)>),
    /// No cgroup2, so no pods: no look-ups at all.
    Off,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Found { endpoint, runtime } => {
                write!(f, "{runtime} at {}", endpoint.display())
            }
            Status::NotFound(tried) => {
                let t: Vec<String> = tried
                    .iter()
                    .map(|(p, why)| format!("{}: {why}", p.display()))
                    .collect();
                write!(f, "no CRI runtime answered ({})", t.join("; "))
            }
            Status::Off => write!(f, "off"),
        }
    }
}

struct Job {
    key: Key,
    slot: Slot,
}

/// The pipeline's side: the cache, and the queue to the CRI thread.
pub struct Cri {
    cache: HashMap<Key, Slot>,
    jobs: Option<mpsc::Sender<Job>>,
    wake: Arc<Notify>,
    status: Status,
    /// The endpoint was given (flag or environment), not guessed.
    given: bool,
    /// Look-ups sent to the thread (cache misses).
    pub asked: u64,
}

impl Cri {
    /// No runtime, no look-ups: every pod keeps null names.
    pub fn off() -> Cri {
        Cri {
            cache: HashMap::new(),
            jobs: None,
            wake: Arc::new(Notify::new()),
            status: Status::Off,
            given: false,
            asked: 0,
        }
    }

    /// Starts the CRI thread on `endpoint` (None: the first of
    /// [`DEFAULT_ENDPOINTS`] that answers) and waits for its start-up probe
    /// (a few seconds at most, even against a hung runtime).
    pub fn start(endpoint: Option<PathBuf>) -> Result<Cri> {
        let given = endpoint.is_some();
        let candidates: Vec<PathBuf> = match endpoint {
            Some(p) => vec![p],
            None => DEFAULT_ENDPOINTS.iter().map(PathBuf::from).collect(),
        };
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let wake = Arc::new(Notify::new());
        let (status_tx, status_rx) = std::sync::mpsc::channel();
        let w = wake.clone();
        std::thread::Builder::new()
            .name("pw-cri".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let why = format!("no async runtime for CRI look-ups: {e}");
                        let tried = candidates.iter().map(|p| (p.clone(), why.clone()));
                        let _ = status_tx.send(Status::NotFound(tried.collect()));
                        return;
                    }
                };
                rt.block_on(serve(candidates, rx, w, status_tx));
            })
            .context("starting the CRI look-up thread")?;
        // Each candidate costs at most CONNECT_TIMEOUT + CALL_TIMEOUT.
        let status = status_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the CRI look-up thread did not report"))?;
        Ok(Cri {
            cache: HashMap::new(),
            jobs: Some(tx),
            wake,
            status,
            given,
            asked: 0,
        })
    }

    /// Another user of the same runtime connection and look-up thread, with
    /// a cache of its own (one CRI client per process: `serve`'s trace
    /// pipeline and its netns scan share one).
    pub fn handle(&self) -> Cri {
        Cri {
            cache: HashMap::new(),
            jobs: self.jobs.clone(),
            wake: self.wake.clone(),
            status: self.status.clone(),
            given: self.given,
            asked: 0,
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The endpoint was named by `--cri-endpoint` or the environment.
    pub fn given(&self) -> bool {
        self.given
    }

    /// Notified each time the thread fills a slot.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The names for `key`: from the cache, or asked of the runtime.
    pub fn names(&mut self, key: Key) -> Lookup {
        let now = Instant::now();
        if let Some(slot) = self.cache.get(&key) {
            match slot.get() {
                None => return Lookup::Pending(slot.clone()),
                Some(a) if a.names.is_some() => return Lookup::Known(a.names.clone()),
                Some(a) if now.duration_since(a.at) < NEGATIVE_TTL => return Lookup::Known(None),
                Some(_) => {} // a stale "unknown": ask again
            }
        }
        let Some(jobs) = &self.jobs else {
            return Lookup::Known(None);
        };
        if self.cache.len() >= CACHE_MAX {
            // Keep what is in flight; the rest is asked again when needed.
            self.cache.retain(|_, s| s.get().is_none());
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
        }
        let slot: Slot = Arc::new(OnceLock::new());
        match jobs.try_send(Job {
            key: key.clone(),
            slot: slot.clone(),
        }) {
            Ok(()) => {
                self.asked += 1;
                self.cache.insert(key, slot.clone());
                Lookup::Pending(slot)
            }
            // Queue full or thread gone: this event goes without names.
            Err(_) => Lookup::Known(None),
        }
    }
}

/// A connection to the runtime at `path` that answered Version.
async fn connect(path: &Path) -> Result<(RuntimeServiceClient<Channel>, String)> {
    let p = path.to_path_buf();
    let channel = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Endpoint::from_static("http://cri.invalid")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            })),
    )
    .await
    .map_err(|_| anyhow!("no connection within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| anyhow!("{}", error_chain(&e)))?;
    let mut client = RuntimeServiceClient::new(channel);
    let v = tokio::time::timeout(
        CALL_TIMEOUT,
        client.version(VersionRequest {
            version: "v1".into(),
        }),
    )
    .await
    .map_err(|_| anyhow!("no answer to Version within {CALL_TIMEOUT:?}"))?
    .map_err(|s| anyhow!("Version: {}", status_text(&s)))?
    .into_inner();
    let runtime = format!("{} {}", v.runtime_name, v.runtime_version);
    Ok((client, runtime.trim().to_string()))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// The first candidate that answers, or why none did.
async fn probe(candidates: &[PathBuf]) -> (Option<RuntimeServiceClient<Channel>>, Status) {
    let mut tried = vec![];
    for p in candidates {
        if !p.exists() {
            tried.push((p.clone(), "no such socket".into()));
            continue;
        }
        match connect(p).await {
            Ok((client, runtime)) => {
                let status = Status::Found {
                    endpoint: p.clone(),
                    runtime,
                };
                return (Some(client), status);
            }
            Err(e) => tried.push((p.clone(), format!("{e:#}"))),
        }
    }
    (None, Status::NotFound(tried))
}

/// The CRI thread: probe, report, then answer look-ups until the pipeline
/// drops its end of the queue.
async fn serve(
    candidates: Vec<PathBuf>,
    mut rx: mpsc::Receiver<Job>,
    wake: Arc<Notify>,
    status_tx: std::sync::mpsc::Sender<Status>,
) {
    let (mut client, status) = probe(&candidates).await;
    let mut endpoint = found_at(&status);
    let _ = status_tx.send(status);
    let mut probed = Instant::now();
    let sandboxes: Sandboxes = Arc::new(Mutex::new(HashMap::new()));
    let limit = Arc::new(Semaphore::new(CONCURRENT));
    while let Some(job) = rx.recv().await {
        if client.is_none() && probed.elapsed() >= REPROBE_EVERY {
            let (c, status) = probe(&candidates).await;
            probed = Instant::now();
            if let Status::Found { .. } = status {
                eprintln!("portwatch: pods: names now come from the CRI runtime, {status}");
            }
            endpoint = found_at(&status);
            client = c;
        }
        let Some(c) = client.clone() else {
            fill(&job.slot, None, &wake);
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (wake, sandboxes, endpoint) = (wake.clone(), sandboxes.clone(), endpoint.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let asked = async {
                match lookup(c, &job.key, &sandboxes).await {
                    Ok(n) => Ok(n),
                    // The runtime may have restarted under the channel,
                    // whose first call after that fails: one fresh
                    // connection, one more try, so that a pod's first
                    // failures after a restart still carry its name.
                    Err(e) => match &endpoint {
                        Some(p) => {
                            log::debug!("CRI look-up of {:?}: {e:#}; reconnecting", job.key);
                            let (fresh, _) = connect(p).await?;
                            lookup(fresh, &job.key, &sandboxes).await
                        }
                        None => Err(e),
                    },
                }
            };
            let names = match tokio::time::timeout(CALL_TIMEOUT, asked).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    log::debug!("CRI look-up of {:?}: {e:#}", job.key);
                    None
                }
                Err(_) => {
                    log::debug!(
                        "CRI look-up of {:?}: no answer in {CALL_TIMEOUT:?}",
                        job.key
                    );
                    None
                }
            };
            log::debug!(
                "CRI look-up of {:?} in {:?}: {names:?}",
                job.key,
                t0.elapsed()
            );
            fill(&job.slot, names, &wake);
            drop(permit);
        });
    }
}

/// The socket of the runtime that answered, if one did.
fn found_at(status: &Status) -> Option<PathBuf> {
    match status {
        Status::Found { endpoint, .. } => Some(endpoint.clone()),
        _ => None,
    }
}

fn fill(slot: &Slot, names: Option<Names>, wake: &Notify) {
    let _ = slot.set(Answer {
        names,
        at: Instant::now(),
    });
    wake.notify_one();
}

/// Sandbox id -> the pod's metadata, as PodSandboxStatus gave it.
type Sandboxes = Arc<Mutex<HashMap<String, PodSandboxMetadata>>>;

const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The pod's names from the kubelet's labels, when all three are there.
fn pod_from_labels(labels: &HashMap<String, String>) -> Option<PodSandboxMetadata> {
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    Some(PodSandboxMetadata {
        name: get(LABEL_POD_NAME)?,
        namespace: get(LABEL_POD_NAMESPACE)?,
        uid: get(LABEL_POD_UID)?,
        attempt: 0,
    })
}

fn names_of(pod: &PodSandboxMetadata, container: Option<String>) -> Names {
    Names {
        namespace: non_empty(&pod.namespace),
        name: non_empty(&pod.name),
        uid: non_empty(&pod.uid),
        container,
    }
}

/// One look-up: Ok(None) when the runtime does not know the key.
async fn lookup(
    mut client: RuntimeServiceClient<Channel>,
    key: &Key,
    sandboxes: &Sandboxes,
) -> Result<Option<Names>> {
    match key {
        Key::Container(id) => {
            let list = client
                .list_containers(ListContainersRequest {
                    filter: Some(ContainerFilter {
                        id: id.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(|s| anyhow!("ListContainers: {}", status_text(&s)))?
                .into_inner();
            let Some(c) = list.containers.into_iter().find(|c| c.id == *id) else {
                return Ok(None);
            };
            let container = c
                .metadata
                .as_ref()
                .and_then(|m| non_empty(&m.name))
                .or_else(|| c.labels.get(LABEL_CONTAINER_NAME).cloned());
            if let Some(pod) = pod_from_labels(&c.labels) {
                return Ok(Some(names_of(&pod, container)));
            }
            let known = sandboxes.lock().unwrap().get(&c.pod_sandbox_id).cloned();
            let pod = match known {
                Some(p) => p,
                None => {
                    let st = client
                        .pod_sandbox_status(PodSandboxStatusRequest {
                            pod_sandbox_id: c.pod_sandbox_id.clone(),
                            verbose: false,
                        })
                        .await
                        .map_err(|s| anyhow!("PodSandboxStatus: {}", status_text(&s)))?
                        .into_inner();
                    let Some(meta) = st.status.and_then(|s| s.metadata) else {
                        return Ok(container.map(|c| Names {
                            container: Some(c),
                            ..Default::default()
                        }));
                    };
                    let mut m = sandboxes.lock().unwrap();
                    if m.len() >= CACHE_MAX {
                        m.clear();
                    }
                    m.insert(c.pod_sandbox_id.clone(), meta.clone());
                    meta
                }
            };
            Ok(Some(names_of(&pod, container)))
        }
        Key::Pod(uid) => {
            let list = client
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .map_err(|s| anyhow!("ListPodSandbox: {}", status_text(&s)))?
                .into_inner();
            // A pod may have had several sandboxes: the ready one, else the newest.
            let best = list
                .items
                .into_iter()
                .filter(|s| s.metadata.as_ref().is_some_and(|m| m.uid == *uid))
                .max_by_key(|s| {
                    (
                        s.state == PodSandboxState::SandboxReady as i32,
                        s.created_at,
                    )
                });
            Ok(best.and_then(|s| s.metadata).map(|m| names_of(&m, None)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6";
    const CID: &str = "4c5f1e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

    fn pod(cid: Option<&str>) -> Pod {
        crate::k8s::pods::parse_kube_path(&match cid {
            Some(c) => format!("/kubepods/burstable/pod{UID}/{c}"),
            None => format!("/kubepods/burstable/pod{UID}"),
        })
        .unwrap()
    }

    fn names() -> Names {
        Names {
            namespace: Some("shop".into()),
            name: Some("web-1".into()),
            uid: Some(UID.into()),
            container: Some("nginx".into()),
        }
    }

    #[test]
    fn names_fill_only_what_is_unknown() {
        let mut p = pod(Some(CID));
        names().apply(&mut p);
        assert_eq!(p.namespace.as_deref(), Some("shop"));
        assert_eq!(p.name.as_deref(), Some("web-1"));
        assert_eq!(p.container.as_deref(), Some("nginx"));
        assert_eq!(p.uid, UID);
        assert_eq!(p.short(), "shop/web-1");
        // A process in the pod's own cgroup has no container to name.
        let mut own = pod(None);
        names().apply(&mut own);
        assert_eq!(own.name.as_deref(), Some("web-1"));
        assert_eq!(own.container, None);
        assert_eq!(Key::of(&own), Key::Pod(UID.into()));
        assert_eq!(Key::of(&p), Key::Container(CID.into()));
    }

    #[test]
    fn kubelet_labels_name_the_pod() {
        let mut l: HashMap<String, String> = [
            (LABEL_POD_NAME, "web-1"),
            (LABEL_POD_NAMESPACE, "shop"),
            (LABEL_POD_UID, UID),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let m = pod_from_labels(&l).unwrap();
        assert_eq!(names_of(&m, Some("nginx".into())), names(), "labels: {l:?}");
        l.insert(LABEL_POD_NAMESPACE.into(), String::new());
        assert!(pod_from_labels(&l).is_none(), "all three or none");
    }

    /// The cache: one look-up per key while it is in flight, answers kept,
    /// "unknown" believed only briefly; a full queue costs names, not events.
    #[test]
    fn cache_shares_pending_and_expires_negatives() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut cri = Cri {
            jobs: Some(tx),
            ..Cri::off()
        };
        let k = Key::Container(CID.into());
        let Lookup::Pending(s1) = cri.names(k.clone()) else {
            panic!("a miss is asked")
        };
        let Lookup::Pending(s2) = cri.names(k.clone()) else {
            panic!("in flight")
        };
        assert!(Arc::ptr_eq(&s1, &s2), "one look-up serves both");
        assert_eq!(cri.asked, 1);
        let job = rx.try_recv().unwrap();
        fill(&job.slot, Some(names()), &cri.wake);
        assert!(matches!(cri.names(k.clone()), Lookup::Known(Some(n)) if n == names()));
        assert_eq!(names_in(&s1), Some(&names()));
        // A negative answer, fresh then stale.
        let p = Key::Pod(UID.into());
        let Lookup::Pending(s) = cri.names(p.clone()) else {
            panic!()
        };
        let _ = rx.try_recv().unwrap();
        s.set(Answer {
            names: None,
            at: Instant::now(),
        })
        .unwrap();
        assert!(matches!(cri.names(p.clone()), Lookup::Known(None)));
        let old = Key::Pod("old".into());
        let stale: Slot = Arc::new(OnceLock::new());
        stale
            .set(Answer {
                names: None,
                at: Instant::now() - NEGATIVE_TTL,
            })
            .unwrap();
        cri.cache.insert(old.clone(), stale);
        assert!(matches!(cri.names(old.clone()), Lookup::Pending(_)));
        assert_eq!(cri.asked, 3);
        // Queue full (capacity 2, one job still queued + this one): no names now.
        assert!(matches!(
            cri.names(Key::Container("x".into())),
            Lookup::Pending(_)
        ));
        assert!(matches!(
            cri.names(Key::Container("y".into())),
            Lookup::Known(None)
        ));
        // Off: never asks.
        let mut off = Cri::off();
        assert!(matches!(off.names(k), Lookup::Known(None)));
        assert_eq!(off.asked, 0);
    }

    /// A socket that accepts and never answers, and one that does not exist:
    /// start-up says why within its time limits, and look-ups answer
    /// "unknown" at once instead of hanging.
    #[test]
    fn hung_and_missing_runtimes_cost_names_not_time() {
        let dir = std::env::temp_dir().join(format!("pw-cri-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hung = dir.join("hung.sock");
        let _ = std::fs::remove_file(&hung);
        // Bound and listening, never accepted: connect() succeeds, no answer comes.
        let _listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
        let t0 = Instant::now();
        let mut cri = Cri::start(Some(hung.clone())).unwrap();
        let took = t0.elapsed();
        assert!(
            took < CONNECT_TIMEOUT + CALL_TIMEOUT + Duration::from_secs(1),
            "{took:?}"
        );
        let Status::NotFound(tried) = cri.status() else {
            panic!("{}", cri.status())
        };
        assert_eq!(tried.len(), 1);
        assert!(
            tried[0].1.starts_with("no answer to Version within"),
            "{tried:?}"
        );
        let Lookup::Pending(s) = cri.names(Key::Container(CID.into())) else {
            panic!()
        };
        let t0 = Instant::now();
        while s.get().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(1), "answered at once");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(names_in(&s), None);

        let missing = dir.join("missing.sock");
        let cri = Cri::start(Some(missing.clone())).unwrap();
        let text = cri.status().to_string();
        assert!(
            text.contains("no CRI runtime answered") && text.contains("no such socket"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
