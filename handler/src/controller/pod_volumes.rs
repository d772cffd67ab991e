//! What the launcher Pod mounts so that the launcher finds each volume's data where `vmlet_control::PodVolumes`
//! says (under `/var/run/vmlet-volumes`): containerDisks and `kernelBoot.container` as image volumes or held by
//! holder containers, persistent volume claims, the cloud-init and SSH key Secrets, and the node's files of
//! `hostDisk` and `kernelBoot.hostPath`. Pure: the VM, the controller's options and the claims' volume modes in,
//! the Pod's parts out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, ExecAction, HostPathVolumeSource, ImageVolumeSource,
    LocalObjectReference, PersistentVolumeClaimVolumeSource, Probe, ResourceRequirements, SecretVolumeSource,
    SecurityContext, Volume, VolumeDevice, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use vmlet_api::{HostDiskType, VirtualMachineInstanceSpec};
use vmlet_control::PodVolumes;
use vmlet_control::pod_volumes::DEFAULT_ROOT;

/// How containerDisks and `kernelBoot.container` images reach the launcher (`--container-disks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainerDisks {
    /// A Pod image volume per image (Kubernetes 1.33+, the `ImageVolume` feature): the kubelet pulls and mounts it.
    #[default]
    ImageVolume,
    /// A holder container per image, running the image itself, whose root filesystem the launcher reaches
    /// through `/proc/<pid>/root` (KubeVirt's way, for clusters without image volumes).
    Holder,
}

/// A claim's `spec.volumeMode`: a filesystem holding `disk.img`, or a raw block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMode {
    Filesystem,
    Block,
}

/// The volume mode of each claim the VM names, by claim name, as read from the API.
pub type ClaimModes = BTreeMap<String, ClaimMode>;

/// Where a holder finds the static busybox the launcher image's init container copies for it: containerDisk
/// images usually hold nothing but their disk, not even a shell.
pub const HOLDER_TOOLS: &str = "/var/run/vmlet-holder";
/// The init container that copies busybox for the holders.
pub const HOLDER_TOOLS_CONTAINER: &str = "holder-tools";
/// Debian's `busybox-static` in the launcher image: static, so that it runs in any image.
const BUSYBOX_IN_LAUNCHER_IMAGE: &str = "/bin/busybox";
/// The Pod volume holding the volumes root in holder mode, shared by the launcher and the holders.
const VOLUMES_ROOT_VOLUME: &str = "volumes";
/// A holder sleeps; the link in the volumes root is what matters. Its requests are small: they add to the Pod's.
const HOLDER_CPU: &str = "10m";
const HOLDER_MEMORY: &str = "16Mi";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: the claim {claim:?} was not read before the Pod was made")]
    ClaimNotRead { volume: String, claim: String },
    #[error("{field}: {path:?} is not an absolute path")]
    RelativeHostPath { field: String, path: String },
    #[error("{field}: DiskOrCreate mounts the file's folder from the node, and {path:?} has none but /")]
    HostDiskInRoot { field: String, path: String },
}

/// The launcher Pod's parts that serve the VM's volumes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LauncherVolumes {
    pub volumes: Vec<Volume>,
    /// The launcher container's mounts, parents before what is mounted inside them.
    pub mounts: Vec<VolumeMount>,
    /// The launcher container's block devices (claims in block mode).
    pub devices: Vec<VolumeDevice>,
    /// Holder mode: the busybox copy, then one sidecar per image, which Kubernetes starts before the launcher.
    pub init_containers: Vec<Container>,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Holder mode: the launcher reaches the holders' root filesystems through their processes.
    pub share_process_namespace: bool,
}

/// The launcher container's image and pull policy: the holders' busybox is copied from it.
#[derive(Debug, Clone, Copy)]
pub struct LauncherImage<'a> {
    pub image: &'a str,
    pub pull_policy: Option<&'a str>,
}

/// An image the launcher reads files from: a containerDisk's, or `kernelBoot.container`'s.
struct Image<'a> {
    /// The Pod volume's (and the holder's) name.
    name: String,
    reference: &'a str,
    pull_policy: String,
    /// Where the launcher finds its root filesystem.
    path: String,
}

/// The Pod's parts for the volumes of `spec`.
pub fn launcher_volumes(
    spec: &VirtualMachineInstanceSpec,
    mode: ContainerDisks,
    launcher: LauncherImage<'_>,
    claims: &ClaimModes,
) -> Result<LauncherVolumes, VolumeError> {
    let layout = PodVolumes::new(DEFAULT_ROOT);
    let path = |p: std::path::PathBuf| p.display().to_string();
    let mut out = LauncherVolumes::default();
    let mut images = Vec::new();
    let mut pull_secrets = BTreeSet::new();
    // A path may be mounted once: host files that share a folder, one Secret named twice.
    let mut mounted = BTreeSet::new();

    for (index, volume) in spec.volumes.iter().enumerate() {
        let name = &volume.name;
        let disk_path = path(layout.disk(name));
        if let Some(disk) = &volume.container_disk {
            images.push(Image {
                name: pod_volume_name("disk", index, name),
                reference: &disk.image,
                pull_policy: pull_policy(&disk.image, disk.image_pull_policy.as_deref()),
                path: disk_path.clone(),
            });
            if let Some(secret) = &disk.image_pull_secret
                && pull_secrets.insert(secret.clone())
            {
                out.image_pull_secrets
                    .push(LocalObjectReference { name: secret.clone() });
            }
        }
        if let Some(claim) = &volume.persistent_volume_claim {
            let volume_name = pod_volume_name("disk", index, name);
            let read_only = claim.read_only.unwrap_or(false);
            out.volumes.push(Volume {
                name: volume_name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.claim_name.clone(),
                    read_only: claim.read_only,
                }),
                ..Volume::default()
            });
            match claims.get(&claim.claim_name) {
                Some(ClaimMode::Filesystem) => out.mounts.push(mount(&volume_name, &disk_path, read_only)),
                Some(ClaimMode::Block) => out.devices.push(VolumeDevice {
                    name: volume_name,
                    device_path: disk_path,
                }),
                None => {
                    return Err(VolumeError::ClaimNotRead {
                        volume: name.clone(),
                        claim: claim.claim_name.clone(),
                    });
                }
            }
        }
        for cloud_init in [&volume.cloud_init_no_cloud, &volume.cloud_init_config_drive]
            .into_iter()
            .flatten()
        {
            let secrets = [
                ("user-data", &cloud_init.secret_ref, layout.user_data_secret(name)),
                (
                    "network-data",
                    &cloud_init.network_data_secret_ref,
                    layout.network_data_secret(name),
                ),
            ];
            for (kind, secret, at) in secrets {
                if let Some(secret) = secret {
                    let volume_name = pod_volume_name(kind, index, name);
                    out.volumes.push(secret_volume(&volume_name, &secret.name));
                    out.mounts.push(mount(&volume_name, &path(at), true));
                }
            }
        }
        if let Some(host) = &volume.host_disk {
            let field = format!("volumes[{index}].hostDisk.path");
            let (at, kind) = host_disk_mount(&host.path, host.disk_type, &field)?;
            if mounted.insert(at.clone()) {
                let volume_name = pod_volume_name("host-disk", index, name);
                out.volumes.push(host_path(&volume_name, &at, kind));
                out.mounts.push(mount(&volume_name, &at, false));
            }
        }
    }

    for (index, secret) in ssh_key_secrets(spec).into_iter().enumerate() {
        let volume_name = pod_volume_name("ssh-keys", index, secret);
        out.volumes.push(secret_volume(&volume_name, secret));
        out.mounts
            .push(mount(&volume_name, &path(layout.ssh_keys(secret)), true));
    }

    let kernel_boot = spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref());
    if let Some(container) = kernel_boot.and_then(|k| k.container.as_ref()) {
        images.push(Image {
            name: "kernel-boot".into(),
            reference: &container.image,
            pull_policy: pull_policy(&container.image, container.image_pull_policy.as_deref()),
            path: path(layout.kernel_image()),
        });
    }
    if let Some(host) = kernel_boot.and_then(|k| k.host_path.as_ref()) {
        let files = [
            ("kernel", "kernelPath", Some(&host.kernel_path)),
            ("initrd", "initrdPath", host.initrd_path.as_ref()),
        ];
        for (name, field, file) in files {
            let Some(file) = file else { continue };
            absolute(file, &format!("domain.firmware.kernelBoot.hostPath.{field}"))?;
            if mounted.insert(file.clone()) {
                out.volumes.push(host_path(name, file, "File"));
                out.mounts.push(mount(name, file, true));
            }
        }
    }

    if !images.is_empty() {
        match mode {
            ContainerDisks::ImageVolume => image_volumes(&images, &mut out),
            ContainerDisks::Holder => holders(&images, launcher, &mut out),
        }
    }
    Ok(out)
}

/// The Pod volume of each image, mounted read-only where the launcher looks for it.
fn image_volumes(images: &[Image<'_>], out: &mut LauncherVolumes) {
    for image in images {
        out.volumes.push(Volume {
            name: image.name.clone(),
            image: Some(ImageVolumeSource {
                reference: Some(image.reference.into()),
                pull_policy: Some(image.pull_policy.clone()),
            }),
            ..Volume::default()
        });
        out.mounts.push(mount(&image.name, &image.path, true));
    }
}

/// Holder mode (docs/handler.md, "containerDisks"): the volumes root becomes an emptyDir shared with a holder
/// sidecar per image, which links its own root filesystem there (`/proc/<pid>/root`) and sleeps. Sidecars
/// (init containers that restart always) start in order, each once its startup probe sees its link, and all before
/// the launcher: the launcher never looks before the links are there.
fn holders(images: &[Image<'_>], launcher: LauncherImage<'_>, out: &mut LauncherVolumes) {
    let busybox = format!("{HOLDER_TOOLS}/busybox");
    out.volumes.push(empty_dir(VOLUMES_ROOT_VOLUME));
    out.volumes.push(empty_dir(HOLDER_TOOLS_CONTAINER));
    // The root first: the claims and Secrets are mounted inside it.
    out.mounts.insert(0, mount(VOLUMES_ROOT_VOLUME, DEFAULT_ROOT, false));
    out.share_process_namespace = true;
    out.init_containers.push(Container {
        name: HOLDER_TOOLS_CONTAINER.into(),
        image: Some(launcher.image.into()),
        image_pull_policy: launcher.pull_policy.map(Into::into),
        command: Some(vec!["cp".into(), BUSYBOX_IN_LAUNCHER_IMAGE.into(), busybox.clone()]),
        resources: Some(holder_resources()),
        security_context: Some(holder_security()),
        volume_mounts: Some(vec![mount(HOLDER_TOOLS_CONTAINER, HOLDER_TOOLS, false)]),
        ..Container::default()
    });
    for image in images {
        // `$$` is the shell's pid, which `exec` hands on to sleep: the link stays good while the holder lives.
        let script = format!(
            "{busybox} mkdir -p {parent} && {busybox} ln -sfn /proc/$$/root {link} && exec {busybox} sleep infinity",
            parent = parent_of(&image.path),
            link = image.path,
        );
        out.init_containers.push(Container {
            name: image.name.clone(),
            image: Some(image.reference.into()),
            image_pull_policy: Some(image.pull_policy.clone()),
            command: Some(vec![busybox.clone(), "sh".into(), "-c".into(), script]),
            // A sidecar: it runs beside the launcher, and Kubernetes stops it once the launcher has ended.
            restart_policy: Some("Always".into()),
            startup_probe: Some(Probe {
                exec: Some(ExecAction {
                    command: Some(vec![busybox.clone(), "test".into(), "-d".into(), image.path.clone()]),
                }),
                period_seconds: Some(1),
                failure_threshold: Some(30),
                ..Probe::default()
            }),
            resources: Some(holder_resources()),
            security_context: Some(holder_security()),
            volume_mounts: Some(vec![
                mount(HOLDER_TOOLS_CONTAINER, HOLDER_TOOLS, true),
                mount(VOLUMES_ROOT_VOLUME, DEFAULT_ROOT, false),
            ]),
            ..Container::default()
        });
    }
}

/// Root, as the launcher is, and no capabilities at all: the kernel lets a process into another's
/// `/proc/<pid>/root` when both have the same user and group and the target's capabilities are a subset of the
/// caller's (ptrace's read check), which holds for the launcher and QEMU over a holder with none.
fn holder_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add: None,
            drop: Some(vec!["ALL".into()]),
        }),
        ..SecurityContext::default()
    }
}

/// A memory limit, so that a holder cannot grow; no CPU limit, which would only slow its start.
fn holder_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), Quantity((*v).into())))
            .collect()
    };
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", HOLDER_CPU), ("memory", HOLDER_MEMORY)])),
        limits: Some(quantities(&[("memory", HOLDER_MEMORY)])),
        ..ResourceRequirements::default()
    }
}

/// KubeVirt's (and the kubelet's) default: `Always` for a `:latest` or untagged image without a digest,
/// `IfNotPresent` otherwise.
pub fn pull_policy(image: &str, given: Option<&str>) -> String {
    if let Some(given) = given {
        return given.into();
    }
    let digest = image.contains('@');
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = last.split_once(':').map(|(_, tag)| tag);
    match tag {
        _ if digest => "IfNotPresent".into(),
        None | Some("latest") => "Always".into(),
        Some(_) => "IfNotPresent".into(),
    }
}

/// The claims the VM names, each once, in the order of its volumes: the controller reads each before making the
/// Pod.
pub fn claims_of(spec: &VirtualMachineInstanceSpec) -> Vec<(&str, &str)> {
    let mut seen = BTreeSet::new();
    spec.volumes
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.persistent_volume_claim.as_ref()?.claim_name.as_str())))
        .filter(|(_, claim)| seen.insert(*claim))
        .collect()
}

/// The Secrets of `accessCredentials`, each once.
fn ssh_key_secrets(spec: &VirtualMachineInstanceSpec) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    spec.access_credentials
        .iter()
        .map(|c| c.ssh_public_key.source.secret.secret_name.as_str())
        .filter(|s| seen.insert(*s))
        .collect()
}

/// Where a host disk is mounted (at the same path as on the node) and as what: the device or file itself, or
/// for `DiskOrCreate` its folder, in which the launcher makes the file (a file the kubelet made would be empty,
/// and the launcher never resizes an existing one).
fn host_disk_mount(file: &str, kind: HostDiskType, field: &str) -> Result<(String, &'static str), VolumeError> {
    absolute(file, field)?;
    Ok(match kind {
        HostDiskType::Disk if file.starts_with("/dev/") => (file.into(), "BlockDevice"),
        HostDiskType::Disk => (file.into(), "File"),
        HostDiskType::DiskOrCreate if parent_of(file) == "/" => {
            return Err(VolumeError::HostDiskInRoot {
                field: field.into(),
                path: file.into(),
            });
        }
        HostDiskType::DiskOrCreate => (parent_of(file).into(), "DirectoryOrCreate"),
    })
}

fn absolute(file: &str, field: &str) -> Result<(), VolumeError> {
    if file.starts_with('/') {
        Ok(())
    } else {
        Err(VolumeError::RelativeHostPath {
            field: field.into(),
            path: file.into(),
        })
    }
}

fn parent_of(file: &str) -> &str {
    match file.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((parent, _)) => parent,
    }
}

/// A Pod volume's name: `<kind>-<index>-<volume>`, a DNS label of at most 63 characters, unique through the
/// index even when a long volume name is cut.
fn pod_volume_name(kind: &str, index: usize, volume: &str) -> String {
    let mut name = format!("{kind}-{index}-{volume}");
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

pub(super) fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Volume::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A VM with one volume of each source, the same key Secret named twice, and a kernel from an image.
    const EVERY_SOURCE: &str = r#"
domain:
  memory: {guest: 256Mi}
  firmware:
    kernelBoot: {container: {image: registry.example/kernel, kernelPath: /boot/vmlinuz}}
volumes:
  - name: root
    containerDisk: {image: "registry.example/fedora:40", imagePullSecret: regcred}
  - name: data
    persistentVolumeClaim: {claimName: data-claim}
  - name: raw
    persistentVolumeClaim: {claimName: raw-claim, readOnly: true}
  - name: cloudinit
    cloudInitNoCloud: {secretRef: {name: init}, networkDataSecretRef: {name: net}}
  - name: image
    hostDisk: {path: /var/lib/images/a.img, type: Disk}
  - name: made
    hostDisk: {path: /var/lib/vmlet/disks/made.img, type: DiskOrCreate, capacity: 1Gi}
accessCredentials:
  - sshPublicKey: {source: {secret: {secretName: keys}}, propagationMethod: {noCloud: {}}}
  - sshPublicKey: {source: {secret: {secretName: keys}}, propagationMethod: {noCloud: {}}}
"#;

    const LAUNCHER: LauncherImage<'static> = LauncherImage {
        image: "registry.example/vmlet-launcher:1",
        pull_policy: Some("IfNotPresent"),
    };

    fn spec(yaml: &str) -> VirtualMachineInstanceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn claims() -> ClaimModes {
        [
            ("data-claim".to_owned(), ClaimMode::Filesystem),
            ("raw-claim".to_owned(), ClaimMode::Block),
        ]
        .into()
    }

    fn as_json<T: serde::Serialize>(value: &T) -> Value {
        serde_json::to_value(value).unwrap()
    }

    /// The volumes and launcher mounts both modes share: everything but the images.
    fn shared_volumes() -> Vec<Value> {
        vec![
            json!({"name": "disk-1-data", "persistentVolumeClaim": {"claimName": "data-claim"}}),
            json!({"name": "disk-2-raw", "persistentVolumeClaim": {"claimName": "raw-claim", "readOnly": true}}),
            json!({"name": "user-data-3-cloudinit", "secret": {"secretName": "init"}}),
            json!({"name": "network-data-3-cloudinit", "secret": {"secretName": "net"}}),
            json!({"name": "host-disk-4-image", "hostPath": {"path": "/var/lib/images/a.img", "type": "File"}}),
            json!({"name": "host-disk-5-made", "hostPath": {"path": "/var/lib/vmlet/disks", "type": "DirectoryOrCreate"}}),
            json!({"name": "ssh-keys-0-keys", "secret": {"secretName": "keys"}}),
        ]
    }

    fn shared_mounts() -> Vec<Value> {
        vec![
            json!({"name": "disk-1-data", "mountPath": "/var/run/vmlet-volumes/disks/data"}),
            json!({"name": "user-data-3-cloudinit", "mountPath": "/var/run/vmlet-volumes/cloud-init/cloudinit/user", "readOnly": true}),
            json!({"name": "network-data-3-cloudinit", "mountPath": "/var/run/vmlet-volumes/cloud-init/cloudinit/network", "readOnly": true}),
            json!({"name": "host-disk-4-image", "mountPath": "/var/lib/images/a.img"}),
            json!({"name": "host-disk-5-made", "mountPath": "/var/lib/vmlet/disks"}),
            json!({"name": "ssh-keys-0-keys", "mountPath": "/var/run/vmlet-volumes/ssh-keys/keys", "readOnly": true}),
        ]
    }

    #[test]
    fn image_volumes_put_every_source_where_the_launcher_looks() {
        let got = launcher_volumes(&spec(EVERY_SOURCE), ContainerDisks::ImageVolume, LAUNCHER, &claims()).unwrap();
        let mut volumes = shared_volumes();
        volumes.extend([
            json!({"name": "disk-0-root", "image": {"reference": "registry.example/fedora:40", "pullPolicy": "IfNotPresent"}}),
            json!({"name": "kernel-boot", "image": {"reference": "registry.example/kernel", "pullPolicy": "Always"}}),
        ]);
        let mut mounts = shared_mounts();
        mounts.extend([
            json!({"name": "disk-0-root", "mountPath": "/var/run/vmlet-volumes/disks/root", "readOnly": true}),
            json!({"name": "kernel-boot", "mountPath": "/var/run/vmlet-volumes/kernel-boot", "readOnly": true}),
        ]);
        assert_eq!(as_json(&got.volumes), Value::Array(volumes));
        assert_eq!(as_json(&got.mounts), Value::Array(mounts));
        assert_eq!(
            as_json(&got.devices),
            json!([{"name": "disk-2-raw", "devicePath": "/var/run/vmlet-volumes/disks/raw"}])
        );
        assert_eq!(as_json(&got.image_pull_secrets), json!([{"name": "regcred"}]));
        assert!(got.init_containers.is_empty());
        assert!(!got.share_process_namespace);
    }

    #[test]
    fn holders_link_their_root_filesystems_into_a_shared_volumes_root() {
        let got = launcher_volumes(&spec(EVERY_SOURCE), ContainerDisks::Holder, LAUNCHER, &claims()).unwrap();
        let mut volumes = shared_volumes();
        volumes.extend([
            json!({"name": "volumes", "emptyDir": {}}),
            json!({"name": "holder-tools", "emptyDir": {}}),
        ]);
        let mut mounts = vec![json!({"name": "volumes", "mountPath": "/var/run/vmlet-volumes"})];
        mounts.extend(shared_mounts());
        assert_eq!(as_json(&got.volumes), Value::Array(volumes));
        assert_eq!(
            as_json(&got.mounts),
            Value::Array(mounts),
            "the root before what is mounted in it"
        );
        assert_eq!(as_json(&got.image_pull_secrets), json!([{"name": "regcred"}]));
        assert!(got.share_process_namespace);

        let security = json!({
            "runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        });
        let resources = json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}});
        let holder_mounts = json!([
            {"name": "holder-tools", "mountPath": "/var/run/vmlet-holder", "readOnly": true},
            {"name": "volumes", "mountPath": "/var/run/vmlet-volumes"},
        ]);
        let holder = |name: &str, image: &str, policy: &str, link: &str, parent: &str| {
            json!({
                "name": name,
                "image": image,
                "imagePullPolicy": policy,
                "command": [
                    "/var/run/vmlet-holder/busybox", "sh", "-c",
                    format!(
                        "/var/run/vmlet-holder/busybox mkdir -p {parent} \
                         && /var/run/vmlet-holder/busybox ln -sfn /proc/$$/root {link} \
                         && exec /var/run/vmlet-holder/busybox sleep infinity"
                    ),
                ],
                "restartPolicy": "Always",
                "startupProbe": {
                    "exec": {"command": ["/var/run/vmlet-holder/busybox", "test", "-d", link]},
                    "periodSeconds": 1,
                    "failureThreshold": 30,
                },
                "resources": resources,
                "securityContext": security,
                "volumeMounts": holder_mounts,
            })
        };
        assert_eq!(
            as_json(&got.init_containers),
            json!([
                {
                    "name": "holder-tools",
                    "image": "registry.example/vmlet-launcher:1",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["cp", "/bin/busybox", "/var/run/vmlet-holder/busybox"],
                    "resources": resources,
                    "securityContext": security,
                    "volumeMounts": [{"name": "holder-tools", "mountPath": "/var/run/vmlet-holder"}],
                },
                holder(
                    "disk-0-root",
                    "registry.example/fedora:40",
                    "IfNotPresent",
                    "/var/run/vmlet-volumes/disks/root",
                    "/var/run/vmlet-volumes/disks",
                ),
                holder(
                    "kernel-boot",
                    "registry.example/kernel",
                    "Always",
                    "/var/run/vmlet-volumes/kernel-boot",
                    "/var/run/vmlet-volumes",
                ),
            ])
        );
    }

    #[test]
    fn a_vm_without_images_has_no_holders_whatever_the_mode() {
        let plain = spec("domain: {memory: {guest: 1Gi}}\nvolumes: [{name: d, emptyDisk: {capacity: 1Gi}}]");
        for mode in [ContainerDisks::ImageVolume, ContainerDisks::Holder] {
            let got = launcher_volumes(&plain, mode, LAUNCHER, &ClaimModes::new()).unwrap();
            assert_eq!(got, LauncherVolumes::default(), "{mode:?}");
        }
    }

    #[test]
    fn the_nodes_kernel_and_initrd_are_mounted_read_only_where_the_vm_names_them() {
        let boot = spec(
            "domain:\n  firmware:\n    kernelBoot:\n      hostPath: {kernelPath: /var/lib/vmlet/guest/vmlinux, \
             initrdPath: /var/lib/vmlet/guest/initramfs}",
        );
        let got = launcher_volumes(&boot, ContainerDisks::ImageVolume, LAUNCHER, &ClaimModes::new()).unwrap();
        assert_eq!(
            as_json(&got.volumes),
            json!([
                {"name": "kernel", "hostPath": {"path": "/var/lib/vmlet/guest/vmlinux", "type": "File"}},
                {"name": "initrd", "hostPath": {"path": "/var/lib/vmlet/guest/initramfs", "type": "File"}},
            ])
        );
        assert_eq!(
            as_json(&got.mounts),
            json!([
                {"name": "kernel", "mountPath": "/var/lib/vmlet/guest/vmlinux", "readOnly": true},
                {"name": "initrd", "mountPath": "/var/lib/vmlet/guest/initramfs", "readOnly": true},
            ])
        );
    }

    #[test]
    fn host_disks_mount_the_device_the_file_or_the_folder_to_make_it_in() {
        let cases = [
            ("/dev/sdb", HostDiskType::Disk, ("/dev/sdb", "BlockDevice")),
            ("/srv/a.qcow2", HostDiskType::Disk, ("/srv/a.qcow2", "File")),
            (
                "/srv/vm/new.img",
                HostDiskType::DiskOrCreate,
                ("/srv/vm", "DirectoryOrCreate"),
            ),
        ];
        for (path, kind, (at, host_type)) in cases {
            let got = host_disk_mount(path, kind, "f").unwrap();
            assert_eq!((got.0.as_str(), got.1), (at, host_type), "{path}");
        }
        let in_root = host_disk_mount("/new.img", HostDiskType::DiskOrCreate, "volumes[0].hostDisk.path");
        assert_eq!(
            in_root.unwrap_err().to_string(),
            "volumes[0].hostDisk.path: DiskOrCreate mounts the file's folder from the node, and \"/new.img\" has none but /"
        );
        let relative = spec("domain:\n  firmware:\n    kernelBoot:\n      hostPath: {kernelPath: vmlinux}");
        let error = launcher_volumes(&relative, ContainerDisks::ImageVolume, LAUNCHER, &ClaimModes::new());
        assert_eq!(
            error.unwrap_err().to_string(),
            "domain.firmware.kernelBoot.hostPath.kernelPath: \"vmlinux\" is not an absolute path"
        );
    }

    #[test]
    fn a_claim_not_read_is_an_error_naming_it() {
        let error = launcher_volumes(
            &spec(EVERY_SOURCE),
            ContainerDisks::ImageVolume,
            LAUNCHER,
            &ClaimModes::new(),
        );
        assert_eq!(
            error.unwrap_err().to_string(),
            "volume \"data\": the claim \"data-claim\" was not read before the Pod was made"
        );
        let twice = spec(
            "domain: {}\nvolumes:\n  - {name: a, persistentVolumeClaim: {claimName: c}}\n  - {name: b, \
             persistentVolumeClaim: {claimName: c}}\n  - {name: d, persistentVolumeClaim: {claimName: e}}",
        );
        assert_eq!(claims_of(&twice), [("a", "c"), ("d", "e")], "each claim read once");
    }

    #[test]
    fn pull_policies_default_as_kubernetes_does() {
        for (image, given, policy) in [
            ("fedora", None, "Always"),
            ("fedora:latest", None, "Always"),
            ("registry.example:5000/fedora", None, "Always"),
            ("registry.example:5000/fedora:40", None, "IfNotPresent"),
            ("fedora@sha256:0123", None, "IfNotPresent"),
            ("fedora:latest", Some("Never"), "Never"),
        ] {
            assert_eq!(pull_policy(image, given), policy, "{image} {given:?}");
        }
    }

    #[test]
    fn pod_volume_names_are_dns_labels_unique_by_index() {
        let long = "v".repeat(63);
        let first = pod_volume_name("network-data", 0, &long);
        let second = pod_volume_name("network-data", 1, &long);
        assert_eq!(first.len(), 63);
        assert_ne!(first, second);
        assert_eq!(pod_volume_name("disk", 10, "root"), "disk-10-root");
        assert_eq!(pod_volume_name(&"k".repeat(61), 3, "x"), "k".repeat(61) + "-3");
    }
}
