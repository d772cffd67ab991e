//! `vmlet-bench throughput`: TCP throughput between the test guest and the node end of its pod's veth pair, for the
//! `bridge`, `tap` and `masquerade` bindings and in both directions, against the same transfers between the two
//! ends of a plain veth pair (no VM) as the ceiling.
//!
//! The node end of every transfer is this program in the node namespace: a receiver that counts the bytes it reads,
//! or a sender that counts the bytes the far end's TCP has acknowledged (`TCP_INFO`), each over a window that opens
//! after a warm-up (slow start, data queued before the connection was accepted). The far end is the guest's busybox
//! `dd` on the socket (its `vmlet.send` and `vmlet.discard` services), or, for the ceiling, a thread of this program
//! in the pod namespace of a pod with no VM. Each binding boots the guest once, with `vmlet-launcher run` as a pod
//! runs it (the testkit's `VmPod`); the directions take turns, one transfer at a time.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use nix::sched::{CloneFlags, setns};
use serde::Serialize;
use socket2::{Domain, Socket, Type};
use vmlet_testkit::vm_pod::{GuestSpec, Launcher, MTU, VmPod, children};
use vmlet_testkit::{NetNs, poll_until};

use crate::pidns;

#[derive(clap::Args)]
pub struct Args {
    /// Transfers of each kind: per binding and direction, and of the ceiling before and after the guests.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    repeats: u16,
    /// The measured part of each transfer, in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// The unmeasured start of each transfer, in seconds.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// The bindings to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "bridge,tap,masquerade")]
    bindings: Vec<Binding>,
    /// The bound on one guest's boot to its `ready` record, in seconds.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Print the results as JSON instead of a table.
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
/// Bytes per read or write at this end, as the guest's `dd bs=256k` at the other.
const BLOCK: usize = 256 * 1024;
/// The bound on one read or write, on connecting, and on the far end's closing after a transfer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on waiting for the far end to connect: the guest tries again 0.2 s after each refusal or reset.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Direction {
    /// The far end sends, the node receives.
    ToNode,
    /// The node sends, the far end receives.
    FromNode,
}

/// The part of a transfer that is measured.
#[derive(Clone, Copy, Debug)]
struct Window {
    warmup: Duration,
    length: Duration,
}

/// The bytes counted in a window and how long it lasted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
struct Transfer {
    bytes: u64,
    seconds: f64,
}

impl Transfer {
    fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e6
    }
}

/// Measures one transfer from the running byte counts seen during it: the window opens at the first count made
/// `warmup` or more after the first byte, and closes at the first count made `length` or more after it opened. Only
/// the bytes counted after the opening count, and the time between the two counts, are measured.
struct Meter {
    window: Window,
    first: Option<Instant>,
    opened: Option<(Instant, u64)>,
}

impl Meter {
    fn new(window: Window) -> Meter {
        Meter {
            window,
            first: None,
            opened: None,
        }
    }

    /// Records that `total` bytes had gone through at `at`; the measurement once the window has closed.
    fn observe(&mut self, at: Instant, total: u64) -> Option<Transfer> {
        if total == 0 {
            return None;
        }
        let first = *self.first.get_or_insert(at);
        match self.opened {
            None => {
                if at.duration_since(first) >= self.window.warmup {
                    self.opened = Some((at, total));
                }
                None
            }
            Some((opened_at, opened_total)) => {
                let elapsed = at.duration_since(opened_at);
                (elapsed >= self.window.length && elapsed > Duration::ZERO).then(|| Transfer {
                    bytes: total - opened_total,
                    seconds: elapsed.as_secs_f64(),
                })
            }
        }
    }
}

/// One transfer: what was measured, and what QEMU's threads took meanwhile (for a guest).
#[derive(Clone, Copy, Debug, Serialize)]
struct Sample {
    transfer: Transfer,
    mbit_per_s: f64,
    /// TCP retransmissions by the node (its sending direction only).
    retransmits: Option<u32>,
    qemu_cpu: Option<CpuShare>,
}

/// The median and range of a set of throughputs, in Mbit/s.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Spread { median, min, max })
    }
}

/// The transfers of one path, both directions.
#[derive(Debug, Default, Serialize)]
struct PathSamples {
    to_node: Vec<Sample>,
    from_node: Vec<Sample>,
}

impl PathSamples {
    fn of(&self, direction: Direction) -> &[Sample] {
        match direction {
            Direction::ToNode => &self.to_node,
            Direction::FromNode => &self.from_node,
        }
    }

    fn push(&mut self, direction: Direction, sample: Sample) {
        match direction {
            Direction::ToNode => self.to_node.push(sample),
            Direction::FromNode => self.from_node.push(sample),
        }
    }

    fn spread(&self, direction: Direction) -> Option<Spread> {
        let values: Vec<f64> = self.of(direction).iter().map(|s| s.mbit_per_s).collect();
        Spread::of(&values)
    }
}

#[derive(Serialize)]
struct GuestPath {
    binding: Binding,
    /// What QEMU was started with: its accelerator and its network device, as libvirt set them up.
    qemu_accel: String,
    qemu_netdev: String,
    samples: PathSamples,
}

#[derive(Serialize)]
struct Report {
    repeats: u16,
    warmup_s: f64,
    window_s: f64,
    mtu: u32,
    /// The ceiling, measured before the guests and again after them.
    veth_before: PathSamples,
    veth_after: PathSamples,
    guests: Vec<GuestPath>,
    load_average_start: String,
    load_average_end: String,
}

impl Report {
    fn ceiling(&self, direction: Direction) -> Option<Spread> {
        let values: Vec<f64> = [&self.veth_before, &self.veth_after]
            .into_iter()
            .flat_map(|path| path.of(direction))
            .map(|s| s.mbit_per_s)
            .collect();
        Spread::of(&values)
    }
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
    // Built (or found in its cache) before anything is measured, not during the first boot.
    let _ = vmlet_testkit::guest_image();
    let load_average_start = load_average();

    eprintln!("throughput: veth pair (the ceiling), before the guests");
    let veth_before = measure_veth(args, window)?;
    let mut guests = Vec::new();
    for &binding in &args.bindings {
        eprintln!("throughput: {} binding, booting the guest", binding.name());
        guests.push(measure_guest(args, binding, window).with_context(|| format!("the {} binding", binding.name()))?);
    }
    eprintln!("throughput: veth pair (the ceiling), after the guests");
    let veth_after = measure_veth(args, window)?;

    let report = Report {
        repeats: args.repeats,
        warmup_s: args.warmup,
        window_s: args.seconds,
        mtu: MTU,
        veth_before,
        veth_after,
        guests,
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

/// The ceiling: the pod of [`VmPod::subnet`] with no VM, its namespace holding the far end's threads.
fn measure_veth(args: &Args, window: Window) -> anyhow::Result<PathSamples> {
    let pod = VmPod::subnet();
    let receiver = listener(&pod.node, SocketAddrV4::new(NODE, RECEIVE_PORT))?;
    let discard = listener(&pod.pod, SocketAddrV4::new(POD, DISCARD_PORT))?;
    let mut samples = PathSamples::default();
    for round in 0..args.repeats {
        for direction in turn(round) {
            let sample = match direction {
                Direction::ToNode => {
                    let sender = spawn_zero_sender(&pod.pod, SocketAddrV4::new(NODE, RECEIVE_PORT));
                    let transfer = receive(&receiver, window);
                    finish(sender, "the veth sender")?;
                    sample(transfer?, None, None)
                }
                Direction::FromNode => {
                    let discarder = spawn_discarder(discard.try_clone()?);
                    let sent = send(node_socket(&pod.node)?, SocketAddrV4::new(POD, DISCARD_PORT), window);
                    finish(discarder, "the veth receiver")?;
                    let (transfer, retransmits) = sent?;
                    sample(transfer, Some(retransmits), None)
                }
            };
            eprintln!("  {}", describe(direction, &sample));
            samples.push(direction, sample);
        }
    }
    Ok(samples)
}

/// One binding: a guest booted once in a VM pod, then the transfers.
fn measure_guest(args: &Args, binding: Binding, window: Window) -> anyhow::Result<GuestPath> {
    let pod = VmPod::subnet();
    let spec = GuestSpec::new(&binding.interface(), &NODE.to_string())
        .send_to(SocketAddrV4::new(NODE, RECEIVE_PORT).into())
        .discard(DISCARD_PORT);
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec));
    let with_output = |err: anyhow::Error| {
        anyhow!(
            "{err:#}\n--- console ---\n{}\n--- launcher ---\n{}",
            pod.console(),
            launcher.process.output()
        )
    };
    wait_ready(&pod, &launcher, Duration::from_secs(args.boot_timeout)).map_err(with_output)?;
    let qemu = qemu_of(&launcher).map_err(with_output)?;
    let (qemu_accel, qemu_netdev) = qemu_setup(qemu)?;
    eprintln!("  ready; QEMU {qemu}: accel {qemu_accel}, {qemu_netdev}");
    let vhost = vhost_threads(qemu);

    // Open for the whole run: the guest's next connection then waits in the backlog, its sender blocked once the
    // receive buffer is full, instead of being refused and retried every 0.2 s during the other direction's turn.
    let receiver = listener(&pod.node, SocketAddrV4::new(NODE, RECEIVE_PORT))?;
    let mut samples = PathSamples::default();
    for round in 0..args.repeats {
        for direction in turn(round) {
            let before = CpuTimes::of(qemu, &vhost)?;
            let sample = match direction {
                Direction::ToNode => {
                    let transfer = receive(&receiver, window).map_err(with_output)?;
                    sample(transfer, None, Some(before.share_until(&CpuTimes::of(qemu, &vhost)?)))
                }
                Direction::FromNode => {
                    let (transfer, retransmits) =
                        send(node_socket(&pod.node)?, SocketAddrV4::new(POD, DISCARD_PORT), window)
                            .map_err(with_output)?;
                    let cpu = before.share_until(&CpuTimes::of(qemu, &vhost)?);
                    sample(transfer, Some(retransmits), Some(cpu))
                }
            };
            eprintln!("  {}", describe(direction, &sample));
            samples.push(direction, sample);
        }
    }
    // The launcher goes first (its drop ends the PID namespace, QEMU with it), then the pod's namespaces.
    drop(launcher);
    Ok(GuestPath {
        binding,
        qemu_accel,
        qemu_netdev,
        samples,
    })
}

/// The directions of one round: they take turns at going first, so that neither always follows the other.
fn turn(round: u16) -> [Direction; 2] {
    if round.is_multiple_of(2) {
        [Direction::ToNode, Direction::FromNode]
    } else {
        [Direction::FromNode, Direction::ToNode]
    }
}

fn sample(transfer: Transfer, retransmits: Option<u32>, qemu_cpu: Option<CpuShare>) -> Sample {
    Sample {
        transfer,
        mbit_per_s: transfer.mbit_per_s(),
        retransmits,
        qemu_cpu,
    }
}

fn describe(direction: Direction, sample: &Sample) -> String {
    let arrow = match direction {
        Direction::ToNode => "to the node  ",
        Direction::FromNode => "from the node",
    };
    let cpu = sample.qemu_cpu.map_or_else(String::new, |cpu| {
        format!(
            "; QEMU CPU % vCPU {:.0}, main loop {:.0}, other {:.0}, vhost {:.0}",
            cpu.vcpu, cpu.main_loop, cpu.other, cpu.vhost
        )
    });
    format!(
        "{arrow} {:>9.1} Mbit/s ({} MB in {:.2} s){cpu}",
        sample.mbit_per_s,
        sample.transfer.bytes / 1_000_000,
        sample.transfer.seconds
    )
}

// --- the node's end ---------------------------------------------------------------------------------------------

/// Accepts one connection and reads from it until the window closes; then drops it, which resets it (data is left
/// unread), so that the far end's sender stops.
fn receive(listener: &TcpListener, window: Window) -> anyhow::Result<Transfer> {
    let (mut stream, _) = listener.accept().map_err(|err| match err.kind() {
        io::ErrorKind::WouldBlock => anyhow!("nothing connected to the receiver within {ACCEPT_TIMEOUT:?}"),
        _ => anyhow::Error::new(err).context("cannot accept a connection"),
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buffer = vec![0; BLOCK];
    let (mut meter, mut total) = (Meter::new(window), 0_u64);
    loop {
        let read = stream.read(&mut buffer).context("cannot read the transfer")?;
        ensure!(read > 0, "the sender closed the connection after {total} bytes");
        total += read as u64;
        if let Some(transfer) = meter.observe(Instant::now(), total) {
            return Ok(transfer);
        }
    }
}

/// Connects `socket` to `to` and sends zeros until the window closes, counting what the far end's TCP has
/// acknowledged; then closes its side and waits for the far end to close its own, so that nothing of this transfer
/// is still in flight when the next one begins. Also returns the retransmissions.
fn send(socket: Socket, to: SocketAddrV4, window: Window) -> anyhow::Result<(Transfer, u32)> {
    socket
        .connect_timeout(&to.into(), IO_TIMEOUT)
        .with_context(|| format!("cannot connect to {to}"))?;
    let mut stream = TcpStream::from(socket);
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let block = vec![0; BLOCK];
    let mut meter = Meter::new(window);
    let transfer = loop {
        stream.write_all(&block).context("cannot send the transfer")?;
        if let Some(transfer) = meter.observe(Instant::now(), tcp_info(&stream)?.tcpi_bytes_acked) {
            break transfer;
        }
    };
    let retransmits = tcp_info(&stream)?.tcpi_total_retrans;
    stream.shutdown(Shutdown::Write)?;
    let mut rest = [0; 64];
    while stream.read(&mut rest).context("waiting for the far end to close")? > 0 {}
    Ok((transfer, retransmits))
}

/// The kernel's `TCP_INFO` of a connection.
fn tcp_info(stream: &TcpStream) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, for which all zeros is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`, which lives across the call; the kernel writes at most
    // `length` bytes and reports how many it wrote.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // Kernels before 4.1 stop short of the acknowledged byte count.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
    if (length as usize) < needed {
        return Err(io::Error::other(
            "this kernel's TCP_INFO has no acknowledged byte count",
        ));
    }
    Ok(info)
}

/// A TCP listener in `ns`. Its receive timeout bounds `accept`, so that a far end that never connects fails the run
/// instead of hanging it.
fn listener(ns: &NetNs, at: SocketAddrV4) -> anyhow::Result<TcpListener> {
    in_namespace(ns, move || {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_read_timeout(Some(ACCEPT_TIMEOUT))?;
        socket.bind(&at.into())?;
        socket.listen(8)?;
        Ok(socket.into())
    })
    .with_context(|| format!("cannot listen on {at}"))
}

/// A TCP socket in `ns`, not yet connected: where it connects from is the namespace it was made in.
fn node_socket(ns: &NetNs) -> anyhow::Result<Socket> {
    in_namespace(ns, || Socket::new(Domain::IPV4, Type::STREAM, None)).context("cannot open a socket")
}

/// Runs `make` on a thread of its own that has entered `ns`: sockets belong to the namespace they were made in,
/// whichever thread uses them later.
fn in_namespace<T: Send + 'static>(
    ns: &NetNs,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || -> anyhow::Result<T> {
        enter(&path)?;
        Ok(make()?)
    })
    .join()
    .map_err(|_| anyhow!("a thread in {} panicked", ns.name()))?
}

/// Moves the calling thread into the network namespace at `path`, for good.
fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {path}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {path}"))
}

// --- the far end of the ceiling ---------------------------------------------------------------------------------

/// The far end's sender for the ceiling: a thread in `ns` that connects to `to` and sends zeros until the receiver
/// resets the connection.
fn spawn_zero_sender(ns: &NetNs, to: SocketAddrV4) -> JoinHandle<anyhow::Result<()>> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        enter(&path)?;
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket
            .connect_timeout(&to.into(), IO_TIMEOUT)
            .with_context(|| format!("cannot connect to {to}"))?;
        let mut stream = TcpStream::from(socket);
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let block = vec![0; BLOCK];
        loop {
            match stream.write_all(&block) {
                Ok(()) => {}
                Err(err) if matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {
                    return Ok(());
                }
                Err(err) => return Err(anyhow::Error::new(err).context("cannot send")),
            }
        }
    })
}

/// The far end's receiver for the ceiling: accepts one connection and reads it to its end, then closes it.
fn spawn_discarder(listener: TcpListener) -> JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().context("nothing connected to the discarder")?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buffer = vec![0; BLOCK];
        while stream.read(&mut buffer).context("cannot read")? > 0 {}
        Ok(())
    })
}

fn finish(thread: JoinHandle<anyhow::Result<()>>, what: &str) -> anyhow::Result<()> {
    thread
        .join()
        .map_err(|_| anyhow!("{what} panicked"))?
        .with_context(|| what.to_owned())
}

// --- the guest --------------------------------------------------------------------------------------------------

/// Waits for the guest's `ready` record, and checks that it reached the node and runs both services.
fn wait_ready(pod: &VmPod, launcher: &Launcher, timeout: Duration) -> anyhow::Result<()> {
    let ready = poll_until("the guest's ready record", timeout, Duration::from_millis(100), || {
        if !pod.console_lines("VMLET-GUEST ready").is_empty() {
            Some(Ok(()))
        } else if launcher.has_exited() {
            Some(Err(anyhow!("the launcher exited before the guest was ready")))
        } else {
            None
        }
    });
    ready.map_err(anyhow::Error::new)??;
    let expected = [
        format!("VMLET-GUEST ping target={NODE} ok"),
        format!("VMLET-GUEST send target={NODE}:{RECEIVE_PORT}"),
        format!("VMLET-GUEST discard port={DISCARD_PORT}"),
    ];
    for line in expected {
        ensure!(
            !pod.console_lines(&line).is_empty(),
            "the guest did not report `{line}`"
        );
    }
    if let Some(error) = pod.console_lines("VMLET-GUEST error").first() {
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

// --- QEMU's CPU use ---------------------------------------------------------------------------------------------

/// The shares of one CPU, in percent, that QEMU's threads used during a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct CpuShare {
    /// The vCPU thread (`CPU 0/TCG` or `CPU 0/KVM`): the guest's kernel and programs, emulated under TCG.
    vcpu: f64,
    /// QEMU's main loop, which moves the virtio-net queues to and from the tap unless vhost does.
    main_loop: f64,
    /// QEMU's other threads (RCU, worker threads).
    other: f64,
    /// The kernel's vhost-net threads of this QEMU, if it uses vhost.
    vhost: f64,
}

/// CPU time in clock ticks used so far by QEMU's threads, by kind.
struct CpuTimes {
    at: Instant,
    vcpu: u64,
    main_loop: u64,
    other: u64,
    vhost: u64,
}

impl CpuTimes {
    fn of(qemu: u32, vhost: &[u32]) -> anyhow::Result<CpuTimes> {
        let at = Instant::now();
        let mut times = CpuTimes {
            at,
            vcpu: 0,
            main_loop: 0,
            other: 0,
            vhost: 0,
        };
        let tasks = std::fs::read_dir(format!("/proc/{qemu}/task")).context("cannot list QEMU's threads")?;
        for task in tasks {
            let Some(tid) = task?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            // A thread that ended in the meantime took its time with it.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{qemu}/task/{tid}/stat")) else {
                continue;
            };
            let Some((comm, ticks)) = comm_and_ticks(&stat) else {
                continue;
            };
            if comm.starts_with("CPU ") {
                times.vcpu += ticks;
            } else if tid == qemu {
                times.main_loop += ticks;
            } else {
                times.other += ticks;
            }
        }
        for &pid in vhost {
            if let Some((_, ticks)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(comm_and_ticks)
            {
                times.vhost += ticks;
            }
        }
        Ok(times)
    }

    fn share_until(&self, later: &CpuTimes) -> CpuShare {
        let seconds = later.at.duration_since(self.at).as_secs_f64();
        let percent = |from: u64, to: u64| to.saturating_sub(from) as f64 / clock_ticks() / seconds * 100.0;
        CpuShare {
            vcpu: percent(self.vcpu, later.vcpu),
            main_loop: percent(self.main_loop, later.main_loop),
            other: percent(self.other, later.other),
            vhost: percent(self.vhost, later.vhost),
        }
    }
}

/// The name and the user plus system time (fields 14 and 15, in clock ticks) of a `/proc/.../stat` line. The name
/// may hold spaces and parentheses (`CPU 0/TCG`), so the fields after it are counted from the last `)`.
fn comm_and_ticks(stat: &str) -> Option<(&str, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, comm) = head.split_once('(')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((comm, user + system))
}

/// The kernel threads that serve QEMU's vhost-net devices, named `vhost-<QEMU's pid>`.
fn vhost_threads(qemu: u32) -> Vec<u32> {
    let name = format!("vhost-{qemu}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == name))
        .collect()
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |hz| hz as f64)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// --- the report -------------------------------------------------------------------------------------------------

fn print_report(report: &Report) {
    println!(
        "TCP throughput, one connection, MTU {}: {} transfers per path and direction, each {} s measured after a {} \
         s warm-up; Mbit/s, median (min–max); ratio: median / the veth pair's median",
        report.mtu, report.repeats, report.window_s, report.warmup_s
    );
    println!();
    println!(
        "{:<16} {:>28} {:>8}   {:>28} {:>8}",
        "path", "far end → node", "ratio", "node → far end", "ratio"
    );
    let ceiling = [Direction::ToNode, Direction::FromNode].map(|direction| report.ceiling(direction));
    let cell = |spread: Option<Spread>| {
        spread.map_or_else(
            || "-".to_owned(),
            |s| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max),
        )
    };
    let ratio = |spread: Option<Spread>, ceiling: Option<Spread>| match (spread, ceiling) {
        (Some(s), Some(c)) if c.median > 0.0 => format!("{:.4}", s.median / c.median),
        _ => "-".to_owned(),
    };
    let row = |label: &str, to_node: Option<Spread>, from_node: Option<Spread>| {
        println!(
            "{label:<16} {:>28} {:>8}   {:>28} {:>8}",
            cell(to_node),
            ratio(to_node, ceiling[0]),
            cell(from_node),
            ratio(from_node, ceiling[1])
        );
    };
    row("veth (ceiling)", ceiling[0], ceiling[1]);
    for guest in &report.guests {
        row(
            guest.binding.name(),
            guest.samples.spread(Direction::ToNode),
            guest.samples.spread(Direction::FromNode),
        );
    }
    println!();
    println!(
        "veth pair before the guests: {} / {}; after: {} / {} (far end → node / node → far end)",
        cell(report.veth_before.spread(Direction::ToNode)),
        cell(report.veth_before.spread(Direction::FromNode)),
        cell(report.veth_after.spread(Direction::ToNode)),
        cell(report.veth_after.spread(Direction::FromNode)),
    );
    println!();
    println!(
        "QEMU's CPU use during the transfers, % of one CPU (median over the transfers): vCPU / main loop / other / vhost"
    );
    for guest in &report.guests {
        let shares = [Direction::ToNode, Direction::FromNode].map(|direction| {
            let of = |part: fn(&CpuShare) -> f64| {
                let values: Vec<f64> = guest
                    .samples
                    .of(direction)
                    .iter()
                    .filter_map(|s| s.qemu_cpu.as_ref().map(part))
                    .collect();
                Spread::of(&values).map_or(0.0, |s| s.median)
            };
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0}",
                of(|c| c.vcpu),
                of(|c| c.main_loop),
                of(|c| c.other),
                of(|c| c.vhost)
            )
        });
        println!(
            "  {:<12} guest → node: {:<20} node → guest: {:<20} QEMU -accel {}, -netdev {}",
            guest.binding.name(),
            shares[0],
            shares[1],
            guest.qemu_accel,
            guest.qemu_netdev
        );
    }
    let retransmits: Vec<String> = report
        .guests
        .iter()
        .map(|guest| {
            let total: u32 = guest.samples.from_node.iter().filter_map(|s| s.retransmits).sum();
            format!("{} {total}", guest.binding.name())
        })
        .collect();
    println!(
        "TCP retransmissions by the node, node → guest, all transfers: {}",
        retransmits.join(", ")
    );
    println!(
        "load average at the start: {}; at the end: {}",
        report.load_average_start, report.load_average_end
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(warmup_ms: u64, length_ms: u64) -> Window {
        Window {
            warmup: Duration::from_millis(warmup_ms),
            length: Duration::from_millis(length_ms),
        }
    }

    #[test]
    fn measures_only_the_window_after_the_warmup() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut meter = Meter::new(window(500, 1000));
        assert_eq!(meter.observe(at(0), 0), None, "no byte yet");
        // 10 MB buffered before the connection was accepted arrive at once, then 1 MB every 100 ms.
        assert_eq!(meter.observe(at(100), 10_000_000), None);
        assert_eq!(meter.observe(at(400), 11_000_000), None);
        assert_eq!(meter.observe(at(600), 12_000_000), None, "the window opens here");
        assert_eq!(meter.observe(at(1500), 21_000_000), None);
        let transfer = meter.observe(at(1600), 22_000_000).unwrap();
        assert_eq!(transfer.bytes, 10_000_000);
        assert!((transfer.seconds - 1.0).abs() < 1e-9, "{transfer:?}");
        assert!((transfer.mbit_per_s() - 80.0).abs() < 1e-6);
    }

    #[test]
    fn without_warmup_the_window_opens_at_the_first_count() {
        let start = Instant::now();
        let mut meter = Meter::new(window(0, 200));
        assert_eq!(meter.observe(start, 262_144), None);
        assert_eq!(meter.observe(start, 524_288), None, "no time has passed");
        let transfer = meter.observe(start + Duration::from_millis(250), 1_262_144).unwrap();
        assert_eq!(transfer.bytes, 1_000_000);
        assert!((transfer.seconds - 0.25).abs() < 1e-9);
    }

    #[test]
    fn summarises_throughputs() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[30.0, 10.0, 20.0]),
            Some(Spread {
                median: 20.0,
                min: 10.0,
                max: 30.0
            })
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 100.0]).unwrap().median, 3.0);
    }

    #[test]
    fn directions_take_turns_at_going_first() {
        assert_eq!(turn(0), [Direction::ToNode, Direction::FromNode]);
        assert_eq!(turn(1), [Direction::FromNode, Direction::ToNode]);
        assert_eq!(turn(2), turn(0));
    }

    #[test]
    fn reads_thread_names_and_cpu_time() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "4321 (CPU 0/TCG) R 1 4300 4300 0 -1 4194368 10 0 0 0 1234 56 0 0 20 0 4 0 99";
        assert_eq!(comm_and_ticks(stat), Some(("CPU 0/TCG", 1290)));
        let odd = "7 (a) b (c)) S 1 7 7 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(comm_and_ticks(odd), Some(("a) b (c)", 7)));
        assert_eq!(comm_and_ticks("7 (x) S 1"), None);
    }

    #[test]
    fn this_process_threads_are_counted() {
        let before = CpuTimes::of(std::process::id(), &[]).unwrap();
        let (spun, stop) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let spinner = std::thread::spawn(move || {
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(300) {
                std::hint::black_box(spin.elapsed());
            }
            spun.0.send(()).unwrap();
            // Alive until counted: a thread that has ended is gone from /proc/PID/task with its time.
            let _ = stop.1.recv();
        });
        spun.1.recv().unwrap();
        let share = before.share_until(&CpuTimes::of(std::process::id(), &[]).unwrap());
        stop.0.send(()).unwrap();
        spinner.join().unwrap();
        // A thread that is not the main one counts as "other"; clock ticks are 10 ms.
        assert!(share.other > 30.0, "{share:?}");
        assert_eq!((share.vcpu, share.vhost), (0.0, 0.0));
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
    /// plausible rate.
    #[test]
    fn measures_a_veth_pair_both_ways() {
        let args = Args {
            repeats: 1,
            seconds: 0.3,
            warmup: 0.1,
            bindings: Vec::new(),
            boot_timeout: 1,
            json: false,
        };
        let samples = measure_veth(&args, window(100, 300)).unwrap();
        for direction in [Direction::ToNode, Direction::FromNode] {
            let [sample] = samples.of(direction) else {
                panic!("one transfer each way: {samples:?}");
            };
            assert!(sample.transfer.seconds >= 0.3, "{sample:?}");
            // Even a busy two-core machine moves far more than this over a veth pair.
            assert!(sample.mbit_per_s > 50.0, "{direction:?}: {sample:?}");
        }
    }
}
