//! `vmlet-bench boot`: the time from `vmlet-launcher run`'s start to the guest's DHCP lease, split into the
//! launcher's phases, against a bare `qemu-system-x86_64` + dnsmasq boot of the same guest on a bridge; and the
//! resident memory of every process of the VM pod.
//!
//! The launcher runs as a pod runs it (as `tests/tests/launcher.rs` does): in a pod network namespace whose `eth0`
//! is a veth to a node namespace holding the gateway, as PID 1 of a PID namespace of its own. Its phases come from
//! the time stamps of its own log lines, the lease from its guest's console log, polled every few milliseconds; the
//! bare boot's lease is seen the same way. One cold run (an empty capability cache) comes first and leaves the cache
//! warm for the others; then launcher and bare boots take turns, one guest at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use vmlet_testkit::{Child, GuestImage, NetNs, ScratchDir, VethEnd, binary, guest_image, poll_until, veth};

use crate::pidns::{self, ProcessMemory};
use crate::stats::Latency;

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

// The pod both guests take the identity of, as in the launcher's end-to-end tests.
const POD_MAC: &str = "02:42:0a:f4:01:07";
const POD_ADDRESS: &str = "10.244.1.7";
const GATEWAY: &str = "10.244.1.1";
const NETMASK: &str = "255.255.255.0";
const MTU: u32 = 1400;
const DNS: &str = "10.96.0.10";
const SEARCH: &str = "default.svc.cluster.local";
const VM_NAME: &str = "benchvm";
const MEMORY_MIB: u32 = 256;
/// The guest also pings the gateway before `ready`: both setups must really carry its traffic.
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 vmlet.ping=10.244.1.1";
/// How often the console log is read for the lease: the error of every boot time measured here.
const CONSOLE_POLL: Duration = Duration::from_millis(5);
/// The bound on anything that does not wait for a guest.
const WAIT: Duration = Duration::from_secs(30);

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
    for tool in ["qemu-system-x86_64", "dnsmasq", "unshare", "ss"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?;
        ensure!(found.status.success(), "{tool} not found (run scripts/setup)");
    }
    let guest = guest_image();
    // Empty for the cold run, which fills it; the warm runs share it, as a node's pods share theirs.
    let cache = ScratchDir::new();
    let timeout = Duration::from_secs(args.boot_timeout);

    eprintln!("boot: launcher, cold capability cache");
    let cold = boot_launcher(args, &guest, cache.path(), timeout).context("the cold launcher run")?;
    eprintln!("  {}", launcher_summary(&cold));
    let (mut warm, mut bare) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        // Launcher first in odd runs, bare first in even ones: neither always follows the other.
        for launcher_turn in [run % 2 == 1, run % 2 == 0] {
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
    let (node, pod, dir) = (NetNs::new(), NetNs::new(), ScratchDir::new());
    veth::link(
        &node,
        &VethEnd::named("veth-node").mtu(MTU).address(&format!("{GATEWAY}/24")),
        &pod,
        &VethEnd::named("eth0")
            .mtu(MTU)
            .mac(POD_MAC)
            .address(&format!("{POD_ADDRESS}/24")),
    );
    pod.ip(&["route", "add", "default", "via", GATEWAY]);
    let resolv_conf = dir.write("resolv.conf", format!("nameserver {DNS}\nsearch {SEARCH}\n"));
    let manifest = dir.write(
        "vm.yaml",
        format!(
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
        memory: {{guest: {MEMORY_MIB}Mi}}
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
        ),
    );
    let run_dir = dir.join("run");
    let mut command = pod.exec("unshare");
    command
        .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(binary("vmlet-launcher"))
        .args(["run", "--vm-spec"])
        .arg(&manifest)
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--resolv-conf")
        .arg(&resolv_conf)
        .env("VMLET_ACCEL", &args.accel)
        // JSON lines, from the environment rather than an option: a driver process it starts logs them too.
        .env("VMLET_LOG_JSON", "true")
        .env("NO_COLOR", "1");
    let spawned = SystemTime::now();
    let mut launcher = Child::spawn("vmlet-launcher run", &mut command);
    let with_output =
        |err: anyhow::Error, launcher: &Child| anyhow!("{err:#}\n--- launcher ---\n{}", launcher.output());

    // `unshare --fork`'s only child is PID 1 of the launcher's PID namespace.
    let unshare = launcher.pid();
    let pid1 = poll_until("PID 1 under unshare", WAIT, Duration::from_millis(5), || {
        first_child(unshare)
    })
    .map_err(|err| with_output(err.into(), &launcher))?;
    let console = watch_console(&run_dir.join("console.log"), timeout, || has_exited(unshare))
        .map_err(|err| with_output(err, &launcher))?;
    let processes = pidns::processes_of_namespace(pid1).context("cannot read the pod's processes")?;
    let qemu_started = processes
        .iter()
        .find(|process| process.role == "QEMU")
        .ok_or_else(|| anyhow!("no QEMU in the pod: {processes:?}"))
        .and_then(|qemu| process_start(qemu.pid))
        .map_err(|err| with_output(err, &launcher))?;

    let log = LogEvents::parse(&launcher.output());
    let phases = (|| {
        let starting = log.last("starting")?;
        let network = log.last("network ready")?;
        // The driver's own line where the launcher no longer logs one (the driver in a process of its own).
        let libvirt = log
            .last("libvirt ready")
            .or_else(|_| log.last("libvirt's QEMU driver is ready"))?;
        let domain = log.last("domain started")?;
        Ok::<_, anyhow::Error>(LauncherBoot {
            process_start_ms: ms_between(spawned, starting),
            network_ms: ms_between(starting, network),
            libvirt_ms: ms_between(network, libvirt),
            define_start_ms: ms_between(libvirt, domain),
            guest_boot_ms: ms_between(domain, console.lease),
            total_ms: ms_between(spawned, console.lease),
            qemu_to_lease_ms: ms_between(qemu_started, console.lease),
            guest_uptime_at_lease_s: console.uptime_at_lease,
            processes,
        })
    })()
    .map_err(|err| with_output(err, &launcher))?;

    // SIGTERM to PID 1, as a container runtime sends it: an ACPI shutdown of the guest, and the launcher exits.
    let _ = kill(Pid::from_raw(pid1 as i32), Signal::SIGTERM);
    match launcher.wait_exit(WAIT) {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("boot: the launcher exited with {status} on SIGTERM"),
        // Dropping the child kills it, and the network namespaces' drop whatever is left in them.
        Err(err) => eprintln!("boot: {err}"),
    }
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
        dnsmasq: memory(&bare.dnsmasq).context("dnsmasq")?,
    })
}

/// The test guest under a bare `qemu-system-x86_64`, no vmlet: its tap in a Linux bridge `br0` that holds the
/// gateway's address, in a namespace of its own, with dnsmasq giving the guest the pod's address over DHCP.
pub(crate) struct BareGuest {
    // Dropped in this order: the processes, then their namespace and directory.
    pub qemu: Child,
    pub dnsmasq: Child,
    /// When QEMU was spawned.
    pub spawned: SystemTime,
    pub ns: NetNs,
    dir: ScratchDir,
}

impl BareGuest {
    /// Starts dnsmasq, waits until it listens, and spawns QEMU with the kernel command line `cmdline`.
    pub fn start(accel: &str, guest: &GuestImage, cmdline: &str) -> anyhow::Result<BareGuest> {
        let (ns, dir) = (NetNs::new(), ScratchDir::new());
        let mtu = MTU.to_string();
        ns.ip(&["link", "add", "br0", "mtu", &mtu, "type", "bridge"]);
        ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ns.ip(&["link", "set", "tap0", "master", "br0", "mtu", &mtu, "up"]);
        ns.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "br0"]);
        ns.ip(&["link", "set", "br0", "up"]);
        let mut dnsmasq = ns.exec("dnsmasq");
        dnsmasq.args([
            // As in the `dhcp` benchmark: in the foreground as in production, logging to stderr.
            "--keep-in-foreground".to_owned(),
            "--log-facility=-".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            "--port=0".to_owned(),
            "--no-ping".to_owned(),
            "--dhcp-authoritative".to_owned(),
            "--leasefile-ro".to_owned(),
            "--interface=br0".to_owned(),
            "--bind-interfaces".to_owned(),
            format!("--dhcp-range={POD_ADDRESS},static,{NETMASK}"),
            format!("--dhcp-host={POD_MAC},{POD_ADDRESS},{VM_NAME}"),
            format!("--dhcp-option=option:router,{GATEWAY}"),
            format!("--dhcp-option=option:dns-server,{DNS}"),
            format!("--dhcp-option=option:domain-search,{SEARCH}"),
            format!("--dhcp-option=option:mtu,{MTU}"),
        ]);
        let dnsmasq = Child::spawn("dnsmasq", &mut dnsmasq);
        crate::dhcp::wait_listening(&ns, &dnsmasq)?;

        let console_log = dir.join("console.log");
        let mut qemu = ns.exec("qemu-system-x86_64");
        qemu.args(["-machine", "q35", "-accel", accel]);
        if accel == "kvm" {
            qemu.args(["-cpu", "host"]);
        }
        qemu.args([
            "-m",
            &MEMORY_MIB.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            // Threads named by their job, as libvirt has them (`CPU 0/TCG`), for the CPU time of each.
            "-name",
            "bare,debug-threads=on",
        ])
        .args(["-display", "none", "-serial"])
        .arg(format!("file:{}", console_log.display()))
        .arg("-kernel")
        .arg(guest.kernel())
        .arg("-initrd")
        .arg(guest.initrd())
        .args(["-append", cmdline])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={POD_MAC}")]);
        let spawned = SystemTime::now();
        let qemu = Child::spawn("qemu-system-x86_64", &mut qemu);
        Ok(BareGuest {
            qemu,
            dnsmasq,
            spawned,
            ns,
            dir,
        })
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// `err` with what QEMU and dnsmasq printed.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{err:#}\n--- qemu ---\n{}--- dnsmasq ---\n{}",
            self.qemu.output(),
            self.dnsmasq.output()
        )
    }
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

/// The launcher's JSON log lines: message and time stamp.
struct LogEvents(Vec<(String, SystemTime)>);

impl LogEvents {
    /// Lines that are not JSON (a failure message, libvirt's own output) are skipped.
    fn parse(output: &str) -> LogEvents {
        let events = output
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|event| {
                let message = event["fields"]["message"].as_str()?.to_owned();
                Some((message, parse_timestamp(event["timestamp"].as_str()?)?))
            })
            .collect();
        LogEvents(events)
    }

    /// The time of the last line with this message: the launcher's own `domain started` follows the driver's.
    fn last(&self, message: &str) -> anyhow::Result<SystemTime> {
        self.0
            .iter()
            .rev()
            .find(|(m, _)| m == message)
            .map(|&(_, at)| at)
            .ok_or_else(|| anyhow!("the launcher did not log \"{message}\""))
    }
}

/// An RFC 3339 time stamp in UTC, as tracing writes it: `2026-11-22T04:47:01.123456Z`.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let numbers =
        |text: &str, separator| -> Option<Vec<i64>> { text.split(separator).map(|part| part.parse().ok()).collect() };
    let (year, month, day) = match numbers(date, '-')?[..] {
        [year, month, day] => (year, month, day),
        _ => return None,
    };
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let (hours, minutes, seconds) = match numbers(clock, ':')?[..] {
        [hours, minutes, seconds] => (hours, minutes, seconds),
        _ => return None,
    };
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    let seconds = days_from_civil(year, month, day) * 86_400 + hours * 3600 + minutes * 60 + seconds;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(seconds).ok()?, nanos))
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Milliseconds from `from` to `to`, negative if `to` is earlier.
fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(after) => after.as_secs_f64() * 1e3,
        Err(before) => -before.duration().as_secs_f64() * 1e3,
    }
}

/// When a process started, from its start time in clock ticks since boot (`/proc/PID/stat`, field 22) and the
/// uptime now (`/proc/uptime`, the same clock).
fn process_start(pid: u32) -> anyhow::Result<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let uptime = std::fs::read_to_string("/proc/uptime")?;
    let now = SystemTime::now();
    let ticks: f64 = stat_field(&stat, 22)
        .ok_or_else(|| anyhow!("no start time for {pid}"))?
        .parse()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.ok_or_else(|| anyhow!("no CLK_TCK"))?;
    let uptime: f64 = uptime.split_whitespace().next().unwrap_or_default().parse()?;
    let age = (uptime - ticks / hz as f64).max(0.0);
    Ok(now - Duration::from_secs_f64(age))
}

/// Field `n` (from 1) of a `/proc/PID/stat` line. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// Whether the process is gone or a zombie: a child of ours stays a zombie until reaped.
pub(crate) fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_field(&stat, 3).map(|state| state == "Z" || state == "X"))
        .unwrap_or(true)
}

fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Median (min–max) of one column, in ms.
fn spread<T>(boots: &[T], value: impl Fn(&T) -> f64) -> Option<Latency> {
    let samples: Vec<Duration> = boots
        .iter()
        .map(|boot| Duration::from_secs_f64(value(boot).max(0.0) / 1e3))
        .collect();
    Latency::of(&samples)
}

fn print_report(report: &Report) {
    println!(
        "Boot to the guest's DHCP lease: test guest, q35, {}, {MEMORY_MIB} MiB, 1 vCPU, direct kernel boot; {} runs \
         of each, taking turns; ms",
        report.accel, report.runs
    );
    println!();
    let columns = [
        "start",
        "network",
        "libvirt",
        "def+start",
        "guest boot",
        "total",
        "QEMU→lease",
        "overhead",
    ];
    let header: String = columns.iter().map(|c| format!(" {c:>10}")).collect();
    println!("{:<22}{header}", "");
    type Column = fn(&LauncherBoot) -> f64;
    let launcher_columns: [Column; 8] = [
        |b| b.process_start_ms,
        |b| b.network_ms,
        |b| b.libvirt_ms,
        |b| b.define_start_ms,
        |b| b.guest_boot_ms,
        |b| b.total_ms,
        |b| b.qemu_to_lease_ms,
        |b| b.total_ms - b.guest_boot_ms,
    ];
    let cell = |ms: Option<f64>| ms.map_or_else(|| format!(" {:>10}", "-"), |ms| format!(" {ms:>10.0}"));
    let pick = |which: usize| {
        move |latency: Latency| match which {
            0 => latency.median_us / 1e3,
            1 => latency.min_us / 1e3,
            _ => latency.max_us / 1e3,
        }
    };
    for (which, label) in ["median", "min", "max"].into_iter().enumerate() {
        let cells: String = launcher_columns
            .iter()
            .map(|column| cell(spread(&report.warm, column).map(pick(which))))
            .collect();
        println!("{:<22}{cells}", format!("launcher warm {label}"));
    }
    let cold: String = launcher_columns
        .iter()
        .map(|column| cell(Some(column(&report.cold))))
        .collect();
    println!("{:<22}{cold}", "launcher cold");
    for (which, label) in ["median", "min", "max"].into_iter().enumerate() {
        let total = spread(&report.bare, |b| b.total_ms).map(pick(which));
        let cells = [None, None, None, None, None, total, total, None];
        let cells: String = cells.into_iter().map(cell).collect();
        println!("{:<22}{cells}", format!("bare QEMU {label}"));
    }
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
    let launcher_total = spread(&report.warm, |b| b.total_ms);
    let bare_total = spread(&report.bare, |b| b.total_ms);
    let overhead = spread(&report.warm, |b| b.total_ms - b.guest_boot_ms);
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
    println!(
        "{:<40} {:>6} {:>8} {:>8} {:>8} {:>12}",
        "process", "ns pid", "RSS", "PSS", "anon", "libvirt libs"
    );
    let row = |label: &str, pid: String, rss: u64, pss: u64, anon: u64, libvirt: u64| {
        println!("{label:<40} {pid:>6} {rss:>8} {pss:>8} {anon:>8} {libvirt:>12}");
    };
    if let Some(last) = report.warm.last() {
        for p in &last.processes {
            let m = p.memory;
            let label = format!("launcher pod: {}", p.role);
            row(
                &label,
                p.ns_pid.to_string(),
                m.rss_kib,
                m.pss_kib,
                m.anonymous_kib,
                p.libvirt_libraries_kib,
            );
        }
        let others: Vec<&ProcessMemory> = last.processes.iter().filter(|p| p.role != "QEMU").collect();
        let sum = |field: fn(&ProcessMemory) -> u64| others.iter().map(|p| field(p)).sum::<u64>();
        row(
            "launcher pod: all but QEMU",
            String::new(),
            sum(|p| p.memory.rss_kib),
            sum(|p| p.memory.pss_kib),
            sum(|p| p.memory.anonymous_kib),
            sum(|p| p.libvirt_libraries_kib),
        );
    }
    if let Some(last) = report.bare.last() {
        for (label, p) in [("bare: QEMU", &last.qemu), ("bare: dnsmasq", &last.dnsmasq)] {
            let m = p.memory;
            row(
                label,
                String::new(),
                m.rss_kib,
                m.pss_kib,
                m.anonymous_kib,
                p.libvirt_libraries_kib,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_time_stamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        // date -u -d 2026-11-22T04:47:01Z +%s
        let at = parse_timestamp("2026-11-22T04:47:01.123456Z").unwrap();
        assert_eq!(
            at.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_795_322_821, 123_456_000)
        );
        let leap = parse_timestamp("2024-02-29T23:59:59.5Z").unwrap();
        assert_eq!(
            leap.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_709_251_199, 500_000_000)
        );
        for bad in ["2026-11-22T04:47:01", "2026-11-22 04:47:01Z", "2026-11T04:47:01Z", "x"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_the_last_line_with_a_message() {
        let output = r#"{"timestamp":"2026-11-22T04:47:01.000100Z","level":"INFO","fields":{"message":"domain started","elapsed_ms":300},"target":"vmlet_launcher::driver"}
libvirt: error : some message on stderr
{"timestamp":"2026-11-22T04:47:01.000200Z","level":"INFO","fields":{"message":"domain started","elapsed_ms":350},"target":"vmlet_launcher::run"}
"#;
        let log = LogEvents::parse(output);
        let at = log.last("domain started").unwrap();
        assert_eq!(at.duration_since(UNIX_EPOCH).unwrap().subsec_micros(), 200);
        assert!(log.last("network ready").is_err());
    }

    #[test]
    fn reads_stat_fields_past_the_command_name() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 22), Some("987654"));
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn this_process_started_in_the_past() {
        let started = process_start(std::process::id()).unwrap();
        let age = SystemTime::now().duration_since(started).unwrap();
        assert!(age < Duration::from_secs(3600), "{age:?}");
        assert!(!has_exited(std::process::id()));
    }
}
