//! The launchers on this node: their pods as the watch reports them, their control sockets, and the VM status
//! each one leads to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};
use vmlet_api::{VirtualMachine, VirtualMachineStatus};
use vmlet_control::ClientError;

use super::judge::{PodState, Probe, Tracking, judge, pod_state, status_update};
use super::{Config, FIELD_MANAGER, VM_LABEL, socket_path};
use crate::vm_status::{LauncherState, NodeStatus};

/// How long one status request may take before the launcher counts as silent for this round.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PodKey {
    namespace: String,
    name: String,
}

struct Launcher {
    vm: String,
    socket: PathBuf,
    pod: PodState,
    /// The watch reported the pod deleted: report once more, then forget it.
    deleted: bool,
    tracking: Tracking,
    /// A connection kept between rounds.
    connection: Option<vmlet_control::Client>,
    /// The VM's status as last read or written, so that an unchanged launcher costs no request; `None` until
    /// read, and after a failed write.
    known: Option<VirtualMachineStatus>,
}

pub struct Launchers {
    client: Client,
    node: String,
    pods_dir: PathBuf,
    lost_after: Duration,
    launchers: BTreeMap<PodKey, Launcher>,
    /// The pods listed since the watch (re)started; those not listed again were deleted meanwhile.
    relisted: Option<BTreeSet<PodKey>>,
}

impl Launchers {
    pub fn new(client: Client, config: &Config) -> Launchers {
        Launchers {
            client,
            node: config.node_name.clone(),
            pods_dir: config.pods_dir.clone(),
            lost_after: config.lost_after,
            launchers: BTreeMap::new(),
            relisted: None,
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
        let vm = pod.labels().get(VM_LABEL)?.clone();
        let key = PodKey {
            namespace: pod.namespace()?,
            name: pod.name_any(),
        };
        let state = pod_state(pod, deleted);
        let launcher = self.launchers.entry(key.clone()).or_insert_with(|| {
            info!(namespace = %key.namespace, vm = %vm, pod = %key.name, "launcher pod found");
            Launcher {
                socket: socket_path(&self.pods_dir, &key.namespace, &vm),
                vm,
                pod: state,
                deleted,
                tracking: Tracking::default(),
                connection: None,
                known: None,
            }
        });
        launcher.pod = state;
        launcher.deleted = deleted;
        Some(key)
    }

    /// One round: asks every launcher how its VM is, and writes what changed.
    pub async fn tick(&mut self, now: Timestamp) {
        let probes = futures::future::join_all(self.launchers.values_mut().map(|launcher| async {
            // Only a live pod's launcher is asked: the socket's path is the VM's, and an ended pod's successor
            // may already be serving there.
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
        self.launchers.retain(|key, launcher| {
            let forget = launcher.deleted && !unwritten.contains(key);
            if forget {
                info!(namespace = %key.namespace, vm = %launcher.vm, pod = %key.name, "launcher pod gone");
            }
            !forget
        });
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

/// Writes the VM status the launcher's state leads to, if it differs from the VM's.
async fn report(
    vms: &Api<VirtualMachine>,
    launcher: &mut Launcher,
    state: &LauncherState,
    node: &str,
    pod: &str,
    now: Timestamp,
) -> Result<(), kube::Error> {
    let mut current = match launcher.known.take() {
        Some(known) => known,
        None => match vms.get_opt(&launcher.vm).await? {
            Some(vm) => vm.status.unwrap_or_default(),
            None => {
                debug!(vm = %launcher.vm, "no such VM");
                return Ok(());
            }
        },
    };
    let derived = NodeStatus::derive(state, Some(&current), node, pod, now);
    if let Some(update) = status_update(Some(&current), derived) {
        vms.patch_status(
            &launcher.vm,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(status_patch(&update)),
        )
        .await?;
        info!(
            namespace = vms.namespace().unwrap_or_default(),
            vm = %launcher.vm,
            phase = ?update.phase,
            status = ?update.printable_status,
            "VM status written"
        );
        update.write_into(&mut current);
    }
    launcher.known = Some(current);
    Ok(())
}

/// The server-side apply body for the node's fields of a VM's status.
fn status_patch(status: &NodeStatus) -> serde_json::Value {
    json!({
        "apiVersion": VirtualMachine::api_version(&()),
        "kind": VirtualMachine::kind(&()),
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use kube::api::ObjectMeta;
    use serde_json::{Value, json};
    use vmlet_control::{InterfaceStatus, Phase, Status};

    use super::*;
    use crate::node::fakes::{self, LauncherProcess};

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
            ..Default::default()
        }
    }

    fn config(pods_dir: &std::path::Path) -> Config {
        Config {
            node_name: "node-a".into(),
            pods_dir: pods_dir.into(),
            namespace: "vmlet-system".into(),
            poll_interval: Duration::from_secs(3),
            lost_after: Duration::from_secs(30),
            renew_interval: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
        }
    }

    fn launcher_pod(exit_code: Option<i32>) -> Pod {
        named_launcher_pod("web-launcher-x7k2p", exit_code)
    }

    fn named_launcher_pod(name: &str, exit_code: Option<i32>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some([(VM_LABEL.to_owned(), "web".to_owned())].into()),
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

    fn vm(status: Value) -> Value {
        json!({
            "apiVersion": "vmlet.dev/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}}}}},
            "status": status,
        })
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    const VM_URI: &str = "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web";
    const STATUS_URI: &str =
        "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web/status?&force=true&fieldManager=vmlet-node";

    /// The apply body the node should send: only its own fields.
    fn applied(status: Value) -> Value {
        json!({"apiVersion": "vmlet.dev/v1alpha1", "kind": "VirtualMachine", "status": status})
    }

    fn running_status() -> Value {
        json!({
            "phase": "Running",
            "printableStatus": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Running",
                 "message": "domain state Running(Booted)", "lastTransitionTime": "1970-01-01T00:01:40Z"},
                {"type": "Paused", "status": "False", "reason": "NotPaused",
                 "lastTransitionTime": "1970-01-01T00:01:40Z"},
                {"type": "Failure", "status": "False", "reason": "NoFailure",
                 "lastTransitionTime": "1970-01-01T00:01:40Z"},
            ],
            "interfaces": [{"name": "default", "ipAddress": "10.244.1.7",
                            "ipAddresses": ["10.244.1.7", "fd00::7"], "mac": "02:42:0a:f4:01:07"}],
            "nodeName": "node-a",
            "launcherPod": "web-launcher-x7k2p",
        })
    }

    /// What the node writes when the pod `web-launcher-x7k2p` shows exit code 4 at 200 s, after running since 100.
    fn crashed_status() -> Value {
        json!({
            "phase": "Failed",
            "printableStatus": "Stopped",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "GuestCrashed",
                 "message": "the guest crashed or QEMU died", "lastTransitionTime": "1970-01-01T00:03:20Z"},
                {"type": "Paused", "status": "False", "reason": "NotPaused",
                 "lastTransitionTime": "1970-01-01T00:01:40Z"},
                {"type": "Failure", "status": "True", "reason": "GuestCrashed",
                 "message": "the guest crashed or QEMU died", "lastTransitionTime": "1970-01-01T00:03:20Z"},
            ],
            "nodeName": "node-a",
            "launcherPod": "web-launcher-x7k2p",
        })
    }

    async fn expect_apply(server: &mut fakes::ApiServer, status: Value) {
        let seen = server.answer(200, vm(status.clone())).await;
        assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", STATUS_URI));
        assert_eq!(seen.content_type.as_deref(), Some("application/apply-patch+yaml"));
        assert_eq!(seen.body.unwrap(), applied(status));
    }

    #[tokio::test]
    async fn a_running_launcher_is_read_and_its_status_applied_once_then_its_loss_makes_the_vm_fail() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = LauncherProcess::start(dir.path(), running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            // The VM as the controller left it: the node reads it once, to keep what it finds.
            let seen = server
                .answer(200, vm(json!({"phase": "Scheduling", "restartCount": 2})))
                .await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", VM_URI));
            expect_apply(&mut server, running_status()).await;
            // The launcher went silent at 110: Ready becomes Unknown, the rest stands.
            let mut unreachable = running_status();
            unreachable["conditions"][0] = json!({"type": "Ready", "status": "Unknown",
                "reason": "LauncherUnreachable", "message": "the launcher has not answered since 1970-01-01T00:01:50Z",
                "lastTransitionTime": "1970-01-01T00:01:50Z"});
            expect_apply(&mut server, unreachable).await;
            // Silent for 30 s: the VM failed, and has no address any more.
            let lost = json!({
                "phase": "Failed",
                "printableStatus": "Stopped",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "LauncherLost",
                     "message": "the launcher has not answered since 1970-01-01T00:01:50Z",
                     "lastTransitionTime": "1970-01-01T00:02:20Z"},
                    {"type": "Paused", "status": "False", "reason": "NotPaused",
                     "lastTransitionTime": "1970-01-01T00:01:40Z"},
                    {"type": "Failure", "status": "True", "reason": "LauncherLost",
                     "message": "the launcher has not answered since 1970-01-01T00:01:50Z",
                     "lastTransitionTime": "1970-01-01T00:02:20Z"},
                ],
                "nodeName": "node-a",
                "launcherPod": "web-launcher-x7k2p",
            });
            expect_apply(&mut server, lost).await;
            server.done().await;
        });

        let mut launchers = Launchers::new(client, &config(dir.path()));
        launchers.observe(watcher::Event::Init);
        launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
        launchers.observe(watcher::Event::InitDone);
        launchers.tick(at(100)).await;
        // Nothing changed but the uptime: no request.
        launchers.tick(at(103)).await;

        launcher.kill(dir.path());
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
        let launcher = LauncherProcess::start(dir.path(), running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            server.answer(200, vm(json!({}))).await;
            expect_apply(&mut server, running_status()).await;
            let mut paused = running_status();
            paused["printableStatus"] = json!("Paused");
            paused["conditions"][0] = json!({"type": "Ready", "status": "False", "reason": "Paused",
                "message": "domain state Paused(User)", "lastTransitionTime": "1970-01-01T00:01:43Z"});
            paused["conditions"][1] = json!({"type": "Paused", "status": "True", "reason": "Paused",
                "lastTransitionTime": "1970-01-01T00:01:43Z"});
            expect_apply(&mut server, paused).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &config(dir.path()));
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
        let _launcher = LauncherProcess::start(dir.path(), running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            // The VM already holds what the previous handler wrote: nothing to apply.
            server.answer(200, vm(running_status())).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &config(dir.path()));
        launchers.observe(watcher::Event::Init);
        launchers.observe(watcher::Event::InitApply(launcher_pod(None)));
        launchers.observe(watcher::Event::InitDone);
        launchers.tick(at(500)).await;
        launchers.tick(at(503)).await;
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn the_pods_exit_code_and_deletion_end_the_vm_once() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            server.answer(200, vm(running_status())).await;
            expect_apply(&mut server, crashed_status()).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &config(dir.path()));
        launchers.observe(watcher::Event::Apply(launcher_pod(Some(4))));
        launchers.tick(at(200)).await;
        launchers.observe(watcher::Event::Delete(launcher_pod(Some(4))));
        launchers.tick(at(210)).await;
        assert!(launchers.launchers.is_empty(), "a deleted pod is forgotten");
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_pod_deleted_while_its_vm_runs_fails_the_vm_even_when_missed_by_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            server.answer(200, vm(running_status())).await;
            let seen = server.answer(200, vm(json!({"phase": "Failed"}))).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("PATCH", STATUS_URI));
            let body = seen.body.unwrap();
            assert_eq!(body["status"]["phase"], "Failed");
            assert_eq!(body["status"]["conditions"][2]["reason"], "LauncherLost");
            assert_eq!(body["status"]["conditions"][2]["message"], "the launcher's pod is gone");
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &config(dir.path()));
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
    async fn the_next_pod_of_a_vm_is_reported_not_the_ended_one_on_the_same_socket() {
        let dir = tempfile::tempdir().unwrap();
        // The next pod's launcher serves the VM's socket; the ended pod must not take its answers for its own.
        let _launcher = LauncherProcess::start(dir.path(), running());
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            // The ended pod: the VM already says how it ended.
            server.answer(200, vm(crashed_status())).await;
            // The next pod.
            let seen = server.answer(200, vm(crashed_status())).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", VM_URI));
            let mut next = running_status();
            next["launcherPod"] = json!("web-launcher-z9q4r");
            next["conditions"][0]["lastTransitionTime"] = json!("1970-01-01T00:05:00Z");
            next["conditions"][2]["lastTransitionTime"] = json!("1970-01-01T00:05:00Z");
            expect_apply(&mut server, next).await;
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &config(dir.path()));
        launchers.observe(watcher::Event::Apply(named_launcher_pod("web-launcher-x7k2p", Some(4))));
        launchers.observe(watcher::Event::Apply(named_launcher_pod("web-launcher-z9q4r", None)));
        launchers.tick(at(300)).await;
        launchers.tick(at(303)).await;
        drop(launchers);
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_pod_is_kept_until_its_last_word_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (client, mut server) = fakes::pair();
        let api = tokio::spawn(async move {
            server.answer(200, vm(running_status())).await;
            let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "message": "etcd is away", "reason": "ServiceUnavailable", "code": 503});
            let seen = server.answer(503, unavailable).await;
            assert_eq!(seen.uri, STATUS_URI);
            // The next round reads the VM again, as a failed write may or may not have landed.
            let seen = server.answer(200, vm(running_status())).await;
            assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", VM_URI));
            let seen = server.answer(200, vm(json!({}))).await;
            assert_eq!(seen.uri, STATUS_URI);
            assert_eq!(seen.body.unwrap()["status"]["conditions"][2]["reason"], "LauncherLost");
            server.done().await;
        });
        let mut launchers = Launchers::new(client, &config(dir.path()));
        launchers.observe(watcher::Event::Delete(launcher_pod(None)));
        launchers.tick(at(300)).await;
        assert_eq!(launchers.launchers.len(), 1, "kept: its status is not written yet");
        launchers.tick(at(303)).await;
        assert!(launchers.launchers.is_empty());
        drop(launchers);
        api.await.unwrap();
    }
}
