//! Private directories for a test's files, and a private view of the system files a program writes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::NetNs;
use crate::owner::{Owner, unique_name};

/// A fresh directory under the temporary directory, removed with everything in it when dropped.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> ScratchDir {
        crate::sweep_stale();
        let path = std::env::temp_dir().join(unique_name());
        std::fs::create_dir(&path).unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        ScratchDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a file inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        path
    }
}

impl Default for ScratchDir {
    fn default() -> Self {
        ScratchDir::new()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the scratch directories of test processes that are gone.
pub(crate) fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if Owner::from_name(&name).is_some_and(|owner| !owner.is_alive()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The system directories a [`Sandbox`] gives its program a private copy of.
const PRIVATE_DIRS: [&str; 3] = ["etc", "run", "var/lib"];

/// Mounts an overlay on each private directory (upper layer in the scratch directory), then runs the program. It
/// runs in the mount namespace `ip netns exec` made, whose mounts never propagate back to the host.
const OVERLAY_SCRIPT: &str = r#"set -e
scratch=$1
shift
for dir in etc run var/lib; do
  mkdir -p "$scratch/upper/$dir" "$scratch/work/$dir"
  mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$scratch/upper/$dir,workdir=$scratch/work/$dir" "/$dir"
done
exec "$@""#;

/// A private view of `/etc`, `/run` and `/var/lib`, and a private hostname, for programs that write system files.
/// DHCP clients write `/etc/resolv.conf`, leases and pid files and may set the hostname: in a sandbox they see the
/// host's files but their changes land in the sandbox's directory, so the host is untouched and clients running
/// in parallel do not see each other's files.
pub struct Sandbox {
    dir: ScratchDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { dir: ScratchDir::new() }
    }

    /// A directory for the test's own files (scripts, configuration, lease files), outside the overlays.
    pub fn dir(&self) -> &ScratchDir {
        &self.dir
    }

    /// A command that runs `program` inside `ns` and this sandbox.
    pub fn command(&self, ns: &NetNs, program: impl AsRef<OsStr>) -> Command {
        let mut command = ns.exec("unshare");
        command
            .args(["--uts", "sh", "-c", OVERLAY_SCRIPT, "sandbox"])
            .arg(self.dir.path())
            .arg(program);
        command
    }

    /// Where a file the program wrote at `path` (like `/etc/resolv.conf`) shows up on the host; the file exists
    /// only if the program changed it.
    pub fn written(&self, path: &str) -> PathBuf {
        let relative = path.trim_start_matches('/');
        assert!(
            PRIVATE_DIRS.iter().any(|dir| relative.starts_with(&format!("{dir}/"))),
            "{path} is not in a sandboxed directory ({PRIVATE_DIRS:?})"
        );
        self.dir.join("upper").join(relative)
    }

    /// The contents of a file the program wrote at `path`, or `None` if it did not write it.
    pub fn read_written(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.written(path)).ok()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}
