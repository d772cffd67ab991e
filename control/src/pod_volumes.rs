//! Where a VM pod puts its volumes' data for the launcher: one folder, laid out the same way in a Kubernetes pod
//! (the controller's volume mounts) and in standalone mode (links and files the handler makes in the pod's folder).
//! The launcher reads it; the two handlers fill it. Names below are the VM's volume names, which the API bounds to
//! DNS labels, so they are safe as path components.

use std::path::{Path, PathBuf};

/// The folder inside a launcher Pod (the launcher's default `--volumes-dir`).
pub const DEFAULT_ROOT: &str = "/var/run/vmlet-volumes";

/// The keys a cloud-init Secret may hold its data under (KubeVirt reads both spellings).
pub const USER_DATA_KEYS: [&str; 2] = ["userdata", "userData"];
pub const NETWORK_DATA_KEYS: [&str; 2] = ["networkdata", "networkData"];

/// A persistent volume claim in filesystem mode holds the guest's disk as this file.
pub const CLAIM_DISK_FILE: &str = "disk.img";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolumes {
    root: PathBuf,
}

impl PodVolumes {
    pub fn new(root: impl Into<PathBuf>) -> PodVolumes {
        PodVolumes { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A disk volume's data: a containerDisk's image root (the disk is under its `disk/`), or a persistent volume
    /// claim: a folder holding [`CLAIM_DISK_FILE`], or the block device itself.
    pub fn disk(&self, volume: &str) -> PathBuf {
        self.root.join("disks").join(volume)
    }

    /// The folder a cloud-init volume's `secretRef` Secret is mounted in, one file per key.
    pub fn user_data_secret(&self, volume: &str) -> PathBuf {
        self.root.join("cloud-init").join(volume).join("user")
    }

    /// The folder a cloud-init volume's `networkDataSecretRef` Secret is mounted in.
    pub fn network_data_secret(&self, volume: &str) -> PathBuf {
        self.root.join("cloud-init").join(volume).join("network")
    }

    /// The folder an `accessCredentials` Secret is mounted in: every key holds public keys, one per line.
    pub fn ssh_keys(&self, secret: &str) -> PathBuf {
        self.root.join("ssh-keys").join(secret)
    }

    /// The root of `kernelBoot.container`'s image.
    pub fn kernel_image(&self) -> PathBuf {
        self.root.join("kernel-boot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_place() {
        let volumes = PodVolumes::new(DEFAULT_ROOT);
        let paths = [
            volumes.disk("root"),
            volumes.user_data_secret("root"),
            volumes.network_data_secret("root"),
            volumes.ssh_keys("root"),
            volumes.kernel_image(),
        ];
        let distinct: std::collections::BTreeSet<_> = paths.iter().collect();
        assert_eq!(distinct.len(), paths.len());
        assert!(paths.iter().all(|p| p.starts_with(DEFAULT_ROOT)));
        assert_eq!(volumes.disk("root"), Path::new("/var/run/vmlet-volumes/disks/root"));
    }
}
