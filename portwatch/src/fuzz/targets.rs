//! One test per parser of bytes from outside the process. Each returns a
//! signature of what the parser made of the input (see `super`) and asserts
//! the properties that must hold whatever the input.

use std::{
    borrow::Cow,
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    net::IpAddr,
};

use portwatch_common::*;

use super::Target;

/// Every target, by the name of its test and of its corpus directory.
pub(crate) const TARGETS: &[&str] = &[
    "kube_path",
    "proc_cgroup",
    "mountinfo",
    "cgroupns_path",
    "port_set",
    "port_range",
    "proc_links",
    "proc_status",
    "btf",
    "btf_split",
    "tracefs_format",
    "sockdiag_reply",
    "ipvs_services",
    "ipvs_conns",
    "cri_endpoint",
    "failure_record",
    "steal_records",
    "cli_values",
    "sysctl_writes_file",
];
use crate::{
    cmd::cli,
    host::{holders, ipvs, netns, ports, sockdiag},
    k8s::{cri, pods},
    kernel::{btf, offsets, steal, system, tpformat},
    pipeline::{correlate, decode, lastwrite, sink},
};

fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn sig(x: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// An error's kind: its message without numbers and quoted input, so that
/// one kind of error is one signature.
fn err_sig(e: impl std::fmt::Display) -> u64 {
    let mut out = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in e.to_string().chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if quoted || c.is_ascii_digit() => {}
            _ => out.push(c),
        }
    }
    sig(out)
}

fn result_sig<T, E: std::fmt::Display>(r: &Result<T, E>, ok: impl FnOnce(&T) -> u64) -> u64 {
    match r {
        Ok(v) => sig((1u8, ok(v))),
        Err(e) => sig((2u8, err_sig(e))),
    }
}

// ------------------------------------------------------------ cgroups, pods

const UID: &str = "0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6";
const UID_: &str = "0f5e5e8a_1b2c_4d3e_8f90_a1b2c3d4e5f6";
const CID: &str = "4c5f1e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

fn kube_dict() -> Vec<String> {
    [
        "/",
        "kubepods",
        "kubepods.slice",
        "kubepods-burstable.slice",
        "kubepods-besteffort.slice",
        "/burstable",
        "/besteffort",
        "pod",
        "kubepods-pod",
        "kubepods-burstable-pod",
        "kubepods-besteffort-pod",
        ".slice",
        ".scope",
        "cri-containerd-",
        "crio-",
        "docker-",
        ":cri-containerd:",
        ":crio:",
        "_",
        "-",
        "\n",
        "0::",
        UID,
        UID_,
        CID,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Every layout `parse_kube_path` knows, as paths.
fn kube_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![];
    for qos in ["/burstable", "/besteffort", ""] {
        v.push(format!("/kubepods{qos}/pod{UID}/{CID}"));
        v.push(format!("/kubepods{qos}/pod{UID}/crio-{CID}"));
        v.push(format!("/kubepods{qos}/pod{UID}"));
    }
    for qos in ["burstable", "besteffort"] {
        v.push(format!(
            "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_}.slice/cri-containerd-{CID}.scope"
        ));
    }
    v.push(format!(
        "/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope/init.scope"
    ));
    v.push(format!(
        "/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}"
    ));
    v.push("/system.slice/containerd.service".into());
    v.into_iter().map(String::into_bytes).collect()
}

/// Whatever parses is what the path holds, and the pod written back as a
/// cgroupfs path parses to the same uid and id.
fn check_pod(path: &str, p: &pods::Pod) {
    let hexes = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    assert!(
        hexes(&p.uid, 32) || (p.uid.len() == 36 && hexes(&p.uid.replace('-', ""), 32)),
        "uid {:?}",
        p.uid
    );
    let lower = path.to_ascii_lowercase();
    assert!(
        lower.replace('_', "-").contains(&p.uid),
        "uid not in the path"
    );
    if let Some(c) = &p.container_id {
        assert!(hexes(c, 64), "container id {c:?}");
        assert!(lower.contains(c.as_str()), "container id not in the path");
    }
    let back = match &p.container_id {
        Some(c) => format!("/kubepods/pod{}/{c}", p.uid),
        None => format!("/kubepods/pod{}", p.uid),
    };
    let q = pods::parse_kube_path(&back).expect("the pod written back parses");
    assert_eq!((&q.uid, &q.container_id), (&p.uid, &p.container_id));
}

fn pod_sig(path: &str, p: &Option<pods::Pod>) -> u64 {
    let comps = path.split('/').filter(|c| !c.is_empty()).count();
    sig((
        p.as_ref().map(|p| p.container_id.is_some()),
        path.contains("kubepods.slice"),
        path.contains("kubepods/"),
        path.contains(':'),
        comps.min(10),
    ))
}

/// cgroup paths as /proc/PID/cgroup shows them -> pod uid and container id.
#[test]
fn kube_path() {
    Target::new("kube_path")
        .seeds(kube_seeds())
        .dict(kube_dict())
        .max_len(1024)
        .run(|b| {
            let s = text(b);
            let p = pods::parse_kube_path(&s);
            if let Some(p) = &p {
                check_pod(&s, p);
            }
            pod_sig(&s, &p)
        });
}

/// /proc/PID/cgroup, whole: the cgroup v2 line, then its pod.
#[test]
fn proc_cgroup() {
    Target::new("proc_cgroup")
        .seeds(
            kube_seeds()
                .into_iter()
                .map(|p| [b"1:name=systemd:/\n0::".as_slice(), &p, b"\n"].concat()),
        )
        .dict(kube_dict())
        .max_len(2048)
        .run(|b| {
            let s = text(b);
            let path = pods::cgroup_v2_path(&s);
            let p = path.as_deref().and_then(pods::parse_kube_path);
            if let Some(path) = &path {
                assert!(!path.contains('\n'));
                assert!(s.lines().any(|l| l == format!("0::{path}")));
                if let Some(p) = &p {
                    check_pod(path, p);
                }
            }
            sig((path.is_some(), pod_sig(path.as_deref().unwrap_or(""), &p)))
        });
}

/// /proc/self/mountinfo: the cgroup2 mount point, and the netns inodes of
/// nsfs bind mounts (/run/netns/NAME).
#[test]
fn mountinfo() {
    Target::new("mountinfo")
        .seeds([
            b"35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n\
              1179 29 0:4 net:[4026532305] /run/netns/pw rw shared:599 - nsfs nsfs rw\n"
                .to_vec(),
            b"36 35 0:31 / /sys/fs/cgroup/my\\040dir rw - cgroup2 none rw\n".to_vec(),
        ])
        .dict([
            " - ", "cgroup2", "nsfs", "net:[", "]", "\\040", "\\", " ", "\n", "/", "shared:1",
        ])
        .max_len(8192)
        .run(|b| {
            let s = text(b);
            let root = pods::cgroup2_mount(&s);
            let mut found = 0usize;
            for line in s.lines() {
                let ino = netns::parse_nsfs_mount(line);
                if let Some(i) = ino {
                    assert!(line.contains(" - "));
                    let link = line.split_whitespace().nth(3).unwrap();
                    assert_eq!(netns::parse_ns_link(link), Some(i));
                    found += 1;
                }
            }
            sig((root.is_some(), found.min(4)))
        });
}

/// A private cgroup namespace: the first line is a path as /proc/PID/cgroup
/// shows it (`/../../kubepods/...`), the rest a mountinfo. The mount chosen
/// is the highest that shows the namespace's root, and the path translated
/// onto it is a plain path below it, the namespace root's names first.
#[test]
fn cgroupns_path() {
    Target::new("cgroupns_path")
        .seeds([
            format!(
                "/../../kubepods/burstable/pod{UID}/{CID}\n\
                41 31 0:38 /../../.. /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
            )
            .into_bytes(),
            b"/../sub\n700 690 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n\
              712 700 0:26 /../.. /sys/fs/cgroup ro master:4 - cgroup2 cgroup2 rw,nsdelegate\n\
              713 690 0:26 /../my\\040dir /x ro - cgroup2 cgroup2 rw\n"
                .to_vec(),
            b"/kubepods/a/./b/../c\n30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n".to_vec(),
        ])
        .dict([
            "/..", "/.", "//", " - ", "cgroup2", "\\040", "\n", "/", " / ", "kubepods",
        ])
        .max_len(4096)
        .run(|b| {
            let s = text(b);
            let (path, mi) = s.split_once('\n').unwrap_or((&s, ""));
            let all = pods::cgroup2_mounts(mi);
            let chosen = pods::choose_cgroup2(mi);
            if let Some(m) = &chosen {
                assert!(all.contains(m), "the chosen mount is one of them");
                assert!(m.root.comps.is_empty(), "{m:?}");
                assert!(all
                    .iter()
                    .filter(|o| o.root.comps.is_empty())
                    .all(|o| o.root.ups <= m.root.ups));
            } else {
                assert!(all.iter().all(|o| !o.root.comps.is_empty()));
            }
            let np = pods::NsPath::parse(path);
            let Some(m) = chosen else {
                return sig((all.len().min(4), np.map(|p| p.ups.min(4))));
            };
            let ups = m.root.ups;
            let names: Vec<String> = (0..ups).map(|i| format!("n{i}")).collect();
            let v = pods::Cgroup2View::with_ns_root(m, names.clone());
            let out = v.translate(path);
            if let Some(o) = &out {
                assert!(o.starts_with('/'), "{o:?}");
                let back = pods::NsPath::parse(o).unwrap();
                assert_eq!(back.ups, 0, "{o:?}");
                if o != "/" {
                    assert!(
                        o[1..]
                            .split('/')
                            .all(|c| !c.is_empty() && c != "." && c != ".."),
                        "{o:?}"
                    );
                }
                let p = np.clone().expect("translated, so it parsed");
                assert!(p.ups <= ups);
                let mut want = names[..ups - p.ups].to_vec();
                want.extend(p.comps);
                assert_eq!(back.comps, want);
            } else if let Some(p) = &np {
                assert!(
                    p.ups > ups,
                    "{p:?} is below the mount (ups {ups}) yet not translated"
                );
            }
            sig((
                all.len().min(4),
                ups.min(4),
                np.map(|p| p.ups.min(4)),
                out.is_some(),
            ))
        });
}

// ------------------------------------------------------------ sysctls, ports

/// `ip_local_reserved_ports` (and `--ports`): parse, print, parse again,
/// and the set arithmetic `check` does with it.
#[test]
fn port_set() {
    let nodeports = ports::PortSet::range(30000, 32767);
    Target::new("port_set")
        .seeds([
            b"\n".to_vec(),
            b"8080,30000-32767\n".to_vec(),
            b"9,1-3,4,2-2,10-12,7".to_vec(),
            b" 5 , 6 ".to_vec(),
            b"65535,0".to_vec(),
        ])
        .dict(["-", ",", " ", "\n", "65535", "0", "30000-32767"])
        .max_len(4096)
        .run(|b| {
            let s = text(b);
            let r = ports::PortSet::parse(&s);
            if let Ok(p) = &r {
                let printed = p.to_string();
                let again = ports::PortSet::parse(&printed).expect("printed set parses");
                assert_eq!(&again, p, "round trip through {printed:?}");
                assert_eq!(again.to_string(), printed);
                // The printed form is canonical: ascending, disjoint, never adjacent.
                let mut last: Option<u32> = None;
                for item in printed.split(',').filter(|i| !i.is_empty()) {
                    let (lo, hi) = item.split_once('-').unwrap_or((item, item));
                    let (lo, hi): (u32, u32) = (lo.parse().unwrap(), hi.parse().unwrap());
                    assert!(lo <= hi && last.is_none_or(|l| lo > l + 1), "{printed}");
                    last = Some(hi);
                }
                assert!(p.len() <= 65536);
                let inter = p.intersect(&nodeports);
                assert!(p.minus(&nodeports).intersect(&nodeports).is_empty());
                assert_eq!(&p.minus(&nodeports).union(&inter), p);
                assert_eq!(p.union(&nodeports).intersect(p), *p);
                let _ = ports::exposed_guarded((1024, 65535), p, &nodeports);
            }
            result_sig(&r, |p| {
                sig((p.to_string().matches(',').count().min(8), p.is_empty()))
            })
        });
}

/// `ip_local_port_range` ("32768\t60999\n") and `--nodeport-range LO-HI`.
#[test]
fn port_range() {
    Target::new("port_range")
        .seeds([
            b"32768\t60999\n".to_vec(),
            b"41000 41003".to_vec(),
            b"30000-32767".to_vec(),
        ])
        .dict(["\t", " ", "-", "\n"])
        .max_len(256)
        .run(|b| {
            let s = text(b);
            let r = netns::parse_port_range(&s);
            if let Some((lo, hi)) = r {
                assert!(lo <= hi);
                assert_eq!(netns::parse_port_range(&format!("{lo}\t{hi}\n")), r);
            }
            let a = ports::parse_lo_hi(&s);
            if let Ok((lo, hi)) = a {
                assert!(1 <= lo && lo <= hi);
                assert_eq!(ports::parse_lo_hi(&format!("{lo}-{hi}")), Ok((lo, hi)));
            }
            sig((r.is_some(), result_sig(&a, |_| 0)))
        });
}

/// /proc/PID/ns/net and /proc/PID/fd/N link targets, one per line.
#[test]
fn proc_links() {
    Target::new("proc_links")
        .seeds([
            b"net:[4026531840]\nsocket:[4242]\n".to_vec(),
            b"pipe:[123]\nanon_inode:[eventfd]\n/dev/null\n".to_vec(),
        ])
        .dict(["net:[", "socket:[", "]", "\n", "mnt:["])
        .max_len(1024)
        .run(|b| {
            let s = text(b);
            let (mut ns, mut socks) = (0usize, 0usize);
            for l in s.lines() {
                if let Some(i) = netns::parse_ns_link(l) {
                    assert_eq!(netns::parse_ns_link(&format!("net:[{i}]")), Some(i));
                    ns += 1;
                }
                if let Some(i) = holders::parse_socket_link(l) {
                    assert_eq!(
                        holders::parse_socket_link(&format!("socket:[{i}]")),
                        Some(i)
                    );
                    socks += 1;
                }
            }
            sig((ns.min(4), socks.min(4)))
        });
}

/// CapEff in /proc/self/status.
#[test]
fn proc_status() {
    Target::new("proc_status")
        .seeds([b"Name:\tportwatch\nCapEff:\t000001ffffffffff\n".to_vec()])
        .dict(["CapEff:", "\t", "\n", "0000"])
        .max_len(4096)
        .run(|b| {
            let r = system::parse_cap_eff(&text(b));
            if let Ok(v) = r {
                assert_eq!(
                    system::parse_cap_eff(&format!("CapEff:\t{v:016x}\n")).unwrap(),
                    v
                );
            }
            result_sig(&r, |v| sig(v.count_ones().min(3)))
        });
}

// ------------------------------------------------------------ kernel BTF

/// vmlinux-like BTF with every struct and function portwatch looks up,
/// through typedefs and anonymous members like the kernel's.
fn btf_vmlinux_seed() -> Vec<u8> {
    let mut b = btf::tests::Builder::new();
    let u32t = b.int("unsigned int", 4);
    let u16t = b.int("unsigned short", 2);
    let u8t = b.int("unsigned char", 1);
    let p = b.ptr(u32t);
    let ns = b.strukt("ns_common", false, 24, &[("inum", u32t, 128, 0)]);
    b.strukt("net", false, 256, &[("ns", ns, 1024, 0)]);
    b.strukt("nsproxy", false, 64, &[("net_ns", p, 320, 0)]);
    b.strukt(
        "task_struct",
        false,
        4096,
        &[("files", p, 8000, 0), ("nsproxy", p, 8064, 0)],
    );
    b.strukt("files_struct", false, 64, &[("fdt", p, 256, 0)]);
    b.strukt(
        "fdtable",
        false,
        32,
        &[("max_fds", u32t, 0, 0), ("fd", p, 64, 0)],
    );
    b.strukt("file", false, 256, &[("private_data", p, 1536, 0)]);
    b.strukt(
        "socket",
        false,
        128,
        &[("file", p, 128, 0), ("sk", p, 192, 0)],
    );
    let v6 = b.strukt("in6_addr", false, 16, &[("s6_addr", u8t, 0, 0)]);
    let addrs = b.strukt(
        "",
        false,
        8,
        &[("skc_daddr", u32t, 0, 0), ("skc_rcv_saddr", u32t, 32, 0)],
    );
    let pair = b.strukt(
        "",
        true,
        8,
        &[("skc_addrpair", u32t, 0, 0), ("", addrs, 0, 0)],
    );
    let ports = b.strukt(
        "",
        false,
        4,
        &[("skc_dport", u16t, 0, 0), ("skc_num", u16t, 16, 0)],
    );
    let possible_net = b.strukt("possible_net_t", false, 8, &[("net", p, 0, 0)]);
    let common = b.strukt(
        "sock_common",
        false,
        136,
        &[
            ("", pair, 0, 0),
            ("", ports, 96, 0),
            ("skc_family", u16t, 128, 0),
            ("skc_net", possible_net, 384, 0),
            ("skc_v6_daddr", v6, 448, 0),
            ("skc_v6_rcv_saddr", v6, 576, 0),
        ],
    );
    let td = b.typedef("sock_common_t", common);
    b.strukt(
        "sock",
        false,
        760,
        &[
            ("__sk_common", td, 0, 0),
            ("sk_protocol", u16t, 4160, 0),
            ("bits", u32t, 4176, 3),
        ],
    );
    b.func("__inet_bind", &[p, p, u32t, u32t]);
    b.build()
}

/// ip_vs's split BTF on top of `btf_base_builder`'s.
fn btf_base_builder() -> btf::tests::Builder {
    let mut b = btf::tests::Builder::new();
    let u32t = b.int("unsigned int", 4);
    b.int("unsigned short", 2);
    b.ptr(u32t);
    b
}

fn btf_module_seed() -> Vec<u8> {
    let base = btf_base_builder();
    let (u32t, u16t, p) = (1, 2, 3);
    let mut m = btf::tests::Builder::on(&base);
    m.strukt(
        "ip_vs_conn_param",
        false,
        48,
        &[
            ("ipvs", p, 0, 0),
            ("caddr", p, 64, 0),
            ("vaddr", p, 128, 0),
            ("cport", u16t, 192, 0),
            ("vport", u16t, 208, 0),
            ("protocol", u16t, 224, 0),
            ("af", u16t, 240, 0),
        ],
    );
    m.func("ip_vs_conn_new", &[p, u32t, p, u16t, u32t, p, u32t]);
    m.build()
}

/// Queries like the ones portwatch makes, with names found in the blob's
/// own strings (so mutated blobs are asked about what they hold).
fn btf_queries(bt: &btf::Btf, blob: &[u8]) -> u64 {
    let (o, notes) = offsets::from_btf(bt);
    let mut so = StealOffsets::default();
    let ipvs = steal::ipvs_offsets(bt, &mut so).is_ok();
    let names: Vec<&str> = blob
        .split(|&c| c == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| !s.is_empty() && s.len() < 64)
        .take(12)
        .collect();
    let mut hits = 0usize;
    for (i, a) in names.iter().enumerate() {
        hits += bt.func_params(a).is_some() as usize;
        for m in names.iter().skip(i).take(3) {
            hits += bt.offset_of(a, m).is_ok() as usize;
            hits += bt.offset_of(a, &format!("{m}.{m}")).is_ok() as usize;
        }
    }
    sig((o.valid, notes.len(), ipvs, hits.min(8)))
}

/// A BTF blob, as /sys/kernel/btf/vmlinux gives it.
#[test]
fn btf() {
    Target::new("btf")
        .binary()
        .seeds([
            btf_vmlinux_seed(),
            btf_module_seed(),
            btf_base_builder().build(),
        ])
        .dict(["sock\0", "sock_common\0", "__sk_common\0", "skc_num\0"])
        .max_len(64 << 10)
        .alloc_per_byte(64)
        .run(|b| {
            let r = btf::Btf::parse(b);
            match &r {
                Ok(bt) => sig((1u8, btf_queries(bt, b))),
                Err(e) => sig((2u8, err_sig(format!("{e:#}")))),
            }
        });
}

/// A module's split BTF (/sys/kernel/btf/ip_vs) on top of vmlinux's.
#[test]
fn btf_split() {
    let base = btf::Btf::parse(&btf_base_builder().build()).unwrap();
    Target::new("btf_split")
        .binary()
        .seeds([btf_module_seed()])
        .dict(["ip_vs_conn_param\0", "ip_vs_conn_new\0", "caddr\0"])
        .max_len(64 << 10)
        .run(|b| {
            let r = btf::Btf::parse_on(b, Some(&base));
            match &r {
                Ok(bt) => sig((1u8, btf_queries(bt, b))),
                Err(e) => sig((2u8, err_sig(format!("{e:#}")))),
            }
        });
}

// ------------------------------------------------------------ tracefs

/// The fields portwatch reads from tracepoint records, and their sizes.
const TP_FIELDS: &[(&str, u32)] = &[
    ("common_type", 2),
    ("skaddr", 8),
    ("sport", 2),
    ("dport", 2),
    ("family", 2),
    ("saddr", 4),
    ("daddr", 4),
    ("state", 4),
    ("oldstate", 4),
    ("newstate", 4),
    ("protocol", 2),
];

/// A tracefs `format` file, and the nodeport-steal offsets read from it.
#[test]
fn tracefs_format() {
    Target::new("tracefs_format")
        .seeds([b"name: x\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n".to_vec()])
        .dict([
            "\tfield:", ";\toffset:", ";\tsize:", ";\tsigned:0;\n", "__u16 ", "const void * ",
            "skaddr", "sport", "dport", "family", "saddr[4]", "daddr[4]", "state", "oldstate",
            "newstate", "protocol", "[", "]", "*",
        ])
        .max_len(8192)
        .run(|b| {
            let r = tpformat::Format::parse("sock:inet_sock_set_state", &text(b));
            let mut o = StealOffsets::default();
            let fields = match &r {
                Ok(f) => {
                    let ss = steal::set_state_offsets(f, &mut o).is_ok();
                    let rt = steal::retransmit_offsets(f, &mut o).is_ok();
                    // How many fields are there, and how many of another size.
                    let (mut there, mut resized) = (0, 0);
                    for (n, size) in TP_FIELDS {
                        match f.offset(n, *size) {
                            Ok(_) => there += 1,
                            Err(e) if e.to_string().contains("bytes") => resized += 1,
                            Err(_) => {}
                        }
                    }
                    sig((ss, rt, there, resized))
                }
                Err(_) => 0,
            };
            sig((result_sig(&r, |_| 0), fields))
        });
}

// ------------------------------------------------------------ netlink

fn nlmsg(ty: u16, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = vec![];
    m.extend((len as u32).to_ne_bytes());
    m.extend(ty.to_ne_bytes());
    m.extend(2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend(1u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(body);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

/// One inet_diag_msg (72 bytes): family, state, ports, addresses, uid,
/// inode.
fn diag_msg(family: u8, state: u8, sport: u16, dport: u16, inode: u32) -> Vec<u8> {
    let mut b = vec![0u8; 72];
    b[0] = family;
    b[1] = state;
    b[4..6].copy_from_slice(&sport.to_be_bytes());
    b[6..8].copy_from_slice(&dport.to_be_bytes());
    b[8..12].copy_from_slice(&[127, 0, 0, 1]);
    b[24..28].copy_from_slice(&[127, 0, 0, 1]);
    b[68..72].copy_from_slice(&inode.to_ne_bytes());
    b
}

/// A datagram of a NETLINK_SOCK_DIAG dump.
#[test]
fn sockdiag_reply() {
    let two = [
        nlmsg(20, &diag_msg(2, 10, 8080, 0, 1234)),
        nlmsg(20, &diag_msg(10, 1, 41000, 8080, 1235)),
    ]
    .concat();
    Target::new("sockdiag_reply")
        .binary()
        .seeds([
            two,
            nlmsg(3, &0i32.to_ne_bytes()),
            nlmsg(2, &(-2i32).to_ne_bytes()),
            nlmsg(2, &0i32.to_ne_bytes()),
        ])
        .max_len(16 << 10)
        .run(|b| {
            let mut out = vec![];
            let r = sockdiag::parse_reply(b, libc::IPPROTO_TCP as u8, &mut out);
            assert!(
                out.len() <= b.len() / (16 + 72),
                "more sockets than bytes for them"
            );
            for s in &out {
                let _ = sockdiag::state_name(s.state);
            }
            let v6 = out
                .iter()
                .filter(|s| matches!(s.src, IpAddr::V6(_)))
                .count();
            sig((result_sig(&r, |d| *d as u64), out.len().min(4), v6.min(2)))
        });
}

// ------------------------------------------------------------ IPVS

/// A virtual service as the kernel writes it in /proc/net/ip_vs.
fn ipvs_line(s: &ipvs::VirtualService) -> String {
    match s.addr {
        IpAddr::V4(a) => format!(
            "{}  {:08X}:{:04X} {} \n",
            s.proto,
            u32::from(a),
            s.port,
            s.scheduler
        ),
        IpAddr::V6(a) => {
            let groups: Vec<String> = a.segments().iter().map(|g| format!("{g:04x}")).collect();
            format!(
                "{}  [{}]:{:04X} {} \n",
                s.proto,
                groups.join(":"),
                s.port,
                s.scheduler
            )
        }
    }
}

/// /proc/net/ip_vs.
#[test]
fn ipvs_services() {
    Target::new("ipvs_services")
        .seeds([b"IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\nTCP  0A000001:7580 rr \n  -> 0A000103:1F90      Masq    1      0          1         \n".to_vec()])
        .dict([
            "TCP  ", "UDP  ", "SCTP  ", "FWM  ", "  -> ", ":", "[", "]", " rr ", "persistent ",
            "\n", "0000:",
        ])
        .max_len(8192)
        .run(|b| {
            let s = text(b);
            let v = ipvs::parse(&s);
            assert!(v.len() <= s.lines().count());
            for svc in &v {
                let line = ipvs_line(svc);
                assert_eq!(ipvs::parse(&line), vec![svc.clone()], "{line:?}");
            }
            let v6 = v.iter().filter(|s| s.addr.is_ipv6()).count();
            let udp = v.iter().filter(|s| s.proto != "TCP").count();
            sig((v.len().min(4), v6.min(2), udp.min(2)))
        });
}

/// A connection as the kernel writes it in /proc/net/ip_vs_conn.
fn ipvs_conn_line(c: &ipvs::Conn) -> String {
    fn a(x: IpAddr) -> String {
        match x {
            IpAddr::V4(a) => format!("{:08X}", u32::from(a)),
            IpAddr::V6(a) => {
                let g: Vec<String> = a.segments().iter().map(|g| format!("{g:04x}")).collect();
                g.join(":")
            }
        }
    }
    format!(
        "{:<3} {} {:04X} {} {:04X} {} {:04X} {:<11} {:>7}\n",
        c.proto,
        a(c.client.ip()),
        c.client.port(),
        a(c.virt.ip()),
        c.virt.port(),
        a(c.dest.ip()),
        c.dest.port(),
        c.state,
        57
    )
}

/// /proc/net/ip_vs_conn.
#[test]
fn ipvs_conns() {
    Target::new("ipvs_conns")
        .seeds([b"Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\nTCP 0A000002 0050 0A000001 7580 0A000103 1F90 SYN_RECV         57\n".to_vec()])
        .dict([
            "TCP ", "UDP ", "SCTP ", "IP ", " 0050 ", " 7580 ", "0A000001", "fd00:", "0000:",
            " SYN_RECV ", " CLOSE ", " ESTABLISHED ", "      57", " sip ", "\n",
        ])
        .max_len(8192)
        .run(|b| {
            let s = text(b);
            let mut n = (0usize, 0usize, 0usize);
            for line in s.lines() {
                let Some(c) = ipvs::parse_conn(line) else { continue };
                // Client and service share a family; the line round-trips.
                assert_eq!(c.client.is_ipv4(), c.virt.is_ipv4(), "{line:?}");
                let again = ipvs_conn_line(&c);
                assert_eq!(ipvs::parse_conn(&again), Some(c.clone()), "{again:?}");
                n.0 += 1;
                n.1 += c.client.is_ipv6() as usize;
                n.2 += (c.dest.is_ipv6() != c.client.is_ipv6()) as usize;
            }
            sig((n.0.min(4), n.1.min(2), n.2.min(2)))
        });
}

// ------------------------------------------------------------ CRI

/// `--cri-endpoint` / CONTAINER_RUNTIME_ENDPOINT.
#[test]
fn cri_endpoint() {
    Target::new("cri_endpoint")
        .seeds([b"unix:///run/containerd/containerd.sock".to_vec()])
        .dict(["unix://", "unix:", "tcp://", "://", "/", "npipe://"])
        .max_len(512)
        .run(|b| {
            let s = text(b);
            let r = cri::parse_endpoint(&s);
            if let Ok(p) = &r {
                assert!(!p.as_os_str().is_empty() || s.starts_with("unix:"));
                if p.is_absolute() {
                    let again = cri::parse_endpoint(&format!("unix://{}", p.display()));
                    assert_eq!(again.as_ref(), Ok(p));
                }
            }
            result_sig(&r, |p| sig(p.is_absolute()))
        });
}

// ------------------------------------------------------------ ring buffers

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: `v` is live plain data (repr(C), no padding: the sizes are
    // pinned in portwatch-common's tests), borrowed for the copy.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

fn failure_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![];
    let mut r = decode::tests::raw_connect_v4();
    v.push(bytes_of(&r));
    r.kind = KIND_BIND;
    r.ret = -98;
    r.probe = PROBE_FEXIT;
    r.family = AF_INET6;
    r.saddr = "::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
    r.sport = 8080;
    r.flags = F_SADDR | F_SPORT | F_PROTO;
    v.push(bytes_of(&r));
    r.probe = PROBE_KPROBE;
    r.proto = 262;
    r.comm = *b"a-very-long-comm";
    v.push(bytes_of(&r));
    v
}

/// A record of the failure ring buffer, decoded and written out the way
/// `trace` writes it.
#[test]
fn failure_record() {
    let clock = decode::Clock::fixed(1_700_000_000_000_000_000);
    Target::new("failure_record")
        .binary()
        .seeds(failure_seeds())
        .max_len(2 * FAILURE_EVENT_SIZE)
        .run(|b| {
            let r = decode::decode(b, &clock);
            if let Ok(ev) = &r {
                let line = sink::json::json_line(ev);
                let short = decode::decode(&b[..FAILURE_EVENT_SIZE], &clock).unwrap();
                assert_eq!(sink::json::json_line(&short), line, "bytes past the record");
                let _ = sink::table::hint(ev);
            }
            result_sig(&r, |ev| {
                sig((
                    ev.kind.name(),
                    ev.errno.name(),
                    format!("{:?} {:?}", ev.family, ev.proto),
                    ev.probe.name(),
                    (ev.saddr.is_some(), ev.daddr.is_some(), ev.netns.is_some()),
                ))
            })
        });
}

fn steal_seeds() -> Vec<Vec<u8>> {
    let mk = |kind: u8, newstate: u8| {
        let mut e = StealEvent::zeroed();
        e.ts_ns = 1_000;
        e.kind = kind;
        e.newstate = newstate;
        e.pid = 7;
        e.family = AF_INET;
        e.local_port = 30080;
        e.remote_port = 80;
        e.rs_port = 8080;
        e.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.rs_addr[..4].copy_from_slice(&[10, 0, 1, 3]);
        e.comm[..4].copy_from_slice(b"curl");
        e
    };
    let ev = |kind: u8, newstate: u8| bytes_of(&mk(kind, newstate));
    vec![
        [
            ev(STEAL_SYNACK, 0),
            ev(STEAL_IPVS, 0),
            ev(STEAL_STATE, TCP_CLOSE),
        ]
        .concat(),
        [
            ev(STEAL_SYNACK, 0),
            ev(STEAL_RETRANS, 0),
            ev(STEAL_RETRANS, 0),
        ]
        .concat(),
        [ev(STEAL_SYNACK, 0), ev(STEAL_STATE, TCP_ESTABLISHED)].concat(),
        // IPv6 (fd00::1 <- fd00::2) sent to an IPv4 real server.
        [STEAL_SYNACK, STEAL_IPVS, STEAL_RETRANS]
            .iter()
            .flat_map(|&k| {
                let mut e = mk(k, 0);
                e.family = AF_INET6;
                e.rs_family = AF_INET;
                e.local_addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                e.remote_addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
                bytes_of(&e)
            })
            .collect(),
    ]
}

/// Records of the nodeport-steal ring buffer, one after another, through
/// the correlator and out as JSON.
#[test]
fn steal_records() {
    let clock = decode::Clock::fixed(0);
    let ctx = sink::steal::Context {
        probe: "tc",
        fix: Some("sysctl -w net.ipv4.ip_local_reserved_ports=30000-32767".into()),
    };
    Target::new("steal_records")
        .binary()
        .seeds(steal_seeds())
        .max_len(32 * STEAL_EVENT_SIZE)
        .run(|b| {
            let mut c = correlate::Correlator::new(5_000_000_000);
            let (mut recs, mut synacks, mut reps) = (0usize, 0usize, vec![]);
            for chunk in b.chunks(STEAL_EVENT_SIZE) {
                let Some(r) = correlate::decode(chunk) else {
                    continue;
                };
                recs += 1;
                synacks += (r.what == correlate::What::SynAck) as usize;
                let ts = r.ts_ns;
                reps.extend(c.feed(r));
                reps.extend(c.expire(ts));
            }
            reps.extend(c.flush());
            assert!(reps.len() <= synacks, "more reports than SYN-ACKs");
            let mut steals = 0usize;
            for r in &reps {
                let _ = sink::steal::to_json(r, &clock, &ctx);
                let _ = sink::steal::hint(r, &ctx);
                steals += r.steal as usize;
            }
            sig((recs.min(8), reps.len().min(4), steals.min(4)))
        });
}

// ------------------------------------------------------------ command line

/// The values of the command line's options, each with its own parser (the
/// first byte picks which).
#[test]
fn cli_values() {
    let seeds = [
        (0u8, ":9477"),
        (0, "127.0.0.1:9477"),
        (1, "500ms"),
        (1, "2m"),
        (2, "50ms"),
        (3, "5s"),
        (4, "256"),
        (5, "tracepoint"),
        (6, "8080,9000-9100"),
    ];
    Target::new("cli_values")
        .seeds(seeds.iter().map(|(k, s)| [&[*k], s.as_bytes()].concat()))
        .dict(["ms", "s", "m", "h", ":", "[::1]", "-", ","])
        .max_len(256)
        .run(|b| {
            let Some((&k, rest)) = b.split_first() else {
                return 0;
            };
            let s = text(rest);
            let ok = match k % 7 {
                0 => cli::parse_listen(&s)
                    .map(|a| sig(a.is_ipv6()))
                    .map_err(drop),
                1 => cli::parse_interval(&s)
                    .inspect(|d| {
                        assert!((100..=86_400_000).contains(&d.as_millis()));
                        let again = cli::parse_interval(&format!("{}ms", d.as_millis()));
                        assert_eq!(again.as_ref(), Ok(d));
                    })
                    .map(|_| 1)
                    .map_err(drop),
                2 => cli::parse_budget(&s)
                    .inspect(|d| assert!(d.as_millis() <= 60_000))
                    .map(|d| sig(d.is_zero()))
                    .map_err(drop),
                3 => cli::parse_follow(&s)
                    .inspect(|d| assert!(!d.is_zero()))
                    .map(|_| 1)
                    .map_err(drop),
                4 => cli::parse_ringbuf_kib(&s)
                    .inspect(|v| assert!(v.is_power_of_two()))
                    .map(|_| 1)
                    .map_err(drop),
                5 => cli::parse_backend(&s)
                    .map(|b| sig(format!("{:?}", b.0)))
                    .map_err(drop),
                _ => cli::parse_port_list(&s)
                    .map(|p| sig((p.is_empty(), p.to_string().matches(',').count().min(4))))
                    .map_err(drop),
            };
            sig((k % 7, ok))
        });
}

// ------------------------------------------------------------ state files

/// serve's file of last sysctl writes, as `check` reads it (another
/// process's file: anything may be in it).
#[test]
fn sysctl_writes_file() {
    let line = br#"{"schema":1,"time":"2026-11-23T08:12:33.123456Z","kind":"sysctl_write","name":"net.ipv4.ip_local_port_range","old":"32768 60999","new":"1024 65535","old_truncated":false,"new_truncated":false,"pid":4242,"tid":4242,"comm":"sysctl","uid":0,"cgroup_id":1234,"cgroup":null,"pod":null,"netns":4026531840,"node_netns":true,"verdict":"creates_nodeport_overlap","exposed":"30000-32767","removed":null,"usable":[28232,64512],"refused":false}"#;
    Target::new("sysctl_writes_file")
        .seeds([[&line[..], b"\n", &line[..]].concat()])
        .dict([
            "\n",
            "\"refused\":true",
            "\"netns\":",
            "\"pod\":{\"uid\":\"u\"}",
            "null",
            "\"new\":",
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.ip_local_reserved_ports",
            "\\u0000",
        ])
        .max_len(8192)
        .run(|b| {
            let s = text(b);
            let l = lastwrite::parse(&s);
            let lines = s.lines().filter(|l| !l.trim().is_empty()).count();
            assert_eq!(l.writes.len() + l.skipped, lines);
            let none = ports::PortSet::default();
            for w in &l.writes {
                let _ = w.who();
                let _ = w.holds((1024, 65535), &none, None);
                let last = lastwrite::last_of(&l.writes, w.netns, &[]);
                assert!(last.is_none());
            }
            let names = ["net.ipv4.ip_local_port_range"];
            let ranged = l
                .writes
                .iter()
                .filter(|w| names.contains(&w.name.as_str()))
                .count();
            sig((l.writes.len().min(3), l.skipped.min(3), ranged.min(2)))
        });
}
