//! A real registry (the CNCF distribution server, Debian's `docker-registry`) on a loopback port, with its storage
//! and access log in a scratch directory, killed when dropped; images are pushed to it with `skopeo`.
//!
//! [`write_layout`] makes the images: an OCI image layout directory that `skopeo` copies as `oci:DIR:TAG`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};

use crate::{ScratchDir, output_within, poll_until};

const REGISTRY: &str = "/usr/bin/docker-registry";
const SKOPEO: &str = "/usr/bin/skopeo";
/// How long the registry may take to accept connections, and to exit on SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A push of a few MiB to a local registry; generous for a loaded machine.
const PUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// A registry process serving plain http on `127.0.0.1:PORT`.
pub struct Registry {
    addr: SocketAddr,
    dir: ScratchDir,
    process: std::process::Child,
    credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry that anyone may pull from and push to.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// Starts a registry that wants basic credentials (an htpasswd file) for everything, pushes included;
    /// [`Registry::push`] passes them.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Registry {
        assert!(
            Path::new(REGISTRY).is_file() && Path::new(SKOPEO).is_file(),
            "{REGISTRY} or {SKOPEO} is missing: apt-get install docker-registry skopeo apache2-utils"
        );
        let dir = ScratchDir::new();
        std::fs::create_dir(dir.join("storage")).expect("creating the registry's storage directory");
        let auth = match &credentials {
            Some((user, password)) => {
                let htpasswd = crate::run(Command::new("htpasswd").args(["-Bbn", user, password]));
                let path = dir.write("htpasswd", htpasswd);
                format!(
                    "auth:\n  htpasswd:\n    realm: vmlet-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        // The port is free when asked for; the registry takes it a moment later, which no other test of this
        // process races for (the kernel hands out ephemeral ports in turn).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("finding a free port");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            dir.join("storage").display()
        );
        let config = dir.write("config.yml", config);
        let log = std::fs::File::create(dir.join("registry.log")).expect("creating the registry log");
        let process = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("sharing the registry log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut registry = Registry {
            addr,
            dir,
            process,
            credentials,
        };
        let started = poll_until(
            "the registry to accept connections",
            START_TIMEOUT,
            Duration::from_millis(50),
            || TcpStream::connect(addr).ok(),
        );
        if let Err(timeout) = started {
            registry.stop();
            panic!("{timeout}\n--- registry log ---\n{}", registry.log());
        }
        registry
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Where the registry writes its output, access log included.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The file a blob's content is stored in (`sha256:…` digest).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage_dir()
            .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// The access log lines of blob downloads (`GET /v2/NAME/blobs/…`), in order.
    pub fn blob_gets(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| is_request(line, "GET", "/blobs/"))
            .map(str::to_owned)
            .collect()
    }

    /// The access log lines of manifest requests (GET or HEAD), in order.
    pub fn manifest_requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| is_request(line, "GET", "/manifests/") || is_request(line, "HEAD", "/manifests/"))
            .map(str::to_owned)
            .collect()
    }

    /// Copies an image from `source` (skopeo syntax: `oci:DIR:TAG`, `oci-archive:FILE`) to `name_tag`
    /// (`vmlet/disk:1`) in this registry.
    pub fn push(&self, source: &str, name_tag: &str) {
        let mut command = Command::new(SKOPEO);
        command.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((user, password)) = &self.credentials {
            command.arg(format!("--dest-creds={user}:{password}"));
        }
        command.arg(source).arg(format!("docker://{}/{name_tag}", self.host()));
        let output = output_within(&mut command, PUSH_TIMEOUT).unwrap_or_else(|err| panic!("{command:?}: {err}"));
        assert!(
            output.status.success(),
            "skopeo copy {source} to {name_tag} failed: {}\n--- registry log ---\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// Kills the registry (as a crash would) and reaps it; dropping does the same.
    pub fn stop(&mut self) {
        if self.process.try_wait().ok().flatten().is_some() {
            return;
        }
        // Our unreaped child: its pid cannot have been reused.
        let pid = Pid::from_raw(self.process.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let exited = poll_until("the registry to exit", STOP_TIMEOUT, Duration::from_millis(20), || {
            self.process.try_wait().ok().flatten()
        });
        if exited.is_err() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = self.process.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- registry log ---\n{}--- end of registry log ---", self.log());
        }
    }
}

/// Whether an access log line (Apache combined format) is a `method` request whose path contains `part`.
fn is_request(line: &str, method: &str, part: &str) -> bool {
    line.split('"').nth(1).is_some_and(|request| {
        let mut fields = request.split(' ');
        fields.next() == Some(method) && fields.next().is_some_and(|path| path.contains(part))
    })
}

/// A layer for [`write_layout`]: its bytes and media type.
pub struct LayoutLayer {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl LayoutLayer {
    /// A layer of an uncompressed tar.
    pub fn tar(bytes: Vec<u8>) -> LayoutLayer {
        LayoutLayer {
            media_type: "application/vnd.oci.image.layer.v1.tar".to_owned(),
            bytes,
        }
    }

    /// A layer of a gzip-compressed tar.
    pub fn tar_gzip(bytes: Vec<u8>) -> LayoutLayer {
        LayoutLayer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
            bytes,
        }
    }
}

/// What [`write_layout`] wrote.
pub struct LayoutImage {
    /// `sha256:…` of the image manifest.
    pub manifest_digest: String,
    pub layer_digests: Vec<String>,
}

/// Writes (or adds to) an OCI image layout at `dir`: the layers, a minimal config and an image manifest, indexed
/// under `tag`.
pub fn write_layout(dir: &Path, tag: &str, layers: &[LayoutLayer]) -> LayoutImage {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("creating the layout's blob directory");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("writing oci-layout");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let config = write_blob(dir, config.to_string().as_bytes());
    let mut layer_digests = Vec::new();
    let mut descriptors = Vec::new();
    for layer in layers {
        let (digest, _) = write_blob(dir, &layer.bytes);
        descriptors.push(serde_json::json!({
            "mediaType": layer.media_type, "digest": digest, "size": layer.bytes.len(),
        }));
        layer_digests.push(digest);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1 },
        "layers": descriptors,
    })
    .to_string();
    let manifest_digest = write_blob(dir, manifest.as_bytes()).0;
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = std::fs::read(&index_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| serde_json::json!({ "schemaVersion": 2, "manifests": [] }));
    index["manifests"]
        .as_array_mut()
        .expect("an index has manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
    std::fs::write(&index_path, index.to_string()).expect("writing index.json");
    LayoutImage {
        manifest_digest,
        layer_digests,
    }
}

/// Stores a blob under its digest; returns the digest and size.
fn write_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::File::create(dir.join("blobs/sha256").join(&hex)).expect("writing a blob");
    file.write_all(bytes).expect("writing a blob");
    (format!("sha256:{hex}"), bytes.len())
}

/// Forwards connections to `upstream` and cuts each one after `limit` bytes have come back.
pub struct CuttingProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl CuttingProxy {
    pub fn start(upstream: SocketAddr, limit: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || forward(client_in, server_out, usize::MAX));
                std::thread::spawn(move || forward(server, client, limit));
            }
        });
        CuttingProxy {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl CuttingProxy {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Copies `from` to `to` until either closes or `limit` bytes have passed, then closes both.
fn forward(mut from: TcpStream, mut to: TcpStream, limit: usize) {
    let mut buf = [0u8; 16 * 1024];
    let mut passed = 0;
    while passed < limit {
        let n = match from.read(&mut buf[..(limit - passed).min(16 * 1024)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        passed += n;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
