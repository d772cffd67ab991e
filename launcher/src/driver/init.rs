//! PID 1 of the launcher's PID namespace: the pod's, or one of its own in tests and in standalone mode.
//!
//! libvirt runs QEMU daemonized, for the domain and (once per node) for the processes that probe QEMU's
//! capabilities, so each QEMU is re-parented to PID 1. When libvirt stops one it waits until the pid is gone, which a
//! zombie never is: up to 15 s per process, about 160 s for a cold capability probe (measured). PID 1 must reap every
//! orphan at once, and it can do so safely (`waitpid(-1)`) only if nothing else in it waits for its own children,
//! as libvirt does in the launcher. So PID 1 splits in two: it runs the launcher again as its only child, reaps every
//! process that ends up its child, forwards the signals a container gets, and exits with the launcher's status. When
//! the launcher exits for any reason, SIGKILL included, PID 1 exits too and the kernel kills everything left in the
//! namespace, QEMU included: the guest never outlives the launcher. `tini` does the same for containers, and
//! KubeVirt's `virt-launcher-monitor` for its launcher.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals a container runtime or an operator sends to PID 1, meant for the launcher.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
/// How often orphans are reaped when no SIGCHLD wakes this thread (another thread of the process may take it).
const REAP_PERIOD: Duration = Duration::from_millis(100);

/// Whether this process is PID 1 of its PID namespace, and so must run [`run_self_as_child`] first.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Runs this program again, with the same arguments and environment, as the only child of this process, and
/// reaps every child until that one exits. Returns its exit code (128 + the signal if a signal killed it), for
/// this process to exit with. Call it before starting any thread.
pub fn run_self_as_child() -> io::Result<i32> {
    let mut signals = SigSet::empty();
    for signal in FORWARDED.into_iter().chain([Signal::SIGCHLD]) {
        signals.add(signal);
    }
    // Blocked, they wait for `next_signal` instead of taking their default action.
    signals.thread_block()?;
    let mut args = std::env::args_os();
    let mut command = Command::new("/proc/self/exe");
    // A child inherits the blocked mask, and std does not reset it: unblocked, the launcher's own handlers see
    // SIGTERM and the rest.
    let inherited = signals;
    // SAFETY: the closure runs between fork and exec and only calls pthread_sigmask, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || inherited.thread_unblock().map_err(io::Error::from));
    }
    if let Some(program) = args.next() {
        command.arg0(program);
    }
    let launcher = command.args(args).spawn()?;
    let launcher = Pid::from_raw(i32::try_from(launcher.id()).map_err(io::Error::other)?);
    loop {
        if let Some(code) = reap(launcher)? {
            return Ok(code);
        }
        match next_signal(&signals, REAP_PERIOD) {
            Some(Signal::SIGCHLD) | None => {}
            Some(signal) => {
                // It may have just exited: the next `reap` says so.
                let _ = kill(launcher, signal);
            }
        }
    }
}

/// Reaps every child that has exited; returns the launcher's exit code once it is among them.
fn reap(launcher: Pid) -> io::Result<Option<i32>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == launcher => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == launcher => return Ok(Some(128 + signal as i32)),
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Err(io::Error::other("the launcher is gone without an exit status")),
            Err(error) => return Err(error.into()),
        }
    }
}

/// The next of the blocked `signals`, or `None` after `timeout`.
fn next_signal(signals: &SigSet, timeout: Duration) -> Option<Signal> {
    let timeout = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: the set and the timespec are valid for the duration of the call; a null siginfo pointer is allowed.
    let number = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &timeout) };
    Signal::try_from(number).ok()
}
