//! A VM pod's run directory: what the launcher makes there and the handler (and `vmlet`) reach into. The
//! launcher's own files (network records, disks, libvirt's state) are its business; the ones named here are the
//! contract.

use std::path::{Path, PathBuf};

/// The run directory inside a launcher Pod (the launcher's default `--run-dir`).
pub const DEFAULT_RUN_DIR: &str = "/var/run/vmlet";
/// QEMU's capability cache, one per node, shared by the launchers there (the launcher's default `--cache-dir`).
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/vmlet/qemu";
/// The variable the launcher reads its cache directory from.
pub const CACHE_DIR_ENV: &str = "VMLET_CACHE_DIR";

/// The files of one run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The control socket (`docs/control-protocol.md`), mode 0600.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// The guest's serial console, to attach to.
    pub fn console_socket(&self) -> PathBuf {
        self.root.join("console.sock")
    }

    /// Everything the guest wrote to its serial console.
    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// The guest's screen, over VNC.
    pub fn vnc_socket(&self) -> PathBuf {
        self.root.join("vnc.sock")
    }

    /// The QEMU guest agent's channel, which the launcher alone talks to.
    pub fn guest_agent_socket(&self) -> PathBuf {
        self.root.join("guest-agent.sock")
    }

    /// The DHCP server's lease, kept across a launcher's restart in the same pod.
    pub fn dhcp_lease(&self) -> PathBuf {
        self.root.join("dhcp-lease.json")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_file_has_its_own_name_in_the_run_directory() {
        let dir = RunDir::new(DEFAULT_RUN_DIR);
        let files = [
            dir.control_socket(),
            dir.console_socket(),
            dir.console_log(),
            dir.vnc_socket(),
            dir.guest_agent_socket(),
            dir.dhcp_lease(),
        ];
        assert_eq!(files.iter().collect::<BTreeSet<_>>().len(), files.len());
        assert!(files.iter().all(|f| f.parent() == Some(Path::new(DEFAULT_RUN_DIR))));
        assert_eq!(dir.control_socket(), Path::new("/var/run/vmlet/control.sock"));
    }
}
