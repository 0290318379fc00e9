//! Stage 3: raw ring-buffer bytes -> `Event`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use portwatch_common::*;

use crate::{
    kernel::probe::Probe,
    pipeline::{
        event::{Errno, Event, Family, Kind, Proto},
        sysctl::{self, SysctlWrite},
    },
};

/// What the `failures` ring buffer carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Failure(Event),
    Sysctl(SysctlWrite),
}

/// Decodes one record of the `failures` ring buffer, a failure or a sysctl
/// write (told apart by the `kind` byte both keep at one offset).
pub fn decode_record(bytes: &[u8], clock: &Clock) -> Result<Record> {
    if bytes.get(KIND_OFFSET) == Some(&KIND_SYSCTL) {
        decode_sysctl(bytes, clock).map(Record::Sysctl)
    } else {
        decode(bytes, clock).map(Record::Failure)
    }
}

/// Decodes a sysctl write record.
pub fn decode_sysctl(bytes: &[u8], clock: &Clock) -> Result<SysctlWrite> {
    if bytes.len() < SYSCTL_EVENT_SIZE {
        bail!(
            "short sysctl record: {} bytes, expected {SYSCTL_EVENT_SIZE}",
            bytes.len()
        );
    }
    // SAFETY: SysctlEvent is repr(C) plain data; read_unaligned copes with
    // any alignment of the ring buffer slice.
    let raw: SysctlEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    sysctl_from_raw(&raw, clock)
}

pub fn sysctl_from_raw(raw: &SysctlEvent, clock: &Clock) -> Result<SysctlWrite> {
    if raw.kind != KIND_SYSCTL {
        bail!("not a sysctl record (kind {})", raw.kind);
    }
    let Some(name) = sysctl::Name::from_index(raw.which) else {
        bail!("unknown sysctl index {}", raw.which);
    };
    let has = |f: u16| raw.flags & f != 0;
    Ok(SysctlWrite {
        time_ns: clock.wall_ns(raw.ts_ns),
        name,
        old: has(SF_OLD).then(|| sysctl::value_text(&raw.old)),
        old_truncated: has(SF_OLD_TRUNC),
        new: sysctl::value_text(&raw.new),
        new_truncated: has(SF_NEW_TRUNC),
        pid: raw.pid,
        tid: raw.tid,
        comm: {
            let end = raw.comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
            String::from_utf8_lossy(&raw.comm[..end]).into_owned()
        },
        uid: raw.uid,
        cgroup_id: raw.cgroup_id,
        netns: has(SF_NETNS).then_some(raw.netns),
        refused: has(SF_REFUSED),
        cgroup: None,
        pod: None,
        node_netns: false,
        assessment: None,
    })
}

/// Converts the kernel's CLOCK_BOOTTIME stamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - boottime, in ns, measured at start-up.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_BOOTTIME now, the clock the kernel side stamps records with.
pub fn boot_now_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

impl Clock {
    pub fn now() -> Clock {
        let read = clock_ns;
        // Bracket the realtime read to halve the error of the two reads.
        let b0 = read(libc::CLOCK_BOOTTIME);
        let rt = read(libc::CLOCK_REALTIME);
        let b1 = read(libc::CLOCK_BOOTTIME);
        Clock {
            offset_ns: rt - (b0 + b1) / 2,
        }
    }
    #[cfg(test)]
    pub fn fixed(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }
    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.offset_ns).max(0) as u64
    }
}

fn ip(family: Option<Family>, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family? {
        Family::Ipv4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        Family::Ipv6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
    }
}

/// Decodes one ring-buffer record. Errors on a record of the wrong size or
/// with values the kernel side never writes.
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<Event> {
    if bytes.len() < FAILURE_EVENT_SIZE {
        bail!(
            "short record: {} bytes, expected {FAILURE_EVENT_SIZE}",
            bytes.len()
        );
    }
    // SAFETY: FailureEvent is repr(C) plain data; read_unaligned copes with
    // any alignment of the ring buffer slice.
    let raw: FailureEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    from_raw(&raw, clock)
}

pub fn from_raw(raw: &FailureEvent, clock: &Clock) -> Result<Event> {
    let kind = match raw.kind {
        KIND_CONNECT => Kind::Connect,
        KIND_BIND => Kind::Bind,
        k => bail!("unknown event kind {k}"),
    };
    let probe = match raw.probe {
        PROBE_FEXIT => Probe::Fexit,
        PROBE_KPROBE => Probe::Kprobe,
        PROBE_TRACEPOINT => Probe::Tracepoint,
        p => bail!("unknown probe {p}"),
    };
    let Some(errno) = Errno::from_ret(raw.ret) else {
        bail!("unexpected return value {}", raw.ret);
    };
    let family = match raw.family {
        AF_INET => Some(Family::Ipv4),
        AF_INET6 => Some(Family::Ipv6),
        _ => None,
    };
    let has = |f: u16| raw.flags & f != 0;
    let proto = has(F_PROTO).then_some(match raw.proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        132 => Proto::Sctp,
        262 => Proto::Mptcp,
        _ => Proto::Other,
    });
    let comm_len = raw
        .comm
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(raw.comm.len());
    Ok(Event {
        time_ns: clock.wall_ns(raw.ts_ns),
        kind,
        errno,
        ret: raw.ret,
        pid: raw.pid,
        tid: raw.tid,
        comm: String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned(),
        uid: raw.uid,
        cgroup_id: raw.cgroup_id,
        netns: has(F_NETNS).then_some(raw.netns),
        proto,
        family,
        saddr: if has(F_SADDR) {
            ip(family, &raw.saddr)
        } else {
            None
        },
        sport: has(F_SPORT).then_some(raw.sport),
        daddr: if has(F_DADDR) {
            ip(family, &raw.daddr)
        } else {
            None
        },
        dport: has(F_DPORT).then_some(raw.dport),
        sock_port: has(F_SOCK).then_some(raw.sk_num),
        probe,
        port_range: None,
        reserved: None,
        cgroup: None,
        pod: None,
        cause: None,
        detail: None,
        detail_complete: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn raw_connect_v4() -> FailureEvent {
        let mut r = FailureEvent::zeroed();
        r.ts_ns = 5_000;
        r.cgroup_id = 77;
        r.pid = 100;
        r.tid = 101;
        r.uid = 0;
        r.netns = 4026532000;
        r.ret = -99;
        r.kind = KIND_CONNECT;
        r.probe = PROBE_TRACEPOINT;
        r.proto = 6;
        r.family = AF_INET;
        r.dport = 7100;
        r.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.flags = F_DADDR | F_DPORT | F_PROTO | F_NETNS | F_SOCK;
        r.comm[..4].copy_from_slice(b"curl");
        r
    }

    fn bytes_of(r: &FailureEvent) -> Vec<u8> {
        let p = r as *const FailureEvent as *const u8;
        // SAFETY: `p` points to a live FailureEvent of FAILURE_EVENT_SIZE
        // bytes, plain data (repr(C)), borrowed for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(p, FAILURE_EVENT_SIZE) }.to_vec()
    }

    #[test]
    fn decodes_a_connect_failure() {
        let ev = decode(&bytes_of(&raw_connect_v4()), &Clock::fixed(1_000_000_000)).unwrap();
        assert_eq!(ev.kind, Kind::Connect);
        assert_eq!(ev.errno, Errno::EADDRNOTAVAIL);
        assert_eq!(ev.ret, -99);
        assert_eq!((ev.pid, ev.tid), (100, 101));
        assert_eq!(ev.comm, "curl");
        assert_eq!(ev.time_ns, 1_000_005_000);
        assert_eq!(ev.netns, Some(4026532000));
        assert_eq!(ev.proto, Some(Proto::Tcp));
        assert_eq!(ev.family, Some(Family::Ipv4));
        assert_eq!(ev.daddr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ev.dport, Some(7100));
        assert_eq!(ev.saddr, None, "no F_SADDR: the kernel did not say");
        assert_eq!(ev.sport, None);
        assert_eq!(ev.sock_port, Some(0));
        assert_eq!(ev.probe, Probe::Tracepoint);
    }

    #[test]
    fn decodes_ipv6_bind_with_address() {
        let mut r = raw_connect_v4();
        r.kind = KIND_BIND;
        r.ret = -98;
        r.probe = PROBE_FEXIT;
        r.family = AF_INET6;
        r.saddr = "::1".parse::<Ipv6Addr>().unwrap().octets();
        r.sport = 8080;
        r.flags = F_SADDR | F_SPORT;
        let ev = from_raw(&r, &Clock::fixed(0)).unwrap();
        assert_eq!(ev.kind, Kind::Bind);
        assert_eq!(ev.errno, Errno::EADDRINUSE);
        assert_eq!(ev.saddr, Some("::1".parse().unwrap()));
        assert_eq!(ev.sport, Some(8080));
        assert_eq!(ev.daddr, None);
        assert_eq!(ev.netns, None);
        assert_eq!(ev.proto, None);
        assert_eq!(ev.probe, Probe::Fexit);
    }

    #[test]
    fn rejects_bad_records() {
        assert!(decode(&[0u8; 10], &Clock::fixed(0)).is_err());
        let mut r = raw_connect_v4();
        r.ret = -111;
        assert!(from_raw(&r, &Clock::fixed(0)).is_err());
        let mut r = raw_connect_v4();
        r.kind = 9;
        assert!(from_raw(&r, &Clock::fixed(0)).is_err());
        let mut r = raw_connect_v4();
        r.probe = 0;
        assert!(from_raw(&r, &Clock::fixed(0)).is_err());
        // No errno, and no negation either.
        let mut r = raw_connect_v4();
        r.ret = i32::MIN;
        assert!(from_raw(&r, &Clock::fixed(0)).is_err());
    }

    fn raw_sysctl() -> SysctlEvent {
        let mut r = SysctlEvent {
            ts_ns: 7_000,
            cgroup_id: 88,
            pid: 300,
            tid: 301,
            uid: 0,
            netns: 4026532001,
            _ret: 0,
            kind: KIND_SYSCTL,
            which: SYSCTL_PORT_RANGE,
            flags: SF_NETNS | SF_OLD,
            comm: [0; COMM_LEN],
            old: [0; SYSCTL_VALUE_LEN],
            new: [0; SYSCTL_VALUE_LEN],
        };
        r.comm[..6].copy_from_slice(b"sysctl");
        r.old[..12].copy_from_slice(b"32768\t60999\n");
        r.new[..11].copy_from_slice(b"1024 65535\n");
        r
    }

    fn sysctl_bytes(r: &SysctlEvent) -> Vec<u8> {
        let p = r as *const SysctlEvent as *const u8;
        // SAFETY: `p` points to a live SysctlEvent of SYSCTL_EVENT_SIZE
        // bytes, plain data (repr(C)), borrowed for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(p, SYSCTL_EVENT_SIZE) }.to_vec()
    }

    #[test]
    fn one_ring_two_record_types() {
        let clock = Clock::fixed(1_000_000_000);
        let Record::Sysctl(w) = decode_record(&sysctl_bytes(&raw_sysctl()), &clock).unwrap() else {
            panic!("a sysctl record")
        };
        assert_eq!(w.name, sysctl::Name::PortRange);
        assert_eq!(w.old.as_deref(), Some("32768 60999"));
        assert_eq!(w.new, "1024 65535");
        assert!(!w.old_truncated && !w.new_truncated && !w.refused);
        assert_eq!((w.pid, w.tid, w.comm.as_str()), (300, 301, "sysctl"));
        assert_eq!(w.netns, Some(4026532001));
        assert_eq!(w.cgroup_id, 88);
        assert_eq!(w.time_ns, 1_000_007_000);
        let Record::Failure(ev) = decode_record(&bytes_of(&raw_connect_v4()), &clock).unwrap()
        else {
            panic!("a failure record")
        };
        assert_eq!(ev.kind, Kind::Connect);
        // Flags: no old value, both cut, refused, no netns.
        let mut r = raw_sysctl();
        r.flags = SF_OLD_TRUNC | SF_NEW_TRUNC | SF_REFUSED;
        let w = sysctl_from_raw(&r, &clock).unwrap();
        assert_eq!(w.old, None);
        assert!(w.old_truncated && w.new_truncated && w.refused);
        assert_eq!(w.netns, None);
        // Bad records.
        r.which = 9;
        assert!(sysctl_from_raw(&r, &clock).is_err());
        assert!(decode_record(&sysctl_bytes(&raw_sysctl())[..100], &clock).is_err());
    }

    #[test]
    fn clock_converts_boot_to_wall() {
        let c = Clock::now();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((c.wall_ns(boot) as i128 - wall).abs() < 50_000_000);
    }
}
