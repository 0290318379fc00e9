//! Pod identity, as root and for real: the test makes cgroup v2 directories
//! with the names kubelet and the runtimes give pods (both cgroup drivers;
//! containerd, CRI-O and docker), moves a pwclient into each before it acts,
//! provokes EADDRNOTAVAIL in a test netns, and checks the event's `cgroup`
//! and `pod`. A host process gets `pod: null`.
//!
//! The directories live under a private parent (`/portwatch-test-PID-N/`
//! under the cgroup2 mount) so that a real `/kubepods` another test or a
//! runtime uses is never touched; the parser finds `kubepods` below any
//! parent, as on nested nodes.

mod common;

use std::fs;

use common::{cgroups::Cgroups, *};
use serde_json::{json, Value};

const RANGE: (u16, u16) = (42000, 42003); // 4 ports: even, so exactly 4 connects fit

/// A pod uid and a container id, different for every case.
fn ids(n: u32) -> (String, String) {
    let p = std::process::id();
    let uid = format!(
        "{p:08x}-{n:04x}-4abc-8def-{:012x}",
        0x0123_4567_89ab_u64 + n as u64
    );
    let cid = format!("{p:08x}{n:08x}{}", "c0ffee00".repeat(6));
    assert_eq!(cid.len(), 64);
    (uid, cid)
}

fn trace(extra: &[&str]) -> Tracer {
    let mut args = vec!["trace", "--json"];
    args.extend_from_slice(extra);
    Tracer::start(&args)
}

/// A pwclient in `ns`, moved into `cgroup` (None: stays a host process)
/// before it fills the range and fails once; it holds its sockets (and
/// stays alive) until finished. Returns it and its cgroup id.
fn failing_client(ns: &Netns, cgs: &Cgroups, cgroup: Option<&str>) -> (Client, Option<u64>) {
    let mut c = Client::start(
        ns,
        "--wait --hold listen 127.0.0.1 7100 connect 127.0.0.1 7100 5",
        None,
    );
    let id = cgroup.map(|p| cgs.enter(p, c.pid));
    c.go();
    let out = c.wait_line("holding");
    assert_eq!(
        out.iter().filter(|l| l.starts_with("ok ")).count(),
        4,
        "{out:?}"
    );
    assert_eq!(out.iter().filter(|l| *l == "err 99").count(), 1, "{out:?}");
    (c, id)
}

fn one_event(t: &mut Tracer, ns: &Netns, pid: u32, all: &mut Vec<Value>) -> Value {
    let evs = t.events_in(ns.inode, 1, all);
    assert_eq!(evs.len(), 1, "exactly the one failure: {evs:?}");
    let ev = evs.into_iter().next().unwrap();
    // Everything but `pod` as for any event (assert_common wants the host's
    // null there); the callers check `pod` themselves.
    let mut rest = ev.clone();
    rest["pod"] = Value::Null;
    assert_common(
        &rest,
        "connect",
        "EADDRNOTAVAIL",
        pid,
        "pwclient",
        ns,
        RANGE,
    );
    ev
}

#[test]
fn pod_uid_container_id_and_cgroup_for_every_layout() {
    let mut cgs = Cgroups::new();
    let mut t = trace(&[]);
    {
        let errs = t.stderr.lock().unwrap();
        assert!(
            errs.iter().any(|l| l
                .contains("pods: pod uid and container id come from cgroup paths")
                && l.contains("CRI runtime")),
            "start-up says where pod identity comes from: {errs:?}"
        );
    }
    let mut all = vec![];
    // (layout, uid, container id or None)
    let mut cases: Vec<(String, String, Option<String>)> = vec![];
    let mut n = 0;
    let mut next = || {
        n += 1;
        ids(n)
    };
    // cgroupfs driver, containerd (the layout real pods have here), each QoS.
    for qos in ["burstable/", "besteffort/", ""] {
        let (uid, cid) = next();
        cases.push((format!("kubepods/{qos}pod{uid}/{cid}"), uid, Some(cid)));
    }
    // cgroupfs driver, CRI-O.
    let (uid, cid) = next();
    cases.push((
        format!("kubepods/burstable/pod{uid}/crio-{cid}"),
        uid,
        Some(cid),
    ));
    // systemd driver: containerd, CRI-O, docker; burstable, besteffort, guaranteed.
    for (qos_slice, pod_prefix, rt) in [
        (
            "kubepods-burstable.slice/",
            "kubepods-burstable-pod",
            "cri-containerd",
        ),
        (
            "kubepods-besteffort.slice/",
            "kubepods-besteffort-pod",
            "crio",
        ),
        ("", "kubepods-pod", "docker"),
    ] {
        let (uid, cid) = next();
        cases.push((
            format!(
                "kubepods.slice/{qos_slice}{pod_prefix}{}.slice/{rt}-{cid}.scope",
                uid.replace('-', "_")
            ),
            uid,
            Some(cid),
        ));
    }
    // containerd with a systemd-style parent under the cgroupfs driver.
    let (uid, cid) = next();
    cases.push((
        format!(
            "kubepods-besteffort-pod{}.slice:cri-containerd:{cid}",
            uid.replace('-', "_")
        ),
        uid,
        Some(cid),
    ));
    // A process in the pod's own cgroup: the pod, no container.
    let (uid, _) = next();
    cases.push((format!("kubepods/burstable/pod{uid}"), uid, None));

    // Every netns stays until the end: a deleted one's inode is free for the
    // next, and events are matched to their case by inode.
    let mut netns = vec![];
    for (layout, uid, cid) in &cases {
        let path = cgs.make(layout);
        netns.push(Netns::new("pod", RANGE));
        let ns = netns.last().unwrap();
        let (c, id) = failing_client(ns, &cgs, Some(&path));
        let ev = one_event(&mut t, ns, c.pid, &mut all);
        assert_eq!(ev["cgroup_id"], id.unwrap(), "{layout}: {ev}");
        assert_eq!(ev["cgroup"], path.as_str(), "{layout}: {ev}");
        assert_eq!(
            ev["pod"],
            json!({"namespace": null, "name": null, "uid": uid,
                   "container": null, "container_id": cid}),
            "{layout}: {ev}"
        );
        c.finish();
    }

    // A host process: no pod, its cgroup path still reported (ours: the
    // client inherits the test's cgroup).
    host_process_event(&mut t, "host", &cgs, &mut all);

    let (st, _) = t.stop();
    assert!(st.success(), "{st}");
}

/// A failure from a host process (in the test's own cgroup) in a fresh
/// netns `name`: no pod, and the cgroup as the host names it.
fn host_process_event(t: &mut Tracer, name: &str, cgs: &Cgroups, all: &mut Vec<Value>) {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    let ns = Netns::new(name, RANGE);
    let (c, _) = failing_client(&ns, cgs, None);
    let ev = one_event(t, &ns, c.pid, all);
    assert!(ev["pod"].is_null(), "{ev}");
    assert_eq!(ev["cgroup"], own.as_str(), "{ev}");
    c.finish();
}

/// portwatch in a private cgroup namespace, as a DaemonSet on cgroup v2
/// gets one from containerd: moved into a cgroup of its own
/// (`<parent>/agent/portwatch`) and unshared there (`unshare -C`), no
/// container. Pods'
/// /proc/PID/cgroup then read `/../../kubepods/...` (a pod under the same
/// parent: the namespace root's names are needed) or `/../../../<other
/// parent>/...` (the escape reaches the hierarchy's root); the mount's root
/// field is `/../../..`. Every event still names the pod, with the cgroup
/// path the host sees, and the holder of the ports too.
#[test]
fn pods_resolved_from_a_private_cgroup_namespace() {
    let mut cgs = Cgroups::new();
    let mut other = Cgroups::new();
    let agent = cgs.make("agent/portwatch");
    // The holder look-up must finish, also under TCG in the VM guests (as
    // in cause.rs).
    let mut t = Tracer::start_in_cgroupns(
        &cgs.root.join(agent.trim_start_matches('/')),
        &["trace", "--json", "--detail-budget", "5s"],
    );
    {
        let errs = t.stderr.lock().unwrap();
        assert!(
            errs.iter().any(|l| l
                .contains("pods: pod uid and container id come from cgroup paths under")
                && l.contains("cgroup namespace is private")
                && l.contains("root is /../../.. from here")),
            "start-up says the namespace is private and where the mount sits: {errs:?}"
        );
    }
    let mut all = vec![];
    let mut cases: Vec<(String, String, Option<String>, &str)> = vec![];
    // Under the agent's own parent: /../../kubepods/... from inside.
    let (uid, cid) = ids(200);
    cases.push((
        cgs.make(&format!("kubepods/burstable/pod{uid}/{cid}")),
        uid,
        Some(cid),
        "/../../kubepods/burstable/pod",
    ));
    let (uid, _) = ids(201);
    cases.push((
        cgs.make(&format!("kubepods/burstable/pod{uid}")),
        uid,
        None,
        "/../../kubepods/burstable/pod",
    ));
    // Under another parent: the escape reaches the hierarchy's root.
    let (uid, cid) = ids(202);
    cases.push((
        other.make(&format!("kubepods/besteffort/pod{uid}/{cid}")),
        uid,
        Some(cid),
        "/../../../portwatch-test-",
    ));
    let (uid, cid) = ids(203);
    cases.push((
        other.make(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        )),
        uid,
        Some(cid),
        "/../../../portwatch-test-",
    ));

    let mut netns = vec![];
    for (path, uid, cid, seen_as) in &cases {
        netns.push(Netns::new("cgns", RANGE));
        let ns = netns.last().unwrap();
        let (c, id) = failing_client(ns, &cgs, Some(path));
        // What the agent's namespace makes of the client's cgroup.
        let inside = t.read_in_cgroupns(&format!("/proc/{}/cgroup", c.pid));
        assert!(
            inside
                .lines()
                .any(|l| l.starts_with(&format!("0::{seen_as}"))),
            "{path} as the agent's namespace shows it: {inside:?}"
        );
        let ev = one_event(&mut t, ns, c.pid, &mut all);
        assert_eq!(ev["cgroup_id"], id.unwrap(), "{path}: {ev}");
        assert_eq!(ev["cgroup"], path.as_str(), "{path}: {ev}");
        assert_eq!(
            ev["pod"],
            json!({"namespace": null, "name": null, "uid": uid,
                   "container": null, "container_id": cid}),
            "{path}: {ev}"
        );
        // The holder of the ports (the client itself), found through its
        // /proc/PID/cgroup alone.
        let h = &ev["detail"]["holders"][0];
        assert_eq!(h["pid"], c.pid, "{ev}");
        assert_eq!(h["pod"], ev["pod"], "{ev}");
        c.finish();
    }

    // A host process: no pod, its cgroup the host's path of it.
    host_process_event(&mut t, "cgnsh", &cgs, &mut all);

    let (st, _) = t.stop();
    assert!(st.success(), "{st}");
    drop(other);
}

/// --pod (uid prefix), --container (id prefix), --host and --namespace, on
/// the same two failures: one from a pod, one from the host.
#[test]
fn pod_filters_select_by_uid_id_and_host() {
    let mut cgs = Cgroups::new();
    let (uid, cid) = ids(100);
    let path = cgs.make(&format!("kubepods/besteffort/pod{uid}/{cid}"));
    let by_pod = trace(&["--pod", &uid[..8]]);
    let by_container = trace(&["--container", &cid[..12], "--errno", "EADDRNOTAVAIL"]);
    let host_only = trace(&["--host"]);
    let by_namespace = trace(&["--namespace", "default"]);
    let wrong_pod = trace(&["--pod", "ffffffff"]);
    let mut tracers = [by_pod, by_container, host_only, by_namespace, wrong_pod];

    let pod_ns = Netns::new("fpod", RANGE);
    let host_ns = Netns::new("fhost", RANGE);
    let (pc, _) = failing_client(&pod_ns, &cgs, Some(&path));
    let (hc, _) = failing_client(&host_ns, &cgs, None);

    // (pod events, host events) each tracer must show.
    let want = [(1, 0), (1, 0), (0, 1), (0, 0), (0, 0)];
    for (t, (np, nh)) in tracers.iter_mut().zip(want) {
        let mut all = vec![];
        let p = t.events_in(pod_ns.inode, np, &mut all);
        let h = t.events_in(host_ns.inode, nh, &mut all);
        assert_eq!((p.len(), h.len()), (np, nh), "{all:?}");
        for ev in &p {
            assert_eq!(ev["pid"], pc.pid, "{ev}");
            assert_eq!(ev["pod"]["uid"], uid.as_str(), "{ev}");
        }
        for ev in &h {
            assert_eq!(ev["pid"], hc.pid, "{ev}");
            assert!(ev["pod"].is_null(), "{ev}");
        }
    }
    pc.finish();
    hc.finish();
    for t in tracers {
        let (st, _) = t.stop();
        assert!(st.success(), "{st}");
    }
}
