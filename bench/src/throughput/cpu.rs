//! The CPU time a transfer's window took, from `/proc`: the thread of the node's end (this program), and QEMU's
//! threads when the far end is a guest.
//!
//! Where the kernel's network work is charged matters for reading the figures: a packet a process writes to a tap
//! or a socket is usually carried through the bridge, the tc filters, NAT and the veth pair in that process's own
//! system time (the softirq runs as the write returns), and a packet's reception is charged to whichever thread the
//! CPU was running (or to `ksoftirqd`, not counted here).

use anyhow::Context;
use serde::Serialize;

/// User and system time, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ticks {
    user: u64,
    system: u64,
}

impl Ticks {
    fn add(&mut self, other: Ticks) {
        self.user += other.user;
        self.system += other.system;
    }

    fn seconds_until(self, later: Ticks) -> Seconds {
        let hz = clock_ticks();
        Seconds {
            user: later.user.saturating_sub(self.user) as f64 / hz,
            system: later.system.saturating_sub(self.system) as f64 / hz,
        }
    }
}

/// CPU time in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Seconds {
    pub user: f64,
    pub system: f64,
}

impl Seconds {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

/// The CPU time used during a window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CpuUse {
    /// The thread that sent or received at the node's end.
    pub node_end: Seconds,
    /// The thread that played the far end, on the veth pair.
    pub far_end: Option<Seconds>,
    pub qemu: Option<QemuUse>,
}

/// QEMU's threads, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct QemuUse {
    /// The vCPU thread (`CPU 0/TCG`, `CPU 0/KVM`): under TCG, the guest's kernel and programs, emulated.
    pub vcpu: Seconds,
    /// QEMU's main loop, which moves the virtio-net queues to and from the tap (unless vhost-net does).
    pub main_loop: Seconds,
    /// QEMU's other threads (RCU, worker threads).
    pub other: Seconds,
    /// The kernel's vhost-net threads of this QEMU, if it uses vhost-net.
    pub vhost: Seconds,
}

impl QemuUse {
    /// All of QEMU's threads and vhost-net's.
    pub fn total(&self) -> Seconds {
        let parts = [self.vcpu, self.main_loop, self.other, self.vhost];
        Seconds {
            user: parts.iter().map(|part| part.user).sum(),
            system: parts.iter().map(|part| part.system).sum(),
        }
    }
}

/// Reads the CPU time of the calling thread and of the far end: a thread of this process, or a QEMU process.
pub struct CpuProbe {
    far_thread: Option<u32>,
    qemu: Option<Qemu>,
}

struct Qemu {
    pid: u32,
    /// vhost-net's kernel threads serving it, found once: they live as long as its network device.
    vhost: Vec<u32>,
}

/// What [`CpuProbe::read`] found.
pub struct CpuTimes {
    node_end: Ticks,
    far_end: Option<Ticks>,
    qemu: Option<QemuTicks>,
}

#[derive(Default)]
struct QemuTicks {
    vcpu: Ticks,
    main_loop: Ticks,
    other: Ticks,
    vhost: Ticks,
}

impl CpuProbe {
    /// The far end is the thread `tid` of this process.
    pub fn far_thread(tid: u32) -> CpuProbe {
        CpuProbe {
            far_thread: Some(tid),
            qemu: None,
        }
    }

    /// The far end is the guest of the QEMU process `pid`.
    pub fn qemu(pid: u32) -> CpuProbe {
        CpuProbe {
            far_thread: None,
            qemu: Some(Qemu {
                pid,
                vhost: vhost_threads(pid),
            }),
        }
    }

    /// Reads the times now; the node's end is the calling thread.
    pub fn read(&self) -> anyhow::Result<CpuTimes> {
        let own = std::fs::read_to_string("/proc/thread-self/stat").context("cannot read this thread's stat")?;
        let (_, node_end) = comm_and_ticks(&own).context("cannot parse this thread's stat")?;
        let far_end = self.far_thread.map(read_thread).transpose()?;
        let qemu = self.qemu.as_ref().map(read_qemu).transpose()?;
        Ok(CpuTimes {
            node_end,
            far_end,
            qemu,
        })
    }
}

fn read_thread(tid: u32) -> anyhow::Result<Ticks> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .with_context(|| format!("cannot read the stat of thread {tid}"))?;
    let (_, ticks) = comm_and_ticks(&stat).with_context(|| format!("cannot parse the stat of thread {tid}"))?;
    Ok(ticks)
}

fn read_qemu(qemu: &Qemu) -> anyhow::Result<QemuTicks> {
    let mut ticks = QemuTicks::default();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", qemu.pid)).context("cannot list QEMU's threads")?;
    for task in tasks {
        let Some(tid) = task?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // A thread that ended in the meantime took its time with it: QEMU's threads live as long as it does.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", qemu.pid)) else {
            continue;
        };
        let Some((comm, thread)) = comm_and_ticks(&stat) else {
            continue;
        };
        if comm.starts_with("CPU ") {
            ticks.vcpu.add(thread);
        } else if tid == qemu.pid {
            ticks.main_loop.add(thread);
        } else {
            ticks.other.add(thread);
        }
    }
    for &pid in &qemu.vhost {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some((_, thread)) = comm_and_ticks(&stat) {
            ticks.vhost.add(thread);
        }
    }
    Ok(ticks)
}

impl CpuTimes {
    /// The time between this reading and a later one.
    pub fn used_until(&self, later: &CpuTimes) -> CpuUse {
        let qemu = match (&self.qemu, &later.qemu) {
            (Some(before), Some(after)) => Some(QemuUse {
                vcpu: before.vcpu.seconds_until(after.vcpu),
                main_loop: before.main_loop.seconds_until(after.main_loop),
                other: before.other.seconds_until(after.other),
                vhost: before.vhost.seconds_until(after.vhost),
            }),
            _ => None,
        };
        let far_end = match (self.far_end, later.far_end) {
            (Some(before), Some(after)) => Some(before.seconds_until(after)),
            _ => None,
        };
        CpuUse {
            node_end: self.node_end.seconds_until(later.node_end),
            far_end,
            qemu,
        }
    }
}

/// The name and the user and system times (fields 14 and 15) of a `/proc/.../stat` line. The name may hold spaces
/// and parentheses (`CPU 0/TCG`), so the fields after it are counted from the last `)`.
fn comm_and_ticks(stat: &str) -> Option<(&str, Ticks)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, comm) = head.split_once('(')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((comm, Ticks { user, system }))
}

/// The kernel threads that serve a QEMU's vhost-net devices, named `vhost-<QEMU's pid>`.
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn reads_thread_names_and_cpu_times() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "4321 (CPU 0/TCG) R 1 4300 4300 0 -1 4194368 10 0 0 0 1234 56 0 0 20 0 4 0 99";
        assert_eq!(
            comm_and_ticks(stat),
            Some(("CPU 0/TCG", Ticks { user: 1234, system: 56 }))
        );
        let odd = "7 (a) b (c)) S 1 7 7 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(comm_and_ticks(odd), Some(("a) b (c)", Ticks { user: 3, system: 4 })));
        assert_eq!(comm_and_ticks("7 (x) S 1"), None);
    }

    /// The calling thread's CPU time in seconds, from the kernel's per-thread clock.
    fn thread_cpu_seconds() -> f64 {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid timespec that outlives the call.
        let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(result, 0);
        now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
    }

    /// Keeps the CPU busy until the calling thread has used `seconds` more of it, however busy the machine is (for a
    /// minute at most).
    fn spin(seconds: f64) {
        let (start, deadline) = (thread_cpu_seconds(), Instant::now() + Duration::from_secs(60));
        while thread_cpu_seconds() - start < seconds && Instant::now() < deadline {
            std::hint::black_box(start);
        }
    }

    #[test]
    fn counts_the_calling_thread_a_far_thread_and_a_processes_threads() {
        let (spun, stop) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (tid, started) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let spinner = std::thread::spawn(move || {
            tid.0.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            started.1.recv().unwrap();
            spin(0.3);
            spun.0.send(()).unwrap();
            // Alive until counted: a thread that has ended is gone from /proc/PID/task with its time.
            let _ = stop.1.recv();
        });
        let spinner_tid = tid.1.recv().unwrap();
        let (this_process, far_thread) = (CpuProbe::qemu(std::process::id()), CpuProbe::far_thread(spinner_tid));
        let before = [this_process.read().unwrap(), far_thread.read().unwrap()];
        started.0.send(()).unwrap();
        spun.1.recv().unwrap();
        spin(0.2);
        let after = [this_process.read().unwrap(), far_thread.read().unwrap()];
        stop.0.send(()).unwrap();
        spinner.join().unwrap();
        let spinner_used = before[1].used_until(&after[1]);
        assert!(spinner_used.qemu.is_none());
        let spinner = spinner_used.far_end.unwrap().total();
        assert!((0.29..0.35).contains(&spinner), "{spinner_used:?}");
        assert!(spinner_used.node_end.total() >= 0.15, "{spinner_used:?}");
        let used = before[0].used_until(&after[0]);
        assert!(used.far_end.is_none());
        let qemu = used.qemu.unwrap();
        // Clock ticks are 10 ms. The spinner counts as "other", the calling thread as the node's end and, as the test
        // harness's main thread or not, as the main loop or "other".
        assert!(used.node_end.total() >= 0.15, "{used:?}");
        assert!(qemu.other.total() >= 0.25, "{used:?}");
        assert!(qemu.main_loop.total() + qemu.other.total() >= 0.4, "{used:?}");
        assert_eq!((qemu.vcpu, qemu.vhost), (Seconds::default(), Seconds::default()));
    }
}
