//! The `controller` role: for every VirtualMachine in the cluster, a launcher Pod when its run strategy says it
//! should run, and its lifecycle status. One replica leads (a Lease); the others wait to take over.

mod cached_vm;
mod events;
pub mod launcher_pod;
mod leader;
mod node_silence;
pub mod pod_volumes;
mod reconcile;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use vmlet_api::defaults::{ClusterDefaults, DefaultBinding};

use crate::metrics::{Metrics, PhaseLabels};

pub use cached_vm::CachedVm;
pub use launcher_pod::PodConfig;
use leader::LeaderElector;
pub use pod_volumes::ContainerDisks;

/// VMs reconciled at once. Without a bound a mass start reconciles every VM at once, each with a connection and
/// its buffers to the API server: the controller's memory grew with the number of VMs started together
/// (`docs/benchmarks.md`, "Scale"), and the API server got them all at the same moment.
const RECONCILE_CONCURRENCY: u16 = 16;

/// The Lease the controller replicas elect their leader with, in the handler's namespace.
const LEADER_LEASE: &str = "vmlet-controller";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The launcher's container image.
    #[arg(long, env = "VMLET_LAUNCHER_IMAGE")]
    pub launcher_image: String,
    /// The launcher image's pull policy (Always, IfNotPresent, Never); the cluster's default when not given.
    #[arg(long, env = "VMLET_LAUNCHER_PULL_POLICY")]
    launcher_pull_policy: Option<String>,
    /// The namespace the handler runs in: its leader Lease and the nodes' heartbeat Leases are there.
    #[arg(long, env = "VMLET_NAMESPACE", default_value = "vmlet-system")]
    pub namespace: String,
    /// This replica's name in the leader election (the Pod's name).
    #[arg(long, env = "VMLET_POD_NAME")]
    pub identity: Option<String>,
    /// Memory a VM pod takes besides the guest's, added to its memory request.
    #[arg(long, default_value_t = launcher_pod::DEFAULT_MEMORY_OVERHEAD, value_parser = parse_bytes)]
    memory_overhead: u64,
    /// An extended resource that gives a pod /dev/kvm (from a device plugin); without one /dev/kvm is mounted
    /// from the node, which an unprivileged pod cannot open, so guests are emulated.
    #[arg(long, env = "VMLET_KVM_RESOURCE")]
    kvm_resource: Option<String>,
    /// How containerDisk and kernelBoot.container images reach the launcher: as image volumes (Kubernetes 1.33+
    /// with the ImageVolume feature), or through a holder container per image.
    #[arg(long, env = "VMLET_CONTAINER_DISKS", value_enum, default_value_t = ContainerDisks::ImageVolume)]
    pub container_disks: ContainerDisks,
    /// Seconds a launcher pod gets beyond its guest's grace period to tear down.
    #[arg(long, default_value_t = 15)]
    grace_margin: u32,
    /// Seconds after a node's last heartbeat that its VMs are marked failed.
    #[arg(long, default_value_t = 40)]
    node_timeout: u64,
    /// Seconds a leader's Lease lasts unrenewed.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Serve Prometheus metrics on this address (`/metrics`); none without it.
    #[arg(long, env = "VMLET_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// The binding of the interface given to a VM that names no network: bridge or masquerade (KubeVirt's
    /// defaultNetworkInterface setting).
    #[arg(long, env = "VMLET_DEFAULT_NETWORK_BINDING", default_value_t = DefaultBinding::Bridge)]
    default_network_binding: DefaultBinding,
}

fn parse_bytes(text: &str) -> Result<u64, vmlet_api::ParseQuantityError> {
    vmlet_api::parse_quantity(text)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the VM has no namespace")]
    NoNamespace,
    #[error("the VM has no uid")]
    NoUid,
    #[error("cannot make the launcher pod: {0}")]
    Pod(#[from] launcher_pod::BuildError),
    #[error("cannot read the VM's spec: {0}")]
    UnreadableSpec(serde_json::Error),
    #[error("cannot write a JSON patch: {0}")]
    JsonPatch(#[from] serde_json::Error),
    /// Not a failure: a deleted VM waits for its launcher to go.
    #[error("the VM's launcher is still stopping")]
    StillStopping,
}

impl Error {
    fn still_stopping(&self) -> bool {
        matches!(self, Self::StillStopping)
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API")]
    Client(#[source] kube::Error),
    #[error("lost the leadership (the Lease went unrenewed); exiting so that a new leader takes over")]
    LostLeadership,
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot serve metrics")]
    Metrics(#[source] std::io::Error),
}

/// Keeps `kubevirt_vmi_phase_count` to the VMs the controller's cache holds.
async fn count_phases(vms: kube::runtime::reflector::Store<CachedVm>, metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let mut counts = std::collections::HashMap::new();
        for vm in vms.state() {
            let Some(status) = &vm.status else { continue };
            let Some(phase) = status.phase else { continue };
            let node = status.node_name.clone().unwrap_or_default();
            *counts.entry(PhaseLabels::new(phase, node)).or_insert(0) += 1;
        }
        metrics.phases.clear();
        for (labels, count) in counts {
            metrics.phases.get_or_create(&labels).set(count);
        }
    }
}

/// The VMs whose status is Unknown because `lease`'s node fell silent: its renewal is news for them.
fn waiting_on_node<'a>(
    vms: impl Iterator<Item = &'a CachedVm>,
    lease: &str,
) -> Vec<kube::runtime::reflector::ObjectRef<CachedVm>> {
    let Some(node) = crate::cluster::node_of_lease(lease) else {
        return Vec::new();
    };
    vms.filter(|vm| {
        vm.status.as_ref().is_some_and(|status| {
            status.node_name.as_deref() == Some(node)
                && status.printable_status == Some(vmlet_api::PrintableStatus::Unknown)
        })
    })
    .map(kube::runtime::reflector::ObjectRef::from_obj)
    .collect()
}

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub events: events::Publisher,
    /// The handler namespace's Leases: the nodes' heartbeats.
    pub leases: Api<Lease>,
    pub pod_config: PodConfig,
    pub node_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Applied to every VM before its spec is checked and its launcher Pod made.
    pub defaults: ClusterDefaults,
}

/// Runs the controller until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<(), RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?
        .block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let client = crate::metrics::counted_client(metrics.clone())
        .await
        .map_err(RunError::Client)?;
    if let Some(address) = args.metrics_address {
        crate::metrics::serve(address, metrics.clone())
            .await
            .map_err(RunError::Metrics)?;
    }
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
    let lease_duration = Duration::from_secs(args.lease_duration.max(2));
    let elector = Arc::new(LeaderElector::new(
        leases.clone(),
        LEADER_LEASE,
        &identity,
        lease_duration,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });

    info!(identity = %identity, lease = LEADER_LEASE, namespace = %args.namespace, "waiting to lead");
    if !wait_to_lead(&elector, lease_duration, stop_rx.clone()).await? {
        return Ok(());
    }
    info!(identity = %identity, "leading");

    let (lost_tx, lost_rx) = watch::channel(false);
    let renewing = tokio::spawn(keep_leading(elector.clone(), lease_duration, lost_tx));

    let ctx = Arc::new(Context {
        client: client.clone(),
        events: events::Publisher::new(client.clone(), reconcile::FIELD_MANAGER, &identity),
        leases: leases.clone(),
        pod_config: PodConfig {
            image: args.launcher_image,
            image_pull_policy: args.launcher_pull_policy,
            memory_overhead: args.memory_overhead,
            kvm_resource: args.kvm_resource,
            grace_margin: args.grace_margin,
            log_json: vmlet_log::json_from_env(),
            container_disks: args.container_disks,
        },
        node_timeout: Duration::from_secs(args.node_timeout),
        metrics: metrics.clone(),
        defaults: ClusterDefaults {
            network_binding: args.default_network_binding,
        },
    });
    let heartbeats = leases;
    let pods_of_launchers = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::cluster::MANAGED_BY_LABEL,
        crate::cluster::MANAGED_BY
    ));
    let shutdown = {
        let (mut stop, mut lost) = (stop_rx.clone(), lost_rx.clone());
        async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = lost.wait_for(|l| *l) => {}
            }
        }
    };
    let (silence_tx, silence_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(node_silence::watch(
        heartbeats.clone(),
        Duration::from_secs(args.node_timeout),
        silence_tx,
    ));
    let silences = futures::stream::unfold(silence_rx, |mut rx| async move { rx.recv().await.map(|()| ((), rx)) });
    let controller = Controller::new(Api::<CachedVm>::all(client.clone()), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY));
    let vms = controller.store();
    tokio::spawn(count_phases(vms.clone(), metrics));
    controller
        .owns(Api::<Pod>::all(client), pods_of_launchers)
        // A node's heartbeat is what its VMs' Unknown status waits for: each renewal looks at them again, so they
        // recover within one heartbeat of the node role's return.
        .watches(heartbeats, watcher::Config::default(), move |lease: Lease| {
            waiting_on_node(vms.state().iter().map(|vm| &**vm), &lease.name_any())
        })
        // A node fell silent: its VMs are failed (the others' look costs a round, once per silence).
        .reconcile_all_on(silences)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((vm, _)) => debug!(vm = %vm, "reconciled"),
                Err(err) => debug!(error = %err, "reconcile round"),
            }
        })
        .await;

    renewing.abort();
    if *lost_rx.borrow() {
        return Err(RunError::LostLeadership);
    }
    if let Err(err) = elector.release().await {
        warn!(error = %err, "could not release the leader Lease; the next leader waits for it to expire");
    }
    info!("stopped");
    Ok(())
}

fn error_policy(vm: Arc<CachedVm>, err: &Error, _ctx: Arc<Context>) -> Action {
    if err.still_stopping() {
        return Action::requeue(Duration::from_secs(5));
    }
    warn!(vm = %vm.name_any(), namespace = ?vm.namespace(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

/// Tries for the Lease every third of its duration until it is this replica's (`true`) or a signal says to stop.
async fn wait_to_lead(
    elector: &LeaderElector,
    lease_duration: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<bool, RunError> {
    loop {
        match elector.try_lead(Timestamp::now()).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(err) => warn!(error = %err, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(lease_duration / 3) => {}
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
    }
}

/// Renews the Lease every third of its duration; reports the leadership lost when a renewal is refused, or when
/// none has succeeded for two thirds of the duration (client-go's renew deadline), before another replica may
/// take over.
async fn keep_leading(elector: Arc<LeaderElector>, lease_duration: Duration, lost: watch::Sender<bool>) {
    let deadline = lease_duration * 2 / 3;
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(lease_duration / 3).await;
        match elector.try_lead(Timestamp::now()).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                error!(identity = elector.identity(), "another replica holds the leader Lease");
                let _ = lost.send(true);
                return;
            }
            Err(err) => {
                warn!(error = %err, "cannot renew the leader Lease");
                if renewed.elapsed() > deadline {
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("stopping");
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "vmlet-controller".into());
    format!("{host}-{}", std::process::id())
}
