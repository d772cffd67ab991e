//! Stand-ins for the tests: an API server that answers what the test scripts, and a launcher that answers on its
//! control socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tokio::net::UnixListener;
use tower_test::mock::{Handle, SendResponse};
use vmlet_control::{Command, Error, Handler, Status};

use super::{Config, socket_path};

/// The node role's settings in the tests: node `node-a`, its pods under `pods_dir`, the defaults' intervals.
pub fn config(pods_dir: &Path) -> Config {
    Config {
        node_name: "node-a".into(),
        pods_dir: pods_dir.into(),
        namespace: "vmlet-system".into(),
        poll_interval: std::time::Duration::from_secs(3),
        lost_after: std::time::Duration::from_secs(30),
        renew_interval: std::time::Duration::from_secs(10),
        lease_duration: std::time::Duration::from_secs(40),
        orphan_grace: std::time::Duration::from_secs(300),
    }
}

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

/// The way back to the client for one request.
pub struct Reply(SendResponse<Response<Body>>);

impl Reply {
    pub fn send(self, status: u16, answer: &Value) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(answer).unwrap()))
            .unwrap();
        self.0.send_response(response);
    }
}

impl ApiServer {
    /// The next request, or `None` once every client is dropped.
    pub async fn next(&mut self) -> Option<(Seen, Reply)> {
        let (request, send) = self.0.next_request().await?;
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
        Some((seen, Reply(send)))
    }

    /// Waits for the next request and answers it with `status` and `answer`.
    pub async fn answer(&mut self, status: u16, answer: Value) -> Seen {
        let (seen, reply) = self.next().await.expect("a request");
        reply.send(status, &answer);
        seen
    }

    /// Asserts that the client made no request it was not answered for, once all clients are dropped.
    pub async fn done(mut self) {
        if let Some((seen, _)) = self.next().await {
            panic!("unexpected request: {} {}", seen.method, seen.uri);
        }
    }
}

/// A launcher that answers with whatever status the test sets.
pub struct FakeLauncher(pub Mutex<Status>);

impl Handler for FakeLauncher {
    async fn status(&self) -> Status {
        self.0.lock().unwrap().clone()
    }

    async fn act(&self, _: Command) -> Result<Status, Error> {
        Ok(self.0.lock().unwrap().clone())
    }
}

/// A fake launcher serving its control socket where the node looks for the launcher pod `pod` in `default`. It
/// runs on a runtime of its own, so that ending it closes every connection, as a launcher's death does.
pub struct LauncherProcess {
    pub vm: Arc<FakeLauncher>,
    socket: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for LauncherProcess {
    fn drop(&mut self) {
        // A runtime may not be dropped inside another; this one is left to wind down on its own thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl LauncherProcess {
    pub fn start(pods_dir: &Path, pod: &str, status: Status) -> LauncherProcess {
        let socket = socket_path(pods_dir, "default", pod);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let vm = Arc::new(FakeLauncher(Mutex::new(status)));
        let served = Arc::clone(&vm);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = UnixListener::from_std(listener).unwrap();
            let _ = vmlet_control::serve(listener, served).await;
        });
        LauncherProcess {
            vm,
            socket,
            runtime: Some(runtime),
        }
    }

    /// Ends the launcher; its socket file goes with it, as the launcher's run directory is torn down.
    pub fn kill(self) {
        let socket = self.socket.clone();
        drop(self);
        std::fs::remove_file(socket).unwrap();
    }
}
