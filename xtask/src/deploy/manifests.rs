//! The manifests and the alert rules: promtool, kubernetes-validate, and the
//! DaemonSet read back as the podman options it stands for.

use super::*;

/// The manifests `kubectl apply -f deploy/kubernetes/` takes: every YAML
/// file directly in the folder but the Prometheus rule file.
pub(crate) fn manifests() -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(deploy_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "prometheus-rules.yaml"))
        .collect();
    v.sort();
    ensure!(!v.is_empty(), "no manifest in {}", deploy_dir().display());
    Ok(v)
}

/// Every document of a YAML file, as JSON (through the venv's PyYAML).
pub(crate) fn yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let out = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .context("running the venv's python")?;
    ensure!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice::<Vec<Value>>(&out.stdout)?)
}

pub(crate) fn rules() -> Result<()> {
    let dir = deploy_dir();
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("prometheus-rules.yaml")))?;
    run(Command::new("promtool")
        .current_dir(dir.join("tests"))
        .args(["test", "rules", "prometheus-rules.test.yaml"]))
}

pub(crate) fn validate() -> Result<()> {
    let kv = venv().join("bin/kubernetes-validate");
    for m in manifests()? {
        for v in K8S_VERSIONS {
            run(Command::new(&kv)
                .args(["--strict", "--quiet", "--kubernetes-version", v])
                .arg(&m))?;
        }
    }
    // The validator is strict for real: one unknown field in the DaemonSet's
    // container makes it fail.
    let ds = daemonset_file()?;
    let text = fs::read_to_string(&ds)?;
    let broken = text.replacen("          imagePullPolicy:", "          imagePulPolicy:", 1);
    ensure!(
        broken != text,
        "no imagePullPolicy line in {}",
        ds.display()
    );
    let tmp = workspace_root().join("target/deploy-broken.yaml");
    fs::write(&tmp, broken)?;
    let st = Command::new(&kv)
        .args([
            "--strict",
            "--quiet",
            "--kubernetes-version",
            K8S_VERSIONS[0],
        ])
        .arg(&tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(
        !st.success(),
        "kubernetes-validate accepted an unknown field"
    );
    eprintln!("xtask: kubernetes-validate rejects an unknown field, as it should");
    prometheus_rule_wrap()?;

    // What the image, the Service and the scrape annotations must agree on.
    let spec = DaemonSet::read()?;
    let version = image::workspace_version()?;
    ensure!(
        spec.image == format!("{}:{version}", image::REPO),
        "the DaemonSet runs {} but the workspace version is {version}",
        spec.image
    );
    ensure!(
        spec.args.iter().any(|a| a == "--listen=:9477"),
        "the DaemonSet does not listen on :9477: {:?}",
        spec.args
    );
    let svc = all_docs()?
        .into_iter()
        .find(|d| d["kind"] == "Service")
        .context("no Service in deploy/kubernetes/")?;
    let port = &svc["spec"]["ports"][0];
    ensure!(
        port["name"] == "metrics" && port["port"] == 9477,
        "the Service's port is not `metrics` 9477: {port}"
    );
    ensure!(
        svc["metadata"]["annotations"]["prometheus.io/port"] == "9477",
        "the Service's prometheus.io/port annotation is not 9477"
    );
    Ok(())
}

/// docs/deploy.md's step 3 for the Prometheus Operator: the rule file wrapped into
/// a PrometheusRule (its `groups:` indented under `spec:`), piped to kubectl.
pub(crate) const PROMETHEUS_RULE_WRAP: &str = "{ printf 'apiVersion: monitoring.coreos.com/v1\\nkind: PrometheusRule\\nmetadata:\\n  name: portwatch\\n  namespace: portwatch\\nspec:\\n'; sed 's/^/  /' deploy/kubernetes/prometheus-rules.yaml; }";

/// The wrap gives a PrometheusRule whose spec.groups are the rule file's
/// groups, and docs/deploy.md shows it as tested here.
pub(crate) fn prometheus_rule_wrap() -> Result<()> {
    let out = Command::new("sh")
        .current_dir(workspace_root())
        .arg("-c")
        .arg(PROMETHEUS_RULE_WRAP)
        .output()?;
    ensure!(out.status.success(), "the PrometheusRule wrap failed");
    let tmp = workspace_root().join("target/deploy-prometheusrule.yaml");
    fs::write(&tmp, &out.stdout)?;
    let wrapped = yaml_docs(&tmp)?;
    let plain = yaml_docs(&deploy_dir().join("prometheus-rules.yaml"))?;
    ensure!(
        wrapped.len() == 1
            && wrapped[0]["kind"] == "PrometheusRule"
            && wrapped[0]["spec"]["groups"] == plain[0]["groups"],
        "the PrometheusRule wrap does not carry the rule file's groups"
    );
    let doc = fs::read_to_string(workspace_root().join("docs/deploy.md"))?;
    ensure!(
        doc.contains(PROMETHEUS_RULE_WRAP),
        "docs/deploy.md does not show the PrometheusRule wrap the test checks"
    );
    Ok(())
}

pub(crate) fn all_docs() -> Result<Vec<Value>> {
    let mut v = vec![];
    for m in manifests()? {
        v.extend(yaml_docs(&m)?);
    }
    Ok(v)
}

pub(crate) fn daemonset_file() -> Result<PathBuf> {
    for m in manifests()? {
        if yaml_docs(&m)?.iter().any(|d| d["kind"] == "DaemonSet") {
            return Ok(m);
        }
    }
    bail!("no DaemonSet in deploy/kubernetes/")
}

/// A hostPath volume mounted into the container.
#[derive(Debug)]
pub(crate) struct HostMount {
    pub(crate) host: String,
    pub(crate) container: String,
    pub(crate) read_only: bool,
    pub(crate) kind: String,
}

/// What the podman run takes from the DaemonSet.
#[derive(Debug)]
pub(crate) struct DaemonSet {
    pub(crate) image: String,
    pub(crate) args: Vec<String>,
    pub(crate) caps: Vec<String>,
    pub(crate) drop_all: bool,
    pub(crate) host_network: bool,
    pub(crate) host_pid: bool,
    pub(crate) read_only_root: bool,
    pub(crate) run_as_root: bool,
    pub(crate) seccomp: String,
    pub(crate) mounts: Vec<HostMount>,
}

impl DaemonSet {
    pub(crate) fn read() -> Result<DaemonSet> {
        let doc = all_docs()?
            .into_iter()
            .find(|d| d["kind"] == "DaemonSet")
            .context("no DaemonSet in deploy/kubernetes/")?;
        Self::from_doc(&doc)
    }

    pub(crate) fn from_doc(doc: &Value) -> Result<DaemonSet> {
        let pod = &doc["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().context("no containers")?;
        ensure!(containers.len() == 1, "expected one container");
        let c = &containers[0];
        let sc = &c["securityContext"];
        ensure!(
            sc["privileged"] != true,
            "the DaemonSet's container is privileged"
        );
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut volumes = BTreeMap::new();
        for v in pod["volumes"].as_array().into_iter().flatten() {
            if let (Some(name), Some(path)) = (v["name"].as_str(), v["hostPath"]["path"].as_str()) {
                let kind = v["hostPath"]["type"].as_str().unwrap_or("").to_string();
                volumes.insert(name.to_string(), (path.to_string(), kind));
            }
        }
        let mut mounts = vec![];
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().context("volumeMount without a name")?;
            let (host, kind) = volumes
                .get(name)
                .with_context(|| format!("volume {name} is no hostPath"))?
                .clone();
            mounts.push(HostMount {
                host,
                container: m["mountPath"].as_str().context("no mountPath")?.to_string(),
                read_only: m["readOnly"] == true,
                kind,
            });
        }
        Ok(DaemonSet {
            image: c["image"].as_str().context("no image")?.to_string(),
            args: strings(&c["args"]),
            caps: strings(&sc["capabilities"]["add"]),
            drop_all: strings(&sc["capabilities"]["drop"]) == ["ALL"],
            host_network: pod["hostNetwork"] == true,
            host_pid: pod["hostPID"] == true,
            read_only_root: sc["readOnlyRootFilesystem"] == true,
            run_as_root: sc["runAsUser"] == 0,
            seccomp: sc["seccompProfile"]["type"]
                .as_str()
                .unwrap_or("Unconfined")
                .to_string(),
            mounts,
        })
    }

    /// `podman run` options that give the container what a kubelet would,
    /// with the capabilities `caps`.
    pub(crate) fn podman_args(&self, caps: &[String]) -> Result<Vec<String>> {
        let mut a: Vec<String> = vec![
            "--runtime".into(),
            "runc".into(),
            // This machine's root may not raise these (no CAP_SYS_RESOURCE).
            "--ulimit".into(),
            "nofile=1024:1024".into(),
            "--ulimit".into(),
            "nproc=1024:1024".into(),
        ];
        ensure!(
            self.host_network && self.host_pid,
            "expected hostNetwork and hostPID"
        );
        a.extend(["--network", "host", "--pid", "host"].map(String::from));
        ensure!(self.drop_all, "expected capabilities.drop [ALL]");
        a.extend(["--cap-drop".into(), "ALL".into()]);
        for c in caps {
            a.extend(["--cap-add".into(), c.clone()]);
        }
        if self.read_only_root {
            a.push("--read-only".into());
        }
        if self.run_as_root {
            a.extend(["--user".into(), "0".into()]);
        }
        match self.seccomp.as_str() {
            // podman's own default profile is its RuntimeDefault.
            "RuntimeDefault" => {}
            "Unconfined" => a.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
            other => bail!("seccompProfile {other}: not handled by the podman test"),
        }
        for m in &self.mounts {
            let host = Path::new(&m.host);
            match m.kind.as_str() {
                "DirectoryOrCreate" => fs::create_dir_all(host)?,
                "Directory" | "" => ensure!(
                    host.is_dir(),
                    "hostPath {} (type Directory) does not exist on this machine",
                    m.host
                ),
                other => bail!("hostPath type {other}: not handled by the podman test"),
            }
            let ro = if m.read_only { ":ro" } else { "" };
            a.extend(["--volume".into(), format!("{}:{}{ro}", m.host, m.container)]);
        }
        Ok(a)
    }

    /// The container's arguments, with the listen address moved to
    /// loopback (test traffic stays on loopback) and faster timers.
    pub(crate) fn args_for_test(&self, port: u16) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                if a.starts_with("--listen") {
                    format!("--listen=127.0.0.1:{port}")
                } else if a.starts_with("--scan-interval") {
                    "--scan-interval=1s".into()
                } else if a.starts_with("--check-interval") {
                    "--check-interval=2s".into()
                } else {
                    a.clone()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "kind": "DaemonSet",
            "spec": {"template": {"spec": {
                "hostNetwork": true,
                "hostPID": true,
                "containers": [{
                    "name": "portwatch",
                    "image": "localhost/portwatch:0.1.0",
                    "args": ["serve", "--listen=:9477", "--scan-interval=10s", "--max-destinations=20"],
                    "securityContext": {
                        "runAsUser": 0,
                        "readOnlyRootFilesystem": true,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "NET_ADMIN"]}
                    },
                    "volumeMounts": [
                        {"name": "cgroup", "mountPath": "/sys/fs/cgroup", "readOnly": true},
                        {"name": "tmp", "mountPath": "/x"}
                    ]
                }],
                "volumes": [
                    {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}},
                    {"name": "tmp", "hostPath": {"path": "/tmp"}}
                ]
            }}}
        })
    }

    #[test]
    fn podman_options_come_from_the_daemonset() {
        let ds = DaemonSet::from_doc(&doc()).unwrap();
        assert_eq!(ds.caps, ["SYS_ADMIN", "NET_ADMIN"]);
        let a = ds.podman_args(&ds.caps).unwrap().join(" ");
        assert!(a.contains("--network host --pid host --cap-drop ALL --cap-add SYS_ADMIN --cap-add NET_ADMIN --read-only --user 0"), "{a}");
        assert!(
            a.contains("--volume /sys/fs/cgroup:/sys/fs/cgroup:ro --volume /tmp:/x"),
            "{a}"
        );
        assert!(!a.contains("privileged") && !a.contains("seccomp"), "{a}");
        assert_eq!(
            ds.args_for_test(1234),
            [
                "serve",
                "--listen=127.0.0.1:1234",
                "--scan-interval=1s",
                "--max-destinations=20"
            ]
        );
    }

    #[test]
    fn a_privileged_daemonset_is_refused() {
        let mut d = doc();
        d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] =
            json!(true);
        assert!(DaemonSet::from_doc(&d).is_err());
    }
}
