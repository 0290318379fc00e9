//! Stage between `filter` and `output`: why each failure happened, and who
//! holds the ports.
//!
//! `classify` works from the kernel's own evidence in the event, on every
//! backend: for connect() the socket's bound port at the failure (`sk_num`,
//! read from struct sock) tells a 4-tuple collision (a port fixed by bind())
//! from an exhausted range (no port yet); for bind() the port asked for tells
//! a taken port from an exhausted autobind.
//!
//! The detail comes from the socket table of the event's netns (sock_diag)
//! and /proc (holders). Those look-ups run on worker threads, off the event
//! path, at most one per netns x destination per second; an event waits for
//! its detail no longer than the budget and then goes out with what is known
//! and `detail_complete: false`. Within the same budget it waits for its
//! pod's names when the enrich stage is still asking the runtime (`cri`).

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    rc::Rc,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    host::{
        holders::{Holders, Owner},
        ports::{self, PortSet},
        sockdiag::{self, NsHandle, PortFilter, Sock, STATE_LISTEN},
    },
    k8s::{cri, pods::Pod},
    pipeline::event::{
        Cause, Detail, Errno, Event, Exhausted, HolderCount, Kind, PortHolder, PortInUse, Proto,
        States, Tuple,
    },
};

/// One look-up per netns x destination per this long.
const LOOKUP_EVERY: Duration = Duration::from_secs(1);
/// Look-ups queued beyond this are not started (the events go out without detail).
const MAX_QUEUED: usize = 256;
const WORKERS: usize = 2;
const MAX_HOLDERS: usize = 5;
/// Entries of a `port_in_use` holder list (listeners come first).
const MAX_PORT_HOLDERS: usize = 20;

/// What the event alone says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Known(Cause),
    /// connect() failed but the socket could not be read: the socket table
    /// decides (a range used up toward the destination), or nothing does.
    Undecided,
}

pub fn classify(ev: &Event) -> Verdict {
    match (ev.kind, ev.errno) {
        (Kind::Connect, Errno::EADDRNOTAVAIL) => match ev.sock_port {
            Some(0) => Verdict::Known(Cause::PortsExhausted),
            Some(_) => Verdict::Known(Cause::TupleInUse),
            None => Verdict::Undecided,
        },
        // The local address of a socket with a port already in use.
        (Kind::Connect, Errno::EADDRINUSE) => match ev.sock_port {
            Some(p) if p != 0 => Verdict::Known(Cause::TupleInUse),
            _ => Verdict::Undecided,
        },
        (Kind::Bind, Errno::EADDRINUSE) => match ev.sport {
            Some(0) => Verdict::Known(Cause::BindPortsExhausted),
            Some(_) => Verdict::Known(Cause::PortInUse),
            None => Verdict::Known(Cause::Unknown),
        },
        (Kind::Bind, Errno::EADDRNOTAVAIL) => Verdict::Known(Cause::AddrNotLocal),
    }
}

/// Which part of a netns's socket table a look-up reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Sockets toward this destination.
    Toward(IpAddr, u16),
    /// Sockets of one 4-tuple: toward this destination from this local port.
    /// Its own key, so a fresh collision never reads a snapshot of the
    /// destination taken before the colliding connection existed.
    Tuple(IpAddr, u16, u16),
    /// Sockets on this local port.
    LocalPort(u16),
    /// Sockets with a local port in this range.
    LocalRange(u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: u32,
    pub proto: u8,
    pub scope: Scope,
}

/// IPv4-mapped IPv6 addresses as IPv4, as the socket table gives them.
fn canon(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        a => a,
    }
}

fn the_connect_port(ev: &Event) -> Option<u16> {
    ev.sock_port
        .filter(|&p| p != 0)
        .or(ev.sport.filter(|&p| p != 0))
}

/// The look-up an event needs, if any can be made.
pub fn key_for(ev: &Event, v: Verdict) -> Option<Key> {
    let netns = ev.netns?;
    let proto = match ev.proto? {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
        _ => return None,
    };
    let scope = match v {
        Verdict::Undecided | Verdict::Known(Cause::PortsExhausted) => {
            Scope::Toward(canon(ev.daddr?), ev.dport?)
        }
        Verdict::Known(Cause::TupleInUse) => {
            Scope::Tuple(canon(ev.daddr?), ev.dport?, the_connect_port(ev)?)
        }
        Verdict::Known(Cause::PortInUse) => Scope::LocalPort(ev.sport?),
        Verdict::Known(Cause::BindPortsExhausted) => {
            let (lo, hi) = ev.port_range?;
            Scope::LocalRange(lo, hi)
        }
        Verdict::Known(Cause::AddrNotLocal | Cause::Unknown) => return None,
    };
    Some(Key {
        netns,
        proto,
        scope,
    })
}

/// What one look-up found.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub socks: Vec<Sock>,
    pub owners: HashMap<u32, Owner>,
}

pub fn lookup(key: &Key, ns: &NsHandle, holders: &Holders) -> Result<Snapshot> {
    let filter = match key.scope {
        Scope::Toward(_, dport) => PortFilter::Dport(dport),
        Scope::Tuple(_, dport, sport) => PortFilter::SportDport(sport, dport),
        Scope::LocalPort(p) => PortFilter::Sport(p),
        Scope::LocalRange(lo, hi) => PortFilter::SportRange(lo, hi),
    };
    let ns_file = match ns {
        NsHandle::Own => None,
        NsHandle::File(f) => Some(f),
    };
    let mut socks = sockdiag::dump_in(ns_file, key.proto, filter)
        .with_context(|| format!("socket table of netns {}", key.netns))?;
    if let Scope::Toward(dst, _) | Scope::Tuple(dst, _, _) = key.scope {
        socks.retain(|s| s.dst == dst);
    }
    let inodes: HashSet<u32> = socks.iter().map(|s| s.inode).collect();
    let owners = holders.resolve(Some(key.netns), &inodes);
    Ok(Snapshot { socks, owners })
}

fn states_of<'a>(socks: impl Iterator<Item = &'a Sock>) -> States {
    let mut m = States::new();
    for s in socks {
        *m.entry(sockdiag::state_name(s.state)).or_default() += 1;
    }
    m
}

/// Processes by the number of the given sockets they hold, most first.
pub fn holder_counts<'a>(
    socks: impl Iterator<Item = &'a Sock>,
    owners: &HashMap<u32, Owner>,
    max: usize,
) -> Vec<HolderCount> {
    let mut by_pid: HashMap<u32, HolderCount> = HashMap::new();
    for s in socks {
        if let Some(o) = owners.get(&s.inode) {
            by_pid
                .entry(o.pid)
                .or_insert_with(|| HolderCount {
                    pid: o.pid,
                    comm: o.comm.clone(),
                    pod: o.pod.clone(),
                    count: 0,
                })
                .count += 1;
        }
    }
    let mut v: Vec<HolderCount> = by_pid.into_values().collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
    v.truncate(max);
    v
}

fn addr_overlaps(a: IpAddr, asked: Option<IpAddr>) -> bool {
    match asked.map(canon) {
        None => true,
        Some(b) => a.is_unspecified() || b.is_unspecified() || a == b,
    }
}

fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V6(a) => format!("[{a}]:{p}"),
        a => format!("{a}:{p}"),
    }
}

/// Range, reserved and usable of the event's netns: known without a look-up.
fn exhausted_base(ev: &Event) -> Exhausted {
    let reserved_in = match (ev.port_range, &ev.reserved) {
        (Some((lo, hi)), Some(r)) => Some(r.intersect(&PortSet::range(lo, hi))),
        _ => None,
    };
    Exhausted {
        range: ev.port_range.map(|(a, b)| [a, b]),
        usable: match (ev.port_range, &reserved_in) {
            (Some(r), Some(res)) => Some(ports::usable(r, res).len()),
            _ => None,
        },
        reserved: reserved_in.map(|r| r.to_string()),
        in_use: None,
        states: None,
        holders: None,
    }
}

/// Fills in_use/states/holders from the sockets that hold range ports.
fn exhausted_from(mut d: Exhausted, snap: &Snapshot, keep: impl Fn(&Sock) -> bool) -> Exhausted {
    let Some([lo, hi]) = d.range else { return d };
    let socks: Vec<&Sock> = snap
        .socks
        .iter()
        .filter(|s| (lo..=hi).contains(&s.sport) && keep(s))
        .collect();
    d.in_use = Some(socks.len() as u32);
    d.states = Some(states_of(socks.iter().copied()));
    d.holders = Some(holder_counts(
        socks.iter().copied(),
        &snap.owners,
        MAX_HOLDERS,
    ));
    d
}

/// The finished event: cause, detail, and whether the detail is complete.
/// `outcome` is the look-up's result (None: there was none, or it did not
/// arrive within the budget).
pub fn finish(ev: &mut Event, v: Verdict, outcome: Option<&Result<Arc<Snapshot>, String>>) {
    let snap = match outcome {
        Some(Ok(s)) => Some(s.as_ref()),
        _ => None,
    };
    let (cause, detail, complete) = match v {
        Verdict::Known(Cause::PortsExhausted) | Verdict::Undecided => {
            let base = exhausted_base(ev);
            let d = match snap {
                Some(s) => exhausted_from(base, s, |s| s.state != STATE_LISTEN),
                None => base,
            };
            let cause = match v {
                Verdict::Known(c) => c,
                // Undecided: only the table's word counts, never a guess.
                _ => match (d.in_use, d.usable) {
                    (Some(n), Some(u)) if n >= u => Cause::PortsExhausted,
                    _ => Cause::Unknown,
                },
            };
            if cause == Cause::Unknown {
                let reason = "the socket could not be read at the failure, and the socket table does not show the range used up toward this destination".to_string();
                (cause, Detail::Unknown { reason }, snap.is_some())
            } else {
                let complete = d.in_use.is_some() && d.usable.is_some();
                (cause, Detail::Exhausted(d), complete)
            }
        }
        Verdict::Known(Cause::TupleInUse) => {
            let sport = the_connect_port(ev).unwrap_or(0);
            let mut d = Tuple {
                sport,
                states: None,
                holders: None,
            };
            if let Some(s) = snap {
                let socks: Vec<&Sock> = s
                    .socks
                    .iter()
                    .filter(|x| x.sport == sport && x.state != STATE_LISTEN)
                    .collect();
                d.states = Some(states_of(socks.iter().copied()));
                d.holders = Some(holder_counts(socks.iter().copied(), &s.owners, MAX_HOLDERS));
            }
            // The kernel saw the 4-tuple taken: a table without it (the
            // connection closed meanwhile) is not the whole story.
            let complete = d.states.as_ref().is_some_and(|s| !s.is_empty());
            (Cause::TupleInUse, Detail::Tuple(d), complete)
        }
        Verdict::Known(Cause::PortInUse) => {
            let port = ev.sport.unwrap_or(0);
            let holders = snap.map(|s| {
                let mut socks: Vec<&Sock> = s
                    .socks
                    .iter()
                    .filter(|x| x.sport == port && addr_overlaps(x.src, ev.saddr))
                    .collect();
                socks.sort_by_key(|x| (x.state != STATE_LISTEN, x.state, x.inode));
                let mut v: Vec<PortHolder> = vec![];
                for x in socks {
                    let o = s.owners.get(&x.inode);
                    let h = PortHolder {
                        pid: o.map(|o| o.pid),
                        comm: o.map(|o| o.comm.clone()),
                        pod: o.and_then(|o| o.pod.clone()),
                        state: sockdiag::state_name(x.state),
                        local: endpoint(x.src, x.sport),
                        count: 1,
                    };
                    match v
                        .iter_mut()
                        .find(|e| (e.pid, e.state, &e.local) == (h.pid, h.state, &h.local))
                    {
                        Some(e) => e.count += 1,
                        None => v.push(h),
                    }
                }
                v.truncate(MAX_PORT_HOLDERS);
                v
            });
            // Likewise a port the kernel saw taken but the table shows free.
            let complete = holders.as_ref().is_some_and(|h| !h.is_empty());
            (
                Cause::PortInUse,
                Detail::PortInUse(PortInUse { port, holders }),
                complete,
            )
        }
        Verdict::Known(Cause::BindPortsExhausted) => {
            let base = exhausted_base(ev);
            let d = match snap {
                Some(s) => exhausted_from(base, s, |_| true),
                None => base,
            };
            let complete = d.in_use.is_some() && d.usable.is_some();
            (Cause::BindPortsExhausted, Detail::Exhausted(d), complete)
        }
        Verdict::Known(Cause::AddrNotLocal) => (
            Cause::AddrNotLocal,
            Detail::AddrNotLocal { addr: ev.saddr },
            ev.saddr.is_some(),
        ),
        Verdict::Known(Cause::Unknown) => (
            Cause::Unknown,
            Detail::Unknown {
                reason: "the kernel side could not read the address bind() asked for".into(),
            },
            false,
        ),
    };
    ev.cause = Some(cause);
    ev.detail = Some(detail);
    ev.detail_complete = Some(complete);
    name_holders(ev);
}

/// Holders in the event's own pod get the names the event's pod has (the
/// runtime was asked for those; a holder's uid alone would need a look-up
/// of its own).
fn name_holders(ev: &mut Event) {
    let (Some(own), Some(detail)) = (&ev.pod, &mut ev.detail) else {
        return;
    };
    let same = |p: &mut Option<Pod>| {
        if let Some(p) = p.as_mut().filter(|p| p.uid == own.uid) {
            p.namespace.clone_from(&own.namespace);
            p.name.clone_from(&own.name);
            if p.container_id.is_some() && p.container_id == own.container_id {
                p.container.clone_from(&own.container);
            }
        }
    };
    match detail {
        Detail::Exhausted(d) => d
            .holders
            .iter_mut()
            .flatten()
            .for_each(|h| same(&mut h.pod)),
        Detail::Tuple(d) => d
            .holders
            .iter_mut()
            .flatten()
            .for_each(|h| same(&mut h.pod)),
        Detail::PortInUse(d) => d
            .holders
            .iter_mut()
            .flatten()
            .for_each(|h| same(&mut h.pod)),
        Detail::AddrNotLocal { .. } | Detail::Unknown { .. } => {}
    }
}

// ---------------------------------------------------------------------------
// Off the event path: worker threads, a rate-limited cache, and a queue that
// lets each event wait for its detail up to the budget, in arrival order.
// ---------------------------------------------------------------------------

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
            for i in 0..WORKERS {
                let rx = rx.clone();
                let done_tx = done_tx.clone();
                let holders = holders.clone();
                std::thread::Builder::new()
                    .name(format!("pw-detail-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().unwrap().recv() {
                            Ok(j) => j,
                            Err(_) => return, // the detailer is gone
                        };
                        let t0 = Instant::now();
                        let outcome = lookup(&job.key, &job.ns, &holders)
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
    use crate::host::sockdiag::STATE_TIME_WAIT;
    use crate::pipeline::event::tests::sample_event;

    fn sock(state: u8, sport: u16, inode: u32) -> Sock {
        Sock {
            state,
            src: "127.0.0.1".parse().unwrap(),
            sport,
            dst: "127.0.0.1".parse().unwrap(),
            dport: 7100,
            inode,
            uid: 0,
        }
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: format!("p{pid}"),
            pod: None,
        }
    }

    #[test]
    fn classifies_from_the_kernels_evidence() {
        let mut ev = sample_event();
        assert_eq!(classify(&ev), Verdict::Known(Cause::PortsExhausted));
        ev.sock_port = Some(41001);
        assert_eq!(classify(&ev), Verdict::Known(Cause::TupleInUse));
        ev.sock_port = None;
        assert_eq!(classify(&ev), Verdict::Undecided);
        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.sport = Some(0);
        assert_eq!(classify(&b), Verdict::Known(Cause::BindPortsExhausted));
        b.sport = Some(7200);
        assert_eq!(classify(&b), Verdict::Known(Cause::PortInUse));
        b.sport = None;
        assert_eq!(classify(&b), Verdict::Known(Cause::Unknown));
        b.errno = Errno::EADDRNOTAVAIL;
        assert_eq!(classify(&b), Verdict::Known(Cause::AddrNotLocal));
    }

    #[test]
    fn keys_group_by_netns_and_destination() {
        let ev = sample_event();
        let k = key_for(&ev, classify(&ev)).unwrap();
        assert_eq!(k.scope, Scope::Toward("127.0.0.1".parse().unwrap(), 7100));
        let mut v6 = sample_event();
        v6.daddr = Some("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(
            key_for(&v6, classify(&v6)),
            Some(k.clone()),
            "v4-mapped is v4"
        );
        let mut other = sample_event();
        other.netns = Some(1);
        assert_ne!(key_for(&other, classify(&other)), Some(k));
        let mut tup = sample_event();
        tup.sock_port = Some(41500);
        assert_eq!(
            key_for(&tup, classify(&tup)).unwrap().scope,
            Scope::Tuple("127.0.0.1".parse().unwrap(), 7100, 41500),
            "a collision is looked up on its own"
        );
        let mut no_ns = sample_event();
        no_ns.netns = None;
        assert_eq!(key_for(&no_ns, classify(&no_ns)), None);
    }

    fn snap(socks: Vec<Sock>, owners: &[(u32, u32)]) -> Result<Arc<Snapshot>, String> {
        Ok(Arc::new(Snapshot {
            socks,
            owners: owners.iter().map(|&(i, p)| (i, owner(p))).collect(),
        }))
    }

    #[test]
    fn exhaustion_detail_counts_states_and_holders() {
        let mut ev = sample_event();
        ev.reserved = Some(PortSet::parse("8080,41003").unwrap());
        let s = snap(
            vec![
                sock(1, 41000, 10),
                sock(1, 41001, 11),
                sock(STATE_TIME_WAIT, 41002, 0),
                sock(1, 40999, 12), // outside the range
            ],
            &[(10, 500), (11, 500), (12, 501)],
        );
        let v = classify(&ev);
        finish(&mut ev, v, Some(&s));
        assert_eq!(ev.cause, Some(Cause::PortsExhausted));
        let v = serde_json::to_value(ev.detail.as_ref().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"range":[41000,41003],"reserved":"41003","usable":3,"in_use":3,
                "states":{"ESTABLISHED":2,"TIME_WAIT":1},
                "holders":[{"pid":500,"comm":"p500","pod":null,"count":2}]})
        );
        assert_eq!(ev.detail_complete, Some(true));
    }

    #[test]
    fn no_snapshot_means_incomplete_never_invented() {
        let mut ev = sample_event();
        ev.reserved = Some(PortSet::new());
        let v = classify(&ev);
        finish(&mut ev, v, None);
        assert_eq!(ev.cause, Some(Cause::PortsExhausted));
        assert_eq!(ev.detail_complete, Some(false));
        let v = serde_json::to_value(ev.detail.as_ref().unwrap()).unwrap();
        assert_eq!(v["usable"], 4);
        assert!(v["in_use"].is_null() && v["holders"].is_null(), "{v}");
        // Undecided without the table: unknown, not a guess.
        let mut u = sample_event();
        u.sock_port = None;
        u.reserved = Some(PortSet::new());
        let v = classify(&u);
        finish(&mut u, v, Some(&Err("netns gone".into())));
        assert_eq!(u.cause, Some(Cause::Unknown));
        // Undecided with a table that shows the range used up: exhausted.
        let mut u = sample_event();
        u.sock_port = None;
        u.reserved = Some(PortSet::new());
        let full = snap((41000..=41003).map(|p| sock(1, p, 0)).collect(), &[]);
        let v = classify(&u);
        finish(&mut u, v, Some(&full));
        assert_eq!(u.cause, Some(Cause::PortsExhausted));
        let part = snap(vec![sock(1, 41000, 0)], &[]);
        let mut u2 = u.clone();
        finish(&mut u2, Verdict::Undecided, Some(&part));
        assert_eq!(u2.cause, Some(Cause::Unknown));
    }

    #[test]
    fn port_in_use_lists_listeners_first() {
        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.saddr = Some("127.0.0.1".parse().unwrap());
        b.sport = Some(7200);
        let mut l = sock(STATE_LISTEN, 7200, 20);
        l.src = "0.0.0.0".parse().unwrap();
        let mut other_addr = sock(1, 7200, 22);
        other_addr.src = "10.1.1.1".parse().unwrap();
        let s = snap(
            vec![
                sock(1, 7200, 21),
                l,
                other_addr,
                sock(1, 7200, 0),
                sock(1, 7200, 0),
            ],
            &[(20, 7), (21, 8)],
        );
        let v = classify(&b);
        finish(&mut b, v, Some(&s));
        let Some(Detail::PortInUse(d)) = &b.detail else {
            panic!("{:?}", b.detail)
        };
        let h = d.holders.as_ref().unwrap();
        assert_eq!(
            h.len(),
            3,
            "10.1.1.1:7200 does not clash with 127.0.0.1: {h:?}"
        );
        assert_eq!((h[0].pid, h[0].state, h[0].count), (Some(7), "LISTEN", 1));
        assert_eq!(h[0].local, "0.0.0.0:7200");
        // Sockets without a process (not yet accepted) are one entry.
        assert_eq!((h[1].pid, h[1].state, h[1].count), (None, "ESTABLISHED", 2));
        assert_eq!(
            (h[2].pid, h[2].state, h[2].count),
            (Some(8), "ESTABLISHED", 1)
        );
        assert_eq!(b.detail_complete, Some(true));
        // The holder gone before the look-up: what is known, marked incomplete.
        let v = classify(&b);
        finish(&mut b, v, Some(&snap(vec![], &[])));
        assert_eq!(b.cause, Some(Cause::PortInUse));
        assert_eq!(b.detail_complete, Some(false));
    }

    #[test]
    fn holders_most_ports_first_at_most_five() {
        let socks: Vec<Sock> = (0..20)
            .map(|i| sock(1, 41000 + i, 100 + i as u32))
            .collect();
        // pid 1 holds 1 socket, pid 2 two, ... pid 6 holds 5 (20 sockets).
        let mut owners = HashMap::new();
        let mut i = 100;
        for pid in 1..=6u32 {
            for _ in 0..pid.min(5) {
                if i < 120 {
                    owners.insert(i, owner(pid));
                    i += 1;
                }
            }
        }
        let h = holder_counts(socks.iter(), &owners, 5);
        assert_eq!(h.len(), 5);
        assert!(h.windows(2).all(|w| w[0].count >= w[1].count), "{h:?}");
        assert_eq!(h.iter().map(|x| x.count).sum::<u32>(), 5 + 5 + 4 + 3 + 2);
    }

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
