//! `vmlet-handler standalone`: both roles of the handler on one machine with no cluster.
//!
//! VMs come from `VirtualMachine` manifests in a folder; each VM's status is written beside its manifest
//! (`NAME.status.yaml`, or `NAMESPACE_NAME.status.yaml` outside the `default` namespace). A VM's "pod" is a network
//! namespace on a host bridge with an address from a local pool ([`vmlet_podnet`]) and a shim that runs the launcher
//! in it as PID 1, exactly as in a real pod. The run strategy is decided by the same [`lifecycle`] code as the
//! controller's, and the status from the launcher's control socket by the same [`vm_status`] code as the node's.
//!
//! The handler keeps no state of its own: pods live in the state folder ([`pod`]) and status files, so a handler
//! that is stopped or killed and started again re-adopts running VMs without restarting them.

mod decide;
pub(crate) mod manifests;
mod pod;
mod probing;
pub mod shim;
mod status_file;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipnet::{Ipv4Net, Ipv6Net};
use jiff::Timestamp;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use vmlet_api::defaults::{ClusterDefaults, DefaultBinding, GRACE_PERIOD_SECONDS};
use vmlet_api::{PrintableStatus, RUN_ANNOTATION, ReportedState, RunStrategy, VirtualMachine, VirtualMachineStatus};
use vmlet_podnet::{Host, NodeNetwork, PodNetwork};

use crate::lifecycle::{self, Exit, Launcher, LauncherAction, NodeHealth, Observation, RunRequest};
use crate::metrics::{self, Metrics};
use crate::probe;
use crate::vm_status::{self, NodeStatus};
use decide::{PodAction, PodView};
use manifests::{Folder, Manifest, VmKey};
use pod::{PodDir, PodRecord, ShimState, StopFor, now_secs};
use volumes::{ImageNeed, Layout, NotReady, Pulled};

pub use status_file::{StatusArgs, print_status};

/// How long a launcher that was asked to stop may take beyond its guest's grace period before it is killed.
const STOP_MARGIN: Duration = Duration::from_secs(15);
/// A shim records itself within milliseconds of its start; one that has not after this long never will.
const SHIM_START: Duration = Duration::from_secs(60);
/// A launcher answers its control socket in milliseconds; one that takes longer is busy or stuck.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// The kubelet's image pull back-off: 10 s after the first failure, doubling up to 5 minutes.
const PULL_BACKOFF: Duration = Duration::from_secs(10);
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(clap::Args)]
pub struct Args {
    /// The folder of VirtualMachine manifests; status files are written beside them.
    #[arg(long)]
    manifests: PathBuf,
    /// Where pods live: their records, launcher run dirs and logs.
    #[arg(long, default_value = "/var/lib/vmlet/standalone")]
    state_dir: PathBuf,
    /// The host bridge the pods hang off.
    #[arg(long, default_value = "vmlet0")]
    bridge: String,
    /// The pool pods take their addresses from; its first address is the bridge's, the pods' gateway.
    #[arg(long, default_value = "10.111.0.0/24")]
    pod_cidr: Ipv4Net,
    /// An IPv6 pool too, for dual-stack pods: its first address is the bridge's, and each pod's address is at the
    /// offset of its IPv4 one. Turns on the host's IPv6 forwarding, so the host no longer takes router
    /// advertisements: none without it.
    #[arg(long)]
    pod_cidr_v6: Option<Ipv6Net>,
    /// The MTU of the bridge and the pods' interfaces.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// DNS servers for the pods (and so the guests). Without any, the host's own, loopback ones left out.
    #[arg(long)]
    dns: Vec<Ipv4Addr>,
    /// Pod network namespaces are named PREFIX + namespace + "-" + name.
    #[arg(long, default_value = "vmlet-")]
    netns_prefix: String,
    /// The launcher program. Without it, `vmlet-launcher` beside this program.
    #[arg(long)]
    launcher: Option<PathBuf>,
    /// QEMU's capability cache, shared by every VM of this machine.
    #[arg(long, env = vmlet_control::run_dir::CACHE_DIR_ENV, default_value = vmlet_control::run_dir::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// How often the manifests and the pods are looked at.
    #[arg(long, default_value_t = 1.0)]
    interval_secs: f64,
    /// The binding of the interface given to a VM that names no network: bridge or masquerade.
    #[arg(long, default_value_t = DefaultBinding::Bridge)]
    default_network_binding: DefaultBinding,
    /// PEM certificates to trust, beside the system's, for registries that containerDisk images come from.
    #[arg(long)]
    registry_ca: Option<PathBuf>,
    /// A Docker `config.json` with the registries' credentials (its `auths`).
    #[arg(long)]
    registry_auth: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`); none without it.
    #[arg(long)]
    metrics_address: Option<std::net::SocketAddr>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(Standalone::new(args)?.run())
}

struct Standalone {
    manifests: PathBuf,
    pods_dir: PathBuf,
    node: NodeNetwork,
    node_name: String,
    dns: Vec<Ipv4Addr>,
    netns_prefix: String,
    handler: PathBuf,
    launcher: PathBuf,
    cache_dir: PathBuf,
    interval: Duration,
    /// The shims this process started, reaped as they end (a shim of an earlier handler is reaped by init).
    shims: Vec<std::process::Child>,
    /// Problems already reported, so each is logged once.
    reported: BTreeSet<String>,
    /// The machine's images, shared by every VM.
    images: vmlet_oci::Store,
    registry: vmlet_oci::RegistryOptions,
    /// Persistent volume claims' disks, by claim.
    claims_dir: PathBuf,
    /// Each VM's uid, kept while its manifest exists.
    uids_dir: PathBuf,
    defaults: ClusterDefaults,
    /// Image pulls for VMs about to start. Lost with the process, which costs nothing: a new handler pulls
    /// again, and the store has what was pulled.
    pulls: BTreeMap<VmKey, Pull>,
    metrics: Arc<Metrics>,
    metrics_address: Option<std::net::SocketAddr>,
    /// What each VM's launcher answers left in the metrics.
    launcher_series: BTreeMap<VmKey, metrics::LauncherSeries>,
    /// The VMs that have series of their own in the metrics.
    exported: BTreeSet<VmKey>,
    /// The probes of the VMs whose guests run. Lost with the process: a new handler probes afresh, as a restarted
    /// kubelet does.
    probes: probing::ProbeRunner,
}

/// The images of a VM about to start.
enum Pull {
    Running {
        needs: Vec<ImageNeed>,
        failures: u32,
        task: tokio::task::JoinHandle<Result<Pulled, NotReady>>,
    },
    Failed {
        needs: Vec<ImageNeed>,
        failures: u32,
        error: NotReady,
        retry_at: std::time::Instant,
    },
    Done {
        needs: Vec<ImageNeed>,
        pulled: Pulled,
    },
}

impl Pull {
    fn needs(&self) -> &[ImageNeed] {
        match self {
            Pull::Running { needs, .. } | Pull::Failed { needs, .. } | Pull::Done { needs, .. } => needs,
        }
    }
}

/// Whether a VM's pod can be made now.
enum Readiness {
    Ready(Layout),
    /// Its images are being pulled.
    Pulling,
    NotReady(NotReady),
}

/// One VM as this pass of the loop sees it.
struct Seen<'a> {
    key: &'a VmKey,
    manifest: Option<&'a Manifest>,
    pod: Option<&'a PodDir>,
    folder: &'a Folder,
}

impl Standalone {
    fn new(args: Args) -> anyhow::Result<Standalone> {
        let handler = std::env::current_exe().context("cannot find this program")?;
        let launcher = match args.launcher {
            Some(path) => path,
            None => handler.with_file_name("vmlet-launcher"),
        };
        anyhow::ensure!(launcher.is_file(), "the launcher {} does not exist", launcher.display());
        anyhow::ensure!(
            args.manifests.is_dir(),
            "the manifest folder {} does not exist",
            args.manifests.display()
        );
        let dns = if args.dns.is_empty() { host_dns() } else { args.dns };
        let node_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let images = vmlet_oci::Store::open(args.state_dir.join("images")).context("cannot open the image store")?;
        Ok(Standalone {
            manifests: args.manifests,
            pods_dir: args.state_dir.join("pods"),
            images,
            registry: vmlet_oci::RegistryOptions {
                ca_file: args.registry_ca,
                auth_file: args.registry_auth,
                ..vmlet_oci::RegistryOptions::default()
            },
            claims_dir: args.state_dir.join("claims"),
            uids_dir: args.state_dir.join("uids"),
            defaults: ClusterDefaults {
                network_binding: args.default_network_binding,
            },
            pulls: BTreeMap::new(),
            node: NodeNetwork {
                bridge: args.bridge,
                pool: args.pod_cidr,
                pool_v6: args.pod_cidr_v6,
                mtu: args.mtu,
            },
            node_name,
            dns,
            netns_prefix: args.netns_prefix,
            handler,
            launcher,
            cache_dir: args.cache_dir,
            interval: Duration::from_secs_f64(args.interval_secs.max(0.05)),
            shims: Vec::new(),
            reported: BTreeSet::new(),
            metrics: Arc::new(Metrics::default()),
            metrics_address: args.metrics_address,
            launcher_series: BTreeMap::new(),
            exported: BTreeSet::new(),
            probes: probing::ProbeRunner::default(),
        })
    }

    async fn run(mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.pods_dir)
            .with_context(|| format!("cannot create {}", self.pods_dir.display()))?;
        std::fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("cannot create {}", self.cache_dir.display()))?;
        Host.ensure(&self.node).context("cannot set up the host bridge")?;
        if let Some(address) = self.metrics_address {
            metrics::serve(address, self.metrics.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {address}"))?;
        }
        info!(
            manifests = %self.manifests.display(),
            bridge = %self.node.bridge,
            pool = %self.node.pool,
            pool_v6 = ?self.node.pool_v6,
            "standalone mode started"
        );
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        loop {
            if let Err(err) = self.pass().await {
                warn!(error = format!("{err:#}"), "reconcile pass failed");
            }
            self.shims.retain_mut(|shim| matches!(shim.try_wait(), Ok(None)));
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        // The VMs run on without the handler; the next one re-adopts them.
        info!("standalone mode stopped; the VMs keep running");
        Ok(())
    }

    /// Looks at every manifest and every pod once.
    async fn pass(&mut self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let mut folder = manifests::read(&self.manifests, self.defaults)
            .with_context(|| format!("cannot read {}", self.manifests.display()))?;
        self.give_uids(&mut folder)?;
        volumes::ensure_claims(&folder.claims, &self.claims_dir)
            .with_context(|| format!("cannot make the claims' disks in {}", self.claims_dir.display()))?;
        self.pulls.retain(|key, _| folder.vms.contains_key(key));
        for problem in &folder.unnamed {
            if self.reported.insert(problem.clone()) {
                warn!(problem = %problem, "manifest ignored");
            }
        }
        for (key, manifest) in &folder.vms {
            if let Err(problem) = &manifest.vm
                && self.reported.insert(format!("{key}: {problem}"))
            {
                warn!(vm = %key, file = %manifest.file.display(), problem = %problem, "manifest not valid");
            }
        }
        let pods = self.pods()?;
        self.remove_unclaimed(&folder, &pods);
        let with_status = status_file::keys(&self.manifests)?;
        let keys: BTreeSet<&VmKey> = folder.vms.keys().chain(pods.keys()).chain(&with_status).collect();
        let mut statuses = BTreeMap::new();
        for key in keys {
            let seen = Seen {
                key,
                manifest: folder.vms.get(key),
                pod: pods.get(key),
                folder: &folder,
            };
            match self.reconcile(&seen).await {
                Ok(Some(status)) => {
                    statuses.insert(key.clone(), status);
                }
                Ok(None) => {}
                Err(err) => warn!(vm = %key, error = format!("{err:#}"), "cannot reconcile"),
            }
        }
        self.count_phases(&statuses);
        self.metrics
            .reconcile_seconds
            .get_or_create(&metrics::RoleLabels {
                role: "standalone".into(),
            })
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The VMs by phase, and the series of VMs that are gone forgotten.
    fn count_phases(&mut self, statuses: &BTreeMap<VmKey, VirtualMachineStatus>) {
        self.metrics.phases.clear();
        for status in statuses.values() {
            let Some(phase) = status.phase else { continue };
            self.metrics
                .phases
                .get_or_create(&metrics::PhaseLabels::new(phase, self.node_name.clone()))
                .inc();
        }
        let gone: Vec<VmKey> = self
            .exported
            .iter()
            .filter(|k| !statuses.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let seen = self.launcher_series.remove(&key).unwrap_or_default();
            self.metrics.forget(&vm_labels(&key), &seen);
            self.exported.remove(&key);
        }
    }

    /// What a VM's status change says for the metrics: how long it took to run and to get its first lease, its
    /// restarts and failures.
    fn count_change(
        &mut self,
        key: &VmKey,
        pod: Option<&PodDir>,
        previous: &VirtualMachineStatus,
        status: &VirtualMachineStatus,
        events: &[lifecycle::Event],
    ) {
        let since_creation = || {
            let record = pod?.read_record().ok()?;
            let created = std::time::UNIX_EPOCH + Duration::new(record.created_at, record.created_at_nanos);
            std::time::SystemTime::now().duration_since(created).ok()
        };
        if status.phase == Some(vmlet_api::Phase::Running)
            && previous.phase != Some(vmlet_api::Phase::Running)
            && let Some(took) = since_creation()
        {
            self.metrics.observe_running(took);
        }
        let has_address = |s: &VirtualMachineStatus| s.interfaces.iter().any(|i| i.ip_address.is_some());
        if has_address(status)
            && !has_address(previous)
            && let Some(took) = since_creation()
        {
            self.metrics.first_lease.observe(took.as_secs_f64());
        }
        let labels = vm_labels(key);
        if status.restart_count > previous.restart_count {
            let restarts = u64::from(status.restart_count - previous.restart_count);
            self.metrics.restarts.get_or_create(&labels).inc_by(restarts);
        }
        for event in events.iter().filter(|e| lifecycle::is_launcher_failure(e.reason)) {
            self.metrics
                .launcher_failures
                .get_or_create(&metrics::ReasonLabels {
                    reason: event.reason.into(),
                })
                .inc();
        }
        self.exported.insert(key.clone());
    }

    /// What a running VM's launcher says for the metrics: DHCP packets, its QEMU's CPU time and resident memory.
    fn count_usage(&mut self, key: &VmKey, answer: Option<&vmlet_control::Status>) {
        if let Some(answer) = answer {
            let seen = self.launcher_series.entry(key.clone()).or_default();
            self.metrics.observe_launcher(&vm_labels(key), answer, seen);
        }
        self.exported.insert(key.clone());
    }

    /// The pods in the state folder, by VM.
    fn pods(&self) -> anyhow::Result<BTreeMap<VmKey, PodDir>> {
        let mut pods = BTreeMap::new();
        for entry in std::fs::read_dir(&self.pods_dir)? {
            let path = entry?.path();
            let key = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(VmKey::from_file_stem);
            if let Some(key) = key {
                pods.insert(key, PodDir::new(path));
            }
        }
        Ok(pods)
    }

    /// Reconciles one VM; its status as written, while its manifest exists.
    async fn reconcile(&mut self, seen: &Seen<'_>) -> anyhow::Result<Option<VirtualMachineStatus>> {
        let status_path = status_file::path(&self.manifests, seen.key);
        let previous = status_file::read(&status_path).unwrap_or_default();
        let vm = seen.manifest.and_then(|m| m.vm.as_ref().ok());
        let spec_error = seen.manifest.and_then(|m| m.vm.as_ref().err().cloned());

        let state = seen.pod.map(PodDir::shim_state);
        let mut view = seen.pod.zip(state).map(|(pod, shim)| PodView {
            shim,
            stopping: pod.stopping_for(),
            stop_overdue: pod.stop_overdue(STOP_MARGIN),
            runs_other_spec: vm.is_some_and(|vm| pod.runs_other_spec(vm, &self.defaults)),
        });
        if let (Some(pod), Some(PodAction::Stop(why))) =
            (seen.pod, decide::restart_for_edit(view.as_ref(), vm.is_some()))
        {
            info!(vm = %seen.key, "the manifest changed: restarting the VM with it");
            self.stop(pod, why)?;
            if let Some(view) = view.as_mut() {
                view.stopping = Some(why);
            }
        }
        let launcher = self.observe(seen.pod, state);

        // A manifest that does not parse leaves a running VM alone: plan with its last good spec.
        let (run_strategy, request) = match (vm, seen.pod) {
            (Some(vm), _) => (vm.spec.run_strategy(), run_request(vm)),
            (None, Some(pod)) if seen.manifest.is_some() => match pod.read_vm() {
                Ok(vm) => (vm.spec.run_strategy(), None),
                Err(_) => (RunStrategy::Halted, None),
            },
            _ => (RunStrategy::Halted, None),
        };
        let request = request.filter(|r| !self.consumed(seen.key, r));
        let guest_runs = lifecycle::reported(&previous).is_some_and(|r| r.state == ReportedState::Running);
        let guest_readiness = match (&launcher, seen.pod) {
            (Launcher::Running { id, .. }, Some(pod)) if guest_runs => self.probes.look(seen.key, pod, id).await,
            _ => {
                self.probes.forget(seen.key);
                probe::Readiness::Unprobed
            }
        };
        let observation = Observation {
            run_strategy,
            request: request.clone(),
            deleting: seen.manifest.is_none(),
            spec_error: if seen.pod.is_some() { None } else { spec_error.clone() },
            status: &previous,
            launcher: launcher.clone(),
            readiness: guest_readiness,
            node: NodeHealth::Alive,
            now: Timestamp::now(),
        };
        let plan = lifecycle::plan(&observation);
        // A VM whose volumes are not ready waits, as a Pod whose volumes the kubelet cannot set up does: the start
        // happens (and is told) once they are.
        let readiness = match (plan.action, vm) {
            (LauncherAction::Create, Some(vm)) => Some(self.readiness(seen.key, vm, seen.folder)),
            _ => None,
        };
        let waiting = matches!(readiness, Some(Readiness::Pulling | Readiness::NotReady(_)));
        if !waiting {
            for event in &plan.events {
                info!(vm = %seen.key, reason = event.reason, kind = ?event.kind, "{}", event.message);
            }
            if plan.consume_request
                && let Some(request) = &request
            {
                self.consume(seen.key, request)?;
            }
        }
        let ready = matches!(readiness, Some(Readiness::Ready(_)));
        let mut pod_gone = seen.pod.is_none();
        let mut start_afresh = false;
        for action in decide::pod_actions(view.as_ref(), plan.action, ready) {
            match (action, seen.pod) {
                (PodAction::Create, pod) => {
                    let (Some(vm), Some(Readiness::Ready(layout))) = (vm, &readiness) else {
                        continue;
                    };
                    if let Some(pod) = pod {
                        self.remove(pod)?;
                    }
                    self.create(seen.key, vm, layout)?;
                    self.pulls.remove(seen.key);
                }
                (PodAction::Stop(why), Some(pod)) => self.stop(pod, why)?,
                (PodAction::Kill { shim_pid }, Some(_)) => {
                    warn!(vm = %seen.key, "the launcher did not stop in time: killing it");
                    let _ = kill(Pid::from_raw(shim_pid as i32), Signal::SIGKILL);
                }
                (PodAction::Remove(why), Some(pod)) => {
                    start_afresh = why == StopFor::Restart;
                    self.remove(pod)?;
                    pod_gone = true;
                }
                (_, None) => {}
            }
        }

        if seen.manifest.is_none() {
            if plan.release || pod_gone {
                status_file::remove(&status_path)?;
                self.forget_uid(seen.key)?;
                self.forget_request(seen.key)?;
            }
            return Ok(None);
        }
        let mut status = plan.status;
        if waiting {
            // Nothing started: the status stays what it was (a phase saying a launcher exists would make the
            // next pass take its absence for a vanished launcher), with why it waits.
            status = previous.clone();
            match &readiness {
                Some(Readiness::NotReady(why)) => {
                    status_file::note_waiting(&mut status, why, true);
                    if self.reported.insert(format!("{}: {}", seen.key, why.message)) {
                        warn!(vm = %seen.key, reason = why.reason, "{}", why.message);
                    }
                }
                _ => {
                    let pulling = NotReady {
                        printable: vmlet_api::PrintableStatus::Starting,
                        reason: "PullingImage",
                        message: "pulling the VM's images".into(),
                    };
                    status_file::note_waiting(&mut status, &pulling, false);
                }
            }
        }
        if start_afresh {
            // The run that ended was stopped to apply an edit: the run strategy starts the new spec as a new VM. A
            // Manual VM runs because its annotation asked: it asks again.
            self.forget_request(seen.key)?;
            status = VirtualMachineStatus {
                restart_count: previous.restart_count,
                ..VirtualMachineStatus::default()
            };
        }
        if let (Some(pod), Some(ShimState::Running(_))) = (seen.pod, state) {
            let answer = self.overlay_launcher_status(pod, &previous, &mut status).await;
            self.count_usage(seen.key, answer.as_ref());
        }
        if let Some(error) = spec_error {
            status_file::note_spec_error(&mut status, &error, seen.pod.is_some());
        }
        if status.printable_status != previous.printable_status
            && let Some(now) = status.printable_status
        {
            let was = previous.printable_status.map_or("new", PrintableStatus::as_str);
            info!(vm = %seen.key, status = %now, was = %was, "the VM is {now}");
        }
        let events = if waiting { &[][..] } else { &plan.events[..] };
        self.count_change(seen.key, seen.pod, &previous, &status, events);
        if status != previous {
            status_file::write(&status_path, seen.key, &status)?;
        }
        Ok(Some(status))
    }

    /// The pod's launcher as the run strategy sees it.
    fn observe(&self, pod: Option<&PodDir>, state: Option<ShimState>) -> Launcher {
        let (Some(pod), Some(state)) = (pod, state) else {
            return Launcher::Absent;
        };
        let Ok(record) = pod.read_record() else {
            // A pod being made: its record is its first file.
            return Launcher::Pending {
                id: pod.path().display().to_string(),
                node: Some(self.node_name.clone()),
                unschedulable: None,
            };
        };
        let id = record.uid();
        let node = Some(self.node_name.clone());
        let started = Timestamp::from_second(record.created_at as i64).ok();
        let failed_now = |id, node, reason: &str| Launcher::Ended {
            id,
            node,
            started,
            finished: Timestamp::now(),
            exit: Exit::Failed {
                code: None,
                reason: Some(reason.into()),
            },
        };
        let stopping = pod.stopping_for();
        match state {
            ShimState::Starting | ShimState::Running(_) if stopping.is_some() => Launcher::Terminating { id, node },
            // How a run stopped for an edit ended is not the VM's business: it goes on with the new spec.
            _ if stopping == Some(StopFor::Restart) => Launcher::Terminating { id, node },
            ShimState::Starting if record.created_at + SHIM_START.as_secs() < now_secs() => {
                failed_now(id, node, "the pod's shim never started")
            }
            ShimState::Starting => Launcher::Pending {
                id,
                node,
                unschedulable: None,
            },
            ShimState::Running(_) => Launcher::Running {
                id,
                node,
                since: started.unwrap_or_else(Timestamp::now),
            },
            ShimState::Ended(exit) => Launcher::Ended {
                id,
                node,
                started,
                finished: Timestamp::from_second(exit.finished_at as i64).unwrap_or_else(|_| Timestamp::now()),
                exit: match (exit.code, exit.signal) {
                    (Some(0), _) => Exit::Succeeded,
                    (code, None) => Exit::Failed {
                        code,
                        reason: pod.failure_reason(),
                    },
                    (_, Some(signal)) => Exit::Failed {
                        code: None,
                        reason: Some(signal_name(signal)),
                    },
                },
            },
            ShimState::Lost => failed_now(id, node, "the launcher's shim is gone"),
        }
    }

    /// Whether `vm`'s pod can be made: its claims and Secrets are in the folder and its images in the store.
    /// Starts, or retries after a back-off, the pull of what the store lacks.
    fn readiness(&mut self, key: &VmKey, vm: &VirtualMachine, folder: &Folder) -> Readiness {
        let layout = |pulled: &Pulled| match volumes::layout(vm, &key.namespace, folder, &self.claims_dir, pulled) {
            Ok(layout) => Readiness::Ready(layout),
            Err(why) => Readiness::NotReady(why),
        };
        // Claims and Secrets first: no pull for a VM that could not start anyway.
        if let Readiness::NotReady(why) = layout(&Pulled::new()) {
            return Readiness::NotReady(why);
        }
        let needs = volumes::needs(vm);
        if needs.is_empty() {
            return layout(&Pulled::new());
        }
        let pull = self.pulls.remove(key).filter(|pull| pull.needs() == needs.as_slice());
        let (next, readiness) = match pull {
            None => (self.start_pull(key, needs, 0), Readiness::Pulling),
            Some(Pull::Running { needs, failures, task }) if task.is_finished() => {
                match futures::FutureExt::now_or_never(task) {
                    Some(Ok(Ok(pulled))) => {
                        info!(vm = %key, "images pulled");
                        let readiness = layout(&pulled);
                        (Pull::Done { needs, pulled }, readiness)
                    }
                    result => {
                        let error = match result {
                            Some(Ok(Err(error))) => error,
                            _ => NotReady {
                                printable: vmlet_api::PrintableStatus::ErrImagePull,
                                reason: "ErrImagePull",
                                message: "the image pull ended without a result".into(),
                            },
                        };
                        let failures = failures + 1;
                        let backoff = PULL_BACKOFF
                            .saturating_mul(1 << (failures - 1).min(5))
                            .min(PULL_BACKOFF_MAX);
                        let shown = pull_error_shown(&error, failures);
                        (
                            Pull::Failed {
                                needs,
                                failures,
                                error,
                                retry_at: std::time::Instant::now() + backoff,
                            },
                            Readiness::NotReady(shown),
                        )
                    }
                }
            }
            Some(Pull::Failed {
                needs,
                failures,
                retry_at,
                ..
            }) if std::time::Instant::now() >= retry_at => {
                info!(vm = %key, failures, "pulling the images again");
                (self.start_pull(key, needs, failures), Readiness::Pulling)
            }
            Some(Pull::Failed {
                needs,
                failures,
                error,
                retry_at,
            }) => {
                let shown = pull_error_shown(&error, failures);
                (
                    Pull::Failed {
                        needs,
                        failures,
                        error,
                        retry_at,
                    },
                    Readiness::NotReady(shown),
                )
            }
            Some(Pull::Done { needs, pulled }) => {
                let readiness = layout(&pulled);
                (Pull::Done { needs, pulled }, readiness)
            }
            Some(running) => (running, Readiness::Pulling),
        };
        self.pulls.insert(key.clone(), next);
        readiness
    }

    fn start_pull(&self, key: &VmKey, needs: Vec<ImageNeed>, failures: u32) -> Pull {
        info!(vm = %key, images = ?needs.iter().map(|n| n.image.as_str()).collect::<Vec<_>>(), "pulling images");
        let task = tokio::spawn(volumes::pull(self.images.clone(), needs.clone(), self.registry.clone()));
        Pull::Running { needs, failures, task }
    }

    /// Gives every VM of the folder a uid, kept in the state folder while its manifest exists: a VM deleted and
    /// written again is a new VM (cloud-init sets it up afresh), one edited is the same.
    fn give_uids(&self, folder: &mut Folder) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.uids_dir)
            .with_context(|| format!("cannot create {}", self.uids_dir.display()))?;
        for (key, manifest) in &mut folder.vms {
            let Ok(vm) = &mut manifest.vm else { continue };
            let path = self.uids_dir.join(key.file_stem());
            let uid = match std::fs::read_to_string(&path) {
                Ok(uid) => uid.trim().to_owned(),
                Err(_) => {
                    let uid = uuid::Uuid::new_v4().to_string();
                    std::fs::write(&path, &uid).with_context(|| format!("cannot write {}", path.display()))?;
                    uid
                }
            };
            vm.metadata.uid = Some(uid);
        }
        Ok(())
    }

    /// Removes the disks of claims whose manifests are gone, once no pod uses them.
    fn remove_unclaimed(&self, folder: &Folder, pods: &BTreeMap<VmKey, PodDir>) {
        let Ok(entries) = std::fs::read_dir(&self.claims_dir) else {
            return;
        };
        let in_use: BTreeSet<VmKey> = pods
            .iter()
            .filter_map(|(key, pod)| Some((key, pod.read_vm().ok()?)))
            .flat_map(|(key, vm)| {
                let namespace = key.namespace.clone();
                vm.spec
                    .template
                    .spec
                    .volumes
                    .into_iter()
                    .filter_map(|v| v.persistent_volume_claim)
                    .map(move |claim| VmKey {
                        namespace: namespace.clone(),
                        name: claim.claim_name,
                    })
            })
            .collect();
        for entry in entries.flatten() {
            let Some(key) = entry.file_name().to_str().and_then(VmKey::from_file_stem) else {
                continue;
            };
            if folder.claims.contains_key(&key) || in_use.contains(&key) {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => info!(claim = %key, "claim removed with its disk"),
                Err(e) => warn!(claim = %key, error = %e, "cannot remove the claim's disk"),
            }
        }
    }

    fn forget_uid(&self, key: &VmKey) -> anyhow::Result<()> {
        let path = self.uids_dir.join(key.file_stem());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Makes a pod for `vm` and starts its launcher.
    fn create(&mut self, key: &VmKey, vm: &VirtualMachine, layout: &Layout) -> anyhow::Result<()> {
        // The addresses on disk now, not as the pass began: pods made earlier in this pass hold theirs too.
        let used = taken_addresses(&self.pods_dir, key)?;
        let address = self.node.allocate(&used)?;
        let address_v6 = self.node.address_v6(address.addr())?;
        let pod = PodDir::new(self.pods_dir.join(key.file_stem()));
        std::fs::create_dir_all(pod.run_dir().root())
            .with_context(|| format!("cannot create {}", pod.path().display()))?;
        let record = PodRecord::new(
            key,
            format!("{}{}-{}", self.netns_prefix, key.namespace, key.name),
            address,
            self.node.gateway()?,
            address_v6,
        );
        // The record first, before the address is put on an interface: a handler killed at any later point
        // leaves the address recorded as taken, and its pod removable.
        pod.write_record(&record)?;
        pod.write_vm(vm)?;
        volumes::write(layout, &pod.volumes_dir())
            .with_context(|| format!("cannot lay out the volumes in {}", pod.volumes_dir().display()))?;
        std::fs::write(pod.resolv_conf(), resolv_conf(&self.dns, key))?;
        Host.attach(
            &self.node,
            &PodNetwork {
                netns: record.netns.clone(),
                address: record.address,
                gateway: record.gateway,
                address_v6: record.address_v6,
            },
        )?;
        let launcher: Vec<OsString> = vec![
            self.launcher.clone().into(),
            "run".into(),
            "--vm-spec".into(),
            pod.vm().into(),
            "--run-dir".into(),
            pod.run_dir().root().into(),
            "--cache-dir".into(),
            self.cache_dir.clone().into(),
            "--resolv-conf".into(),
            pod.resolv_conf().into(),
            "--volumes-dir".into(),
            pod.volumes_dir().into(),
            "--termination-log".into(),
            pod.termination_log().into(),
        ];
        let netns = Path::new(vmlet_podnet::NETNS_DIR).join(&record.netns);
        let shim = shim::command(&self.handler, &pod, &netns, &launcher)?
            .spawn()
            .context("cannot start the shim")?;
        info!(vm = %key, netns = %record.netns, address = %record.address, address_v6 = ?record.address_v6, "pod started");
        self.shims.push(shim);
        Ok(())
    }

    /// Asks the pod's launcher to stop: SIGTERM, so the guest gets its ACPI shutdown and grace period.
    fn stop(&self, pod: &PodDir, why: StopFor) -> anyhow::Result<()> {
        if pod.is_stopping() {
            return Ok(());
        }
        let grace = pod
            .read_vm()
            .map_or(GRACE_PERIOD_SECONDS, |vm| vm.spec.template.spec.grace_period_seconds());
        pod.mark_stopping(grace.into(), why)?;
        if let ShimState::Running(shim) = pod.shim_state() {
            info!(pod = %pod.path().display(), "stopping the launcher");
            let _ = kill(Pid::from_raw(shim.pid as i32), Signal::SIGTERM);
        }
        Ok(())
    }

    /// Removes a pod whose launcher is gone: its network namespace and its folder.
    fn remove(&self, pod: &PodDir) -> anyhow::Result<()> {
        if let ShimState::Running(shim) = pod.shim_state() {
            // Only a launcher that already ended is removed; a running one is stopped first.
            anyhow::bail!(
                "the launcher of {} still runs (shim {})",
                pod.path().display(),
                shim.pid
            );
        }
        if let Ok(record) = pod.read_record() {
            Host.detach(&record.netns)?;
        }
        self.keep_log(pod);
        std::fs::remove_dir_all(pod.path()).with_context(|| format!("cannot remove {}", pod.path().display()))?;
        info!(pod = %pod.path().display(), "pod removed");
        Ok(())
    }

    /// Keeps the log of a pod's last run, as `kubectl logs --previous` shows it, in `STATE/logs/`: a run that
    /// failed is read after its pod is gone.
    fn keep_log(&self, pod: &PodDir) {
        let Some(stem) = pod.path().file_name() else { return };
        let logs = self.logs_dir();
        let kept = logs.join(format!("{}.log", stem.to_string_lossy()));
        let moved = std::fs::create_dir_all(&logs).and_then(|()| std::fs::rename(pod.launcher_log(), &kept));
        if let Err(e) = moved
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(pod = %pod.path().display(), error = %e, "cannot keep the launcher's log");
        }
    }

    fn logs_dir(&self) -> PathBuf {
        self.pods_dir.with_file_name("logs")
    }

    /// Adds what the launcher says of the guest (addresses, pause) to the lifecycle's status; its answer, if it
    /// gave one.
    async fn overlay_launcher_status(
        &self,
        pod: &PodDir,
        previous: &VirtualMachineStatus,
        status: &mut VirtualMachineStatus,
    ) -> Option<vmlet_control::Status> {
        let answer = async {
            let mut client = vmlet_control::Client::connect(&pod.run_dir().control_socket(), CONTROL_TIMEOUT).await?;
            client.status().await
        };
        let answer = tokio::time::timeout(CONTROL_TIMEOUT, answer)
            .await
            .ok()
            .and_then(Result::ok);
        let launcher = match &answer {
            Some(answer) => vm_status::LauncherState::Answered(answer.clone()),
            None => vm_status::LauncherState::Starting,
        };
        let pod_name = pod.read_record().map(|r| r.netns).unwrap_or_default();
        let node = NodeStatus::derive(&launcher, Some(previous), &self.node_name, &pod_name, Timestamp::now());
        status_file::overlay(status, &node);
        answer
    }

    fn consumed(&self, key: &VmKey, request: &RunRequest) -> bool {
        std::fs::read_to_string(self.request_file(key)).is_ok_and(|last| last == request_text(request))
    }

    /// Remembers that a run request was acted on: the annotation stays in the manifest, which is the user's.
    fn consume(&self, key: &VmKey, request: &RunRequest) -> anyhow::Result<()> {
        let path = self.request_file(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, request_text(request)).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Forgets the request acted on last, so that the manifest's annotation asks again: for a VM restarted with an
    /// edited spec, and for one whose manifest is gone (written back, it is a new VM).
    fn forget_request(&self, key: &VmKey) -> anyhow::Result<()> {
        let path = self.request_file(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    fn request_file(&self, key: &VmKey) -> PathBuf {
        self.pods_dir.with_file_name("requests").join(key.file_stem())
    }
}

fn vm_labels(key: &VmKey) -> metrics::VmLabels {
    metrics::VmLabels {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// How a signal that killed a launcher reads in its VM's condition: "signal 9, SIGKILL".
fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(known) => format!("signal {signal}, {}", known.as_str()),
        Err(_) => format!("signal {signal}"),
    }
}

/// The pool addresses the pods in `pods_dir` hold, but `except`'s own.
fn taken_addresses(pods_dir: &Path, except: &VmKey) -> anyhow::Result<Vec<Ipv4Addr>> {
    let entries = std::fs::read_dir(pods_dir).with_context(|| format!("cannot read {}", pods_dir.display()))?;
    Ok(entries
        .flatten()
        .filter_map(|entry| PodDir::new(entry.path()).read_record().ok())
        .filter(|record| &record.key() != except)
        .map(|record| record.address.addr())
        .collect())
}

/// A failed pull as status shows it: `ErrImagePull` after the first failure, `ImagePullBackOff` once it repeats.
fn pull_error_shown(error: &NotReady, failures: u32) -> NotReady {
    if failures < 2 || error.printable != vmlet_api::PrintableStatus::ErrImagePull {
        return error.clone();
    }
    NotReady {
        printable: vmlet_api::PrintableStatus::ImagePullBackOff,
        reason: "ImagePullBackOff",
        message: error.message.clone(),
    }
}

fn run_request(vm: &VirtualMachine) -> Option<RunRequest> {
    let value = vm.metadata.annotations.as_ref()?.get(RUN_ANNOTATION)?;
    Some(RunRequest::parse(value))
}

fn request_text(request: &RunRequest) -> String {
    match request {
        RunRequest::Start => "start".into(),
        RunRequest::Stop => "stop".into(),
        RunRequest::Invalid(value) => value.clone(),
    }
}

/// The host's DNS servers that a pod can reach (a loopback resolver of the host is not the pod's).
fn host_dns() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("nameserver"))
        .filter_map(|addr| addr.trim().parse::<Ipv4Addr>().ok())
        .filter(|addr| !addr.is_loopback())
        .collect()
}

fn resolv_conf(dns: &[Ipv4Addr], key: &VmKey) -> String {
    let mut text: String = dns.iter().map(|a| format!("nameserver {a}\n")).collect();
    text.push_str(&format!("search {}.vmlet.local vmlet.local\n", key.namespace));
    text
}
