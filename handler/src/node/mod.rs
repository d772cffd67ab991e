//! The node role: one per node (a DaemonSet). It watches the launcher pods scheduled to its node, asks each
//! launcher over its control socket how its VM is, and writes the VM's status fields that the node owns; it
//! heartbeats through a Lease and marks its Node schedulable for VMs while it runs.
//!
//! It keeps no state of its own: a restarted handler finds the launchers again by their pods and sockets, and
//! never touches a VM because it restarted.

mod heartbeat;
mod judge;
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

/// The field manager of everything the node role writes.
pub const FIELD_MANAGER: &str = "vmlet-node";

/// The label the controller puts on a launcher pod: its value is the VM's name (the pod's namespace is the VM's).
pub const VM_LABEL: &str = "vmlet.dev/vm";

/// The Node label that says whether the node role runs there and can serve VMs (`true` or `false`).
pub const SCHEDULABLE_LABEL: &str = "vmlet.dev/schedulable";

pub struct Config {
    pub node_name: String,
    /// The node's directory of launcher run directories, one per pod: `<namespace>_<vm>/control.sock`.
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
    /// The host directory holding each launcher pod's run directory, `<namespace>_<vm>/`.
    #[arg(long, default_value = "/var/run/vmlet/pods")]
    pub pods_dir: PathBuf,
    /// The handler's namespace, where the node's Lease is kept.
    #[arg(long, env = "POD_NAMESPACE", default_value = "vmlet-system")]
    pub namespace: String,
    /// Seconds between two status requests to each launcher.
    #[arg(long, default_value_t = 3)]
    pub poll_secs: u64,
    /// Seconds a launcher may stay silent before its VM counts as failed.
    #[arg(long, default_value_t = 30)]
    pub lost_after_secs: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = vmlet_log::JSON_ENV)]
    pub log_json: bool,
}

/// Runs the node role from the command line until SIGTERM or SIGINT.
pub fn main(args: Args) -> anyhow::Result<()> {
    vmlet_log::init(args.log_json);
    let config = Config {
        node_name: args.node_name,
        pods_dir: args.pods_dir,
        namespace: args.namespace,
        poll_interval: Duration::from_secs(args.poll_secs.max(1)),
        lost_after: Duration::from_secs(args.lost_after_secs),
        renew_interval: Duration::from_secs(10),
        lease_duration: Duration::from_secs(40),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = Client::try_default().await.context("cannot reach the Kubernetes API")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        run(client, config, shutdown).await?;
        Ok(())
    })
}

/// The launcher's control socket of a VM, in the node's pods directory.
pub fn socket_path(pods_dir: &Path, namespace: &str, vm: &str) -> PathBuf {
    pods_dir.join(format!("{namespace}_{vm}")).join("control.sock")
}

/// Runs the node role until `shutdown` completes, then marks the node unschedulable for VMs. The launchers and
/// their VMs are left running.
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", config.node_name))
        .labels(VM_LABEL);
    let mut events = watcher(pods, selector).default_backoff().boxed();
    let mut launchers = Launchers::new(client.clone(), &config);
    let mut heartbeat = Heartbeat::new(client, &config, Timestamp::now());
    let mut poll = tokio::time::interval(config.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew = tokio::time::interval(config.renew_interval);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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

/// A mock API server for the tests: it answers the requests the code makes, in order, and lets the test check
/// each one.
#[cfg(test)]
mod mock {
    use http::{Request, Response};
    use kube::Client;
    use kube::client::Body;
    use serde_json::Value;
    use tower_test::mock::Handle;

    pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

    pub fn pair() -> (Client, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), ApiServer(handle))
    }

    /// One request as the test sees it.
    #[derive(Debug)]
    pub struct Seen {
        pub method: String,
        /// Path and query.
        pub uri: String,
        pub content_type: Option<String>,
        pub body: Option<Value>,
    }

    impl ApiServer {
        /// Waits for the next request and answers it with `status` and `answer`.
        pub async fn answer(&mut self, status: u16, answer: Value) -> Seen {
            let (request, send) = self.0.next_request().await.expect("a request");
            let seen = Seen {
                method: request.method().to_string(),
                uri: request.uri().to_string(),
                content_type: request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned()),
                body: {
                    let bytes = request.into_body().collect_bytes().await.unwrap();
                    (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap())
                },
            };
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
            seen
        }

        /// Asserts that the client made no request it was not answered for, once all clients are dropped.
        pub async fn done(mut self) {
            if let Some((request, _)) = self.0.next_request().await {
                panic!("unexpected request: {} {}", request.method(), request.uri());
            }
        }
    }
}
