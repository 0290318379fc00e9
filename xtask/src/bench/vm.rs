//! `cargo xtask bench --vm`: what `portwatch trace` costs on the kernel a
//! production node runs, where fexit and kprobes exist (this machine's
//! kernel has tracepoints only), measured in one boot of the VM stage's
//! Debian 6.12 guest under qemu TCG with `-icount shift=0,sleep=off`: the
//! guest's clock counts executed instructions, so rounds repeat to about
//! 0.1 % and a ratio is the work a tracer adds.
//!
//! In the guest: rounds of no tracer / `--backend fexit` / `kprobe` /
//! `tracepoint`, round-robin, each running `pwbench getppid` and `pwbench
//! connect` in a netns; then start-ups of `portwatch trace --backend fexit`
//! and libbpf-tools' `tcpconnect`, alternating, with their peak RSS. The
//! guest reports `PWB-*` lines over the serial console (vmreport.rs reads
//! them). Markdown on stdout, JSON in target/bench/vm-results.json, and the
//! generated section of docs/benchmarks.md. Nothing is asserted on numbers.

use super::vmreport::*;
use super::*;
use crate::vm;

/// On top of the VM stage's packages: the lean reference tool.
const BENCH_VM_PKGS: &[&str] = &["libbpf-tools"];
const TCPCONNECT: &str = "/usr/sbin/tcpconnect";
/// Only what portwatch loads on demand on a real node (tcp_diag for its
/// socket-table reads): no netfilter or IPVS module, whose hooks would be
/// in every configuration's connect path.
const MODULES: &[&str] = &["tcp_diag"];
const KERNEL: &str = "6.12";
const ICOUNT: &[&str] = &["-icount", "shift=0,sleep=off"];
const GUEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const PORT_RANGE: &str = "20000 59999";

const BPFTRACE_SKIPPED: &str = "skipped: Debian's bpftrace 0.17 links LLVM 14 and clang \
    (about 200 MiB of libraries), some 50 times the rest of the initramfs, which the guest \
    holds in RAM and unpacks at every boot under emulation; its host-bench numbers are above";

pub(crate) struct VmSizes {
    pub(crate) warmup_rounds: usize,
    pub(crate) rounds: usize,
    pub(crate) getppid_n: u64,
    pub(crate) connect_n: u64,
    pub(crate) startups: usize,
}

impl VmSizes {
    pub(crate) fn new(quick: bool) -> VmSizes {
        if quick {
            VmSizes {
                warmup_rounds: 1,
                rounds: 2,
                getppid_n: 100_000,
                connect_n: 1_000,
                startups: 2,
            }
        } else {
            VmSizes {
                warmup_rounds: 1,
                rounds: 5,
                getppid_n: 200_000,
                connect_n: 2_000,
                startups: 3,
            }
        }
    }
}

pub fn bench_vm(opts: Opts) -> Result<()> {
    let t_all = Instant::now();
    let sz = VmSizes::new(opts.quick);
    crate::setup(crate::Need::Build)?;
    let mut pkgs = vm::VM_PKGS.to_vec();
    pkgs.extend(BENCH_VM_PKGS);
    crate::apt_install(&crate::missing_packages(&pkgs))?;
    let (pw, pwbench) = super::build_portwatch_and_pwbench()?;

    let k = vm::select(KERNEL)?[0];
    let kdir = vm::unpack_kernel(k)?;
    let vmlinuz = vm::find_vmlinuz(&kdir)?;
    let bench_dir = crate::workspace_root().join("target/bench");
    let dir = bench_dir.join("vm");
    fs::create_dir_all(&dir)?;
    let mut g = vm::GuestRoot::new(&dir, &["/sbin/ip", "/bin/dash"])?;
    g.program(&pw, Path::new("/pw/portwatch"), true)?;
    g.program(&pwbench, Path::new("/pw/pwbench"), true)?;
    g.program(Path::new(TCPCONNECT), Path::new(TCPCONNECT), false)?;
    let mods = g.modules(&kdir, MODULES)?;
    let initrd = g.pack(&guest_init(&sz, &mods), &dir, &format!("{} bench", k.name))?;

    let t_guest = Instant::now();
    let mut rep = VmReport::default();
    let finished = vm::boot_serial(
        &format!("{} bench", k.name),
        &vmlinuz,
        &initrd,
        &dir,
        ICOUNT,
        GUEST_TIMEOUT,
        |l| {
            eprintln!("[{}] {l}", k.name);
            rep.line(l);
        },
    )?;
    let guest_s = t_guest.elapsed().as_secs_f64();
    if !finished {
        rep.problems
            .push(format!("timed out after {} s", GUEST_TIMEOUT.as_secs()));
    }
    if let Some(why) = rep.failure() {
        bail!(
            "bench --vm: {why} (console log: {})",
            dir.join("console.log").display()
        );
    }

    let qemu = crate::output(Command::new("qemu-system-x86_64").arg("--version"))
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "qemu".into());
    let mut flags = vm::qemu_args(ICOUNT);
    flags.retain(|f| {
        !matches!(
            f.as_str(),
            "-nographic" | "-nodefaults" | "-serial" | "stdio"
        )
    });
    let meta = Meta {
        date: date_utc(),
        host: machine(),
        qemu,
        qemu_flags: flags.join(" "),
        rounds: sz.rounds,
        warmup_rounds: sz.warmup_rounds,
        getppid_n: sz.getppid_n,
        connect_n: sz.connect_n,
        startups: sz.startups,
        wall_s: t_all.elapsed().as_secs_f64(),
        guest_s,
        bpftrace_skipped: BPFTRACE_SKIPPED.into(),
    };
    let md = markdown(&rep, &meta);
    println!("{md}");
    let json_path = opts
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join("vm-results.json"));
    let mut j = json(&rep, &meta);
    j["host_machine"] = machine_json();
    fs::write(&json_path, serde_json::to_string_pretty(&j)? + "\n")?;
    let doc_path = crate::workspace_root().join("docs/benchmarks.md");
    let doc = fs::read_to_string(&doc_path).unwrap_or_default();
    let body =
        format!("## What `trace` costs on a production kernel (VM, instruction counts)\n\n{md}\n");
    fs::write(&doc_path, replace_section(&doc, &body))?;
    vmreport::write_summary(
        vmreport::SUMMARY_VM_BEGIN,
        vmreport::SUMMARY_VM_END,
        &vmreport::summary_markdown(
            &format!(
                "A Debian guest (kernel {}, QEMU TCG with `-icount`: instruction counts), `portwatch trace --backend fexit` next to libbpf-tools' `tcpconnect`, {}:",
                rep.kernel.as_deref().unwrap_or("?"),
                meta.date
            ),
            &rep.targets(meta.warmup_rounds),
        ),
    )?;
    eprintln!(
        "xtask: bench --vm: wrote {} and the generated section of {} ({:.0} s in all)",
        json_path.display(),
        doc_path.display(),
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The bench guest's PID 1 (dash). Every result is one `PWB-*` line.
pub(crate) fn guest_init(sz: &VmSizes, mods: &[String]) -> String {
    let mut s = String::new();
    s += "#!/bin/sh\n";
    s += "export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root\n";
    s += "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n";
    s += "chmod 1777 /tmp; mount -t tmpfs run /run; mkdir -p /run/netns /root\n";
    s += "mount -t cgroup2 cgroup2 /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf\n";
    s += "mkdir -p /dev/pts; mount -t devpts devpts /dev/pts\n";
    for m in mods {
        s += &format!("insmod /lib/modules/{m}.ko || echo PWB-FAIL module {m}\n");
    }
    s += "/sbin/ip link set lo up\n";
    s += "echo PWB-KERNEL $(uname -r)\n";
    // The workload's netns: loopback, a wide even port range.
    s += "/sbin/ip netns add bench\n";
    s += "/sbin/ip netns exec bench /sbin/ip link set lo up\n";
    s += &format!(
        "/sbin/ip netns exec bench sh -c 'echo {PORT_RANGE} > /proc/sys/net/ipv4/ip_local_port_range'\n"
    );
    s += "echo PWB-RANGE $(/sbin/ip netns exec bench cat /proc/sys/net/ipv4/ip_local_port_range)\n";
    s += r#"PW=
start_pw() {
  rm -f /tmp/pw.err
  /pw/portwatch trace --backend $1 --json > /tmp/pw-$1.out 2> /tmp/pw.err &
  PW=$!
  i=0
  while ! grep -q "portwatch: attached" /tmp/pw.err 2>/dev/null; do
    if ! kill -0 $PW 2>/dev/null; then
      echo "PWB-FAIL portwatch --backend $1 exited before attaching: $(tr '\n' ' ' < /tmp/pw.err)"
      PW=; return 1
    fi
    i=$((i+1))
    if [ $i -gt 12000 ]; then
      echo "PWB-FAIL portwatch --backend $1 did not attach"; kill -9 $PW; PW=; return 1
    fi
    sleep 0.01
  done
  grep ' hook: ' /tmp/pw.err | while read -r l; do echo "PWB-HOOK config=$1 $l"; done
}
stop_pw() {
  [ -n "$PW" ] || return
  echo "PWB-HWM config=$1 round=$2 kb=$(grep VmHWM /proc/$PW/status | tr -dc 0-9)"
  kill -INT $PW; wait $PW; rc=$?
  [ $rc -eq 0 ] || echo "PWB-FAIL portwatch --backend $1 ended with rc=$rc: $(tr '\n' ' ' < /tmp/pw.err)"
  rm -f /tmp/pw-$1.out; PW=
}
"#;
    s += &format!(
        "work() {{\n  \
         echo \"PWB-RUN round=$2 config=$1 $(/sbin/ip netns exec bench /pw/pwbench getppid {})\"\n  \
         echo \"PWB-RUN round=$2 config=$1 $(/sbin/ip netns exec bench /pw/pwbench connect 7000 {})\"\n}}\n",
        sz.getppid_n, sz.connect_n
    );
    let total = sz.warmup_rounds + sz.rounds;
    for round in 0..total {
        for i in 0..CONFIGS.len() {
            let c = CONFIGS[(i + round) % CONFIGS.len()].0;
            if c == "none" {
                s += &format!("work none {round}\n");
            } else {
                s += &format!("start_pw {c} && {{ work {c} {round}; stop_pw {c} {round}; }}\n");
            }
        }
    }
    // Start-up work and peak RSS, alternating which tool goes first.
    let pw_start = format!(
        "echo \"PWB-STARTUP tool=portwatch i=$i $(/pw/pwbench startup 'portwatch: attached' {HOLD_MS} /pw/portwatch trace --backend fexit)\""
    );
    let tc_start = format!(
        "echo \"PWB-STARTUP tool=tcpconnect i=$i $(/pw/pwbench startup DPORT {HOLD_MS} {TCPCONNECT})\""
    );
    // One more start, with portwatch's own account of its phases.
    s += "RUST_LOG=portwatch::startup=debug /pw/portwatch trace --backend fexit > /dev/null 2> /tmp/phases.err & P=$!\n";
    // No polling while it starts: on the icount clock the shell's work
    // would count among portwatch's phases. Idle time costs nothing.
    s += "sleep 3; grep -q 'portwatch: attached' /tmp/phases.err || echo \"PWB-FAIL the logged start did not attach\"\n";
    s += "kill -INT $P; wait $P\n";
    s += "grep 'portwatch::startup' /tmp/phases.err | grep ' ms, RSS ' | while read -r l; do echo \"PWB-PHASE $l\"; done\n";
    for i in 1..=sz.startups {
        s += &format!("i={i}\n");
        if i % 2 == 1 {
            s += &format!("{pw_start}\n{tc_start}\n");
        } else {
            s += &format!("{tc_start}\n{pw_start}\n");
        }
    }
    s += "echo PWB-DONE\n";
    s += "poweroff -f\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_runs_every_configuration_each_round_in_rotated_order() {
        let sz = VmSizes::new(true);
        let init = guest_init(&sz, &["inet_diag".into(), "tcp_diag".into()]);
        let order: Vec<&str> = init
            .lines()
            .filter_map(|l| {
                l.strip_prefix("work none ")
                    .map(|_| "none")
                    .or_else(|| l.strip_prefix("start_pw ")?.split_whitespace().next())
            })
            .collect();
        assert_eq!(order.len(), CONFIGS.len() * (sz.warmup_rounds + sz.rounds));
        assert_eq!(order[..4], ["none", "fexit", "kprobe", "tracepoint"]);
        assert_eq!(order[4..8], ["fexit", "kprobe", "tracepoint", "none"]);
        assert!(init.contains("insmod /lib/modules/inet_diag.ko"));
        assert!(init.contains("pwbench getppid 100000"));
        assert!(init.contains("pwbench connect 7000 1000"));
        assert_eq!(init.matches("PWB-STARTUP tool=tcpconnect").count(), 2);
        assert_eq!(init.matches("$(/pw/pwbench startup").count(), 4);
        assert!(init.trim_end().ends_with("poweroff -f"));
    }
}
