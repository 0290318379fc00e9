//! `portwatch nodeport-steal` against real SYN-ACKs taken away from a local
//! client, as root, in test network namespaces: a "node" with a veth to a
//! "pod" listening on :80 (and, for IPVS, a veth to a real server).
//!
//! On this machine's kernel (no IPVS) an nftables rule takes the SYN-ACK
//! away; in the VM stage IPVS itself steals it, as on a kube-proxy node.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use serde_json::Value;

/// A veth pair between `a` (address `a_ip`) and `b` (address `b_ip`).
fn link(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    let st = Command::new("ip")
        .args([
            "-n", &a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
        ])
        .args(["netns", &b.name])
        .status()
        .unwrap();
    assert!(st.success());
    a.sh(&format!(
        "ip addr add {a_ip} dev {a_if} && ip link set {a_if} up"
    ));
    b.sh(&format!(
        "ip addr add {b_ip} dev {b_if} && ip link set {b_if} up"
    ));
}

/// The node (range `node_range`) and a pod with a listener on 10.0.0.2:80.
fn node_and_pod(node_range: (u16, u16)) -> (Netns, Netns, Client) {
    let node = Netns::new("node", node_range);
    let pod = Netns::new("pod", (40000, 40999));
    link(&node, "n0", "10.0.0.1/24", &pod, "p0", "10.0.0.2/24");
    let listener = Client::start(&pod, "--hold listen 10.0.0.2 80", Some("holding"));
    (node, pod, listener)
}

/// Reports (nodeport_* JSON lines) until `n` have come, then a short settle
/// for any extra one.
fn reports(t: &mut Tracer, n: usize) -> Vec<Value> {
    let mut out = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(l) = t.next_line(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l}: {e}"));
            if v["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("nodeport_"))
            {
                out.push(v);
            }
        }
    }
    while let Some(l) = t.next_line(Duration::from_millis(700)) {
        out.push(serde_json::from_str(&l).unwrap());
    }
    out
}

fn by_port(reps: &[Value], port: u16) -> Vec<&Value> {
    reps.iter().filter(|r| r["port"] == port).collect()
}

/// The node's and the pod's addresses on their link, per family.
const V4: (&str, &str) = ("10.0.0.1", "10.0.0.2");
const V6: (&str, &str) = ("fd00::1", "fd00::2");

/// Gives the node and the pod of [`node_and_pod`] IPv6 addresses too
/// (`nodad`: usable at once, not tentative for seconds) and the pod a
/// listener on [fd00::2]:80.
fn dual_stack(node: &Netns, pod: &Netns) -> Client {
    node.sh("ip addr add fd00::1/64 dev n0 nodad");
    pod.sh("ip addr add fd00::2/64 dev p0 nodad");
    Client::start(pod, "--hold listen fd00::2 80", Some("holding"))
}

/// The client on the node connects to pod:80 from 30081, 40000 and 30080
/// (over `ips`: the node's and the pod's address of one family), each
/// connect giving up after one SYN retry. 30080's SYN-ACK is taken away
/// (its connect times out); 30081 is guarded but gets through; 40000 is
/// not guarded and must never be reported. Returns (near miss, steal).
fn three_connects(node: &Netns, t: &mut Tracer) -> (Value, Value) {
    three_connects_over(node, t, V4)
}

fn three_connects_over(node: &Netns, t: &mut Tracer, ips: (&str, &str)) -> (Value, Value) {
    let (n_ip, p_ip) = ips;
    let out = client_once(
        node,
        &format!(
            "--syncnt 1 from {n_ip} 30081 connect {p_ip} 80 from {n_ip} 40000 connect {p_ip} 80 \
             from {n_ip} 30080 connect {p_ip} 80"
        ),
    );
    assert_eq!(out, ["ok 30081", "ok 40000", "err 110"], "{out:?}");
    let reps = reports(t, 2);
    assert_eq!(reps.len(), 2, "{reps:?}");
    assert!(by_port(&reps, 40000).is_empty(), "{reps:?}");
    let near = by_port(&reps, 30081);
    assert_eq!(near.len(), 1, "{reps:?}");
    let n = near[0].clone();
    assert_eq!(n["kind"], "nodeport_near_miss", "{n}");
    assert_eq!(n["outcome"], "established", "{n}");
    assert!(n["ipvs"].is_null(), "{n}");
    assert_victim(&n, 30081, ips);
    let steal = by_port(&reps, 30080);
    assert_eq!(steal.len(), 1, "{reps:?}");
    let s = steal[0].clone();
    assert_eq!(s["kind"], "nodeport_steal", "{s}");
    assert_eq!(s["port"], 30080, "{s}");
    assert_eq!(s["outcome"], "failed", "{s}");
    assert!(s["syn_retransmits"].as_u64().unwrap() >= 1, "{s}");
    assert_victim(&s, 30080, ips);
    assert_eq!(s["victim"]["pid"], n["victim"]["pid"], "one client");
    (n, s)
}

fn assert_victim(r: &Value, sport: u16, (n_ip, p_ip): (&str, &str)) {
    let v = &r["victim"];
    assert_eq!(r["node_addr"], n_ip, "{r}");
    assert_eq!(v["saddr"], n_ip, "{r}");
    assert_eq!(v["sport"], sport, "{r}");
    assert_eq!(v["daddr"], p_ip, "{r}");
    assert_eq!(v["dport"], 80, "{r}");
    assert_eq!(v["comm"], "pwclient", "{r}");
    assert!(v["pid"].as_u64().is_some_and(|p| p > 0), "{r}");
    assert!(v["pod"].is_null(), "{r}");
    assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
}

/// The packet path alone: an nftables rule drops the SYN-ACK for 30080, as
/// IPVS would take it. 30081 (guarded, nothing in the way) is a near miss;
/// 40000 (not guarded) is never reported. The node's range 1024-65535 with
/// nothing reserved draws the start-up warning with its exact fix.
#[test]
fn packet_path_reports_a_steal_a_near_miss_and_warns_about_the_range() {
    let (node, _pod, _listener) = node_and_pod((1024, 65535));
    node.sh("nft add table inet pwtest && \
         nft add chain inet pwtest input '{ type filter hook input priority 0; }' && \
         nft add rule inet pwtest input tcp dport 30080 'tcp flags & (syn|ack) == (syn|ack)' drop");
    let mut t = Tracer::start_in(&node, &["nodeport-steal", "--json", "--follow", "10s"]);
    {
        let err = t.stderr.lock().unwrap();
        assert!(
            err.iter()
                .any(|l| l.contains("SYN-ACK watch: tc ingress on n0")),
            "{err:?}"
        );
        let warn = err
            .iter()
            .find(|l| l.contains("overlaps the guarded ports"))
            .unwrap_or_else(|| panic!("no range warning: {err:?}"));
        assert!(
            warn.ends_with("Fix: sysctl -w net.ipv4.ip_local_reserved_ports=30000-32767"),
            "{warn}"
        );
    }
    let (_, s) = three_connects(&node, &mut t);
    assert_eq!(s["probe"], "tc", "{s}");
    assert!(s["ipvs"].is_null(), "{s}");
    assert!(t.stop().0.success());
}

/// The packet path over IPv6, on a dual-stack node: the same rule takes
/// the SYN-ACK for 30080 whatever its family, and the IPv6 connects are
/// reported with IPv6 addresses, as the IPv4 ones are.
#[test]
fn packet_path_reports_an_ipv6_steal_and_near_miss() {
    let (node, pod, _listener) = node_and_pod((32768, 60999));
    let _listener6 = dual_stack(&node, &pod);
    node.sh("nft add table inet pwtest && \
         nft add chain inet pwtest input '{ type filter hook input priority 0; }' && \
         nft add rule inet pwtest input tcp dport 30080 'tcp flags & (syn|ack) == (syn|ack)' drop");
    let mut t = Tracer::start_in(&node, &["nodeport-steal", "--json", "--follow", "10s"]);
    let (_, s) = three_connects_over(&node, &mut t, V6);
    assert_eq!(s["probe"], "tc", "{s}");
    assert!(s["ipvs"].is_null(), "{s}");
    assert!(t.stop().0.success());
}

/// What nodeport-steal must say at start-up about IPVS's scheduling path
/// on this kernel (the line's end), and the `probe` its reports give, with
/// `--ipvs-probe` `choice`. Where ip_vs has module BTF (5.11+) fexit on
/// ip_vs_conn_new names the real server, or the kprobe where fexit cannot
/// be had or is not wanted: x86-64 attaches fexit to a function of more
/// than 6 arguments (ip_vs_conn_new has 7) from 6.6 on. Where ip_vs has no
/// BTF (5.10) portwatch must say so, not that IPVS is missing, and name
/// the real server from IPVS's connection table, whatever the choice.
#[cfg(feature = "vm-tests")]
fn expected_ipvs(choice: &str) -> (String, &'static str) {
    if !std::path::Path::new("/sys/kernel/btf/ip_vs").exists() {
        return (
            "IPVS scheduling: not probed (no module BTF for ip_vs on this kernel (/sys/kernel/btf/ip_vs; kernels before 5.11 have none), so IPVS's arguments cannot be read); steals are seen on the packet path and the real server is read from /proc/net/ip_vs_conn".to_string(),
            "ip_vs_conn",
        );
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let fexit_7_args = (v.next().unwrap(), v.next().unwrap()) >= (6, 6);
    match choice {
        "kprobe" => (
            "IPVS scheduling: kprobe on ip_vs_conn_new (--ipvs-probe kprobe)".to_string(),
            "kprobe",
        ),
        _ if fexit_7_args => ("IPVS scheduling: fexit on ip_vs_conn_new".to_string(), "fexit"),
        _ => (
            "IPVS scheduling: kprobe on ip_vs_conn_new (fexit: attaching fexit to ip_vs_conn_new: ENOTSUPP (ip_vs_conn_new has 7 arguments; x86-64 fexit takes more than 6 from 6.6 on))".to_string(),
            "kprobe",
        ),
    }
}

/// The node and pod of [`node_and_pod`] (ordinary range), with a veth to
/// a "real server" netns at 10.0.1.3 routed through the node.
#[cfg(feature = "vm-tests")]
fn node_pod_and_real_server() -> (Netns, Netns, Client, Netns) {
    let (node, pod, listener) = node_and_pod((32768, 60999));
    let rs = Netns::new("rs", (40000, 40999));
    link(&node, "r0", "10.0.1.1/24", &rs, "s0", "10.0.1.3/24");
    rs.sh("ip route add default via 10.0.1.1");
    (node, pod, listener, rs)
}

/// `nodeport-steal --json` in `node`, guarding 31000-31001 besides the
/// IPVS services, with `extra` arguments.
#[cfg(feature = "vm-tests")]
fn steal_tracer(node: &Netns, extra: &[&str]) -> Tracer {
    let mut args = vec![
        "nodeport-steal",
        "--json",
        "--follow",
        "10s",
        "--nodeport-range",
        "31000-31001",
    ];
    args.extend_from_slice(extra);
    Tracer::start_in(node, &args)
}

/// IPVS steals the SYN-ACK for real: a virtual service on the node address
/// at 30080 with a real server that is not the pod (kube-proxy's NodePort),
/// and a client on the node connecting from 30080 to pod:80. Port 30080 is
/// guarded only because it is an IPVS service (read from the kernel);
/// 30081 is guarded (--ports) without a service: a near miss at most.
/// `ipvs_probe`: nodeport-steal's `--ipvs-probe`; the start-up line and
/// the report's `probe` as [`expected_ipvs`] says, the real server the same
/// whichever names it.
/// Needs a kernel with IPVS, which this machine's lacks: built only with the
/// `vm-tests` feature, which the VM stage (`cargo xtask vm-test`, part of
/// `cargo xtask test`) builds its test binaries with.
#[cfg(feature = "vm-tests")]
fn ipvs_steal_names_the_real_server_with(ipvs_probe: &str) {
    let (node, _pod, _listener, _rs) = node_pod_and_real_server();
    node.sysctl("net/ipv4/ip_forward", "1");
    node.sh(
        "ipvsadm -A -t 10.0.0.1:30080 -s rr && ipvsadm -a -t 10.0.0.1:30080 -r 10.0.1.3:8080 -m",
    );
    let mut t = steal_tracer(&node, &["--ports", "30081", "--ipvs-probe", ipvs_probe]);
    let (says, probe) = expected_ipvs(ipvs_probe);
    {
        let err = t.stderr.lock().unwrap();
        assert!(err.iter().any(|l| l.ends_with(&says)), "{says}: {err:?}");
        assert!(
            !err.iter().any(|l| l.contains("IPVS is not loaded")),
            "{err:?}"
        );
        assert!(
            err.iter().any(|l| l
                .contains("guarding 4 ports: 30080-30081,31000-31001 (1 IPVS virtual services)")),
            "{err:?}"
        );
    }
    let (_, s) = three_connects(&node, &mut t);
    assert_eq!(s["probe"], probe, "{s}");
    assert_eq!(s["ipvs"]["vip"], "10.0.0.1", "{s}");
    assert_eq!(s["ipvs"]["vport"], 30080, "{s}");
    assert_eq!(s["ipvs"]["real_server"], "10.0.1.3:8080", "{s}");
    // Shown by the VM stage (--show-output): the example in docs/schema.md.
    println!("steal report (--ipvs-probe {ipvs_probe}): {s}");
    assert!(t.stop().0.success());
}

/// Dual stack, IPVS stealing over IPv6: a NodePort virtual service on the
/// node's IPv6 address only (`[fd00::1]:30082 -> [fd01::3]:8080`). Port
/// 30082 is guarded for both families (a guarded port is a port), but only
/// the IPv6 connect from it loses its SYN-ACK to IPVS; the IPv4 connect
/// from the same port, with no IPv4 service there, gets through: a near
/// miss, not a steal. The steal names the IPv6 real server.
#[cfg(feature = "vm-tests")]
#[test]
fn ipvs_steals_over_ipv6_not_over_ipv4() {
    let (node, pod, _listener, rs) = node_pod_and_real_server();
    let _listener6 = dual_stack(&node, &pod);
    node.sh("ip addr add fd01::1/64 dev r0 nodad");
    rs.sh("ip addr add fd01::3/64 dev s0 nodad && ip -6 route add default via fd01::1");
    node.sysctl("net/ipv6/conf/all/forwarding", "1");
    node.sh(
        "ipvsadm -A -t [fd00::1]:30082 -s rr && ipvsadm -a -t [fd00::1]:30082 -r [fd01::3]:8080 -m",
    );
    let mut t = steal_tracer(&node, &[]);
    {
        let err = t.stderr.lock().unwrap();
        assert!(
            err.iter().any(
                |l| l.contains("guarding 3 ports: 30082,31000-31001 (1 IPVS virtual services)")
            ),
            "{err:?}"
        );
    }
    let out = client_once(
        &node,
        "--syncnt 1 from 10.0.0.1 30082 connect 10.0.0.2 80 from fd00::1 30082 connect fd00::2 80",
    );
    assert_eq!(out, ["ok 30082", "err 110"], "{out:?}");
    let reps = reports(&mut t, 2);
    assert_eq!(reps.len(), 2, "{reps:?}");
    let n = reps
        .iter()
        .find(|r| r["victim"]["daddr"] == "10.0.0.2")
        .unwrap_or_else(|| panic!("no IPv4 report: {reps:?}"));
    assert_eq!(n["kind"], "nodeport_near_miss", "{n}");
    assert_eq!(n["outcome"], "established", "{n}");
    assert!(n["ipvs"].is_null(), "{n}");
    assert_victim(n, 30082, V4);
    let s = reps
        .iter()
        .find(|r| r["victim"]["daddr"] == "fd00::2")
        .unwrap_or_else(|| panic!("no IPv6 report: {reps:?}"));
    assert_eq!(s["kind"], "nodeport_steal", "{s}");
    assert_eq!(s["port"], 30082, "{s}");
    assert_eq!(s["outcome"], "failed", "{s}");
    assert_victim(s, 30082, V6);
    assert_eq!(s["probe"], expected_ipvs("auto").1, "{s}");
    assert_eq!(s["ipvs"]["vip"], "fd00::1", "{s}");
    assert_eq!(s["ipvs"]["vport"], 30082, "{s}");
    assert_eq!(s["ipvs"]["real_server"], "[fd01::3]:8080", "{s}");
    println!("IPv6 steal report: {s}");
    assert!(t.stop().0.success());
}

/// The automatic choice: fexit where the kernel attaches it to IPVS.
#[cfg(feature = "vm-tests")]
#[test]
fn ipvs_steal_names_the_real_server() {
    ipvs_steal_names_the_real_server_with("auto");
}

/// The fallback, forced: the kprobe names the same real server.
#[cfg(feature = "vm-tests")]
#[test]
fn ipvs_steal_names_the_real_server_with_the_kprobe() {
    ipvs_steal_names_the_real_server_with("kprobe");
}

/// `--ipvs-probe fexit` where the kernel cannot attach it is an error that
/// says why (exit 1); where it can, it is what attaches; without module BTF
/// nothing is probed, as with any choice.
#[cfg(feature = "vm-tests")]
#[test]
fn ipvs_probe_fexit_forced_attaches_or_says_why_not() {
    let node = Netns::new("node", (32768, 60999));
    let (says, probe) = expected_ipvs("fexit");
    if probe != "kprobe" {
        let t = Tracer::start_in(
            &node,
            &["nodeport-steal", "--json", "--ipvs-probe", "fexit"],
        );
        {
            let err = t.stderr.lock().unwrap();
            assert!(err.iter().any(|l| l.ends_with(&says)), "{says}: {err:?}");
        }
        assert!(t.stop().0.success());
        return;
    }
    let out = node
        .cmd(portwatch_bin())
        .args(["nodeport-steal", "--json", "--ipvs-probe", "fexit"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--ipvs-probe fexit is not available for ip_vs_conn_new on this kernel (attaching fexit to ip_vs_conn_new: ENOTSUPP (ip_vs_conn_new has 7 arguments; x86-64 fexit takes more than 6 from 6.6 on))"),
        "{err}"
    );
}

/// The node as kube-proxy in IPVS mode lays it out: the `kube-ipvs0` dummy
/// holding a ClusterIP, a ClusterIP and two NodePort virtual services
/// (NodePorts on the node's address), the `KUBE-CLUSTER-IP` and
/// `KUBE-NODE-PORT-TCP` ipsets, the `KUBE-*` iptables chains that mark and
/// masquerade NodePort traffic, and `net.ipv4.vs.conntrack=1`.
#[cfg(feature = "vm-tests")]
fn kube_proxy_node(node: &Netns, nodeports: &[u16]) {
    node.sysctl("net/ipv4/ip_forward", "1");
    node.sysctl("net/ipv4/vs/conntrack", "1");
    node.sysctl("net/ipv4/vs/conn_reuse_mode", "0");
    node.sysctl("net/ipv4/vs/expire_nodest_conn", "1");
    node.sh("ip link add kube-ipvs0 type dummy && ip addr add 10.96.0.10/32 dev kube-ipvs0");
    node.sh("ipvsadm -A -t 10.96.0.10:80 -s rr && ipvsadm -a -t 10.96.0.10:80 -r 10.0.1.3:8080 -m");
    node.sh(
        "ipset create KUBE-CLUSTER-IP hash:ip,port && ipset add KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
    );
    node.sh("ipset create KUBE-NODE-PORT-TCP bitmap:port range 0-65535");
    for p in nodeports {
        node.sh(&format!(
            "ipvsadm -A -t 10.0.0.1:{p} -s rr && ipvsadm -a -t 10.0.0.1:{p} -r 10.0.1.3:8080 -m \
             && ipset add KUBE-NODE-PORT-TCP {p}"
        ));
    }
    node.sh(
        "iptables -t nat -N KUBE-MARK-MASQ \
         && iptables -t nat -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000 \
         && iptables -t nat -N KUBE-POSTROUTING \
         && iptables -t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN \
         && iptables -t nat -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000 \
         && iptables -t nat -A KUBE-POSTROUTING -m comment --comment 'kubernetes service traffic requiring SNAT' -j MASQUERADE \
         && iptables -t nat -N KUBE-NODE-PORT \
         && iptables -t nat -A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ \
         && iptables -t nat -N KUBE-SERVICES \
         && iptables -t nat -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT \
         && iptables -t nat -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT \
         && iptables -t nat -A PREROUTING -j KUBE-SERVICES \
         && iptables -t nat -A OUTPUT -j KUBE-SERVICES \
         && iptables -t nat -A POSTROUTING -j KUBE-POSTROUTING",
    );
}

/// The incident end to end on a node laid out as kube-proxy lays it out:
/// the node's range widened over two NodePorts (32766, 32767 of
/// 32766-32769), and a host-netns client as the kubelet's health check
/// connecting to a pod's IP without binding. Once its two ordinary ports
/// are held, every further connect gets a NodePort as its source port and
/// IPVS takes the SYN-ACK: the report names the client, the NodePort
/// service and its real server (a report per stolen 4-tuple). `check` on that node flags the overlap,
/// with the IPVS services among the guarded ports; its printed fix,
/// applied, leaves the client only ordinary ports, and no steal follows.
#[cfg(feature = "vm-tests")]
#[test]
fn kube_proxy_ipvs_node_steal_and_the_check_fix() {
    let (node, pod, _listener) = node_and_pod((32766, 32769));
    // The probe after the fix goes to another port of the pod: the first
    // probe's connections leave TIME_WAIT on 32768 and 32769 toward :80.
    let _listener81 = Client::start(&pod, "--hold listen 10.0.0.2 81", Some("holding"));
    let rs = Netns::new("rs", (40000, 40999));
    link(&node, "r0", "10.0.1.1/24", &rs, "s0", "10.0.1.3/24");
    rs.sh("ip route add default via 10.0.1.1");
    kube_proxy_node(&node, &[32766, 32767]);

    let mut t = Tracer::start_in(&node, &["nodeport-steal", "--json", "--follow", "10s"]);
    let (says, probe) = expected_ipvs("auto");
    {
        let err = t.stderr.lock().unwrap();
        assert!(
            err.iter().any(|l| l.contains("(3 IPVS virtual services)")),
            "the ClusterIP and both NodePorts read from the kernel: {err:?}"
        );
        assert!(err.iter().any(|l| l.ends_with(&says)), "{says}: {err:?}");
    }
    // The kubelet's probe: no bind, the kernel picks the source port.
    let out = client_once(&node, "--syncnt 1 connect 10.0.0.2 80 4");
    let stolen = out.iter().filter(|l| *l == "err 110").count();
    let ok: Vec<&String> = out.iter().filter(|l| l.starts_with("ok ")).collect();
    assert_eq!(stolen + ok.len(), 4, "{out:?}");
    assert!(
        stolen >= 1,
        "once 32768 and 32769 are held, a NodePort is next: {out:?}"
    );
    assert!(
        ok.iter().all(|l| *l == "ok 32768" || *l == "ok 32769"),
        "no connect from a NodePort gets through: {out:?}"
    );
    // A report per stolen connection (4-tuple). Stolen connects that
    // reuse a 4-tuple IPVS still holds an entry for are folded into the
    // first one's report (their SYN-ACKs follow that entry).
    let reps = reports(&mut t, 1);
    let steals: Vec<&Value> = reps
        .iter()
        .filter(|r| r["kind"] == "nodeport_steal")
        .collect();
    assert!(
        !steals.is_empty() && steals.len() <= stolen,
        "{out:?} {reps:?}"
    );
    for s in &steals {
        let port = s["port"].as_u64().unwrap();
        assert!(port == 32766 || port == 32767, "{s}");
        assert_eq!(s["outcome"], "failed", "{s}");
        assert_eq!(s["victim"]["comm"], "pwclient", "{s}");
        assert_eq!(s["victim"]["daddr"], "10.0.0.2", "{s}");
        assert_eq!(s["victim"]["dport"], 80, "{s}");
        assert_eq!(s["ipvs"]["vip"], "10.0.0.1", "{s}");
        assert_eq!(s["ipvs"]["vport"], port, "{s}");
        assert_eq!(s["ipvs"]["real_server"], "10.0.1.3:8080", "{s}");
        assert_eq!(s["probe"], probe, "{s}");
        println!("kube-proxy node steal: {s}");
    }

    // check on that node: the overlap, and the fix that ends it.
    let out = common::check_as_node(&node, true, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let f = lines
        .iter()
        .find(|f| f["check"] == "nodeport_overlap")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(f["evidence"]["uncovered"], "32766-32767", "{f}");
    assert_eq!(lines.last().unwrap()["ipvs"], true, "{lines:?}");
    let fix = f["fix"].as_str().unwrap();
    // Every IPVS service's port is guarded, the ClusterIP's 80 too.
    assert_eq!(
        fix,
        "sysctl -w net.ipv4.ip_local_reserved_ports=80,30000-32767"
    );
    node.sh(fix);
    let out = client_once(&node, "--syncnt 1 connect 10.0.0.2 81 2");
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out.iter().all(|l| l == "ok 32768" || l == "ok 32769"),
        "{out:?}"
    );
    assert!(
        reports(&mut t, 0)
            .iter()
            .all(|r| r["kind"] != "nodeport_steal"),
        "no steal once the NodePorts are reserved"
    );
    assert!(t.stop().0.success());
}
