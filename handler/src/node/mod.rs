//! The node role: one per node (a DaemonSet). It watches the controller's launcher pods scheduled to its node,
//! asks each launcher over its control socket how its VM is, and writes the VM's status fields that the node owns
//! (`crate::vm_status`); it removes the run directories of pods that are gone, heartbeats through a Lease and marks
//! its Node schedulable for VMs while it runs.
//!
//! It keeps no state of its own: a restarted handler finds the launchers again by their pods and sockets, and
//! never touches a VM because it restarted.

#[cfg(test)]
mod fakes;
mod heartbeat;
pub mod judge;
mod launchers;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

pub use heartbeat::Heartbeat;
pub use launchers::Launchers;

use vmlet_control::RunDir;

use crate::cluster::{MANAGED_BY, MANAGED_BY_LABEL, run_dir};

/// The field manager of everything the node role writes.
pub const FIELD_MANAGER: &str = "vmlet-node";

pub struct Config {
    pub node_name: String,
    /// The node's directory of launcher run directories, one per pod: `<namespace>_<pod>/control.sock`.
    pub pods_dir: PathBuf,
    /// Where the node's Lease lives: the handler's own namespace.
    pub namespace: String,
    /// How often every launcher is asked for its status.
    pub poll_interval: Duration,
    /// How long a launcher may stay silent before its VM counts as failed.
    pub lost_after: Duration,
    /// How often the Lease is renewed.
    pub renew_interval: Duration,
    /// The Lease's duration: how long others wait, after the last renewal, before they count the node role gone.
    pub lease_duration: Duration,
    /// How long a run directory must stay without a pod before it is removed.
    pub orphan_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the watch of the node's launcher pods ended")]
    WatchEnded,
    #[error("cannot mark the node unschedulable for VMs")]
    Unlabel(#[source] kube::Error),
}

/// `vmlet-handler node`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// This node's name, as the API server knows it.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The host directory holding each launcher pod's run directory, `<namespace>_<pod>/`.
    #[arg(long, default_value = crate::cluster::RUN_DIRS_ON_HOST)]
    pub pods_dir: PathBuf,
    /// The handler's namespace, where the node's Lease is kept.
    #[arg(long, env = "VMLET_NAMESPACE", default_value = "vmlet-system")]
    pub namespace: String,
    /// Seconds between two status requests to each launcher.
    #[arg(long, default_value_t = 3)]
    pub poll_secs: u64,
    /// Seconds a launcher may stay silent before its VM counts as failed.
    #[arg(long, default_value_t = 30)]
    pub lost_after_secs: u64,
    /// Serve Prometheus metrics on this address (`/metrics`); none without it.
    #[arg(long, env = "VMLET_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// Runs the node role from the command line until SIGTERM or SIGINT.
pub fn main(args: Args) -> anyhow::Result<()> {
    let config = Config {
        node_name: args.node_name,
        pods_dir: args.pods_dir,
        namespace: args.namespace,
        poll_interval: Duration::from_secs(args.poll_secs.max(1)),
        lost_after: Duration::from_secs(args.lost_after_secs),
        renew_interval: Duration::from_secs(10),
        lease_duration: Duration::from_secs(40),
        orphan_grace: ORPHAN_GRACE,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let client = crate::metrics::counted_client(metrics.clone())
            .await
            .context("cannot reach the Kubernetes API")?;
        if let Some(address) = args.metrics_address {
            crate::metrics::serve(address, metrics.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {address}"))?;
        }
        let mut sigterm = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        run(client, config, metrics, shutdown).await?;
        Ok(())
    })
}

/// How long a run directory stays after its pod is gone: the watch may lag behind a pod's start, and the API
/// server is asked once more before anything is removed.
const ORPHAN_GRACE: Duration = Duration::from_secs(300);

/// How often the run directories are looked through.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A launcher pod's control socket on the node.
pub fn socket_path(pods_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    RunDir::new(run_dir(pods_dir, namespace, pod)).control_socket()
}

/// The watch of the launcher pods on `node`: the controller's pods (by its label) that are scheduled there.
pub fn launcher_pods(node: &str) -> watcher::Config {
    watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
}

/// Runs the node role until `shutdown` completes, then marks the node unschedulable for VMs. The launchers and
/// their VMs are left running.
pub async fn run(
    client: Client,
    config: Config,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, launcher_pods(&config.node_name))
        .default_backoff()
        .boxed();
    let mut launchers = Launchers::new(client.clone(), &config, metrics);
    let mut heartbeat = Heartbeat::new(client, &config, Timestamp::now());
    let mut poll = tokio::time::interval(config.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first beat comes before anything else, so that the node is marked as soon as the role runs.
    if let Err(err) = heartbeat.beat(ready(&config.pods_dir), Timestamp::now()).await {
        warn!(error = %err, "heartbeat");
    }
    let mut renew = tokio::time::interval_at(
        tokio::time::Instant::now() + config.renew_interval,
        config.renew_interval,
    );
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(node = %config.node_name, pods_dir = %config.pods_dir.display(), "node role started");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => launchers.observe(event),
                Some(Err(err)) => warn!(error = %err, "watching the launcher pods"),
                None => return Err(Error::WatchEnded),
            },
            _ = poll.tick() => launchers.tick(Timestamp::now()).await,
            _ = sweep.tick() => launchers.sweep(Timestamp::now()).await,
            _ = renew.tick() => {
                if let Err(err) = heartbeat.beat(ready(&config.pods_dir), Timestamp::now()).await {
                    warn!(error = %err, "heartbeat");
                }
            }
            () = &mut shutdown => break,
        }
    }
    heartbeat.label(false).await.map_err(Error::Unlabel)?;
    info!("node role stopped; the VMs run on");
    Ok(())
}

/// The node can serve VMs when the launchers' socket directories are reachable.
fn ready(pods_dir: &Path) -> bool {
    pods_dir.is_dir()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use vmlet_control::{InterfaceStatus, Phase, Status};

    use super::fakes::{self, LauncherProcess, Seen};
    use super::*;
    use crate::cluster::SCHEDULABLE_LABEL;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/vmlet-system/leases/vmlet-node-node-a";
    const NODE: &str = "/api/v1/nodes/node-a";
    const VM: &str = "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web";
    const VM_STATUS: &str = "/apis/vmlet.dev/v1alpha1/namespaces/default/virtualmachines/web/status";

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "vmlet-launcher-web-x7k2p", "namespace": "default",
                "labels": {"vmlet.dev/vm": "web", MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": [{"apiVersion": "vmlet.dev/v1alpha1", "kind": "VirtualMachine", "name": "web",
                                     "uid": "uid-web", "controller": true}],
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "launcher"}]},
            "status": {"phase": "Running"},
        })
    }

    fn vm() -> Value {
        json!({
            "apiVersion": "vmlet.dev/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-web", "resourceVersion": "3"},
            "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}}}}},
            "status": {"launcherPod": "vmlet-launcher-web-x7k2p", "phase": "Scheduled"},
        })
    }

    /// Plays the API server for a whole run of the node role: lists the node's one launcher pod, keeps the watch
    /// open, answers every write with what was sent, and asks the role to stop once the VM's status is written.
    async fn api_server(mut server: fakes::ApiServer, stop: tokio::sync::oneshot::Sender<()>) -> Vec<Seen> {
        let mut stop = Some(stop);
        let mut watches = Vec::new();
        let mut seen = Vec::new();
        while let Some((request, reply)) = server.next().await {
            let path = request.uri.split('?').next().unwrap_or_default().to_owned();
            match (request.method.as_str(), path.as_str()) {
                ("GET", "/api/v1/pods") if request.uri.contains("watch=true") => watches.push(reply),
                ("GET", "/api/v1/pods") => reply.send(
                    200,
                    &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                            "items": [pod()]}),
                ),
                ("GET", VM) => reply.send(200, &vm()),
                ("PATCH", VM_STATUS) => {
                    let mut written = vm();
                    written["status"] = request.body.as_ref().unwrap()["status"].clone();
                    reply.send(200, &written);
                    if let Some(stop) = stop.take() {
                        stop.send(()).unwrap();
                    }
                }
                ("PATCH", LEASE | NODE) => reply.send(200, request.body.as_ref().unwrap()),
                (method, _) => panic!("unexpected request: {method} {}", request.uri),
            }
            seen.push(request);
        }
        seen
    }

    #[tokio::test]
    async fn the_node_role_reports_its_own_launchers_and_marks_the_node_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let _launcher = LauncherProcess::start(
            dir.path(),
            "vmlet-launcher-web-x7k2p",
            Status {
                phase: Phase::Running,
                interfaces: vec![InterfaceStatus {
                    name: "default".into(),
                    mac: "02:42:0a:f4:01:07".into(),
                    ip_addresses: vec!["10.244.1.7".into()],
                    binding: "bridge".into(),
                }],
                launcher_pid: 1,
                ..Default::default()
            },
        );
        let (client, server) = fakes::pair();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let api = tokio::spawn(api_server(server, stop));
        let config = Config {
            node_name: "node-a".into(),
            pods_dir: dir.path().into(),
            namespace: "vmlet-system".into(),
            poll_interval: Duration::from_millis(100),
            lost_after: Duration::from_secs(30),
            renew_interval: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            orphan_grace: Duration::from_secs(300),
        };
        let shutdown = async {
            let _ = stopped.await;
        };
        tokio::time::timeout(
            Duration::from_secs(20),
            run(client, config, Default::default(), shutdown),
        )
        .await
        .expect("the node role stops when asked")
        .unwrap();
        let seen = api.await.unwrap();

        let list = seen.iter().find(|s| s.uri.starts_with("/api/v1/pods?")).unwrap();
        assert!(
            list.uri.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{}",
            list.uri
        );
        assert!(
            list.uri
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvmlet-controller"),
            "{}",
            list.uri
        );

        let with_path =
            |path: &str| -> Vec<&Seen> { seen.iter().filter(|s| s.uri.split('?').next() == Some(path)).collect() };
        let labels: Vec<&Value> = with_path(NODE)
            .iter()
            .map(|s| &s.body.as_ref().unwrap()["metadata"]["labels"][SCHEDULABLE_LABEL])
            .collect();
        assert_eq!(
            labels,
            [&json!("true"), &json!("false")],
            "labelled at start and at stop only"
        );
        assert_eq!(with_path(LEASE).len(), 1, "one beat in the test's short run");

        let writes = with_path(VM_STATUS);
        assert_eq!(writes.len(), 1);
        assert!(
            writes[0].uri.ends_with("?&force=true&fieldManager=vmlet-node"),
            "{}",
            writes[0].uri
        );
        let body = writes[0].body.as_ref().unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "3");
        let status = &body["status"];
        assert_eq!(status["launcher"]["state"], "Running");
        assert_eq!(status["launcher"]["pod"], "vmlet-launcher-web-x7k2p");
        assert_eq!(status["launcher"]["node"], "node-a");
        assert_eq!(status["interfaces"][0]["ipAddress"], "10.244.1.7");
        assert!(status.get("phase").is_none(), "the controller's field");
    }
}
