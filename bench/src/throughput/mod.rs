//! `vmlet-bench throughput`: TCP throughput between the test guest and the node end of its pod's veth pair, for the
//! `bridge`, `tap` and `masquerade` bindings and in both directions, against the same transfers between the two
//! ends of a plain veth pair (no VM) as the ceiling.
//!
//! The node end of every transfer is this program in the node namespace: a receiver that counts the bytes it reads,
//! or a sender that counts the bytes the far end's TCP has acknowledged (`TCP_INFO`), each over a window that opens
//! after a warm-up (slow start, data queued before the connection was accepted). The far end is the guest's busybox
//! `dd` on the socket (its `vmlet.send` and `vmlet.discard` services), or, for the ceiling, a thread of this program
//! in the pod namespace of a pod with no VM. Each binding's guest is booted once, one after the other, with
//! `vmlet-launcher run` as a pod runs it (the testkit's `VmPod`), and so is the same guest under a bare QEMU on a
//! bridge in a namespace of its own (the `boot` benchmark's), a second reference with no pod and no vmlet. All stay
//! up; then the paths take turns, one transfer at a time, round after round, so that a busy spell of the machine
//! hurts all of them alike.

mod cpu;
mod meter;
mod transfer;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use serde::Serialize;
use vmlet_testkit::poll_until;
use vmlet_testkit::vm_pod::{GuestSpec, Launcher, MTU, VmPod, children};

use self::cpu::{CpuProbe, CpuUse, Seconds};
use self::meter::{Spread, Window};
use self::transfer::{Measured, listener, receive, send, socket_in, spawn_discarder, spawn_zero_sender};
use crate::bare::BareGuest;
use crate::pidns;
use crate::procfs::has_exited;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds: in each, every path moves data once in each direction.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    repeats: u16,
    /// The measured part of each transfer, in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// The unmeasured start of each transfer, in seconds.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// The bindings to measure.
    #[arg(long, value_delimiter = ',', default_value = "bridge,tap,masquerade")]
    bindings: Vec<Binding>,
    /// Leave out the bare QEMU (the guest on a tap in a bridge on the node, no pod and no vmlet).
    #[arg(long)]
    no_bare: bool,
    /// The bound on one guest's boot to its `ready` record, in seconds.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Print every transfer as JSON instead of the tables.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Binding {
    Bridge,
    Tap,
    Masquerade,
}

impl Binding {
    fn name(self) -> &'static str {
        match self {
            Binding::Bridge => "bridge",
            Binding::Tap => "tap",
            Binding::Masquerade => "masquerade",
        }
    }

    /// The VM manifest's interface: behind masquerade the discard port must be forwarded to reach the guest.
    fn interface(self) -> String {
        match self {
            Binding::Bridge => "bridge: {}".to_owned(),
            Binding::Tap => "tap: {}".to_owned(),
            Binding::Masquerade => format!("masquerade: {{}}, ports: [{{port: {DISCARD_PORT}}}]"),
        }
    }
}

/// The node end of the pod's veth pair, where the node's half of every transfer runs.
const NODE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The pod's address: the guest's own with `bridge` and `tap`, forwarded to the guest with `masquerade`.
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
/// Where the node receives what the far end sends.
const RECEIVE_PORT: u16 = 5201;
/// Where the far end discards what the node sends.
const DISCARD_PORT: u16 = 5202;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// The far end sends, the node receives.
    ToNode,
    /// The node sends, the far end receives.
    FromNode,
}

/// The directions of one round: they take turns at going first, so that neither always follows the other.
fn turn(round: u16) -> [Direction; 2] {
    if round.is_multiple_of(2) {
        [Direction::ToNode, Direction::FromNode]
    } else {
        [Direction::FromNode, Direction::ToNode]
    }
}

/// The far end of a path, up for the whole run.
enum FarEnd {
    Veth(Veth),
    Bare(Box<Bare>),
    Guest(Box<Guest>),
}

/// A pod with no VM: threads of this program in its namespace play the far end.
struct Veth {
    pod: VmPod,
    receiver: TcpListener,
    discard: TcpListener,
}

/// The same guest under QEMU alone, as the `boot` benchmark runs it: what any VM on a tap costs, before a pod's
/// network.
struct Bare {
    receiver: TcpListener,
    probe: CpuProbe,
    qemu_netdev: String,
    accel: String,
    guest: BareGuest,
}

/// A VM pod whose guest sends to the node's receiver and discards what the node sends.
struct Guest {
    binding: Binding,
    /// Open for the whole run: the guest's next connection then waits in the backlog, its sender blocked once the
    /// receive buffer is full, instead of being refused and tried again every 0.2 s while other transfers run.
    receiver: TcpListener,
    probe: CpuProbe,
    qemu_accel: String,
    qemu_netdev: String,
    // Dropped in this order: the launcher (and with it the PID namespace, QEMU too), then the pod's namespaces.
    launcher: Launcher,
    pod: VmPod,
}

impl FarEnd {
    fn name(&self) -> &'static str {
        match self {
            FarEnd::Veth(_) => "veth",
            FarEnd::Bare(_) => "bare QEMU",
            FarEnd::Guest(guest) => guest.binding.name(),
        }
    }

    fn measure(&self, direction: Direction, window: Window) -> anyhow::Result<Measured> {
        let to_node = SocketAddrV4::new(NODE, RECEIVE_PORT);
        let to_pod = SocketAddrV4::new(POD, DISCARD_PORT);
        match (self, direction) {
            (FarEnd::Veth(veth), Direction::ToNode) => {
                let sender = spawn_zero_sender(&veth.pod.pod, to_node)?;
                let measured = receive(&veth.receiver, window, &CpuProbe::far_thread(sender.tid));
                let finished = sender.finish("the far end's sender");
                let measured = measured?;
                finished?;
                Ok(measured)
            }
            (FarEnd::Veth(veth), Direction::FromNode) => {
                let discarder = spawn_discarder(veth.discard.try_clone()?)?;
                let probe = CpuProbe::far_thread(discarder.tid);
                let measured = send(socket_in(&veth.pod.node)?, to_pod, window, &probe);
                let finished = discarder.finish("the far end's receiver");
                let measured = measured?;
                finished?;
                Ok(measured)
            }
            (FarEnd::Bare(bare), Direction::ToNode) => {
                receive(&bare.receiver, window, &bare.probe).map_err(|err| bare.explain(err))
            }
            (FarEnd::Bare(bare), Direction::FromNode) => {
                send(socket_in(&bare.guest.net.ns)?, to_pod, window, &bare.probe).map_err(|err| bare.explain(err))
            }
            (FarEnd::Guest(guest), Direction::ToNode) => {
                receive(&guest.receiver, window, &guest.probe).map_err(|err| guest.explain(err))
            }
            (FarEnd::Guest(guest), Direction::FromNode) => {
                send(socket_in(&guest.pod.node)?, to_pod, window, &guest.probe).map_err(|err| guest.explain(err))
            }
        }
    }
}

impl Veth {
    fn new() -> anyhow::Result<Veth> {
        let pod = VmPod::subnet();
        Ok(Veth {
            receiver: listener(&pod.node, SocketAddrV4::new(NODE, RECEIVE_PORT))?,
            discard: listener(&pod.pod, SocketAddrV4::new(POD, DISCARD_PORT))?,
            pod,
        })
    }
}

/// What the guest is asked for on its kernel command line, beyond a network interface: the node's address to ping,
/// and the two ends of the transfers.
fn guest_spec(interface: &str) -> GuestSpec {
    GuestSpec::new(interface, &NODE.to_string())
        .send_to(SocketAddrV4::new(NODE, RECEIVE_PORT).into())
        .discard(DISCARD_PORT)
}

impl Bare {
    /// Boots the guest under QEMU with `accel` and waits for it to be ready.
    fn boot(accel: &str, timeout: Duration) -> anyhow::Result<Bare> {
        // The command line the launcher's domain gets (`VmPod::write_manifest`); of the spec only the kernel
        // arguments count here, the network interface being QEMU's own.
        let cmdline = format!("console=ttyS0 quiet panic=-1 {}", guest_spec("").kernel_args);
        let guest = BareGuest::start(accel, &vmlet_testkit::guest_image(), &cmdline)?;
        let console = || std::fs::read_to_string(guest.console_log()).unwrap_or_default();
        let qemu = guest.qemu.pid();
        wait_ready(console, || has_exited(qemu), timeout).map_err(|err| guest.explain(err))?;
        let (accel, qemu_netdev) = qemu_setup(qemu)?;
        eprintln!("  ready; QEMU {qemu}: -accel {accel}, -netdev {qemu_netdev}");
        Ok(Bare {
            receiver: listener(&guest.net.ns, SocketAddrV4::new(NODE, RECEIVE_PORT))?,
            probe: CpuProbe::qemu(qemu),
            qemu_netdev,
            accel,
            guest,
        })
    }

    /// `err` with what the guest printed on its console, and QEMU and dnsmasq printed.
    fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        let console = std::fs::read_to_string(self.guest.console_log()).unwrap_or_default();
        self.guest.explain(anyhow!("{err:#}\n--- console ---\n{console}"))
    }
}

impl Guest {
    /// Boots the guest with `binding` in a VM pod of its own and waits for it to be ready.
    fn boot(binding: Binding, timeout: Duration) -> anyhow::Result<Guest> {
        let pod = VmPod::subnet();
        let launcher = pod.start(&pod.write_manifest("vm.yaml", &guest_spec(&binding.interface())));
        let explain = |err| with_output(err, &pod, &launcher);
        wait_ready(|| pod.console(), || launcher.has_exited(), timeout).map_err(explain)?;
        let qemu = qemu_of(&launcher).map_err(explain)?;
        let (qemu_accel, qemu_netdev) = qemu_setup(qemu)?;
        eprintln!("  ready; QEMU {qemu}: -accel {qemu_accel}, -netdev {qemu_netdev}");
        Ok(Guest {
            binding,
            receiver: listener(&pod.node, SocketAddrV4::new(NODE, RECEIVE_PORT))?,
            probe: CpuProbe::qemu(qemu),
            qemu_accel,
            qemu_netdev,
            launcher,
            pod,
        })
    }

    fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        with_output(err, &self.pod, &self.launcher)
    }
}

/// `err` with what the guest printed on its console and the launcher logged.
fn with_output(err: anyhow::Error, pod: &VmPod, launcher: &Launcher) -> anyhow::Error {
    anyhow!(
        "{err:#}\n--- console ---\n{}\n--- launcher ---\n{}",
        pod.console(),
        launcher.process.output()
    )
}

/// The transfers of one path.
#[derive(Serialize)]
struct PathReport {
    path: &'static str,
    /// What QEMU was started with (by libvirt, or by this program for the bare QEMU): its accelerator and its
    /// network device.
    qemu_accel: Option<String>,
    qemu_netdev: Option<String>,
    to_node: Vec<Measured>,
    from_node: Vec<Measured>,
}

impl PathReport {
    fn of(&self, direction: Direction) -> &[Measured] {
        match direction {
            Direction::ToNode => &self.to_node,
            Direction::FromNode => &self.from_node,
        }
    }

    /// Mbit/s.
    fn throughput(&self, direction: Direction) -> Option<Spread> {
        Spread::of(self.of(direction).iter().map(|m| m.transfer.mbit_per_s()))
    }

    /// The median over the transfers of what `part` took per GB moved, in CPU seconds.
    fn cpu_per_gb(&self, direction: Direction, part: impl Fn(&CpuUse) -> Option<f64>) -> Option<f64> {
        let values = self
            .of(direction)
            .iter()
            .filter_map(|m| Some(part(&m.cpu)? / (m.transfer.bytes as f64 / 1e9)));
        Spread::of(values).map(|spread| spread.median)
    }

    /// The median over the transfers of the share of one CPU that `part` took, in percent.
    fn cpu_share(&self, direction: Direction, part: impl Fn(&CpuUse) -> Option<f64>) -> Option<f64> {
        let values = self
            .of(direction)
            .iter()
            .filter_map(|m| Some(part(&m.cpu)? / m.transfer.seconds * 100.0));
        Spread::of(values).map(|spread| spread.median)
    }
}

#[derive(Serialize)]
struct Report {
    repeats: u16,
    warmup_s: f64,
    window_s: f64,
    mtu: u32,
    /// The veth pair first.
    paths: Vec<PathReport>,
    load_average_start: String,
    load_average_end: String,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark creates network and PID namespaces: run it as root"
    );
    ensure!(
        args.seconds > 0.0 && args.warmup >= 0.0,
        "--seconds must be positive and --warmup not negative"
    );
    let window = Window {
        warmup: Duration::from_secs_f64(args.warmup),
        length: Duration::from_secs_f64(args.seconds),
    };
    // Built (or found in its cache) before any boot is timed.
    let _ = vmlet_testkit::guest_image();
    let mut far_ends = vec![FarEnd::Veth(Veth::new()?)];
    for &binding in &args.bindings {
        eprintln!("throughput: {} binding, booting the guest", binding.name());
        let guest = Guest::boot(binding, Duration::from_secs(args.boot_timeout))
            .with_context(|| format!("the {} binding", binding.name()))?;
        far_ends.push(FarEnd::Guest(Box::new(guest)));
    }
    if !args.no_bare {
        // The accelerator the launcher chose, so that both run the guest alike.
        let accel = far_ends
            .iter()
            .find_map(|far_end| match far_end {
                FarEnd::Guest(guest) => Some(guest.qemu_accel.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "tcg".to_owned());
        eprintln!("throughput: bare QEMU, booting the guest");
        let bare = Bare::boot(&accel, Duration::from_secs(args.boot_timeout)).context("the bare QEMU")?;
        far_ends.insert(1, FarEnd::Bare(Box::new(bare)));
    }

    let load_average_start = load_average();
    let mut paths: Vec<PathReport> = far_ends
        .iter()
        .map(|far_end| {
            let (accel, netdev) = match far_end {
                FarEnd::Veth(_) => (None, None),
                FarEnd::Bare(bare) => (Some(bare.accel.clone()), Some(bare.qemu_netdev.clone())),
                FarEnd::Guest(guest) => (Some(guest.qemu_accel.clone()), Some(guest.qemu_netdev.clone())),
            };
            PathReport {
                path: far_end.name(),
                qemu_accel: accel,
                qemu_netdev: netdev,
                to_node: Vec::new(),
                from_node: Vec::new(),
            }
        })
        .collect();
    for round in 0..args.repeats {
        eprintln!("throughput: round {}/{}", round + 1, args.repeats);
        // Each round starts with another path, so that none always follows the same one.
        let count = far_ends.len();
        for index in (0..count).map(|i| (i + usize::from(round)) % count) {
            for direction in turn(round) {
                let far_end = &far_ends[index];
                let measured = far_end
                    .measure(direction, window)
                    .with_context(|| format!("{}, round {}", far_end.name(), round + 1))?;
                eprintln!("  {}", describe(far_end.name(), direction, &measured));
                let path = &mut paths[index];
                match direction {
                    Direction::ToNode => path.to_node.push(measured),
                    Direction::FromNode => path.from_node.push(measured),
                }
            }
        }
    }
    drop(far_ends);

    let report = Report {
        repeats: args.repeats,
        warmup_s: args.warmup,
        window_s: args.seconds,
        mtu: MTU,
        paths,
        load_average_start,
        load_average_end: load_average(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn describe(path: &str, direction: Direction, measured: &Measured) -> String {
    let arrow = match direction {
        Direction::ToNode => "→ node",
        Direction::FromNode => "node →",
    };
    let seconds = measured.transfer.seconds;
    let share = |cpu: Seconds| cpu.total() / seconds * 100.0;
    let far_thread = measured
        .cpu
        .far_end
        .map_or_else(String::new, |far_end| format!(", far end {:.0} %", share(far_end)));
    let qemu = measured.cpu.qemu.map_or_else(String::new, |qemu| {
        format!(
            ", QEMU vCPU {:.0} %, main loop {:.0} %, other {:.0} %, vhost {:.0} %",
            share(qemu.vcpu),
            share(qemu.main_loop),
            share(qemu.other),
            share(qemu.vhost)
        )
    });
    format!(
        "{path:<10} {arrow} {:>8.1} Mbit/s ({} MB in {seconds:.2} s); CPU: node end {:.0} %{far_thread}{qemu}",
        measured.transfer.mbit_per_s(),
        measured.transfer.bytes / 1_000_000,
        share(measured.cpu.node_end),
    )
}

/// Waits for the guest's `ready` record on its console, read by `console`, and checks that the guest reached the
/// node and runs both services. Fails at once when `exited` says the process behind the guest is gone.
fn wait_ready(console: impl Fn() -> String, exited: impl Fn() -> bool, timeout: Duration) -> anyhow::Result<()> {
    let lines = || -> Vec<String> { console().lines().map(|line| line.trim().to_owned()).collect() };
    let ready = poll_until("the guest's ready record", timeout, Duration::from_millis(100), || {
        if lines().iter().any(|line| line == "VMLET-GUEST ready") {
            Some(Ok(()))
        } else if exited() {
            Some(Err(anyhow!("exited before the guest was ready")))
        } else {
            None
        }
    });
    ready.map_err(anyhow::Error::new)??;
    let lines = lines();
    let expected = [
        format!("VMLET-GUEST ping target={NODE} ok"),
        format!("VMLET-GUEST send target={NODE}:{RECEIVE_PORT}"),
        format!("VMLET-GUEST discard port={DISCARD_PORT}"),
    ];
    for line in expected {
        ensure!(lines.contains(&line), "the guest did not report `{line}`");
    }
    if let Some(error) = lines.iter().find(|line| line.starts_with("VMLET-GUEST error")) {
        bail!("the guest reported `{error}`");
    }
    Ok(())
}

/// QEMU's pid: a child of the launcher's PID 1, which is `unshare`'s only child.
fn qemu_of(launcher: &Launcher) -> anyhow::Result<u32> {
    let unshare = launcher.process.pid() as i32;
    let pid1 = children(unshare)
        .first()
        .copied()
        .ok_or_else(|| anyhow!("no PID 1 under unshare"))?;
    let processes = pidns::processes_of_namespace(pid1 as u32).context("cannot read the pod's processes")?;
    processes
        .iter()
        .find(|process| process.role == "QEMU")
        .map(|qemu| qemu.pid)
        .ok_or_else(|| anyhow!("no QEMU in the pod: {processes:?}"))
}

/// QEMU's accelerator and network device, from its command line.
fn qemu_setup(qemu: u32) -> anyhow::Result<(String, String)> {
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).context("cannot read QEMU's command line")?;
    let args: Vec<String> = cmdline
        .split(|&byte| byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    Ok(qemu_options(&args))
}

/// The value of `-accel` (or of `accel=` in `-machine`), and the `-netdev` values joined.
fn qemu_options(args: &[String]) -> (String, String) {
    let values = |option: &str| -> Vec<&str> {
        args.windows(2)
            .filter(|pair| pair[0] == option)
            .map(|pair| pair[1].as_str())
            .collect()
    };
    let accel = values("-accel")
        .first()
        .map(|accel| accel.split(',').next().unwrap_or_default().to_owned())
        .or_else(|| {
            values("-machine").iter().find_map(|machine| {
                machine
                    .split(',')
                    .find_map(|part| part.strip_prefix("accel="))
                    .map(str::to_owned)
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let netdev = values("-netdev").join(" ");
    (accel, netdev)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// --- the report -------------------------------------------------------------------------------------------------

fn print_report(report: &Report) {
    println!(
        "TCP throughput, one connection, MTU {}: {} rounds, each path once per direction and round, {} s measured \
         after a {} s warm-up; Mbit/s, median (min–max); ratios of the medians to the veth pair's and to the bare \
         QEMU's",
        report.mtu, report.repeats, report.window_s, report.warmup_s
    );
    println!();
    let directions = [Direction::ToNode, Direction::FromNode];
    let median_of = |name: &str| {
        report
            .paths
            .iter()
            .find(|path| path.path == name)
            .map(|path| directions.map(|direction| path.throughput(direction).map(|s| s.median)))
            .unwrap_or([None, None])
    };
    let (ceiling, bare) = (median_of("veth"), median_of("bare QEMU"));
    println!(
        "{:<12} {:>26} {:>7} {:>7}   {:>26} {:>7} {:>7}",
        "path", "far end → node", "÷ veth", "÷ bare", "node → far end", "÷ veth", "÷ bare"
    );
    for path in &report.paths {
        let cells = directions.map(|direction| {
            let index = usize::from(direction == Direction::FromNode);
            let spread = path.throughput(direction);
            let ratio = |to: Option<f64>| match (spread, to) {
                (Some(s), Some(to)) if to > 0.0 => format!("{:.3}", s.median / to),
                _ => "-".to_owned(),
            };
            let spread = spread.map_or_else(
                || "-".to_owned(),
                |s| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max),
            );
            format!("{spread:>26} {:>7} {:>7}", ratio(ceiling[index]), ratio(bare[index]))
        });
        println!("{:<12} {}   {}", path.path, cells[0], cells[1]);
    }
    println!();
    println!(
        "CPU seconds per GB moved, medians over the transfers' windows, user+system: the node end's thread; the far \
         end (on the veth pair its thread, for a guest all of QEMU's threads and vhost-net's), and of QEMU: its vCPU \
         thread, its main loop, its other threads, vhost-net. Then the vCPU's and the main loop's share of one CPU."
    );
    println!(
        "{:<12} {:<8} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7} {:>7}",
        "path", "", "node end", "far end", "vCPU", "main loop", "other", "vhost", "vCPU %", "main %"
    );
    let pair = |user: Option<f64>, system: Option<f64>| match (user, system) {
        (Some(user), Some(system)) => format!("{user:.2}+{system:.2}"),
        _ => "-".to_owned(),
    };
    let one = |value: Option<f64>, decimals: usize| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"));
    for path in &report.paths {
        for direction in directions {
            let per_gb = |part: fn(&CpuUse) -> Option<f64>| path.cpu_per_gb(direction, part);
            let share = |part: fn(&CpuUse) -> Option<f64>| path.cpu_share(direction, part);
            let far_end = |cpu: &CpuUse| cpu.far_end.or(cpu.qemu.map(|qemu| qemu.total()));
            println!(
                "{:<12} {:<8} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7} {:>7}",
                path.path,
                match direction {
                    Direction::ToNode => "→ node",
                    Direction::FromNode => "node →",
                },
                pair(per_gb(|c| Some(c.node_end.user)), per_gb(|c| Some(c.node_end.system))),
                pair(
                    path.cpu_per_gb(direction, |c| Some(far_end(c)?.user)),
                    path.cpu_per_gb(direction, |c| Some(far_end(c)?.system))
                ),
                pair(
                    per_gb(|c| Some(c.qemu?.vcpu.user)),
                    per_gb(|c| Some(c.qemu?.vcpu.system))
                ),
                pair(
                    per_gb(|c| Some(c.qemu?.main_loop.user)),
                    per_gb(|c| Some(c.qemu?.main_loop.system))
                ),
                one(per_gb(|c| Some(c.qemu?.other.total())), 2),
                one(per_gb(|c| Some(c.qemu?.vhost.total())), 2),
                one(share(|c| Some(c.qemu?.vcpu.total())), 0),
                one(share(|c| Some(c.qemu?.main_loop.total())), 0),
            );
        }
    }
    println!();
    for path in &report.paths {
        let retransmits: u32 = path.from_node.iter().filter_map(|m| m.retransmits).sum();
        let qemu = match (&path.qemu_accel, &path.qemu_netdev) {
            (Some(accel), Some(netdev)) => format!("; QEMU -accel {accel}, -netdev {netdev}"),
            _ => String::new(),
        };
        println!(
            "{:<12} TCP retransmissions by the node, node → far end: {retransmits}{qemu}",
            path.path
        );
    }
    println!(
        "load average when the rounds began: {}; at the end: {}",
        report.load_average_start, report.load_average_end
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_take_turns_at_going_first() {
        assert_eq!(turn(0), [Direction::ToNode, Direction::FromNode]);
        assert_eq!(turn(1), [Direction::FromNode, Direction::ToNode]);
        assert_eq!(turn(2), turn(0));
    }

    #[test]
    fn each_binding_reaches_the_guest_on_the_discard_port() {
        assert_eq!(Binding::Bridge.interface(), "bridge: {}");
        assert_eq!(Binding::Tap.interface(), "tap: {}");
        assert_eq!(Binding::Masquerade.interface(), "masquerade: {}, ports: [{port: 5202}]");
    }

    #[test]
    fn finds_qemus_accelerator_and_netdev() {
        let args: Vec<String> = [
            "qemu-system-x86_64",
            "-machine",
            "pc-q35-7.2,usb=off,dump-guest-core=off",
            "-accel",
            "tcg",
            "-netdev",
            "{\"type\":\"tap\",\"fd\":\"25\",\"id\":\"hostnet0\"}",
            "-device",
            "virtio-net-pci,netdev=hostnet0",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            qemu_options(&args),
            (
                "tcg".to_owned(),
                "{\"type\":\"tap\",\"fd\":\"25\",\"id\":\"hostnet0\"}".to_owned()
            )
        );
        let machine = ["-machine", "q35,accel=kvm"].map(str::to_owned);
        assert_eq!(qemu_options(&machine), ("kvm".to_owned(), String::new()));
    }

    /// The whole measurement over a real veth pair in namespaces: one transfer each way, each as long as asked, at a
    /// plausible rate, with the CPU time of both ends counted.
    #[test]
    fn measures_a_veth_pair_both_ways() {
        let veth = FarEnd::Veth(Veth::new().unwrap());
        let window = Window {
            warmup: Duration::from_millis(100),
            length: Duration::from_millis(300),
        };
        for direction in [Direction::ToNode, Direction::FromNode] {
            let measured = veth.measure(direction, window).unwrap();
            assert!(measured.transfer.seconds >= 0.3, "{measured:?}");
            // Even a busy two-core machine moves far more than this over a veth pair.
            assert!(measured.transfer.mbit_per_s() > 50.0, "{direction:?}: {measured:?}");
            assert!(measured.cpu.node_end.total() > 0.0, "{measured:?}");
            assert!(
                measured.cpu.far_end.is_some_and(|far_end| far_end.total() > 0.0),
                "{measured:?}"
            );
            assert!(measured.cpu.qemu.is_none());
            assert_eq!(measured.retransmits.is_some(), direction == Direction::FromNode);
        }
    }
}
