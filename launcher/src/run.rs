//! `vmlet-launcher run`: the VM pod's entrypoint, from the pod's network to a running guest with the pod's identity.
//!
//! In order: check the VM spec (before touching anything), wire the pod interface to the guest with the binding the
//! spec chose, serve the guest DHCP, start libvirt's QEMU driver and the domain, serve the control socket, then wait until the guest ends. On
//! SIGTERM the guest gets an ACPI shutdown and, after its grace period, is destroyed. The exit code says how the
//! guest ended ([`LauncherExit`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use vmlet_control::run_dir::{CACHE_DIR_ENV, DEFAULT_CACHE_DIR, DEFAULT_RUN_DIR};
use vmlet_control::{
    Command, DhcpStatus, Exit, GuestAgentStatus, GuestExec, GuestExecResult, InterfaceStatus, LauncherExit, LeaseState,
    Phase, PodVolumes, RunDir, Status,
};
use vmlet_dhcp::runner::{Runner, Status as DhcpRunnerStatus};
use vmlet_dhcp::server::LeaseState as DhcpLeaseState;
use vmlet_dhcp::v6;

use vmlet_domain::InterfaceSpec;

use crate::driver::{self, Domain, DomainState, DriverProcess, ShutOffReason, accel};
use crate::guest_agent::{self, Agent};
use crate::network;
use crate::network::binding::{BindingRequest, Served, binding_name};
use crate::spec::{self, SPEC_ENV, VmSpec};
use crate::storage::{self, Storage};
use crate::usage;
use crate::vm_domain;

/// How long a pause or resume may take to show in the polled domain state before the control socket answers.
const STATE_SETTLE: Duration = Duration::from_secs(2);

#[derive(clap::Args)]
pub struct Args {
    /// The VM: a VirtualMachine manifest or its template, YAML or JSON. Without it, $VMLET_VM_SPEC holds it.
    #[arg(long)]
    vm_spec: Option<PathBuf>,
    /// The VM's name, when the spec is a bare template.
    #[arg(long, env = "VMLET_VM_NAME")]
    name: Option<String>,
    /// The pod interface the guest takes over.
    #[arg(long, default_value = "eth0")]
    interface: String,
    /// The pod's private run directory: network state, libvirt, sockets, console log.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// QEMU's capability cache, shared by the pods on a node that run the same launcher image.
    #[arg(long, env = CACHE_DIR_ENV, default_value = DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// The pod's resolver configuration, whose servers and search domains the guest gets.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Where the pod provides the data of the VM's volumes (containerDisk images, claims, Secrets).
    #[arg(long, default_value = vmlet_control::pod_volumes::DEFAULT_ROOT)]
    volumes_dir: PathBuf,
    /// Where the launcher's last error is written when it cannot run the VM, for whoever started it to show.
    /// Without it, Kubernetes' `/dev/termination-log` when the kubelet made it.
    #[arg(long, env = "VMLET_TERMINATION_LOG")]
    termination_log: Option<PathBuf>,
}

/// The file the kubelet reads a container's termination message from (its `terminationMessagePath`).
const KUBERNETES_TERMINATION_LOG: &str = "/dev/termination-log";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let termination_log = args.termination_log.clone().or_else(|| {
        // Only a file the kubelet made: a launcher run by hand must not make one in the host's /dev.
        let kubelets = PathBuf::from(KUBERNETES_TERMINATION_LOG);
        kubelets.is_file().then_some(kubelets)
    });
    let result = run_vm(args);
    if let (Err(err), Some(path)) = (&result, termination_log) {
        // Best effort: the error goes to stderr as well, and to the pod's log.
        let _ = std::fs::write(path, termination_message(err));
    }
    result
}

/// The error as one line, as a VM's condition shows it.
fn termination_message(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

fn run_vm(args: Args) -> anyhow::Result<ExitCode> {
    let vm = spec::load(args.vm_spec.as_deref(), std::env::var(SPEC_ENV).ok(), args.name.clone())?;
    // Validation guarantees a binding per interface; a VM without an interface has no network to rewire.
    let Some(interface) = vm.spec.domain.devices.interfaces.first() else {
        anyhow::bail!("a VM without a network interface is not supported by this launcher yet");
    };
    let network = vm
        .spec
        .networks
        .iter()
        .find(|network| network.name == interface.name)
        .and_then(|network| network.pod.as_ref());
    let request = BindingRequest {
        subdomain: vm.spec.subdomain.clone(),
        ..BindingRequest::new(
            interface,
            network,
            &args.interface,
            &args.run_dir,
            &args.resolv_conf,
            vm.hostname(),
        )?
    };
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("cannot create the run directory {}", args.run_dir.display()))?;
    // Before the network: a volume the pod cannot serve must leave the pod as the CNI made it.
    let prepared = Instant::now();
    let storage = storage::prepare(&vm, &PodVolumes::new(&args.volumes_dir), &args.run_dir)?;
    // Overlays and seeds are made here, before the network: the benchmarks time this step from this line.
    info!(
        disks = storage.disks.len(),
        elapsed_ms = prepared.elapsed().as_millis() as u64,
        "storage prepared"
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let exit = runtime.block_on(launch(vm, request, storage, args))?;
    info!(ending = ?exit, "guest ended");
    Ok(ExitCode::from(LauncherExit::from(exit).code()))
}

/// How the guest ended, from the domain's last state and whether it was asked to shut down.
fn guest_exit(state: DomainState, shutdown_requested: bool) -> Exit {
    match state {
        DomainState::ShutOff(ShutOffReason::Shutdown) if shutdown_requested => Exit::ShutDown,
        DomainState::ShutOff(ShutOffReason::Shutdown) => Exit::PoweredOff,
        DomainState::ShutOff(ShutOffReason::Destroyed) => Exit::Destroyed,
        _ => Exit::Crashed,
    }
}

async fn launch(vm: VmSpec, request: BindingRequest, storage: Storage, args: Args) -> anyhow::Result<Exit> {
    let run_dir = args.run_dir;
    let files = RunDir::new(&run_dir);
    let accel = accel::choose()?;
    let binding = binding_name(request.binding);
    info!(vm = %vm.name, ?accel, interface = %args.interface, binding, "starting");

    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(connection);
    let network = network::binding::setup(&request, &handle)
        .await
        .with_context(|| format!("cannot set up the {binding} binding"))?;
    info!(tap = %network.tap, guest_mac = %network.guest_mac, mtu = network.mtu, "network ready");

    let (stop_dhcp, dhcp_stopped) = watch::channel(false);
    let dhcp_status = match network.dhcpv4.clone() {
        Some(Served { interface, config }) => {
            let runner =
                Runner::bind(config, &interface, Some(files.dhcp_lease())).context("cannot start the DHCP server")?;
            let status = runner.status();
            let mut stopped = dhcp_stopped.clone();
            tokio::spawn(runner.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }));
            Some(status)
        }
        None => None,
    };
    let dhcpv6_status = match network.dhcpv6.clone() {
        Some(Served { interface, config }) => {
            let mut runner = v6::runner::Runner::bind(config, &interface)
                .context("cannot start the DHCPv6 server and router advertisements")?;
            if let Some(search) = network.router_search.clone() {
                let updates = search
                    .start()
                    .context("cannot look for the IPv6 gateway's link-local address")?;
                runner = runner.advertise_updates(updates);
            }
            let status = runner.status();
            let mut stopped = dhcp_stopped.clone();
            tokio::spawn(runner.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }));
            Some(status)
        }
        None => None,
    };

    for relay in &network.loopback_relays {
        let bound = relay
            .bind()
            .await
            .with_context(|| format!("cannot listen on {} for the guest", relay.listen))?;
        let mut stopped = dhcp_stopped.clone();
        tokio::spawn(bound.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
    }

    let nic = InterfaceSpec {
        tap: network.tap.clone(),
        mac: network.guest_mac,
        mtu: Some(network.mtu),
        model: vm_domain::nic_model(&vm.spec),
    };
    let domain_spec = vm_domain::plan(&vm, nic, storage, accel, &run_dir)?;
    let started = Instant::now();
    let driver = DriverProcess::spawn()?;
    let domain = driver
        .start(&domain_spec, &run_dir, &args.cache_dir)
        .await
        .context("cannot start the domain")?;
    info!(domain = %domain.name(), elapsed_ms = started.elapsed().as_millis() as u64, "domain started");

    let interface = InterfaceStatus {
        name: vm
            .spec
            .domain
            .devices
            .interfaces
            .first()
            .map(|i| i.name.clone())
            .unwrap_or_default(),
        mac: network.guest_mac.to_string(),
        ip_addresses: network.addresses.iter().map(ToString::to_string).collect(),
        binding: binding.to_owned(),
    };
    // At once: the agent's channel serves one client, and the launcher must be it (see `guest_agent`).
    let (agent_status, guest_agent) = watch::channel(None);
    let agent = Agent::new(files.guest_agent_socket(), guest_agent::Timeouts::default());
    let (agent_requests, agent_inbox) = mpsc::channel(4);
    tokio::spawn(guest_agent::poll(agent, agent_status, agent_inbox));
    let (commands, mut requests) = mpsc::channel(8);
    let control = Arc::new(Control {
        domain: domain.clone(),
        states: domain.watch_state(),
        dhcp: dhcp_status,
        dhcpv6: dhcpv6_status,
        qemu_pid_file: driver::qemu_pid_file(&run_dir, domain.name()),
        interface,
        guest_agent,
        agent_requests,
        started_at: SystemTime::now(),
        phase: Mutex::new((Phase::Running, None)),
        commands,
    });
    let socket = files.control_socket();
    let listener = bind_control_socket(&socket)?;
    tokio::spawn(vmlet_control::serve(listener, Arc::clone(&control)));

    let grace = Duration::from_secs(vm.spec.grace_period_seconds().into());
    let exit = supervise(&domain, &control, &mut requests, grace).await?;
    control.set_phase(Phase::Stopped, Some(exit));
    let _ = stop_dhcp.send(true);
    driver.stop().await;
    Ok(exit)
}

/// Waits until the guest ends, turning SIGTERM and control requests into shutdown and destroy.
async fn supervise(
    domain: &Domain,
    control: &Control,
    requests: &mut mpsc::Receiver<Command>,
    grace: Duration,
) -> anyhow::Result<Exit> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut states = domain.watch_state();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let state = *states.borrow_and_update();
        if state.is_stopped() {
            return Ok(guest_exit(state, deadline.is_some()));
        }
        let shutdown_expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let request = tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    anyhow::bail!("lost track of the domain's state");
                }
                continue;
            }
            _ = sigterm.recv() => Command::Shutdown,
            _ = sigint.recv() => Command::Shutdown,
            Some(command) = requests.recv() => command,
            () = shutdown_expired => {
                warn!(grace_secs = grace.as_secs(), "the guest did not shut down within its grace period: destroying it");
                Command::Kill
            }
        };
        match request {
            Command::Shutdown if deadline.is_none() => {
                info!(grace_secs = grace.as_secs(), "shutting the guest down");
                deadline = Some(tokio::time::Instant::now() + grace);
                control.set_phase(Phase::ShuttingDown, None);
                if let Err(err) = domain.shutdown().await {
                    warn!(error = %err, "ACPI shutdown failed: destroying the guest");
                    domain.destroy().await?;
                }
            }
            Command::Kill => domain.destroy().await?,
            _ => {}
        }
    }
}

/// The control socket's view of the launcher.
struct Control {
    domain: Domain,
    states: watch::Receiver<DomainState>,
    dhcp: Option<watch::Receiver<DhcpRunnerStatus>>,
    dhcpv6: Option<watch::Receiver<v6::runner::Status>>,
    /// Where libvirt keeps the pid of the guest's QEMU.
    qemu_pid_file: PathBuf,
    interface: InterfaceStatus,
    guest_agent: watch::Receiver<Option<Box<GuestAgentStatus>>>,
    /// Pings and programs for the guest agent, which [`guest_agent::poll`] carries out between its polls.
    agent_requests: mpsc::Sender<guest_agent::Request>,
    started_at: SystemTime,
    phase: Mutex<(Phase, Option<Exit>)>,
    /// Shutdown and kill go to [`supervise`], which owns the grace period.
    commands: mpsc::Sender<Command>,
}

impl Control {
    fn set_phase(&self, phase: Phase, exit: Option<Exit>) {
        if let Ok(mut guard) = self.phase.lock() {
            *guard = (phase, exit);
        }
    }

    fn snapshot(&self) -> Status {
        let state = *self.states.borrow();
        let (recorded, exit) = self.phase.lock().map(|g| *g).unwrap_or((Phase::Running, None));
        let phase = match (recorded, state) {
            (Phase::Running, DomainState::Paused(_)) => Phase::Paused,
            (phase, _) => phase,
        };
        let started_at = self
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Status {
            phase,
            domain_state: Some(state.to_string()),
            interfaces: vec![self.interface.clone()],
            dhcp: self.dhcp.as_ref().map(|dhcp| dhcp_status(&dhcp.borrow())),
            dhcpv6: self.dhcpv6.as_ref().map(|v6| Box::new(dhcpv6_status(&v6.borrow()))),
            router_advertisements: self
                .dhcpv6
                .as_ref()
                .map(|v6| Box::new(advertisement_status(&v6.borrow()))),
            qemu: usage::of_pid_file(&self.qemu_pid_file),
            launcher_pid: std::process::id(),
            started_at,
            uptime_secs: self.started_at.elapsed().unwrap_or_default().as_secs(),
            exit,
            guest_agent: self.guest_agent.borrow().clone(),
        }
    }
}

fn dhcp_status(status: &DhcpRunnerStatus) -> DhcpStatus {
    let c = status.counters;
    let counters = [
        ("answered", c.answered),
        ("naks", c.naks),
        ("ignored", c.ignored),
        ("malformed", c.malformed),
        ("releases", c.releases),
        ("declines", c.declines),
        ("send_errors", status.send_errors),
    ];
    DhcpStatus {
        lease: status.lease.map(|lease| lease_state(lease.state)),
        counters: counters.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

fn lease_state(state: DhcpLeaseState) -> LeaseState {
    match state {
        DhcpLeaseState::Offered => LeaseState::Offered,
        DhcpLeaseState::Bound => LeaseState::Bound,
        DhcpLeaseState::Released => LeaseState::Released,
        DhcpLeaseState::Declined => LeaseState::Declined,
    }
}

fn dhcpv6_status(status: &v6::runner::Status) -> DhcpStatus {
    let c = status.dhcp;
    let counters = [
        ("answered", c.answered),
        ("refused", c.refused),
        ("ignored", c.ignored),
        ("malformed", c.malformed),
        ("releases", c.releases),
        ("declines", c.declines),
        ("dropped_frames", status.dropped_frames),
        ("send_errors", status.send_errors),
    ];
    DhcpStatus {
        lease: status.lease.map(|l| lease_state(l.state)),
        counters: counters.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

fn advertisement_status(status: &v6::runner::Status) -> DhcpStatus {
    let counters = [
        ("solicited", status.solicited_advertisements),
        ("unsolicited", status.unsolicited_advertisements),
        ("ignored", status.ignored_solicitations),
    ];
    DhcpStatus {
        lease: None,
        counters: counters.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

impl vmlet_control::Handler for Control {
    async fn status(&self) -> Status {
        self.snapshot()
    }

    async fn act(&self, command: Command) -> Result<Status, vmlet_control::Error> {
        let refuse = |kind, message: String| vmlet_control::Error { kind, message };
        if self.states.borrow().is_stopped() {
            return Err(refuse(
                vmlet_control::ErrorKind::InvalidState,
                "the guest has stopped".into(),
            ));
        }
        match command {
            Command::Pause | Command::Resume => {
                let paused = matches!(*self.states.borrow(), DomainState::Paused(_));
                if paused == (command == Command::Pause) {
                    let now = if paused { "paused" } else { "not paused" };
                    return Err(refuse(
                        vmlet_control::ErrorKind::InvalidState,
                        format!("the guest is {now}"),
                    ));
                }
                let result = if command == Command::Pause {
                    self.domain.pause().await
                } else {
                    self.domain.resume().await
                };
                if let Err(err) = result {
                    return Err(refuse(vmlet_control::ErrorKind::Failed, err.to_string()));
                }
                // The state is polled: answer with the state the command led to, not the one before it.
                let paused = command == Command::Pause;
                let mut states = self.states.clone();
                let settled = states.wait_for(|state| matches!(state, DomainState::Paused(_)) == paused);
                let _ = tokio::time::timeout(STATE_SETTLE, settled).await;
            }
            Command::Shutdown | Command::Kill => {
                if self.commands.send(command).await.is_err() {
                    return Err(refuse(
                        vmlet_control::ErrorKind::InvalidState,
                        "the launcher is stopping".into(),
                    ));
                }
            }
            Command::GuestPing => {
                let (reply, answer) = oneshot::channel();
                self.ask_agent(guest_agent::Request::Ping(reply), answer).await?;
            }
            // Answered by `guest_exec`, the server never passes it here.
            Command::Status | Command::GuestExec(_) => {}
        }
        Ok(self.snapshot())
    }

    async fn guest_exec(&self, exec: GuestExec) -> Result<GuestExecResult, vmlet_control::Error> {
        if self.states.borrow().is_stopped() {
            return Err(vmlet_control::Error {
                kind: vmlet_control::ErrorKind::InvalidState,
                message: "the guest has stopped".into(),
            });
        }
        let (reply, answer) = oneshot::channel();
        self.ask_agent(guest_agent::Request::Exec(exec, reply), answer).await
    }
}

impl Control {
    async fn ask_agent<T>(
        &self,
        request: guest_agent::Request,
        answer: oneshot::Receiver<Result<T, guest_agent::AgentError>>,
    ) -> Result<T, vmlet_control::Error> {
        let failed = |err: guest_agent::AgentError| vmlet_control::Error {
            kind: vmlet_control::ErrorKind::Failed,
            message: err.to_string(),
        };
        self.agent_requests
            .send(request)
            .await
            .map_err(|_| failed(guest_agent::AgentError::Stopped))?;
        answer
            .await
            .map_err(|_| failed(guest_agent::AgentError::Stopped))?
            .map_err(failed)
    }
}

/// Binds the control socket, replacing one a previous launcher in this pod left behind; only root may connect.
fn bind_control_socket(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot replace {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Creates a sparse file of `bytes` for an empty disk, keeping one that exists: a restarted launcher must not wipe
/// what the guest wrote.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_domain_state_says_how_the_guest_ended() {
        let shutdown = DomainState::ShutOff(ShutOffReason::Shutdown);
        assert_eq!(guest_exit(shutdown, false), Exit::PoweredOff);
        assert_eq!(guest_exit(shutdown, true), Exit::ShutDown);
        assert_eq!(
            guest_exit(DomainState::ShutOff(ShutOffReason::Destroyed), true),
            Exit::Destroyed
        );
        assert_eq!(
            guest_exit(DomainState::ShutOff(ShutOffReason::Crashed), false),
            Exit::Crashed
        );
        assert_eq!(guest_exit(DomainState::Crashed, false), Exit::Crashed);
    }

    #[test]
    fn every_dhcp_lease_state_has_its_word_on_the_wire() {
        let words = [
            DhcpLeaseState::Offered,
            DhcpLeaseState::Bound,
            DhcpLeaseState::Released,
            DhcpLeaseState::Declined,
        ]
        .map(|state| lease_state(state).to_string());
        assert_eq!(words, ["offered", "bound", "released", "declined"]);
    }

    #[test]
    fn the_termination_message_is_the_whole_error_on_one_line() {
        let err = anyhow::anyhow!("No such file or directory\n(os error 2)").context("could not open kernel file 'k'");
        assert_eq!(
            termination_message(&err),
            "could not open kernel file 'k': No such file or directory (os error 2)"
        );
    }
}
