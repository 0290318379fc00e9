//! Off the event path: the socket-table look-ups on worker threads, a
//! rate-limited cache of them, and the queue that lets each event wait for
//! its detail (and its pod's names) up to the budget, in arrival order.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet, VecDeque},
    rc::Rc,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    classify::{classify, key_for, Key, Scope, Verdict},
    detail::{finish, Snapshot},
};
use crate::{
    host::{
        holders::{Holders, Owner},
        sockdiag::{self, NsHandle, PortFilter, Sock},
    },
    k8s::cri,
    pipeline::{event::Event, MAX_WAITING},
};

/// One look-up per netns x destination per this long.
const LOOKUP_EVERY: Duration = Duration::from_secs(1);
/// Look-ups queued beyond this are not started (the events go out without detail).
const MAX_QUEUED: usize = 256;
const WORKERS: usize = 2;

/// How long a whole netns's socket table answers look-ups toward any of its
/// destinations: a storm toward many destinations of one netns reads the
/// table (and resolves its holders) once per this, not once per
/// destination, and no destination's look-up waits behind another's.
const TABLE_FRESH: Duration = Duration::from_millis(100);

/// A netns's whole socket table of one protocol, with the sockets' holders.
struct Table {
    /// When the read started.
    at: Instant,
    socks: Vec<Sock>,
    owners: HashMap<u32, Owner>,
}

/// The whole-netns tables, shared by the workers. One slot per (netns,
/// protocol), locked while it is read, so that two workers asking for the
/// same netns read it once.
#[derive(Default)]
pub struct Tables {
    slots: Mutex<HashMap<(u32, u8), TableSlot>>,
}

/// A (netns, protocol)'s last table, locked while it is read.
type TableSlot = Arc<Mutex<Option<Arc<Table>>>>;

impl Tables {
    fn get(&self, key: &Key, ns: Option<&std::fs::File>, holders: &Holders) -> Result<Arc<Table>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap();
            // A table past its freshness is never read again: let it go
            // now, not when some later storm fills the map (a node netns's
            // table can be tens of thousands of sockets). One being read
            // (locked) stays.
            slots.retain(|_, s| {
                s.try_lock()
                    .map(|t| t.as_ref().is_some_and(|t| t.at.elapsed() < TABLE_FRESH))
                    .unwrap_or(true)
            });
            slots.entry((key.netns, key.proto)).or_default().clone()
        };
        let mut t = slot.lock().unwrap();
        if let Some(t) = t.as_ref().filter(|t| t.at.elapsed() < TABLE_FRESH) {
            return Ok(t.clone());
        }
        let at = Instant::now();
        let socks = sockdiag::dump_in(ns, key.proto, PortFilter::Any)
            .with_context(|| format!("socket table of netns {}", key.netns))?;
        let inodes: HashSet<u32> = socks.iter().map(|s| s.inode).collect();
        let owners = holders.resolve(Some(key.netns), &inodes);
        let table = Arc::new(Table { at, socks, owners });
        *t = Some(table.clone());
        Ok(table)
    }
}

pub fn lookup(key: &Key, ns: &NsHandle, holders: &Holders, tables: &Tables) -> Result<Snapshot> {
    let ns_file = match ns {
        NsHandle::Own => None,
        NsHandle::File(f) => Some(f),
    };
    let filter = match key.scope {
        // Toward a destination: from the netns's whole table.
        Scope::Toward(dst, dport) => {
            let t = tables.get(key, ns_file, holders)?;
            let socks: Vec<Sock> = t
                .socks
                .iter()
                .filter(|s| s.dport == dport && s.dst == dst)
                .cloned()
                .collect();
            let owners = socks
                .iter()
                .filter_map(|s| Some((s.inode, t.owners.get(&s.inode)?.clone())))
                .collect();
            return Ok(Snapshot::new(socks, owners));
        }
        // A 4-tuple, a port, a range: read fresh, filtered in the kernel.
        Scope::Tuple(_, dport, sport) => PortFilter::SportDport(sport, dport),
        Scope::LocalPort(p) => PortFilter::Sport(p),
        Scope::LocalRange(lo, hi) => PortFilter::SportRange(lo, hi),
    };
    let mut socks = sockdiag::dump_in(ns_file, key.proto, filter)
        .with_context(|| format!("socket table of netns {}", key.netns))?;
    if let Scope::Tuple(dst, _, _) = key.scope {
        socks.retain(|s| s.dst == dst);
    }
    let inodes: HashSet<u32> = socks.iter().map(|s| s.inode).collect();
    let owners = holders.resolve(Some(key.netns), &inodes);
    Ok(Snapshot::new(socks, owners))
}

type Outcome = Result<Arc<Snapshot>, String>;
type Slot = Rc<RefCell<Option<Outcome>>>;

struct Job {
    key: Key,
    gen: u64,
    ns: NsHandle,
}

/// A finished look-up, back from a worker.
pub struct Done {
    key: Key,
    gen: u64,
    outcome: Outcome,
}

struct Entry {
    started: Instant,
    gen: u64,
    slot: Slot,
}

struct Waiting {
    ev: Event,
    verdict: Verdict,
    slot: Option<Slot>,
    /// The pod's names, when their look-up was still under way.
    names: Option<cri::Slot>,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long an event may wait for its detail.
    pub budget: Duration,
    /// false (`--no-detail`): cause from the event alone, no look-ups.
    pub lookups: bool,
}

pub struct Detailer {
    opts: Options,
    queue: VecDeque<Waiting>,
    entries: HashMap<Key, Entry>,
    next_gen: u64,
    jobs: Option<mpsc::SyncSender<Job>>,
}

impl Detailer {
    /// The detailer and the channel its workers answer on.
    pub fn new(opts: Options) -> Result<(Detailer, tokio::sync::mpsc::UnboundedReceiver<Done>)> {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let jobs = if opts.lookups {
            let (tx, rx) = mpsc::sync_channel::<Job>(MAX_QUEUED);
            let rx = Arc::new(Mutex::new(rx));
            let holders = Arc::new(Holders::new());
            let tables = Arc::new(Tables::default());
            for i in 0..WORKERS {
                let rx = rx.clone();
                let done_tx = done_tx.clone();
                let holders = holders.clone();
                let tables = tables.clone();
                std::thread::Builder::new()
                    .name(format!("pw-detail-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().unwrap().recv() {
                            Ok(j) => j,
                            Err(_) => return, // the detailer is gone
                        };
                        let t0 = Instant::now();
                        let outcome = lookup(&job.key, &job.ns, &holders, &tables)
                            .map(Arc::new)
                            .map_err(|e| format!("{e:#}"));
                        log::debug!(
                            "look-up {:?}: {} sockets in {:?}",
                            job.key,
                            outcome.as_ref().map_or(0, |s| s.socks.len()),
                            t0.elapsed()
                        );
                        if done_tx
                            .send(Done {
                                key: job.key,
                                gen: job.gen,
                                outcome,
                            })
                            .is_err()
                        {
                            return;
                        }
                    })
                    .context("starting a detail worker thread")?;
            }
            Some(tx)
        } else {
            None
        };
        Ok((
            Detailer {
                opts,
                queue: VecDeque::new(),
                entries: HashMap::new(),
                next_gen: 0,
                jobs,
            },
            done_rx,
        ))
    }

    /// Takes an event (already enriched and filtered). `handle` gives a
    /// handle on a netns by inode when a look-up has to start (None: gone).
    #[cfg(test)]
    pub fn push(&mut self, ev: Event, handle: impl FnOnce(u32, &Event) -> Option<NsHandle>) {
        self.push_named(ev, None, handle)
    }

    /// As `push`, for an event whose pod names are still being looked up
    /// (`names`): it waits for them too, within the same budget.
    pub fn push_named(
        &mut self,
        ev: Event,
        names: Option<cri::Slot>,
        handle: impl FnOnce(u32, &Event) -> Option<NsHandle>,
    ) {
        let now = Instant::now();
        let verdict = classify(&ev);
        let slot = match (&self.jobs, key_for(&ev, verdict)) {
            (Some(jobs), Some(key)) => Some(self.slot_for(key, &ev, now, jobs.clone(), handle)),
            _ => None,
        };
        self.queue.push_back(Waiting {
            ev,
            verdict,
            slot,
            names,
            deadline: now + self.opts.budget,
        });
    }

    fn slot_for(
        &mut self,
        key: Key,
        ev: &Event,
        now: Instant,
        jobs: mpsc::SyncSender<Job>,
        handle: impl FnOnce(u32, &Event) -> Option<NsHandle>,
    ) -> Slot {
        if let Some(e) = self.entries.get(&key) {
            if now.duration_since(e.started) < LOOKUP_EVERY {
                return e.slot.clone();
            }
        }
        if self.entries.len() > 4096 {
            self.entries
                .retain(|_, e| now.duration_since(e.started) < LOOKUP_EVERY);
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let slot: Slot = Rc::new(RefCell::new(None));
        let failed = match handle(key.netns, ev) {
            None => Some(format!("netns {} is gone", key.netns)),
            Some(ns) => match jobs.try_send(Job {
                key: key.clone(),
                gen,
                ns,
            }) {
                Ok(()) => None,
                Err(mpsc::TrySendError::Full(_)) => Some("look-up queue full".into()),
                Err(mpsc::TrySendError::Disconnected(_)) => Some("look-up workers gone".into()),
            },
        };
        if let Some(why) = failed {
            *slot.borrow_mut() = Some(Err(why));
        }
        self.entries.insert(
            key,
            Entry {
                started: now,
                gen,
                slot: slot.clone(),
            },
        );
        slot
    }

    /// A worker's answer.
    pub fn complete(&mut self, d: Done) {
        if let Some(e) = self.entries.get(&d.key) {
            if e.gen == d.gen {
                if let Err(why) = &d.outcome {
                    log::debug!("detail look-up for {:?}: {why}", d.key);
                }
                *e.slot.borrow_mut() = Some(d.outcome);
            }
        }
    }

    /// When the oldest waiting event must go out at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|w| w.deadline)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether `n` more events may wait without passing `MAX_WAITING`.
    pub fn has_room(&self, n: usize) -> bool {
        self.queue.len() + n <= MAX_WAITING
    }

    /// The next event that may go out now, finished; events leave in the
    /// order they came.
    pub fn pop_ready(&mut self, now: Instant) -> Option<Event> {
        let w = self.queue.front()?;
        let detail = w.slot.as_ref().is_none_or(|s| s.borrow().is_some());
        let names = w.names.as_ref().is_none_or(|s| s.get().is_some());
        if !(detail && names || now >= w.deadline) {
            return None;
        }
        let mut w = self.queue.pop_front()?;
        if let (Some(n), Some(pod)) = (w.names.as_ref().and_then(cri::names_in), &mut w.ev.pod) {
            n.apply(pod);
        }
        let outcome = w.slot.as_ref().and_then(|s| s.borrow().clone());
        finish(&mut w.ev, w.verdict, outcome.as_ref());
        Some(w.ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::{tests::sample_event, Cause};

    #[tokio::test(flavor = "current_thread")]
    async fn events_wait_no_longer_than_the_budget() {
        let (mut d, _rx) = Detailer::new(Options {
            budget: Duration::from_millis(30),
            lookups: true,
        })
        .unwrap();
        let t0 = Instant::now();
        // A netns nobody can find: the look-up cannot start.
        d.push(sample_event(), |_, _| None);
        let ev = d.pop_ready(Instant::now()).expect("no look-up to wait for");
        assert_eq!(ev.detail_complete, Some(false));
        // A look-up that never answers (the key's netns handle is our own but
        // the worker's answer is dropped here): out at the deadline.
        let mut e2 = sample_event();
        e2.dport = Some(7101);
        d.push(e2, |_, _| Some(NsHandle::Own));
        assert!(d.pop_ready(Instant::now()).is_none());
        let dl = d.next_deadline().unwrap();
        assert!(dl.duration_since(t0) <= Duration::from_millis(40));
        let ev = d.pop_ready(dl).expect("out at the deadline");
        assert_eq!(ev.cause, Some(Cause::PortsExhausted));
        assert!(d.is_empty());
    }

    /// The queue says when it is full (the reader then leaves records in
    /// the ring buffer), and has room again once its front has gone out.
    #[tokio::test(flavor = "current_thread")]
    async fn the_waiting_queue_is_bounded() {
        let (mut d, _rx) = Detailer::new(Options {
            budget: Duration::from_millis(30),
            lookups: true,
        })
        .unwrap();
        let mut pushed = 0;
        while d.has_room(1000) {
            let mut ev = sample_event();
            ev.dport = Some(7101);
            d.push(ev, |_, _| Some(NsHandle::Own));
            pushed += 1;
        }
        assert_eq!(pushed, MAX_WAITING - 999);
        assert!(d.has_room(999) && !d.has_room(1000));
        assert!(
            d.pop_ready(Instant::now()).is_none(),
            "waits for its look-up"
        );
        let dl = d.next_deadline().unwrap();
        assert!(d.pop_ready(dl).is_some());
        assert!(d.has_room(1000));
    }

    /// An event whose pod names are being looked up waits for them (in
    /// order, behind nothing else) and leaves as soon as they are in; at the
    /// deadline it leaves without them.
    #[tokio::test(flavor = "current_thread")]
    async fn events_wait_for_pod_names_within_the_budget() {
        let (mut d, _rx) = Detailer::new(Options {
            budget: Duration::from_millis(30),
            lookups: false,
        })
        .unwrap();
        let in_pod = || {
            let mut ev = sample_event();
            ev.pod = crate::k8s::pods::parse_kube_path(
                "/kubepods/pod0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6/4c5f1e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100",
            );
            ev
        };
        let slot: cri::Slot = Default::default();
        d.push_named(in_pod(), Some(slot.clone()), |_, _| None);
        d.push_named(in_pod(), Some(slot.clone()), |_, _| None);
        assert!(d.pop_ready(Instant::now()).is_none(), "waits for its names");
        slot.set(cri::Answer {
            names: Some(cri::Names {
                namespace: Some("shop".into()),
                name: Some("web-1".into()),
                uid: None,
                container: Some("nginx".into()),
            }),
            at: Instant::now(),
        })
        .unwrap();
        for _ in 0..2 {
            let ev = d.pop_ready(Instant::now()).expect("names in: out at once");
            let p = ev.pod.unwrap();
            assert_eq!(p.short(), "shop/web-1");
            assert_eq!(p.container.as_deref(), Some("nginx"));
            assert_eq!(ev.cause, Some(Cause::PortsExhausted));
        }
        let never: cri::Slot = Default::default();
        d.push_named(in_pod(), Some(never), |_, _| None);
        assert!(d.pop_ready(Instant::now()).is_none());
        let ev = d
            .pop_ready(d.next_deadline().unwrap())
            .expect("out at the deadline");
        assert_eq!(ev.pod.as_ref().unwrap().name, None);
        assert!(ev.pod.unwrap().container_id.is_some());
    }

    /// Look-ups toward different destinations of one netns are answered
    /// from one read of its table while it is fresh, each with only its own
    /// destination's sockets.
    #[test]
    fn destinations_of_a_netns_share_one_table_read() {
        use std::net::{TcpListener, TcpStream};
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let (p1, p2) = (
            l1.local_addr().unwrap().port(),
            l2.local_addr().unwrap().port(),
        );
        let _c1 = TcpStream::connect(("127.0.0.1", p1)).unwrap();
        let _c2 = [
            TcpStream::connect(("127.0.0.1", p2)).unwrap(),
            TcpStream::connect(("127.0.0.1", p2)).unwrap(),
        ];
        let key = |port| Key {
            netns: 1,
            proto: libc::IPPROTO_TCP as u8,
            scope: Scope::Toward("127.0.0.1".parse().unwrap(), port),
        };
        let (holders, tables) = (Holders::new(), Tables::default());
        let a = tables.get(&key(p1), None, &holders).unwrap();
        let b = tables.get(&key(p2), None, &holders).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one read for both destinations");
        let s1 = lookup(&key(p1), &NsHandle::Own, &holders, &tables).unwrap();
        let s2 = lookup(&key(p2), &NsHandle::Own, &holders, &tables).unwrap();
        assert_eq!(s1.socks.len(), 1, "{:?}", s1.socks);
        assert_eq!(s2.socks.len(), 2, "{:?}", s2.socks);
        assert!(s2.socks.iter().all(|s| s.dport == p2));
        let me = std::process::id();
        assert!(s2.owners.values().all(|o| o.pid == me), "{:?}", s2.owners);
        std::thread::sleep(TABLE_FRESH + Duration::from_millis(20));
        let c = tables.get(&key(p1), None, &holders).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "read again once stale");
        // A stale table is let go at the next look-up of any netns.
        std::thread::sleep(TABLE_FRESH + Duration::from_millis(20));
        let other = Key {
            netns: 2,
            ..key(p1)
        };
        tables.get(&other, None, &holders).unwrap();
        let slots = tables.slots.lock().unwrap();
        assert_eq!(
            slots.keys().collect::<Vec<_>>(),
            vec![&(2, libc::IPPROTO_TCP as u8)],
            "only the fresh table is kept"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_lookup_per_destination_per_second() {
        let (mut d, mut rx) = Detailer::new(Options {
            budget: Duration::from_secs(5),
            lookups: true,
        })
        .unwrap();
        let mut asked = 0;
        for _ in 0..3 {
            d.push(sample_event(), |_, _| {
                asked += 1;
                Some(NsHandle::Own)
            });
        }
        assert_eq!(asked, 1, "one look-up serves the three events");
        let done = rx.recv().await.unwrap();
        d.complete(done);
        let evs: Vec<Event> = std::iter::from_fn(|| d.pop_ready(Instant::now())).collect();
        assert_eq!(evs.len(), 3);
        assert!(evs.iter().all(|e| e.cause == Some(Cause::PortsExhausted)));
    }
}
