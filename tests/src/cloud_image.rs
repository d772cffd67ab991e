//! The Debian cloud image of `images/cloud/` and its containerDisk, built once per test process (the build script
//! caches them across runs). Building needs root.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A cold build downloads about 100 MB of packages and takes a couple of minutes; a cached one takes a second.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The built image. Its files are shared by every test and every later run: boot it through an overlay
/// (`qemu-img create -b`), never write it.
#[derive(Debug, Clone)]
pub struct CloudImage {
    pub dir: PathBuf,
}

impl CloudImage {
    /// The disk: a compressed qcow2 that boots under BIOS and UEFI.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    /// The containerDisk as an OCI archive (`oci-archive:PATH` for skopeo), tag `latest`.
    pub fn oci_archive(&self) -> PathBuf {
        self.dir.join("containerdisk.oci.tar")
    }

    /// The containerDisk as an OCI image layout directory (`oci:PATH:latest`). Copy it before changing anything.
    pub fn oci_layout(&self) -> PathBuf {
        self.dir.join("containerdisk-oci")
    }

    /// The build's `info` file as keys and values: `kernel_release`, `root_uuid`, `cmdline`, `disk_sha256`, ...
    pub fn info(&self) -> BTreeMap<String, String> {
        let path = self.dir.join("info");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
        text.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.trim().to_owned()))
            .collect()
    }
}

/// Builds the image (or finds it in the cache) and returns where it is; panics with the build's log if it fails.
pub fn cloud_image() -> CloudImage {
    static IMAGE: OnceLock<CloudImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            crate::require_root();
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/cloud/build.sh");
            let (success, stdout, stderr) = run_build(script);
            assert!(success, "images/cloud/build.sh failed:\n{stderr}");
            let dir = stdout
                .lines()
                .last()
                .expect("build.sh prints the image's directory last")
                .trim();
            CloudImage {
                dir: PathBuf::from(dir),
            }
        })
        .clone()
}

/// Runs the build in a process group of its own, so that a build that takes too long ends with everything it
/// started (debootstrap, apt, a chroot), not only its shell.
fn run_build(script: &str) -> (bool, String, String) {
    let mut child = Command::new(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {script}: {err}"));
    let group = Pid::from_raw(child.id() as i32);
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the build") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(status) = status else {
        // SIGTERM first: the script's trap removes its loop devices and working directory.
        let _ = killpg(group, Signal::SIGTERM);
        let grace = Instant::now() + Duration::from_secs(15);
        while child.try_wait().expect("polling the build").is_none() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
        let stderr = err.join().unwrap_or_default();
        panic!("images/cloud/build.sh still running after {BUILD_TIMEOUT:?}, stopped:\n{stderr}");
    };
    (
        status.success(),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}
