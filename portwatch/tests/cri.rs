//! Pod and container names from a real container runtime, as root: the test
//! starts Debian's containerd with a private config (its own root, state
//! and socket under a temp dir; CRI plugin with the cgroupfs driver), imports
//! a busybox-static image it builds itself (no registry here), creates a pod
//! sandbox and a container through the CRI gRPC API, moves clients into the
//! container's cgroup and into the pod's own cgroup, provokes EADDRNOTAVAIL
//! in test netns, and checks that `portwatch trace --cri-endpoint` names the
//! pod, its namespace and the container, and that the name filters select
//! on them. Against a socket nobody serves, the same events carry the pod
//! uid and container id with null names, and start-up says so once. The
//! same pod is named by trace and serve run with a private cgroup namespace
//! (unshared in a container-like cgroup under kubepods) and by trace in a
//! podman container with `--cgroupns=private` and the node's cgroup tree
//! mounted read-only, as a DaemonSet on cgroup v2 runs.
//!
//! containerd (the harness in common/containerd.rs) runs in a private mount
//! namespace with a tmpfs over /run, so nothing of the machine's own
//! /run/containerd is touched.
//! Host-only: the VM stage does not run this binary (no containerd there).

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{containerd::*, *};
use serde_json::{json, Value};

const RANGE: (u16, u16) = (43000, 43003); // even-sized: exactly 4 connects fit
const POD_NAMESPACE: &str = "pw-shop";
const POD_NAME: &str = "pw-web";
const CONTAINER_NAME: &str = "client";

/// The container client's two failures in netns `inode`, each named with
/// its pid, cgroup path and pod, and held by the client itself in the same
/// pod. `client` is (pid, cgroup path, pod uid, container id).
fn container_events(
    t: &mut Tracer,
    inode: u64,
    client: (u32, &str, &str, &str),
    all: &mut Vec<Value>,
) -> Vec<Value> {
    let (pid, cgroup, uid, cid) = client;
    let evs = t.events_in(inode, 2, all);
    assert_eq!(evs.len(), 2, "{all:?}");
    for ev in &evs {
        assert_eq!(ev["pid"], pid, "{ev}");
        assert_eq!(ev["cgroup"], cgroup, "{ev}");
        assert_eq!(ev["pod"], pod_json(uid, true, Some(cid)), "{ev}");
        // Who holds the range: the client itself, in the same pod.
        let h = &ev["detail"]["holders"][0];
        assert_eq!(h["pid"], pid, "{ev}");
        assert_eq!(h["pod"], pod_json(uid, true, Some(cid)), "{ev}");
    }
    evs
}

fn pod_json(uid: &str, named: bool, cid: Option<&str>) -> Value {
    json!({
        "namespace": named.then_some(POD_NAMESPACE),
        "name": named.then_some(POD_NAME),
        "uid": uid,
        "container": (named && cid.is_some()).then_some(CONTAINER_NAME),
        "container_id": cid,
    })
}

/// The agent's own cgroup, made by hand where a DaemonSet's container
/// would be (`/kubepods/burstable/pod<uid>/<id>`, beside the test's pod),
/// removed on drop, after the agent has exited and before containerd's
/// harness removes the `kubepods` levels.
struct AgentCgroup(Vec<PathBuf>);

impl AgentCgroup {
    fn make() -> AgentCgroup {
        let uid = format!(
            "{:08x}-a9e0-4abc-8def-{:012x}",
            std::process::id(),
            0xa9e17_u64
        );
        let cid = format!("{:08x}{}", std::process::id(), "a9e17000".repeat(7));
        // kubepods/burstable are containerd's (its harness removes them).
        let qos = cgroup2_root().join("kubepods/burstable");
        assert!(qos.is_dir(), "{} after RunPodSandbox", qos.display());
        let pod = qos.join(format!("pod{uid}"));
        let made = vec![pod.clone(), pod.join(cid)];
        for d in &made {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        AgentCgroup(made)
    }

    fn dir(&self) -> &std::path::Path {
        self.0.last().unwrap()
    }
}

impl Drop for AgentCgroup {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                eprintln!("rmdir {}: {e}", d.display());
            }
        }
    }
}

/// This build's portwatch as a podman image of its own (the binary and the
/// libraries ldd lists, `podman import`ed under a tag of this test's, so the
/// image `cargo xtask image` tags is not touched); removed on drop with the
/// container.
struct Podman {
    tag: String,
    name: String,
}

impl Podman {
    fn image(dir: &std::path::Path) -> Podman {
        let root = dir.join("podman-root");
        let bin = portwatch_bin();
        let mut files = vec![(bin.clone(), PathBuf::from("/usr/bin/portwatch"))];
        let ldd = Command::new("ldd").arg(&bin).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            files.push((PathBuf::from(lib), PathBuf::from(lib)));
        }
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (from, to) in &files {
            let at = root.join(to.strip_prefix("/").unwrap());
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::copy(from, &at).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
        let tar = dir.join("podman-root.tar");
        tar_dir(&root, &tar);
        let p = Podman {
            tag: format!("localhost/portwatch-cri-test:{}", std::process::id()),
            name: format!("portwatch-cri-test-{}", std::process::id()),
        };
        podman(&["import", tar.to_str().unwrap(), &p.tag]);
        p
    }

    /// `portwatch args` in a container as the DaemonSet's (host network
    /// and PID namespace, its three capabilities, read-only root, the node's
    /// cgroup tree and tracefs read-only) but with a private cgroup
    /// namespace, and `extra` podman arguments; runc, and ulimits this
    /// machine's root may set (FACTS: podman's defaults are refused).
    fn run(&self, extra: &[&str], args: &[&str]) -> Tracer {
        let mut c = Command::new("podman");
        c.args(["run", "--rm", "--name", &self.name, "--runtime", "runc"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--network", "host", "--pid", "host", "--cgroupns=private"])
            .args([
                "--cap-drop",
                "ALL",
                "--cap-add",
                "SYS_ADMIN",
                "--cap-add",
                "SYS_PTRACE",
            ])
            .args(["--cap-add", "NET_ADMIN", "--read-only"])
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
            .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
            .args(extra)
            .args([&self.tag, "/usr/bin/portwatch"])
            .args(args);
        Tracer::start_command(c)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "2", &self.name])
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

fn podman(args: &[&str]) {
    let out = Command::new("podman")
        .args(args)
        .output()
        .expect("podman (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tar_dir(dir: &std::path::Path, out: &std::path::Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar {}", dir.display());
}

#[test]
fn names_from_containerd_over_cri() {
    require_root();
    let t_all = Instant::now();
    let mut cd = Containerd::start();
    let image = build_image(&cd.dir);
    let t0 = Instant::now();
    cd.ctr(&["images", "import", image.to_str().unwrap()]);
    eprintln!("image import took {:?}", t0.elapsed());

    let uid = format!(
        "{:08x}-c0de-4abc-8def-{:012x}",
        std::process::id(),
        0x00c0_ffee_u64
    );
    let (_sandbox, cid) = cd.run_pod(&uid, (POD_NAMESPACE, POD_NAME, CONTAINER_NAME));
    let pod_cgroup = format!("/kubepods/burstable/pod{uid}");
    let container_cgroup = format!("{pod_cgroup}/{cid}");
    // After run_pod: containerd's harness made the kubepods levels.
    let agent_cg = AgentCgroup::make();

    // The look-ups' timings go to stderr at debug level.
    std::env::set_var("RUST_LOG", "warn,portwatch::k8s::cri=debug");
    let sock = cd.sock.display().to_string();
    let absent = cd.dir.join("absent.sock").display().to_string();
    let budget = "500ms";
    let mut named = Tracer::start(&[
        "trace",
        "--json",
        "--cri-endpoint",
        &sock,
        "--detail-budget",
        budget,
    ]);
    // The endpoint as kubelet and crictl write it, on the flag and in
    // crictl's environment variable.
    let uri = format!("unix://{sock}");
    let mut named_uri = Tracer::start(&[
        "trace",
        "--json",
        "--cri-endpoint",
        &uri,
        "--detail-budget",
        budget,
    ]);
    let mut named_env = Tracer::start_env(
        &["trace", "--json", "--detail-budget", budget],
        &[("CONTAINER_RUNTIME_ENDPOINT", &uri)],
    );
    let mut by_names = Tracer::start(&[
        "trace",
        "--json",
        "--cri-endpoint",
        &sock,
        "--detail-budget",
        budget,
        "--namespace",
        POD_NAMESPACE,
        "--pod",
        POD_NAME,
        "--container",
        CONTAINER_NAME,
    ]);
    let mut other_ns = Tracer::start(&[
        "trace",
        "--json",
        "--cri-endpoint",
        &sock,
        "--namespace",
        "kube-system",
    ]);
    let mut unnamed = Tracer::start(&[
        "trace",
        "--json",
        "--cri-endpoint",
        &absent,
        "--detail-budget",
        budget,
    ]);
    let mut table = Tracer::start(&["trace", "--cri-endpoint", &sock, "--detail-budget", budget]);
    // The node agent labels its failure counters with the same names.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve = Tracer::start(&[
        "serve",
        "--listen",
        &listen,
        "--cri-endpoint",
        &uri,
        "--detail-budget",
        budget,
    ]);
    // trace and serve as a DaemonSet on cgroup v2 runs them: in a
    // container's cgroup of their own under kubepods, with a private cgroup
    // namespace there. The pod's cgroup then reads /../../pod<uid>/<id>
    // from inside.
    let mut private = Tracer::start_in_cgroupns(
        agent_cg.dir(),
        &[
            "trace",
            "--json",
            "--cri-endpoint",
            &sock,
            "--detail-budget",
            budget,
        ],
    );
    let port_private = free_port();
    let listen_private = format!("127.0.0.1:{port_private}");
    let serve_private = Tracer::start_in_cgroupns(
        agent_cg.dir(),
        &[
            "serve",
            "--listen",
            &listen_private,
            "--cri-endpoint",
            &uri,
            "--detail-budget",
            budget,
        ],
    );
    // And in a real container: podman --cgroupns=private, the node's
    // cgroup tree mounted read-only as the DaemonSet mounts it, the
    // runtime's socket directory mounted.
    let t0 = Instant::now();
    let pm = Podman::image(&cd.dir);
    let cd_dir = format!("{0}:{0}", cd.dir.display());
    let mut in_podman = pm.run(
        &["-v", &cd_dir],
        &[
            "trace",
            "--json",
            "--cri-endpoint",
            &sock,
            "--detail-budget",
            budget,
        ],
    );
    eprintln!("podman image and container up in {:?}", t0.elapsed());
    for t in [&private, &serve_private, &in_podman] {
        let errs = t.stderr.lock().unwrap();
        assert!(
            errs.iter()
                .any(|l| l.contains("cgroup namespace is private")
                    && l.contains("names from the CRI runtime, containerd")),
            "start-up says the namespace is private and names the runtime: {errs:?}"
        );
    }
    for t in [&named, &named_uri, &named_env] {
        let errs = t.stderr.lock().unwrap();
        assert!(
            errs.iter()
                .any(|l| l.contains("names from the CRI runtime, containerd") && l.contains(&sock)),
            "start-up names the runtime: {errs:?}"
        );
    }
    {
        let errs = unnamed.stderr.lock().unwrap();
        let notes: Vec<&String> = errs
            .iter()
            .filter(|l| l.contains("no CRI runtime answered"))
            .collect();
        assert_eq!(notes.len(), 1, "said once: {errs:?}");
        assert!(
            notes[0].contains(&absent) && notes[0].contains("names stay null"),
            "{notes:?}"
        );
        // Given explicitly, so said loudly, with when it is asked again.
        assert!(
            notes[0].contains("WARNING: pods: the CRI endpoint given")
                && notes[0].contains("asked again at most every 30 s"),
            "{notes:?}"
        );
    }

    // Two failures from the container, one from the pod's own cgroup.
    let ns_c = Netns::new("cric", RANGE);
    let ns_p = Netns::new("crip", RANGE);
    let c1 = failing_client_in(&ns_c, &container_cgroup, 2);
    let c2 = failing_client_in(&ns_p, &pod_cgroup, 1);

    let mut all = vec![];
    let container = (
        c1.pid,
        container_cgroup.as_str(),
        uid.as_str(),
        cid.as_str(),
    );
    let evs = container_events(&mut named, ns_c.inode, container, &mut all);
    eprintln!("named event: {}", evs[0]);
    let evs = named.events_in(ns_p.inode, 1, &mut all);
    assert_eq!(evs.len(), 1, "{all:?}");
    eprintln!("named event (pod's own cgroup): {}", evs[0]);
    assert_eq!(evs[0]["pid"], c2.pid);
    assert_eq!(evs[0]["pod"], pod_json(&uid, true, None), "{}", evs[0]);
    for t in [&mut named_uri, &mut named_env] {
        let mut all = vec![];
        let evs = t.events_in(ns_c.inode, 2, &mut all);
        assert_eq!(evs.len(), 2, "{all:?}");
        for ev in &evs {
            assert_eq!(ev["pod"], pod_json(&uid, true, Some(&cid)), "{ev}");
        }
        let evs = t.events_in(ns_p.inode, 1, &mut all);
        assert_eq!(evs.len(), 1, "{all:?}");
        assert_eq!(evs[0]["pod"], pod_json(&uid, true, None), "{}", evs[0]);
    }

    // From the private cgroup namespace: the same cgroup paths (the host's)
    // and names.
    let inside = private.read_in_cgroupns(&format!("/proc/{}/cgroup", c1.pid));
    assert!(
        inside
            .lines()
            .any(|l| l == format!("0::/../../pod{uid}/{cid}")),
        "the container's cgroup as the agent's namespace shows it: {inside:?}"
    );
    let mut all = vec![];
    let evs = container_events(&mut private, ns_c.inode, container, &mut all);
    eprintln!("event from a private cgroup namespace: {}", evs[0]);
    let evs = private.events_in(ns_p.inode, 1, &mut all);
    assert_eq!(evs.len(), 1, "{all:?}");
    assert_eq!(evs[0]["cgroup"], pod_cgroup.as_str(), "{}", evs[0]);
    assert_eq!(evs[0]["pod"], pod_json(&uid, true, None), "{}", evs[0]);
    // Under podman: the container's own cgroup is podman's
    // (/libpod_parent/libpod-<id>), so the pod's reads
    // /../../kubepods/... from inside.
    let mut all = vec![];
    let evs = in_podman.events_in(ns_c.inode, 2, &mut all);
    assert_eq!(evs.len(), 2, "{all:?}");
    for ev in &evs {
        assert_eq!(ev["pid"], c1.pid, "{ev}");
        assert_eq!(ev["cgroup"], container_cgroup.as_str(), "{ev}");
        assert_eq!(ev["pod"], pod_json(&uid, true, Some(&cid)), "{ev}");
        let h = &ev["detail"]["holders"][0];
        assert_eq!(h["pod"], pod_json(&uid, true, Some(&cid)), "{ev}");
    }
    eprintln!("event from podman --cgroupns=private: {}", evs[0]);
    let evs = in_podman.events_in(ns_p.inode, 1, &mut all);
    assert_eq!(evs.len(), 1, "{all:?}");
    assert_eq!(evs[0]["pod"], pod_json(&uid, true, None), "{}", evs[0]);
    let (st, errs) = in_podman.stop();
    assert!(st.success(), "portwatch under podman: {st}: {errs:?}");
    for l in errs.iter().filter(|l| l.contains("pods:")) {
        eprintln!("start-up under podman: {l}");
    }
    drop(pm);

    // The name filters: the container's two events, not the pod's own
    // (no container there), and nothing for another namespace.
    let mut all = vec![];
    let evs = by_names.events_in(ns_c.inode, 2, &mut all);
    assert_eq!(evs.len(), 2, "{all:?}");
    assert!(
        by_names.events_in(ns_p.inode, 0, &mut all).is_empty(),
        "{all:?}"
    );
    let mut all = vec![];
    assert!(
        other_ns.events_in(ns_c.inode, 0, &mut all).is_empty(),
        "{all:?}"
    );
    assert!(all.is_empty(), "{all:?}");

    // No runtime at the endpoint: uid and container id, null names.
    let mut all = vec![];
    let evs = unnamed.events_in(ns_c.inode, 2, &mut all);
    assert_eq!(evs.len(), 2, "{all:?}");
    for ev in &evs {
        assert_eq!(ev["pod"], pod_json(&uid, false, Some(&cid)), "{ev}");
        // Without the runtime, the holder's pod is still known by its ids.
        let h = &ev["detail"]["holders"][0];
        assert_eq!(h["pod"], pod_json(&uid, false, Some(&cid)), "{ev}");
    }
    let evs = unnamed.events_in(ns_p.inode, 1, &mut all);
    assert_eq!(evs[0]["pod"], pod_json(&uid, false, None), "{}", evs[0]);

    // The table's POD column: namespace/name.
    let netns = ns_c.inode.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let l = table.next_line(Duration::from_millis(200));
        // A failure's row (the netns's range written after the tracer
        // started has a sysctl row too).
        if let Some(l) = l.filter(|l| l.contains(&netns) && !l.contains(" sysctl  net.ipv4.")) {
            break l;
        }
        assert!(Instant::now() < deadline, "no table row for netns {netns}");
    };
    eprintln!("table row: {row}");
    assert!(
        row.ends_with(&format!(" {POD_NAMESPACE}/{POD_NAME}")),
        "{row}"
    );

    // serve: the pod's three failures under its namespace and name.
    let want = format!(
        r#"portwatch_failures_total{{kind="connect",errno="EADDRNOTAVAIL",cause="ports_exhausted",namespace="{POD_NAMESPACE}",pod="{POD_NAME}"}} 3"#
    );
    // The same from the serve in a private cgroup namespace.
    for listen in [&listen, &listen_private] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("curl")
                .args(["-s", "-m", "5", &format!("http://{listen}/metrics")])
                .output()
                .unwrap();
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if body.lines().any(|l| l == want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "serve's /metrics ({listen}) never had {want}:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // One runtime client in serve: its trace pipeline and its netns scan
    // share the look-up thread and the connection.
    let cri_threads = std::fs::read_dir(format!("/proc/{}/task", serve.pid()))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "pw-cri")
        })
        .count();
    assert_eq!(cri_threads, 1, "CRI look-up threads in serve");
    let (st, _) = serve.stop();
    assert!(st.success(), "serve: {st}");
    let (st, _) = serve_private.stop();
    assert!(st.success(), "serve in a private cgroupns: {st}");

    c1.finish();
    c2.finish();
    let (st, errs) = named.stop();
    assert!(st.success(), "{st}");
    for l in errs.iter().filter(|l| l.contains("pods:")) {
        eprintln!("start-up: {l}");
    }
    // One look-up per container and per pod: the second event of the
    // container came from the cache.
    let lookups: Vec<&String> = errs
        .iter()
        .filter(|l| l.contains("CRI look-up of"))
        .collect();
    for l in &lookups {
        eprintln!("{l}");
    }
    let of = |key: &str| lookups.iter().filter(|l| l.contains(key)).count();
    assert_eq!(of(&format!("Container(\"{cid}\") in")), 1, "{lookups:?}");
    assert_eq!(of(&format!("Pod(\"{uid}\") in")), 1, "{lookups:?}");
    for t in [
        named_uri, named_env, by_names, other_ns, unnamed, table, private,
    ] {
        let (st, _) = t.stop();
        assert!(st.success(), "{st}");
    }
    drop(agent_cg);
    drop(cd);
    // Nothing left behind in any hierarchy.
    for m in cgroup_mounts() {
        let p = m.join(pod_cgroup.trim_start_matches('/'));
        assert!(!p.exists(), "{} left behind", p.display());
    }
    eprintln!("whole test: {:?}", t_all.elapsed());
}
