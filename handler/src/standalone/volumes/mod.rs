//! A standalone VM's volumes: what the kubelet does for a Pod's volumes on a node, done by the handler before the
//! launcher starts. Images are pulled into the machine's image store (once per machine, shared by every VM) and
//! linked into the pod, claims are disk files under the state folder that outlive their VMs, and Secrets are
//! written into the pod as the kubelet mounts them: the launcher finds everything where it would in a Kubernetes
//! pod ([`PodVolumes`]).
//!
//! Deciding what a VM needs ([`needs`], [`layout`]) is pure; pulling, and writing the layout, are the I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vmlet_api::{PrintableStatus, VirtualMachine};
use vmlet_control::PodVolumes;
use vmlet_control::pod_volumes::CLAIM_DISK_FILE;
use vmlet_oci::{DiskLookup, ImageRef, PullOptions, PullPolicy, Store};

use super::manifests::{Claim, Folder, VmKey};

/// Why a VM's pod cannot be made yet, as its status says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub printable: PrintableStatus,
    /// The condition's reason, KubeVirt's word for it.
    pub reason: &'static str,
    pub message: String,
}

/// An image a VM needs: for a containerDisk volume, or for the kernel of `kernelBoot.container`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNeed {
    /// The volume's name, or `kernelBoot.container`: what an error names.
    pub volume: String,
    pub image: String,
    pub policy: Option<String>,
    pub disk: DiskLookup,
}

/// Where an image a VM needs is in the store: its root filesystem, by the volume that needs it.
pub type Pulled = BTreeMap<String, PathBuf>;

/// What the pod's volumes folder holds: links to images and claims, and the Secrets' files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub links: Vec<(PathBuf, PathBuf)>,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

const KERNEL_BOOT: &str = "kernelBoot.container";

/// The images `vm` needs, in the order of its volumes.
pub fn needs(vm: &VirtualMachine) -> Vec<ImageNeed> {
    let spec = &vm.spec.template.spec;
    let mut needs: Vec<ImageNeed> = spec
        .volumes
        .iter()
        .filter_map(|volume| {
            let disk = volume.container_disk.as_ref()?;
            Some(ImageNeed {
                volume: volume.name.clone(),
                image: disk.image.clone(),
                policy: disk.image_pull_policy.clone(),
                disk: match &disk.path {
                    Some(path) => DiskLookup::At(path.into()),
                    None => DiskLookup::Find,
                },
            })
        })
        .collect();
    let kernel = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .and_then(|k| k.container.as_ref());
    if let Some(kernel) = kernel {
        needs.push(ImageNeed {
            volume: KERNEL_BOOT.into(),
            image: kernel.image.clone(),
            policy: kernel.image_pull_policy.clone(),
            disk: DiskLookup::Skip,
        });
    }
    needs
}

/// Pulls every image `needs` names, one after the other; the first failure names its volume.
pub async fn pull(
    store: Store,
    needs: Vec<ImageNeed>,
    registry: vmlet_oci::RegistryOptions,
) -> Result<Pulled, NotReady> {
    let mut pulled = Pulled::new();
    for need in needs {
        let failed = |message: String| NotReady {
            printable: PrintableStatus::ErrImagePull,
            reason: "ErrImagePull",
            message: format!("volume {:?}: {message}", need.volume),
        };
        let reference = ImageRef::parse(&need.image).map_err(|e| failed(e.to_string()))?;
        let policy = match need.policy.as_deref() {
            Some("Always") => Some(PullPolicy::Always),
            Some("IfNotPresent") => Some(PullPolicy::IfNotPresent),
            Some("Never") => Some(PullPolicy::Never),
            _ => None,
        };
        let options = PullOptions {
            policy,
            registry: registry.clone(),
            disk: need.disk.clone(),
            ..PullOptions::default()
        };
        let image = store
            .pull(&reference, &options)
            .await
            .map_err(|e| failed(e.to_string()))?;
        pulled.insert(need.volume, image.rootfs);
    }
    Ok(pulled)
}

/// The folder of a claim's disk under the state folder's `claims/`.
pub fn claim_dir(claims_dir: &Path, key: &VmKey) -> PathBuf {
    claims_dir.join(key.file_stem())
}

/// What the pod of `vm` (in `namespace`) finds in its volumes folder, or why it cannot start yet: a claim or a
/// Secret that the folder does not hold.
pub fn layout(
    vm: &VirtualMachine,
    namespace: &str,
    folder: &Folder,
    claims_dir: &Path,
    pulled: &Pulled,
) -> Result<Layout, NotReady> {
    let volumes = PodVolumes::new("");
    let spec = &vm.spec.template.spec;
    let key = |name: &str| VmKey {
        namespace: namespace.into(),
        name: name.into(),
    };
    let mut layout = Layout::default();
    let mut secret = |dir: PathBuf, name: &str, volume: &str| -> Result<(), NotReady> {
        let data = folder.secrets.get(&key(name)).ok_or_else(|| NotReady {
            printable: PrintableStatus::Starting,
            reason: "SecretNotFound",
            message: format!("volume {volume:?}: the Secret {namespace}/{name} is not in the manifests folder"),
        })?;
        for (file, bytes) in data {
            layout.files.push((dir.join(file), bytes.clone()));
        }
        Ok(())
    };
    for volume in &spec.volumes {
        if let Some(claim) = &volume.persistent_volume_claim {
            if !folder.claims.contains_key(&key(&claim.claim_name)) {
                return Err(NotReady {
                    printable: PrintableStatus::ErrorPvcNotFound,
                    reason: "PvcNotFound",
                    message: format!(
                        "volume {:?}: the claim {namespace}/{} is not in the manifests folder",
                        volume.name, claim.claim_name
                    ),
                });
            }
            let target = claim_dir(claims_dir, &key(&claim.claim_name));
            layout.links.push((volumes.disk(&volume.name), target));
        }
        for source in [&volume.cloud_init_no_cloud, &volume.cloud_init_config_drive]
            .into_iter()
            .flatten()
        {
            if let Some(reference) = &source.secret_ref {
                secret(volumes.user_data_secret(&volume.name), &reference.name, &volume.name)?;
            }
            if let Some(reference) = &source.network_data_secret_ref {
                secret(volumes.network_data_secret(&volume.name), &reference.name, &volume.name)?;
            }
        }
    }
    for (i, credential) in spec.access_credentials.iter().enumerate() {
        let name = &credential.ssh_public_key.source.secret.secret_name;
        secret(volumes.ssh_keys(name), name, &format!("accessCredentials[{i}]"))?;
    }
    for (volume, rootfs) in pulled {
        let at = if volume == KERNEL_BOOT {
            volumes.kernel_image()
        } else {
            volumes.disk(volume)
        };
        layout.links.push((at, rootfs.clone()));
    }
    Ok(layout)
}

/// Writes `layout` under `root` (the pod's volumes folder, made afresh).
pub fn write(layout: &Layout, root: &Path) -> std::io::Result<()> {
    let at = |relative: &Path| root.join(relative.strip_prefix("/").unwrap_or(relative));
    for (link, target) in &layout.links {
        let link = at(link);
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::os::unix::fs::symlink(target, link)?;
    }
    for (file, bytes) in &layout.files {
        let file = at(file);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(file, bytes)?;
    }
    Ok(())
}

/// Makes each claim's disk, sparse at its size, unless it exists: a claim's data outlives every VM that uses it.
pub fn ensure_claims(claims: &BTreeMap<VmKey, Claim>, claims_dir: &Path) -> std::io::Result<()> {
    for (key, claim) in claims {
        let dir = claim_dir(claims_dir, key);
        let disk = dir.join(CLAIM_DISK_FILE);
        if disk.exists() {
            continue;
        }
        std::fs::create_dir_all(&dir)?;
        let partial = dir.join(".disk.partial");
        std::fs::File::create(&partial)?.set_len(claim.bytes)?;
        std::fs::rename(partial, disk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
