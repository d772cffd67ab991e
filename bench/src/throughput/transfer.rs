//! One TCP transfer at a time: the node's end (this program, in the node namespace) and, for the veth pair, the far
//! end (threads of this program in the pod namespace). Every wait is bounded by socket timeouts.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use nix::sched::{CloneFlags, setns};
use serde::Serialize;
use socket2::{Domain, Socket, Type};
use vmlet_testkit::NetNs;

use super::cpu::{CpuProbe, CpuTimes, CpuUse};
use super::meter::{Meter, Reading, Transfer, Window};

/// Bytes per read or write, at this end as at the guest's (`dd bs=256k`).
const BLOCK: usize = 256 * 1024;
/// The bound on one read or write, on connecting, and on the far end's closing after a transfer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on waiting for the far end to connect: the guest tries again 0.2 s after each refusal or reset.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// One transfer's window, and the CPU time it took.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Measured {
    pub transfer: Transfer,
    pub cpu: CpuUse,
    /// TCP retransmissions by the node, when it was the sender.
    pub retransmits: Option<u32>,
}

/// Reads the CPU times when the window opens and when it closes.
struct Timing<'a> {
    probe: &'a CpuProbe,
    opened: Option<CpuTimes>,
}

impl Timing<'_> {
    /// The measurement once `reading` closes the window.
    fn on(&mut self, reading: Reading) -> anyhow::Result<Option<(Transfer, CpuUse)>> {
        match reading {
            Reading::Outside => Ok(None),
            Reading::Opened => {
                self.opened = Some(self.probe.read()?);
                Ok(None)
            }
            Reading::Closed(transfer) => {
                let closed = self.probe.read()?;
                let opened = self.opened.as_ref().context("the window closed before it opened")?;
                Ok(Some((transfer, opened.used_until(&closed))))
            }
        }
    }
}

/// Accepts one connection and reads from it until the window closes; then drops it, which resets it (data is left
/// unread), so that the far end's sender stops.
pub fn receive(listener: &TcpListener, window: Window, probe: &CpuProbe) -> anyhow::Result<Measured> {
    let (mut stream, _) = listener.accept().map_err(|err| match err.kind() {
        io::ErrorKind::WouldBlock => anyhow!("nothing connected to the receiver within {ACCEPT_TIMEOUT:?}"),
        _ => anyhow::Error::new(err).context("cannot accept a connection"),
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buffer = vec![0; BLOCK];
    let (mut meter, mut timing, mut total) = (Meter::new(window), Timing { probe, opened: None }, 0_u64);
    loop {
        let read = stream.read(&mut buffer).context("cannot read the transfer")?;
        ensure!(read > 0, "the sender closed the connection after {total} bytes");
        total += read as u64;
        if let Some((transfer, cpu)) = timing.on(meter.observe(Instant::now(), total))? {
            return Ok(Measured {
                transfer,
                cpu,
                retransmits: None,
            });
        }
    }
}

/// Connects `socket` to `to` and sends zeros until the window closes, counting what the far end's TCP has
/// acknowledged; then closes its side and waits for the far end to close its own, so that nothing of this transfer
/// is still in flight when the next one begins.
pub fn send(socket: Socket, to: SocketAddrV4, window: Window, probe: &CpuProbe) -> anyhow::Result<Measured> {
    socket
        .connect_timeout(&to.into(), IO_TIMEOUT)
        .with_context(|| format!("cannot connect to {to}"))?;
    let mut stream = TcpStream::from(socket);
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let block = vec![0; BLOCK];
    let (mut meter, mut timing) = (Meter::new(window), Timing { probe, opened: None });
    let (transfer, cpu) = loop {
        stream.write_all(&block).context("cannot send the transfer")?;
        let acknowledged = tcp_info(&stream)?.tcpi_bytes_acked;
        if let Some(measured) = timing.on(meter.observe(Instant::now(), acknowledged))? {
            break measured;
        }
    };
    let retransmits = tcp_info(&stream)?.tcpi_total_retrans;
    stream.shutdown(Shutdown::Write)?;
    let mut rest = [0; 64];
    while stream.read(&mut rest).context("waiting for the far end to close")? > 0 {}
    Ok(Measured {
        transfer,
        cpu,
        retransmits: Some(retransmits),
    })
}

/// The kernel's `TCP_INFO` of a connection.
fn tcp_info(stream: &TcpStream) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, for which all zeros is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`, which outlives the call; the kernel writes at most `length`
    // bytes and reports how many it wrote.
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
pub fn listener(ns: &NetNs, at: SocketAddrV4) -> anyhow::Result<TcpListener> {
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
pub fn socket_in(ns: &NetNs) -> anyhow::Result<Socket> {
    in_namespace(ns, || Socket::new(Domain::IPV4, Type::STREAM, None)).context("cannot open a socket")
}

/// Runs `make` on a thread of its own that has entered `ns`: sockets belong to the namespace they were made in,
/// whichever thread uses them later.
fn in_namespace<T: Send + 'static>(
    ns: &NetNs,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = netns_path(ns);
    std::thread::spawn(move || -> anyhow::Result<T> {
        enter(&path)?;
        Ok(make()?)
    })
    .join()
    .map_err(|_| anyhow!("a thread in {} panicked", ns.name()))?
}

fn netns_path(ns: &NetNs) -> String {
    format!("/run/netns/{}", ns.name())
}

/// Moves the calling thread into the network namespace at `path`, for good.
fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {path}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {path}"))
}

/// A thread of this program that plays the far end on the veth pair.
pub struct FarThread {
    handle: JoinHandle<anyhow::Result<()>>,
    /// Its thread id, for its CPU time.
    pub tid: u32,
}

impl FarThread {
    fn spawn(body: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<FarThread> {
        let (tid_sender, tid) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let _ = tid_sender.send(nix::unistd::gettid().as_raw() as u32);
            body()
        });
        let tid = tid
            .recv_timeout(IO_TIMEOUT)
            .context("the far end's thread did not start")?;
        Ok(FarThread { handle, tid })
    }

    /// Waits for the thread, which its socket timeouts bound.
    pub fn finish(self, what: &str) -> anyhow::Result<()> {
        self.handle
            .join()
            .map_err(|_| anyhow!("{what} panicked"))?
            .with_context(|| what.to_owned())
    }
}

/// The far end's sender over the veth pair: a thread in `ns` that connects to `to` and sends zeros until the receiver
/// resets the connection.
pub fn spawn_zero_sender(ns: &NetNs, to: SocketAddrV4) -> anyhow::Result<FarThread> {
    let path = netns_path(ns);
    FarThread::spawn(move || {
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

/// The far end's receiver over the veth pair: accepts one connection and reads it to its end, then closes it.
pub fn spawn_discarder(listener: TcpListener) -> anyhow::Result<FarThread> {
    FarThread::spawn(move || {
        let (mut stream, _) = listener.accept().context("nothing connected to the discarder")?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buffer = vec![0; BLOCK];
        while stream.read(&mut buffer).context("cannot read")? > 0 {}
        Ok(())
    })
}
