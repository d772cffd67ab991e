//! The launchers on this node: their pods as the watch reports them, their control sockets, the VM status each one
//! leads to, and the run directories left by pods that are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde_json::json;
use tracing::{debug, info, warn};
use vmlet_api::{VirtualMachine, VirtualMachineStatus};
use vmlet_control::ClientError;

use super::judge::{
    ControlPoll, PodKey, PodState, Tracking, Update, judge, orphans, owner_vm, pod_state, status_update,
};
use super::{Config, FIELD_MANAGER, socket_path};
use crate::cluster::run_dir;
use crate::metrics::{LauncherSeries, Metrics, VmLabels};
use crate::vm_status::{LauncherState, NodeStatus};

/// How long one status request may take before the launcher counts as silent for this round.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

struct Launcher {
    /// The VM's name and uid, from the pod's controller reference.
    vm: String,
    vm_uid: String,
    socket: PathBuf,
    pod: PodState,
    /// The watch reported the pod deleted: report once more, then forget it.
    deleted: bool,
    tracking: Tracking,
    /// A connection kept between rounds.
    connection: Option<vmlet_control::Client>,
    /// The VM's status as last read or written, so that an unchanged launcher costs no request; `None` until
    /// read, and after a failed write.
    known: Option<Known>,
    /// When the pod was made: its VM's start latencies count from there.
    created: Option<Timestamp>,
    /// What this launcher's answers left in the metrics.
    series: LauncherSeries,
}

/// A VM's status as the API server last gave it, and the version it had then: the node's writes are conditional
/// on it, so that a word decided on an old status (another pod's since) is never written.
struct Known {
    status: VirtualMachineStatus,
    resource_version: Option<String>,
}

pub struct Launchers {
    client: Client,
    node: String,
    pods_dir: PathBuf,
    lost_after: Duration,
    orphan_grace: Duration,
    launchers: BTreeMap<PodKey, Launcher>,
    /// The pods listed since the watch (re)started; those not listed again were deleted meanwhile.
    relisted: Option<BTreeSet<PodKey>>,
    /// The watch has listed the node's pods at least once: until then, no run directory is known to be orphaned.
    synced: bool,
    /// Run directories without a pod, and since when.
    suspects: BTreeMap<PodKey, Timestamp>,
    metrics: Arc<Metrics>,
}

impl Launchers {
    pub fn new(client: Client, config: &Config, metrics: Arc<Metrics>) -> Launchers {
        Launchers {
            client,
            node: config.node_name.clone(),
            pods_dir: config.pods_dir.clone(),
            lost_after: config.lost_after,
            orphan_grace: config.orphan_grace,
            launchers: BTreeMap::new(),
            relisted: None,
            synced: false,
            suspects: BTreeMap::new(),
            metrics,
        }
    }

    /// Takes in what the pod watch reports.
    pub fn observe(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relisted = Some(BTreeSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(key) = self.seen(&pod, false)
                    && let Some(relisted) = &mut self.relisted
                {
                    relisted.insert(key);
                }
            }
            watcher::Event::InitDone => {
                let relisted = self.relisted.take().unwrap_or_default();
                for (key, launcher) in &mut self.launchers {
                    if !relisted.contains(key) {
                        launcher.deleted = true;
                        if launcher.pod == PodState::Alive {
                            launcher.pod = PodState::Gone;
                        }
                    }
                }
                self.synced = true;
            }
            watcher::Event::Apply(pod) => {
                self.seen(&pod, false);
            }
            watcher::Event::Delete(pod) => {
                self.seen(&pod, true);
            }
        }
    }

    fn seen(&mut self, pod: &Pod, deleted: bool) -> Option<PodKey> {
        // Only a VM's launcher: the controller's label selected it, its controller reference names the VM.
        let (vm, vm_uid) = owner_vm(pod)?;
        let key = PodKey::of(pod)?;
        let state = pod_state(pod, deleted);
        let launcher = self.launchers.entry(key.clone()).or_insert_with(|| {
            info!(namespace = %key.namespace, vm = %vm, pod = %key.name, "launcher pod found");
            Launcher {
                socket: socket_path(&self.pods_dir, &key.namespace, &key.name),
                vm,
                vm_uid,
                pod: state,
                deleted,
                tracking: Tracking::default(),
                connection: None,
                known: None,
                created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
                series: LauncherSeries::default(),
            }
        });
        launcher.pod = state;
        launcher.deleted = deleted;
        Some(key)
    }

    /// One round: asks every launcher how its VM is, and writes what changed.
    pub async fn tick(&mut self, now: Timestamp) {
        let probes = futures::future::join_all(self.launchers.values_mut().map(|launcher| async {
            // Only a live pod's launcher is asked: an ended pod's socket has no one behind it.
            if launcher.deleted || launcher.pod != PodState::Alive {
                return ControlPoll::NoSocket;
            }
            probe(&mut launcher.connection, &launcher.socket).await
        }))
        .await;
        let keys: Vec<PodKey> = self.launchers.keys().cloned().collect();
        let mut unwritten = BTreeSet::new();
        for (key, probe) in keys.into_iter().zip(probes) {
            let Some(launcher) = self.launchers.get_mut(&key) else {
                continue;
            };
            let vm = VmLabels {
                namespace: key.namespace.clone(),
                name: launcher.vm.clone(),
            };
            let since_creation = launcher
                .created
                .and_then(|created| now.duration_since(created).try_into().ok());
            match &probe {
                ControlPoll::Answered(answer) => {
                    self.metrics.observe_launcher(&vm, answer, &mut launcher.series);
                    self.metrics.observe_start(answer, since_creation, &mut launcher.series);
                }
                _ if launcher.pod == PodState::Alive && !launcher.deleted => launcher.series.unanswered(),
                _ => {}
            }
            let (state, tracking) = judge(probe, launcher.pod, launcher.tracking, now, self.lost_after);
            launcher.tracking = tracking;
            let vms: Api<VirtualMachine> = Api::namespaced(self.client.clone(), &key.namespace);
            if let Err(err) = report(&vms, launcher, &state, &self.node, &key.name, now).await {
                warn!(namespace = %key.namespace, vm = %launcher.vm, error = %err, "cannot write the VM's status");
                launcher.known = None;
                unwritten.insert(key);
            }
        }
        // A deleted pod is forgotten once its last word is written.
        let (gone, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.launchers)
            .into_iter()
            .partition(|(key, launcher)| launcher.deleted && !unwritten.contains(key));
        self.launchers = kept;
        for (key, launcher) in gone {
            info!(namespace = %key.namespace, vm = %launcher.vm, pod = %key.name, "launcher pod gone");
            // The VM's series are its next launcher's too, while it has one here.
            let next = self
                .launchers
                .iter()
                .any(|(other, l)| other.namespace == key.namespace && l.vm == launcher.vm);
            if !next {
                let vm = VmLabels {
                    namespace: key.namespace,
                    name: launcher.vm,
                };
                self.metrics.forget(&vm, &launcher.series);
            }
        }
    }

    /// Removes the run directories of pods that are gone. A directory goes only when its pod has been neither
    /// watched nor waiting for its last report for the grace period, nothing answers on its control socket, and the
    /// API server has no such pod: a pod that may still run keeps its directory, and with it its guest's disks and
    /// lease.
    pub async fn sweep(&mut self, now: Timestamp) {
        if !self.synced || self.relisted.is_some() {
            return;
        }
        let dirs = match run_dirs(&self.pods_dir) {
            Ok(dirs) => dirs,
            Err(err) => {
                warn!(dir = %self.pods_dir.display(), error = %err, "cannot list the run directories");
                return;
            }
        };
        let known: BTreeSet<PodKey> = self.launchers.keys().cloned().collect();
        for key in orphans(dirs, &known, &mut self.suspects, now, self.orphan_grace) {
            let dir = run_dir(&self.pods_dir, &key.namespace, &key.name);
            if launcher_lives(&socket_path(&self.pods_dir, &key.namespace, &key.name)).await {
                debug!(dir = %dir.display(), "a launcher still answers in a run directory without a pod");
                continue;
            }
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
            match pods.get_opt(&key.name).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    debug!(dir = %dir.display(), "the pod of a run directory exists, unwatched: kept");
                    continue;
                }
                Err(err) => {
                    warn!(namespace = %key.namespace, pod = %key.name, error = %err, "cannot look up a pod");
                    continue;
                }
            }
            let removed = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || std::fs::remove_dir_all(dir)
            })
            .await;
            match removed {
                Ok(Ok(())) => {
                    info!(dir = %dir.display(), "run directory of a gone pod removed");
                    self.suspects.remove(&key);
                }
                Ok(Err(err)) => warn!(dir = %dir.display(), error = %err, "cannot remove a run directory"),
                Err(err) => warn!(dir = %dir.display(), error = %err, "cannot remove a run directory"),
            }
        }
    }
}

/// The launcher pods whose run directories are in `pods_dir`; anything else there is left alone.
fn run_dirs(pods_dir: &Path) -> std::io::Result<Vec<PodKey>> {
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(pods_dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Some(key) = entry.file_name().to_str().and_then(PodKey::from_dir_name) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Whether a process listens on a control socket: only a refused connection, or no socket, says no one does.
async fn launcher_lives(socket: &Path) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(socket)).await {
        Ok(Err(err)) => !matches!(
            err.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ),
        Ok(Ok(_)) | Err(_) => true,
    }
}

/// Asks the launcher for its status, over the kept connection or a new one.
async fn probe(connection: &mut Option<vmlet_control::Client>, socket: &std::path::Path) -> ControlPoll {
    // A kept connection may have died with a launcher that restarted since; then a fresh one is tried at once.
    if let Some(client) = connection {
        match client.status().await {
            Ok(status) => return ControlPoll::Answered(status),
            Err(err) => {
                debug!(socket = %socket.display(), error = %err, "kept control connection failed");
                *connection = None;
            }
        }
    }
    let mut client = match vmlet_control::Client::connect(socket, PROBE_TIMEOUT).await {
        Ok(client) => client,
        Err(ClientError::Connect(err)) if err.kind() == std::io::ErrorKind::NotFound => return ControlPoll::NoSocket,
        Err(err) => {
            debug!(socket = %socket.display(), error = %err, "launcher unreachable");
            return ControlPoll::NoAnswer;
        }
    };
    match client.status().await {
        Ok(status) => {
            *connection = Some(client);
            ControlPoll::Answered(status)
        }
        Err(err) => {
            debug!(socket = %socket.display(), error = %err, "launcher did not answer");
            ControlPoll::NoAnswer
        }
    }
}

/// Writes the node's fields the launcher's state leads to, if the VM does not hold them yet. The write is
/// conditional on the status it was decided on; when that changed meanwhile, it is decided again on the new one.
async fn report(
    vms: &Api<VirtualMachine>,
    launcher: &mut Launcher,
    state: &LauncherState,
    node: &str,
    pod: &str,
    now: Timestamp,
) -> Result<(), kube::Error> {
    for attempt in 0..2 {
        let known = match launcher.known.take() {
            Some(known) => known,
            None => match vms.get_opt(&launcher.vm).await? {
                Some(vm) if vm.metadata.uid.as_deref() == Some(launcher.vm_uid.as_str()) => Known::of(vm),
                // Gone, or a new VM of the same name: the pod's VM is no more, and its pod goes with it.
                _ => {
                    debug!(vm = %launcher.vm, "no such VM");
                    return Ok(());
                }
            },
        };
        let derived = NodeStatus::derive(state, Some(&known.status), node, pod, now);
        let update = match status_update(Some(&known.status), derived) {
            Update::Write(update) => update,
            Update::Unchanged => {
                launcher.known = Some(known);
                return Ok(());
            }
            Update::OtherPod => {
                debug!(vm = %launcher.vm, pod, "the VM follows another launcher pod");
                return Ok(());
            }
        };
        let written = vms
            .patch_status(
                &launcher.vm,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(status_patch(&update, known.resource_version.as_deref())),
            )
            .await;
        match written {
            Ok(vm) => {
                info!(
                    namespace = vms.namespace().unwrap_or_default(),
                    vm = %launcher.vm,
                    pod,
                    launcher = ?update.launcher.state,
                    "VM status written"
                );
                launcher.known = Some(Known::of(vm));
                return Ok(());
            }
            // The status changed since it was read: decide again on what it is now.
            Err(kube::Error::Api(status)) if status.code == 409 && attempt == 0 => {
                debug!(vm = %launcher.vm, "the VM changed meanwhile; reading it again");
            }
            // Deleted since it was read, as every VM is at the end: nothing to report to.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                debug!(vm = %launcher.vm, "the VM is gone");
                return Ok(());
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

impl Known {
    fn of(vm: VirtualMachine) -> Known {
        Known {
            resource_version: vm.metadata.resource_version,
            status: vm.status.unwrap_or_default(),
        }
    }
}

/// The server-side apply body for the node's fields of a VM's status, conditional on `resource_version`.
fn status_patch(status: &NodeStatus, resource_version: Option<&str>) -> serde_json::Value {
    let mut patch = json!({
        "apiVersion": VirtualMachine::api_version(&()),
        "kind": VirtualMachine::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"] = json!({ "resourceVersion": version });
    }
    patch
}

#[cfg(test)]
mod tests;
