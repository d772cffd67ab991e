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

use super::judge::{PodKey, PodState, Probe, Tracking, Update, judge, orphans, owner_vm, pod_state, status_update};
use super::{Config, FIELD_MANAGER, run_dir, socket_path};
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
                return Probe::NoSocket;
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
                Probe::Answered(answer) => {
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
            if launcher_lives(&dir.join("control.sock")).await {
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
async fn probe(connection: &mut Option<vmlet_control::Client>, socket: &std::path::Path) -> Probe {
    // A kept connection may have died with a launcher that restarted since; then a fresh one is tried at once.
    if let Some(client) = connection {
        match client.status().await {
            Ok(status) => return Probe::Answered(status),
            Err(err) => {
                debug!(socket = %socket.display(), error = %err, "kept control connection failed");
                *connection = None;
            }
        }
    }
    let mut client = match vmlet_control::Client::connect(socket, PROBE_TIMEOUT).await {
        Ok(client) => client,
        Err(ClientError::Connect(err)) if err.kind() == std::io::ErrorKind::NotFound => return Probe::NoSocket,
        Err(err) => {
            debug!(socket = %socket.display(), error = %err, "launcher unreachable");
            return Probe::NoAnswer;
        }
    };
    match client.status().await {
        Ok(status) => {
            *connection = Some(client);
            Probe::Answered(status)
        }
        Err(err) => {
            debug!(socket = %socket.display(), error = %err, "launcher did not answer");
            Probe::NoAnswer
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
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;
    use serde_json::{Value, json};
    use vmlet_control::{GuestAgentStatus, GuestInterface, GuestOsInfo, InterfaceStatus, Phase, Status};

    use super::*;
    use crate::controller::launcher_pod::{MANAGED_BY, MANAGED_BY_LABEL, VM_NAME_LABEL};
    use crate::node::fakes::{self, LauncherProcess};

    const POD: &str = "vmlet-launcher-web-x7k2p";
    const NEXT_POD: &str = "vmlet-launcher-web-z9q4r";
    const VM_UID: &str = "uid-web";

    fn running() -> Status {
        Status {
            phase: Phase::Running,
            domain_state: Some("Running(Booted)".into()),
            interfaces: vec![InterfaceStatus {
                name: "default".into(),
                mac: "02:42:0a:f4:01:07".into(),
                ip_addresses: vec!["10.244.1.7".into(), "fd00::7".into()],
                binding: "bridge".into(),
            }],
            launcher_pid: 1,
            started_at: 1_000,
            uptime_secs: 5,
            guest_agent: Some(Box::new(GuestAgentStatus {
                os: Some(GuestOsInfo {
                    name: Some("Debian GNU/Linux".into()),
                    id: Some("debian".into()),
                    version_id: Some("12".into()),
                    ..Default::default()
                }),
                interfaces: vec![GuestInterface {
                    name: "enp1s0".into(),
                    mac: Some("02:42:0a:f4:01:07".into()),
                    ip_addresses: vec!["10.244.1.7/24".into(), "fe80::42:aff:fef4:107/64".into()],
                }],
                answered_at: 1_004,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn launcher_pod(exit_code: Option<i32>) -> Pod {
        named_launcher_pod(POD, exit_code)
    }

    /// A launcher pod as the controller makes it, as the watch reports it.
    fn named_launcher_pod(name: &str, exit_code: Option<i32>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(
                    [
                        (VM_NAME_LABEL.to_owned(), "web".to_owned()),
                        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![OwnerReference {
                    api_version: "vmlet.dev/v1alpha1".into(),
                    kind: "VirtualMachine".into(),
                    name: "web".into(),
                    uid: VM_UID.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(if exit_code.is_some() { "Failed" } else { "Running" }.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "launcher".into(),
                    state: Some(ContainerState {
                        terminated: exit_code.map(|exit_code| ContainerStateTerminated {
                            exit_code,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The VM `web` at `version`, with this status.
    fn vm(version: u32, status: Value) -> Value {
        json!({
            "apiVersion": "vmlet.dev/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "default", "uid": VM_UID,
                         "resourceVersion": version.to_string()},
            "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}}}}},
            "status": status,
        })
    }

    /// The status as the controller leaves it while `pod` runs: its fields only.
    fn controller_status(pod: &str) -> Value {
        json!({"phase": "Scheduled", "printableStatus": "Starting", "nodeName": "node-a", "launcherPod": pod,
               "restartCount": 2})
    }

    /// `base` with the node's fields `node` merged in, as the API server keeps both writers' fields.
    fn with_node(mut base: Value, node: &Value) -> Value {
        let object = base.as_object_mut().unwrap();
        for (key, value) in node.as_object().unwrap() {
            object.insert(key.clone(), value.clone());
        }
        base
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    const VM_URI: &str = "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web";
    const STATUS_URI: &str =
        "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web/status?&force=true&fieldManager=vmlet-node";

    /// The node's fields while the launcher of `pod` runs its guest.
    fn running_report(pod: &str) -> Value {
        json!({
            "conditions": [
                {"type": "Paused", "status": "False", "reason": "NotPaused",
                 "lastTransitionTime": "1970-01-01T00:01:40Z"},
            ],
            "interfaces": [{"name": "default", "ipAddress": "10.244.1.7",
                            "ipAddresses": ["10.244.1.7", "fd00::7"], "mac": "02:42:0a:f4:01:07",
                            "interfaceName": "enp1s0", "infoSource": "domain, guest-agent"}],
            "guestOSInfo": {"name": "Debian GNU/Linux", "id": "debian", "versionId": "12"},
            "launcher": {"pod": pod, "node": "node-a", "state": "Running", "message": "domain state Running(Booted)"},
        })
    }

    /// Expects the node's apply of exactly `fields`, conditional on `version`, and answers it as the API server
    /// would, at the next version.
    async fn expect_apply(server: &mut fakes::ApiServer, version: u32, base: &Value, fields: &Value) -> Value {
        let now = with_node(base.clone(), fields);
        let seen = server.answer(200, vm(version + 1, now.clone())).await;
        assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", STATUS_URI));
        assert_eq!(seen.content_type.as_deref(), Some("application/apply-patch+yaml"));
        assert_eq!(
            seen.body.unwrap(),
            json!({"apiVersion": "vmlet.dev/v1alpha1", "kind": "VirtualMachine",
                   "metadata": {"resourceVersion": version.to_string()}, "status": fields})
        );
        now
    }

    async fn expect_get(server: &mut fakes::ApiServer, answer: Value) {
        let seen = server.answer(200, answer).await;
        assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", VM_URI));
    }

    #[tokio::test]
    async fn a_running_launcher_is_read_and_reported_once_then_its_silence_and_loss() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = LauncherProcess::start(dir.path(), POD, running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            // The VM as the controller left it: the node reads it once, and writes only its own fields.
            let controller = controller_status(POD);
            expect_get(&mut server, vm(1, controller.clone())).await;
            let now = expect_apply(&mut server, 1, &controller, &running_report(POD)).await;
            // The launcher went silent at 110: reported, with what was known of the guest.
            let mut unreachable = running_report(POD);
            unreachable["launcher"] = json!({"pod": POD, "node": "node-a", "state": "Unreachable",
                "message": "the launcher has not answered since 1970-01-01T00:01:50Z"});
            let now = expect_apply(&mut server, 2, &now, &unreachable).await;
            // Silent for 30 s: lost, and no longer on the network nor known to run any OS.
            let lost = json!({
                "conditions": [{"type": "Paused", "status": "False", "reason": "NotPaused",
                                "lastTransitionTime": "1970-01-01T00:01:40Z"}],
                "launcher": {"pod": POD, "node": "node-a", "state": "Lost",
                             "message": "the launcher has not answered since 1970-01-01T00:01:50Z"},
            });
            let mut base = now;
            base.as_object_mut().unwrap().remove("interfaces");
            base.as_object_mut().unwrap().remove("guestOSInfo");
            expect_apply(&mut server, 3, &base, &lost).await;
            server.done().await;
        });

        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Init);
        launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
        launchers.observe(watcher::Event::InitDone);
        launchers.tick(at(100)).await;
        // Nothing changed but the uptime: no request.
        launchers.tick(at(103)).await;

        launcher.kill();
        launchers.tick(at(110)).await;
        launchers.tick(at(130)).await;
        launchers.tick(at(140)).await;
        // Lost stays lost: nothing more is written.
        launchers.tick(at(150)).await;
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_pause_is_seen_at_the_next_round() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = LauncherProcess::start(dir.path(), POD, running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            let controller = controller_status(POD);
            expect_get(&mut server, vm(1, controller.clone())).await;
            let now = expect_apply(&mut server, 1, &controller, &running_report(POD)).await;
            let mut paused = running_report(POD);
            paused["conditions"][0] = json!({"type": "Paused", "status": "True", "reason": "Paused",
                "lastTransitionTime": "1970-01-01T00:01:43Z"});
            paused["launcher"]["state"] = json!("Paused");
            paused["launcher"]["message"] = json!("domain state Paused(User)");
            expect_apply(&mut server, 2, &now, &paused).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Apply(launcher_pod(None)));
        launchers.tick(at(100)).await;
        *launcher.vm.0.lock().unwrap() = Status {
            phase: Phase::Paused,
            domain_state: Some("Paused(User)".into()),
            ..running()
        };
        launchers.tick(at(103)).await;
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_restarted_handler_adopts_a_running_launcher_without_rewriting_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let _launcher = LauncherProcess::start(dir.path(), POD, running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            // The VM already holds what the previous handler wrote: nothing to apply.
            expect_get(
                &mut server,
                vm(7, with_node(controller_status(POD), &running_report(POD))),
            )
            .await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Init);
        launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
        launchers.observe(watcher::Event::InitDone);
        launchers.tick(at(500)).await;
        launchers.tick(at(503)).await;
        drop(launchers);
        api.await.unwrap();
    }

    /// Plays an API server that holds the VM `web` and takes every write of the node's fields.
    async fn accept_everything(mut server: fakes::ApiServer) {
        let mut version = 1;
        let mut status = controller_status(POD);
        while let Some((seen, reply)) = server.next().await {
            if seen.method == "PATCH" {
                version += 1;
                status = with_node(status, &seen.body.unwrap()["status"]);
            }
            reply.send(200, &vm(version, status.clone()));
        }
    }

    /// `running()` with what a launcher counts: its DHCP servers' packets and its QEMU's usage.
    fn counting(lease: &str, cpu_seconds: f64) -> Status {
        let counters = |lease: Option<&str>, pairs: &[(&str, u64)]| vmlet_control::DhcpStatus {
            lease: lease.map(Into::into),
            counters: pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        };
        Status {
            dhcp: Some(counters(Some(lease), &[("answered", 2), ("ignored", 1)])),
            dhcpv6: Some(Box::new(counters(None, &[("answered", 0)]))),
            router_advertisements: Some(Box::new(counters(None, &[("unsolicited", 3)]))),
            qemu: Some(vmlet_control::ProcessUsage {
                cpu_seconds,
                resident_bytes: 300 << 20,
            }),
            ..running()
        }
    }

    #[tokio::test]
    async fn a_launchers_answers_become_its_vms_series_and_its_start_counts_from_the_pods_creation() {
        let dir = tempfile::tempdir().unwrap();
        let (client, server) = fakes::pair();
        let api = tokio::spawn(accept_everything(server));
        let metrics = Arc::new(Metrics::default());
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), metrics.clone());
        let mut pod = launcher_pod(None);
        pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(90)));
        launchers.observe(watcher::Event::Apply(pod.clone()));
        // The pod is made; its launcher has no socket yet.
        launchers.tick(at(100)).await;
        let launcher = LauncherProcess::start(dir.path(), POD, counting("offered", 1.5));
        launchers.tick(at(110)).await;
        *launcher.vm.0.lock().unwrap() = counting("bound", 4.0);
        launchers.tick(at(114)).await;
        launchers.tick(at(117)).await;

        let text = metrics.encode();
        for line in [
            r#"kubevirt_vmi_phase_transition_time_from_creation_seconds_sum{phase="running"} 20.0"#,
            r#"kubevirt_vmi_phase_transition_time_from_creation_seconds_count{phase="running"} 1"#,
            "vmlet_vmi_first_lease_seconds_sum 24.0",
            "vmlet_vmi_first_lease_seconds_count 1",
            r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web"} 4.0"#,
            r#"kubevirt_vmi_memory_resident_bytes{namespace="default",name="web"} 314572800"#,
            r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="dhcpv4",outcome="ignored"} 1"#,
            r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="dhcpv6",outcome="answered"} 0"#,
            r#"vmlet_vmi_dhcp_packets{namespace="default",name="web",protocol="ra",outcome="unsolicited"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }

        // The pod goes: so do its VM's series.
        launcher.kill();
        launchers.observe(watcher::Event::Delete(pod));
        launchers.tick(at(120)).await;
        let text = metrics.encode();
        assert!(!text.contains(r#"name="web""#), "{text}");
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_launcher_running_when_first_seen_adds_no_start_latency() {
        let dir = tempfile::tempdir().unwrap();
        let _launcher = LauncherProcess::start(dir.path(), POD, counting("bound", 1.0));
        let (client, server) = fakes::pair();
        let api = tokio::spawn(accept_everything(server));
        let metrics = Arc::new(Metrics::default());
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), metrics.clone());
        let mut pod = launcher_pod(None);
        pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(90)));
        launchers.observe(watcher::Event::Apply(pod));
        launchers.tick(at(500)).await;
        launchers.tick(at(503)).await;
        let text = metrics.encode();
        assert!(text.contains("vmlet_vmi_first_lease_seconds_count 0"), "{text}");
        assert!(
            !text.contains("kubevirt_vmi_phase_transition_time_from_creation_seconds_count"),
            "{text}"
        );
        assert!(
            text.contains(r#"kubevirt_vmi_cpu_usage_seconds_total{namespace="default",name="web"} 1.0"#),
            "{text}"
        );
        drop(launchers);
        api.await.unwrap();
    }

    /// The node's fields once the pod shows the launcher's exit code 4.
    fn exited_report() -> Value {
        json!({
            "conditions": [{"type": "Paused", "status": "False", "reason": "NotPaused",
                            "lastTransitionTime": "1970-01-01T00:01:40Z"}],
            "launcher": {"pod": POD, "node": "node-a", "state": "Exited", "exitCode": 4},
        })
    }

    #[tokio::test]
    async fn the_pods_exit_code_is_reported_once_and_its_deletion_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            let before = with_node(controller_status(POD), &running_report(POD));
            expect_get(&mut server, vm(1, before.clone())).await;
            let mut base = before;
            base.as_object_mut().unwrap().remove("interfaces");
            base.as_object_mut().unwrap().remove("guestOSInfo");
            expect_apply(&mut server, 1, &base, &exited_report()).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Apply(launcher_pod(Some(4))));
        launchers.tick(at(200)).await;
        launchers.observe(watcher::Event::Delete(launcher_pod(Some(4))));
        launchers.tick(at(210)).await;
        assert!(launchers.launchers.is_empty(), "a deleted pod is forgotten");
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_pod_deleted_while_its_vm_runs_is_reported_lost_even_when_missed_by_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            expect_get(
                &mut server,
                vm(1, with_node(controller_status(POD), &running_report(POD))),
            )
            .await;
            let seen = server.answer(200, vm(2, json!({}))).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", STATUS_URI));
            let body = seen.body.unwrap();
            assert_eq!(body["status"]["launcher"]["state"], "Lost");
            assert_eq!(body["status"]["launcher"]["message"], "the launcher's pod is gone");
            assert!(body["status"].get("interfaces").is_none());
            assert!(body["status"].get("guestOSInfo").is_none());
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Apply(launcher_pod(None)));
        // The watch restarts and the pod is no longer listed: it was deleted while the watch was down.
        launchers.observe(watcher::Event::Init);
        launchers.observe(watcher::Event::InitDone);
        launchers.tick(at(300)).await;
        assert!(launchers.launchers.is_empty());
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn an_ended_pods_word_never_covers_the_next_pod_the_vm_follows() {
        let dir = tempfile::tempdir().unwrap();
        let _launcher = LauncherProcess::start(dir.path(), NEXT_POD, running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            // The controller follows the next pod already: the ended one's exit is not written...
            let controller = controller_status(NEXT_POD);
            expect_get(&mut server, vm(5, controller.clone())).await;
            // ...and the next pod's report is.
            expect_get(&mut server, vm(5, controller.clone())).await;
            let mut next = running_report(NEXT_POD);
            next["conditions"][0]["lastTransitionTime"] = json!("1970-01-01T00:05:00Z");
            let now = expect_apply(&mut server, 5, &controller, &next).await;
            // The ended pod is asked about again while it lingers, as the VM may yet name it; the next one is not.
            expect_get(&mut server, vm(6, now)).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Apply(named_launcher_pod(POD, Some(4))));
        launchers.observe(watcher::Event::Apply(named_launcher_pod(NEXT_POD, None)));
        launchers.tick(at(300)).await;
        launchers.tick(at(303)).await;
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_write_refused_because_the_vm_changed_is_decided_again_on_the_new_status() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            let running = with_node(controller_status(POD), &running_report(POD));
            expect_get(&mut server, vm(1, running.clone())).await;
            let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                                  "message": "the object has been modified", "code": 409});
            let seen = server.answer(409, conflict).await;
            assert_eq!(seen.body.unwrap()["metadata"]["resourceVersion"], "1");
            // Meanwhile the controller moved on to the next pod: this pod's loss is not written.
            let mut moved = running;
            moved["launcherPod"] = json!(NEXT_POD);
            expect_get(&mut server, vm(2, moved)).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Delete(launcher_pod(None)));
        launchers.tick(at(300)).await;
        assert!(launchers.launchers.is_empty(), "nothing left to say about it");
        drop(launchers);
        api.await.unwrap();
    }

    /// A VM deleted between its read and its status write (every VM's deletion may meet a round so) is no
    /// failure: its pod is forgotten, with nothing to warn of.
    #[tokio::test]
    async fn a_vm_deleted_before_its_status_is_written_is_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            let running = with_node(controller_status(POD), &running_report(POD));
            expect_get(&mut server, vm(1, running)).await;
            let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "code": 404});
            let seen = server.answer(404, missing).await;
            assert_eq!(seen.uri, STATUS_URI);
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Delete(launcher_pod(None)));
        launchers.tick(at(300)).await;
        assert!(launchers.launchers.is_empty(), "nothing left to say about it");
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_pod_of_an_earlier_vm_of_the_same_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            let mut other = vm(1, json!({}));
            other["metadata"]["uid"] = json!("uid-of-a-new-vm");
            expect_get(&mut server, other).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Apply(launcher_pod(Some(0))));
        launchers.tick(at(300)).await;
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_pod_is_kept_until_its_last_word_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            let running = with_node(controller_status(POD), &running_report(POD));
            expect_get(&mut server, vm(1, running.clone())).await;
            let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "message": "etcd is away", "reason": "ServiceUnavailable", "code": 503});
            let seen = server.answer(503, unavailable).await;
            assert_eq!(seen.uri, STATUS_URI);
            // The next round reads the VM again, as a failed write may or may not have landed.
            expect_get(&mut server, vm(1, running)).await;
            let seen = server.answer(200, vm(2, json!({}))).await;
            assert_eq!(seen.uri, STATUS_URI);
            assert_eq!(seen.body.unwrap()["status"]["launcher"]["state"], "Lost");
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &fakes::config(dir.path()), Arc::default());
        launchers.observe(watcher::Event::Delete(launcher_pod(None)));
        launchers.tick(at(300)).await;
        assert_eq!(launchers.launchers.len(), 1, "kept: its status is not written yet");
        launchers.tick(at(303)).await;
        assert!(launchers.launchers.is_empty());
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn only_the_run_directories_of_pods_that_are_gone_and_silent_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path();
        let make = |name: &str| {
            let run = run_dir(pods, "default", name);
            std::fs::create_dir_all(run.join("disks")).unwrap();
            std::fs::write(run.join("dhcp-lease.json"), "{}").unwrap();
            run
        };
        let watched = make(POD);
        let gone = make("vmlet-launcher-web-gone1");
        let unwatched = make("vmlet-launcher-web-unwat");
        // A pod deleted by force whose launcher still runs.
        let _still_running = LauncherProcess::start(pods, "vmlet-launcher-web-forcd", running());
        let still_running = run_dir(pods, "default", "vmlet-launcher-web-forcd");
        let stranger = pods.join("not-a-run-dir");
        std::fs::create_dir_all(&stranger).unwrap();

        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            let seen = server
                .answer(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                "reason": "NotFound", "code": 404}),
                )
                .await;
            assert_eq!(
                (seen.method.as_str(), seen.uri.as_str()),
                ("GET", "/api/v1/namespaces/default/pods/vmlet-launcher-web-gone1")
            );
            // A pod the watch does not show (its labels changed, say) but that exists: its directory stays.
            let seen = server
                .answer(
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "vmlet-launcher-web-unwat", "namespace": "default"}}),
                )
                .await;
            assert_eq!(seen.uri, "/api/v1/namespaces/default/pods/vmlet-launcher-web-unwat");
            server.done().await;
        });
        let mut config = fakes::config(pods);
        config.orphan_grace = Duration::from_secs(60);
        let mut launchers = Launchers::new(client, &config, Arc::default());
        // Before the watch has listed the node's pods, nothing is known to be gone.
        launchers.sweep(at(0)).await;
        launchers.observe(watcher::Event::Init);
        launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
        launchers.observe(watcher::Event::InitDone);
        // Found without a pod, but not for long enough.
        launchers.sweep(at(10)).await;
        launchers.sweep(at(69)).await;
        assert!(gone.exists());
        launchers.sweep(at(70)).await;
        drop(launchers);
        api.await.unwrap();

        assert!(!gone.exists());
        for kept in [&watched, &unwatched, &still_running, &stranger] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }
}
