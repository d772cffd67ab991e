//! `vmlet-handler shim`: what a container runtime's shim is to a pod, for standalone mode.
//!
//! It enters the pod's network namespace, makes a PID and mount namespace for the launcher so the launcher is PID 1
//! as in a real pod, starts it, passes SIGTERM and SIGINT on, and records how it ended in `exit.json`. It runs in a
//! session of its own, so the handler may stop or be killed without the VM noticing: a handler started again finds
//! the shim by `shim.json` and the ending by `exit.json`. The launcher dies with the shim (`PR_SET_PDEATHSIG`), so
//! no QEMU outlives it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use vmlet_control::LauncherExit;

use super::pod::{ExitRecord, PodDir, ShimRecord, process_start_time};

#[derive(clap::Args)]
pub struct Args {
    /// The pod's directory: the shim writes shim.json and exit.json there.
    #[arg(long)]
    pod_dir: PathBuf,
    /// The pod's network namespace, a file under /run/netns.
    #[arg(long)]
    netns: PathBuf,
    /// The launcher and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pod = PodDir::new(args.pod_dir.clone());
    run_launcher(args).or_else(|err| {
        // The pod could not start its launcher: that is the launcher's failure to the handler, and
        // the reason is in launcher.log, where this error goes.
        let failed = ExitRecord {
            code: Some(LauncherExit::Failed.code().into()),
            signal: None,
            finished_at: super::pod::now_secs(),
        };
        pod.write_exit(&failed)?;
        Err(err)
    })
}

fn run_launcher(args: Args) -> anyhow::Result<ExitCode> {
    let pod = PodDir::new(args.pod_dir);
    // Signals wait in the mask until the launcher runs, so none is lost between spawning it and waiting for it.
    let signals = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD]);
    signals.thread_block().context("cannot block signals")?;
    let me = std::process::id();
    let record = ShimRecord {
        pid: me,
        start_time: process_start_time(me).context("cannot read the shim's start time")?,
    };

    let netns = File::open(&args.netns).with_context(|| format!("cannot open {}", args.netns.display()))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).context("cannot enter the pod's network namespace")?;
    unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS).context("cannot make the pod's PID namespace")?;
    // The /proc mounted for the launcher's PID namespace stays in this mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("cannot make the pod's mounts private")?;

    let (program, launcher_args) = args.command.split_first().context("no launcher to run")?;
    let mut command = Command::new(program);
    // The launcher writes where the shim does: the pod's launcher.log, when the handler started it (`command`).
    command.args(launcher_args).stdin(Stdio::null());
    // SAFETY: between fork and exec the closure calls only async-signal-safe system calls (prctl, mount,
    // sigprocmask) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>)?;
            signals.thread_unblock()?;
            Ok(())
        });
    }
    let child = command.spawn().context("cannot start the launcher")?;
    pod.write_shim(&record)?;
    let child = Pid::from_raw(child.id() as i32);

    let status = loop {
        match signals.wait().context("cannot wait for signals")? {
            Signal::SIGCHLD => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => continue,
                Ok(status) => break status,
                Err(err) => return Err(err).context("cannot wait for the launcher"),
            },
            forwarded => {
                let _ = kill(child, forwarded);
            }
        }
    };
    let exit = ExitRecord::from_wait(status);
    pod.write_exit(&exit)?;
    Ok(match exit.code {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(LauncherExit::Failed.code()),
    })
}

/// How the handler starts a shim for a pod: in a session of its own, its output in the pod's log.
pub fn command(handler: &Path, pod: &PodDir, netns: &Path, launcher: &[OsString]) -> anyhow::Result<Command> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pod.launcher_log())
        .context("cannot open the launcher's log")?;
    let mut command = Command::new(handler);
    command
        .arg("shim")
        .arg("--pod-dir")
        .arg(pod.path())
        .arg("--netns")
        .arg(netns)
        .arg("--")
        .args(launcher)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    Ok(command)
}
