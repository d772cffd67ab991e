//! The pod's domain, run by libvirt's QEMU driver in `vmlet-driver`, a child process, so that the launcher links no
//! libvirt: a launcher (and its PID 1) without libvirt's fifty libraries takes a fraction of the memory
//! (`docs/driver-choice.md`).
//!
//! The launcher runs as PID 1 of a PID namespace (the pod's, or one of its own in tests and standalone mode), split
//! by [`init`] into a reaper that stays PID 1 and the launcher proper, its child, whose child is the driver. libvirt
//! daemonizes QEMU, so QEMU is re-parented to that PID 1, which reaps it as soon as it exits and exits itself when the
//! launcher does, whatever the cause: the kernel then kills everything left in the namespace, QEMU and the driver
//! included. The driver also exits when its stdin closes, destroying the domain first, and dies with the launcher
//! (`PR_SET_PDEATHSIG`) even outside a PID namespace.
//!
//! Requests and events are JSON lines (`vmlet_domain::protocol`): a task writes requests to the driver's stdin,
//! another reads its stdout, hands each reply to the request it answers and state changes to a watch channel, which
//! closes when the driver exits.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use vmlet_domain::DomainSpec;
use vmlet_domain::protocol::{Command, Event, Request, to_line};

pub use vmlet_domain::{DomainState, ShutOffReason};

pub mod accel;
pub mod init;

/// The environment variable that names the driver program; by default `vmlet-driver` next to the launcher's own.
pub const DRIVER_ENV: &str = "VMLET_DRIVER";
/// How long a driver whose stdin closed may take to destroy its domain and exit: libvirt gives a QEMU that ignores
/// SIGTERM 10 s before SIGKILL.
const STOP_BOUND: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot locate the launcher's own program")]
    Locate(#[source] io::Error),
    #[error("cannot run {}", .program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode a request")]
    Encode(#[source] serde_json::Error),
    #[error("vmlet-driver has exited")]
    Gone,
    /// The driver's own message, which names what failed.
    #[error("{0}")]
    Failed(String),
    #[error("vmlet-driver answered out of turn: {0:?}")]
    Unexpected(Event),
}

/// Where libvirt keeps the pid of domain `name`'s QEMU, with its files in `run_dir/libvirt` as
/// [`DriverProcess::start`] opens it: its state directory is `run/qemu` there.
pub fn qemu_pid_file(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join("libvirt/run/qemu").join(format!("{name}.pid"))
}

/// The running `vmlet-driver`. Dropping it closes the driver's stdin, and the driver destroys the domain and exits.
pub struct DriverProcess {
    connection: Arc<Connection>,
    states: watch::Receiver<DomainState>,
    /// Ends once the driver has exited and been reaped.
    exited: JoinHandle<()>,
    /// Dropped or sent, it closes the driver's stdin.
    close: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
}

impl DriverProcess {
    /// Starts `vmlet-driver` ([`DRIVER_ENV`], else next to this program), idle until [`DriverProcess::start`].
    ///
    /// Call it from a thread that lives as long as the launcher, such as the one running the launcher's
    /// single-threaded runtime: the driver's `PR_SET_PDEATHSIG` fires when the *thread* that spawned it exits.
    pub fn spawn() -> Result<DriverProcess, DriverError> {
        let program = match std::env::var_os(DRIVER_ENV) {
            Some(program) => PathBuf::from(program),
            None => std::env::current_exe()
                .map_err(DriverError::Locate)?
                .with_file_name("vmlet-driver"),
        };
        let spawn_error = |source| DriverError::Spawn {
            program: program.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(spawn_error)?;
        let pipes = child.stdin.take().zip(child.stdout.take());
        let Some((stdin, stdout)) = pipes else {
            return Err(spawn_error(io::Error::other("no pipe to its stdin or stdout")));
        };
        let (requests, lines) = mpsc::unbounded_channel();
        let (close, closed) = oneshot::channel();
        let (kill, killed) = oneshot::channel();
        let (state_sender, states) = watch::channel(DomainState::NoState);
        let connection = Arc::new(Connection {
            requests,
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(write_requests(stdin, lines, closed));
        let exited = tokio::spawn(read_events(
            child,
            stdout,
            Arc::clone(&connection),
            state_sender,
            killed,
        ));
        Ok(DriverProcess {
            connection,
            states,
            exited,
            close: Some(close),
            kill: Some(kill),
        })
    }

    /// Opens libvirt's QEMU driver with its files in `run_dir/libvirt` and QEMU's capabilities cached in
    /// `cache_dir` (about 50 ms with a warm cache, 1.5 s without), then defines and starts the domain.
    pub async fn start(&self, spec: &DomainSpec, run_dir: &Path, cache_dir: &Path) -> Result<Domain, DriverError> {
        let mut events = self.connection.request(Command::Start {
            domain: Box::new(spec.clone()),
            run_dir: run_dir.to_owned(),
            cache_dir: cache_dir.to_owned(),
        })?;
        loop {
            match events.recv().await.ok_or(DriverError::Gone)? {
                Event::Ready {
                    qemu_version,
                    elapsed_ms,
                    ..
                } => tracing::info!(qemu = qemu_version, elapsed_ms, "libvirt ready"),
                Event::Started { .. } => {
                    return Ok(Domain {
                        name: spec.name.clone(),
                        connection: Arc::clone(&self.connection),
                        states: self.states.clone(),
                    });
                }
                Event::Error { message, .. } => return Err(DriverError::Failed(message)),
                other => return Err(DriverError::Unexpected(other)),
            }
        }
    }

    /// Closes the driver's stdin and waits until it has destroyed the domain and exited; kills it after
    /// [`STOP_BOUND`].
    pub async fn stop(mut self) {
        drop(self.close.take());
        if tokio::time::timeout(STOP_BOUND, &mut self.exited).await.is_err() {
            tracing::warn!(
                bound_secs = STOP_BOUND.as_secs(),
                "vmlet-driver did not exit: killing it"
            );
            if let Some(kill) = self.kill.take() {
                let _ = kill.send(());
            }
            let _ = (&mut self.exited).await;
        }
    }
}

/// The pod's running domain. Clones share it.
#[derive(Clone)]
pub struct Domain {
    name: String,
    connection: Arc<Connection>,
    states: watch::Receiver<DomainState>,
}

impl Domain {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state as the driver polls it, every 200 ms; `changed()` on the receiver wakes on every change, including
    /// QEMU dying, and fails once the driver has exited.
    pub fn watch_state(&self) -> watch::Receiver<DomainState> {
        self.states.clone()
    }

    /// Presses the ACPI power button; the guest decides whether and when to power off.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.connection.call(Command::Shutdown).await
    }

    /// Kills QEMU. A domain that has already stopped is left as it is.
    pub async fn destroy(&self) -> Result<(), DriverError> {
        self.connection.call(Command::Destroy).await
    }

    /// Stops the guest's vCPUs; QEMU keeps its memory.
    pub async fn pause(&self) -> Result<(), DriverError> {
        self.connection.call(Command::Pause).await
    }

    pub async fn resume(&self) -> Result<(), DriverError> {
        self.connection.call(Command::Resume).await
    }
}

/// The launcher's end of the pipes.
struct Connection {
    /// Lines for the driver's stdin.
    requests: mpsc::UnboundedSender<String>,
    /// Where to deliver the events that answer each request; `None` once the driver has exited.
    pending: Mutex<Option<HashMap<u64, mpsc::UnboundedSender<Event>>>>,
    next_id: AtomicU64,
}

impl Connection {
    /// Sends `command`; the receiver gets the events that answer it, and ends if the driver exits first.
    fn request(&self, command: Command) -> Result<mpsc::UnboundedReceiver<Event>, DriverError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = to_line(&Request { id, command }).map_err(DriverError::Encode)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .map_err(|_| DriverError::Gone)?
            .as_mut()
            .ok_or(DriverError::Gone)?
            .insert(id, sender);
        self.requests.send(line).map_err(|_| DriverError::Gone)?;
        Ok(receiver)
    }

    /// Sends a command that the driver answers with `done` or `error`.
    async fn call(&self, command: Command) -> Result<(), DriverError> {
        match self.request(command)?.recv().await.ok_or(DriverError::Gone)? {
            Event::Done { .. } => Ok(()),
            Event::Error { message, .. } => Err(DriverError::Failed(message)),
            other => Err(DriverError::Unexpected(other)),
        }
    }

    fn deliver(&self, event: Event) {
        let Some(id) = event.request_id() else { return };
        let Ok(mut pending) = self.pending.lock() else { return };
        let Some(pending) = pending.as_mut() else { return };
        let delivered = if event.is_final() {
            pending.remove(&id).map(|sender| sender.send(event))
        } else {
            pending.get(&id).map(|sender| sender.send(event))
        };
        if delivered.is_none() {
            tracing::warn!(id, "vmlet-driver answered a request that was never made");
        }
    }

    /// Fails every request in flight and every later one.
    fn close(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            *pending = None;
        }
    }
}

async fn write_requests(
    mut stdin: ChildStdin,
    mut lines: mpsc::UnboundedReceiver<String>,
    mut close: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                // A driver that cannot read is gone, which the reader of its stdout reports.
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            _ = &mut close => break,
        }
    }
}

async fn read_events(
    mut child: Child,
    stdout: ChildStdout,
    connection: Arc<Connection>,
    states: watch::Sender<DomainState>,
    mut kill: oneshot::Receiver<()>,
) {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            Ok(()) = &mut kill => {
                let _ = child.start_kill();
                break;
            }
        };
        match line {
            Ok(Some(line)) => match serde_json::from_str(&line) {
                Ok(Event::State { state }) => {
                    states.send_replace(state);
                }
                // The domain runs from now on; no state change precedes `started`.
                Ok(event @ Event::Started { .. }) => {
                    states.send_replace(DomainState::Running);
                    connection.deliver(event);
                }
                Ok(event) => connection.deliver(event),
                Err(error) => tracing::warn!(%error, line, "vmlet-driver wrote something other than an event"),
            },
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%error, "cannot read vmlet-driver's events");
                break;
            }
        }
    }
    connection.close();
    match child.wait().await {
        Ok(status) if status.success() => tracing::info!("vmlet-driver exited"),
        Ok(status) => tracing::error!(%status, "vmlet-driver exited"),
        Err(error) => tracing::error!(%error, "cannot wait for vmlet-driver"),
    }
    // Dropping `states` here tells every watcher that the domain is out of reach.
}
