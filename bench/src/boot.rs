//! `vmlet-bench boot`: the time from `vmlet-launcher run`'s start to the guest's DHCP lease, split into the
//! launcher's phases, against a bare `qemu-system-x86_64` + dnsmasq boot of the same guest on a bridge; and the
//! resident memory of every process of the VM pod.
//!
//! The launcher runs as a pod runs it (as `tests/tests/launcher.rs` does): in a pod network namespace whose `eth0`
//! is a veth to a node namespace holding the gateway, as PID 1 of a PID namespace of its own. Its phases come from
//! the time stamps of its own log lines, the lease from its guest's console log, polled every few milliseconds; the
//! bare boot's lease is seen the same way. One cold run (an empty capability cache) comes first and leaves the cache
//! warm for the others; then launcher and bare boots take turns, one guest at a time.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail, ensure};
use serde::Serialize;
use vmlet_testkit::{Child, GuestImage, ScratchDir, guest_image};

use crate::bare::{BareGuest, TEST_GUEST_MIB};
use crate::pidns::{self, ProcessMemory};
use crate::pod::{GATEWAY, LauncherMarks, LauncherPod, POD_ADDRESS, VM_NAME};
use crate::procfs::has_exited;
use crate::stats::taking_turns;
use crate::table;
use crate::timeline::{LogEvents, ms_between};

#[derive(clap::Args)]
pub struct Args {
    /// Boots of each kind (the launcher with a warm capability cache, bare QEMU), taking turns.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// The accelerator of both: tcg, or kvm where the host really has it.
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    accel: String,
    /// The bound on one boot, from its start to the guest's `ready` record, in seconds.
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// The guest also pings the gateway before `ready`: both setups must really carry its traffic.
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 vmlet.ping=10.244.1.1";
/// How often the console log is read for the lease: the error of every boot time measured here.
const CONSOLE_POLL: Duration = Duration::from_millis(5);

/// One launcher boot. The phases are consecutive and add up to `total_ms`.
#[derive(Serialize)]
struct LauncherBoot {
    /// From spawning the launcher (`ip netns exec`, `unshare`, PID 1, the launcher proper) to its `starting` line.
    process_start_ms: f64,
    /// `starting` → `network ready`: accelerator choice, pod interface discovery and the bridge binding.
    network_ms: f64,
    /// `network ready` → `libvirt ready`: the DHCP server's socket, and opening libvirt's driver (capability probe).
    libvirt_ms: f64,
    /// `libvirt ready` → `domain started`: define and start, QEMU's own start included.
    define_start_ms: f64,
    /// `domain started` → the lease on the console.
    guest_boot_ms: f64,
    total_ms: f64,
    /// From QEMU's process start (from `/proc`, 10 ms resolution) to the lease: comparable with a bare boot.
    qemu_to_lease_ms: f64,
    /// The guest's uptime at its lease, from its `time` record.
    guest_uptime_at_lease_s: Option<f64>,
    /// At the guest's `ready` record.
    processes: Vec<ProcessMemory>,
}

/// One bare QEMU + dnsmasq boot.
#[derive(Serialize)]
struct BareBoot {
    /// From spawning QEMU to the lease on the console.
    total_ms: f64,
    guest_uptime_at_lease_s: Option<f64>,
    /// At the guest's `ready` record.
    qemu: ProcessMemory,
    dnsmasq: ProcessMemory,
}

#[derive(Serialize)]
struct Report {
    accel: String,
    runs: u16,
    cold: LauncherBoot,
    warm: Vec<LauncherBoot>,
    bare: Vec<BareBoot>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark creates network and PID namespaces: run it as root"
    );
    crate::require_tools(&["qemu-system-x86_64", "dnsmasq", "unshare", "ss"])?;
    let guest = guest_image();
    // Empty for the cold run, which fills it; the warm runs share it, as a node's pods share theirs.
    let cache = ScratchDir::new();
    let timeout = Duration::from_secs(args.boot_timeout);

    eprintln!("boot: launcher, cold capability cache");
    let cold = boot_launcher(args, &guest, cache.path(), timeout).context("the cold launcher run")?;
    eprintln!("  {}", launcher_summary(&cold));
    let (mut warm, mut bare) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        for launcher_turn in taking_turns(usize::from(run), &[true, false]) {
            if launcher_turn {
                eprintln!("boot: launcher, warm cache, run {run}/{}", args.runs);
                let boot = boot_launcher(args, &guest, cache.path(), timeout)
                    .with_context(|| format!("launcher run {run}"))?;
                eprintln!("  {}", launcher_summary(&boot));
                warm.push(boot);
            } else {
                eprintln!("boot: bare QEMU + dnsmasq, run {run}/{}", args.runs);
                let boot = boot_bare(args, &guest, timeout).with_context(|| format!("bare run {run}"))?;
                eprintln!("  lease after {:.0} ms", boot.total_ms);
                bare.push(boot);
            }
        }
    }
    let report = Report {
        accel: args.accel.clone(),
        runs: args.runs,
        cold,
        warm,
        bare,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn launcher_summary(boot: &LauncherBoot) -> String {
    format!(
        "start {:.0} + network {:.0} + libvirt {:.0} + define/start {:.0} + guest {:.0} = {:.0} ms to the lease",
        boot.process_start_ms,
        boot.network_ms,
        boot.libvirt_ms,
        boot.define_start_ms,
        boot.guest_boot_ms,
        boot.total_ms
    )
}

fn boot_launcher(args: &Args, guest: &GuestImage, cache: &Path, timeout: Duration) -> anyhow::Result<LauncherBoot> {
    let manifest = format!(
        r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {VM_NAME}, namespace: default}}
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 30
      domain:
        cpu: {{cores: 1}}
        memory: {{guest: {TEST_GUEST_MIB}Mi}}
        firmware:
          kernelBoot:
            kernelArgs: "{CMDLINE}"
            hostPath: {{kernelPath: {kernel}, initrdPath: {initrd}}}
        devices:
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
"#,
        kernel = guest.kernel().display(),
        initrd = guest.initrd().display(),
    );
    let pod = LauncherPod::start(&manifest, cache, &args.accel, &[])?;
    let console = watch_console(&pod.console_log(), timeout, || pod.has_exited()).map_err(|err| pod.explain(err))?;
    let (processes, qemu_started) = pod.processes().map_err(|err| pod.explain(err))?;
    let phases = LauncherMarks::of(&LogEvents::parse(&pod.output()))
        .map(|marks| LauncherBoot {
            process_start_ms: ms_between(pod.spawned, marks.starting),
            network_ms: ms_between(marks.starting, marks.network),
            libvirt_ms: ms_between(marks.network, marks.driver),
            define_start_ms: ms_between(marks.driver, marks.domain),
            guest_boot_ms: ms_between(marks.domain, console.lease),
            total_ms: ms_between(pod.spawned, console.lease),
            qemu_to_lease_ms: ms_between(qemu_started, console.lease),
            guest_uptime_at_lease_s: console.uptime_at_lease,
            processes,
        })
        .map_err(|err| pod.explain(err))?;
    pod.stop();
    Ok(phases)
}

fn boot_bare(args: &Args, guest: &GuestImage, timeout: Duration) -> anyhow::Result<BareBoot> {
    let bare = BareGuest::start(&args.accel, guest, CMDLINE)?;
    let console =
        watch_console(&bare.console_log(), timeout, || has_exited(bare.qemu.pid())).map_err(|err| bare.explain(err))?;
    let memory = |child: &Child| pidns::describe(child.pid()).ok_or_else(|| anyhow!("cannot read its memory"));
    Ok(BareBoot {
        total_ms: ms_between(bare.spawned, console.lease),
        guest_uptime_at_lease_s: console.uptime_at_lease,
        qemu: memory(&bare.qemu).context("QEMU")?,
        dnsmasq: memory(&bare.net.dnsmasq).context("dnsmasq")?,
    })
}

/// What the guest's console showed, and when.
struct Console {
    /// When the lease record was first seen.
    lease: SystemTime,
    uptime_at_lease: Option<f64>,
}

/// Reads the console log every [`CONSOLE_POLL`] until the guest's `ready` record, then checks that the guest got
/// the pod's address, reached the gateway and reported no error. Fails at `timeout`, or when `exited` says the
/// process behind the guest is gone.
fn watch_console(path: &Path, timeout: Duration, exited: impl Fn() -> bool) -> anyhow::Result<Console> {
    let deadline = Instant::now() + timeout;
    let mut lease = None;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if lease.is_none() && text.contains("VMLET-GUEST lease ip=") {
            lease = Some(SystemTime::now());
        }
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        if let Some(lease) = lease.filter(|_| lines.contains(&"VMLET-GUEST ready")) {
            let has = |prefix: &str| lines.iter().any(|line| line.starts_with(prefix));
            let want = [
                format!("VMLET-GUEST lease ip={POD_ADDRESS}/24 router={GATEWAY} "),
                format!("VMLET-GUEST ping target={GATEWAY} ok"),
            ];
            for line in &want {
                ensure!(has(line), "the console lacks \"{line}\":\n{text}");
            }
            ensure!(!has("VMLET-GUEST error"), "the guest reported an error:\n{text}");
            let uptime_at_lease = lines
                .iter()
                .find_map(|line| line.strip_prefix("VMLET-GUEST time "))
                .and_then(|fields| fields.split(' ').find_map(|field| field.strip_prefix("lease=")))
                .and_then(|seconds| seconds.parse().ok());
            return Ok(Console { lease, uptime_at_lease });
        }
        if exited() {
            bail!("exited before the guest was ready\n--- console ---\n{text}");
        }
        if Instant::now() >= deadline {
            bail!("the guest was not ready within {timeout:?}\n--- console ---\n{text}");
        }
        std::thread::sleep(CONSOLE_POLL);
    }
}

fn print_report(report: &Report) {
    println!(
        "Boot to the guest's DHCP lease: test guest, q35, {}, {TEST_GUEST_MIB} MiB, 1 vCPU, direct kernel boot; {} runs \
         of each, taking turns; ms",
        report.accel, report.runs
    );
    println!();
    table::print_header(&[
        "start",
        "network",
        "libvirt",
        "def+start",
        "guest boot",
        "total",
        "QEMU→lease",
        "overhead",
    ]);
    let launcher_columns: [table::Column<LauncherBoot>; 8] = [
        |b| Some(b.process_start_ms),
        |b| Some(b.network_ms),
        |b| Some(b.libvirt_ms),
        |b| Some(b.define_start_ms),
        |b| Some(b.guest_boot_ms),
        |b| Some(b.total_ms),
        |b| Some(b.qemu_to_lease_ms),
        |b| Some(b.total_ms - b.guest_boot_ms),
    ];
    table::print_spread("launcher warm", &report.warm, &launcher_columns);
    let cold: Vec<Option<f64>> = launcher_columns.iter().map(|column| column(&report.cold)).collect();
    table::print_row("launcher cold", &cold);
    let none: table::Column<BareBoot> = |_| None;
    let total: table::Column<BareBoot> = |b| Some(b.total_ms);
    table::print_spread(
        "bare QEMU",
        &report.bare,
        &[none, none, none, none, none, total, total, none],
    );
    println!();
    // QEMU's start to the lease, less the guest's uptime then: QEMU, firmware and libvirt before the kernel runs.
    let before_kernel = |qemu_to_lease_ms: f64, uptime: Option<f64>| match uptime {
        Some(seconds) => format!("{:.2}/{:.0}", seconds, qemu_to_lease_ms - seconds * 1e3),
        None => "-".to_owned(),
    };
    let launcher_runs: Vec<String> = std::iter::once(&report.cold)
        .chain(&report.warm)
        .map(|b| before_kernel(b.qemu_to_lease_ms, b.guest_uptime_at_lease_s))
        .collect();
    let bare_runs: Vec<String> = report
        .bare
        .iter()
        .map(|b| before_kernel(b.total_ms, b.guest_uptime_at_lease_s))
        .collect();
    println!("guest uptime at its lease, s / QEMU's start to the kernel's, ms (QEMU→lease less that uptime):");
    println!("  launcher (cold, then warm): {}", launcher_runs.join("  "));
    println!("  bare: {}", bare_runs.join("  "));
    let launcher_total = table::spread_ms(&report.warm, |b| Some(b.total_ms));
    let bare_total = table::spread_ms(&report.bare, |b| Some(b.total_ms));
    let overhead = table::spread_ms(&report.warm, |b| Some(b.total_ms - b.guest_boot_ms));
    if let (Some(launcher), Some(bare), Some(overhead)) = (launcher_total, bare_total, overhead) {
        println!(
            "launcher total / bare total (medians): {:.2}x; the launcher's overhead (total − guest boot): {:.0} ms \
             median; cold: {:.2}x, {:.0} ms",
            launcher.median_us / bare.median_us,
            overhead.median_us / 1e3,
            report.cold.total_ms * 1e3 / bare.median_us,
            report.cold.total_ms - report.cold.guest_boot_ms,
        );
    }
    println!();
    println!("Memory at the guest's `ready` (last run of each), KiB:");
    pidns::print_header();
    if let Some(last) = report.warm.last() {
        pidns::print_pod("launcher pod", &last.processes);
    }
    if let Some(last) = report.bare.last() {
        pidns::print_row("bare: QEMU", &last.qemu);
        pidns::print_row("bare: dnsmasq", &last.dnsmasq);
    }
}
