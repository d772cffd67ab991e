//! A cloud-init volume's seed image: the data from the spec or from the pod's Secrets, the SSH keys of the VM's
//! `accessCredentials` that travel this way, written as an ISO 9660 image labelled `cidata` or `config-2`.

use std::path::{Path, PathBuf};

use vmlet_api::{CloudInitKind, CloudInitSource, Volume, decode_base64};
use vmlet_cloudinit::{Flavor, KeyPropagation, Seed};
use vmlet_control::PodVolumes;
use vmlet_control::pod_volumes::{NETWORK_DATA_KEYS, USER_DATA_KEYS};

use super::Problem;
use crate::spec::VmSpec;

/// Writes the seed of `volume` (a cloud-init volume of `kind`) into the run directory and returns its path. Made
/// afresh at every start, from what the pod holds now.
pub fn seed_image(
    vm: &VmSpec,
    volume: &Volume,
    kind: CloudInitKind,
    volumes: &PodVolumes,
    run_dir: &Path,
) -> Result<PathBuf, Problem> {
    let seed = seed(vm, volume, kind, volumes)?;
    let flavor = match kind {
        CloudInitKind::NoCloud => Flavor::NoCloud,
        CloudInitKind::ConfigDrive => Flavor::ConfigDrive,
    };
    let files = vmlet_cloudinit::files(&seed, flavor)?;
    let dir = run_dir.join("cloud-init");
    std::fs::create_dir_all(&dir).map_err(|e| Problem::Create(dir.clone(), e))?;
    let path = dir.join(format!("{}.iso", volume.name));
    // Written beside and renamed: a guest never sees half a seed.
    let partial = path.with_extension("partial");
    vmlet_cloudinit::write_iso(&files, flavor.label(), &partial)?;
    std::fs::rename(&partial, &path).map_err(|e| Problem::Create(path.clone(), e))?;
    Ok(path)
}

/// What the guest is told through `volume`, gathered from the spec and the pod.
pub(super) fn seed(vm: &VmSpec, volume: &Volume, kind: CloudInitKind, volumes: &PodVolumes) -> Result<Seed, Problem> {
    // Validation guarantees the volume is of this kind.
    let source = volume.cloud_init(kind).cloned().unwrap_or_default();
    Ok(Seed {
        instance_id: instance_id(vm),
        hostname: vm.hostname().to_owned(),
        user_data: user_data(&source, &volumes.user_data_secret(&volume.name))?,
        network_data: network_data(&source, &volumes.network_data_secret(&volume.name))?,
        ssh_keys: ssh_keys(vm, kind, volumes)?,
        key_propagation: match kind {
            CloudInitKind::NoCloud => KeyPropagation::NoCloud,
            CloudInitKind::ConfigDrive => KeyPropagation::ConfigDrive,
        },
    })
}

/// Stable for as long as the VM exists (its uid), so cloud-init's once-per-instance work runs once per VM, not
/// at every boot; a VM deleted and made again has a new uid and is set up afresh.
fn instance_id(vm: &VmSpec) -> String {
    match &vm.uid {
        Some(uid) => uid.clone(),
        None => format!("{}.{}", vm.name, vm.namespace.as_deref().unwrap_or("default")),
    }
}

fn user_data(source: &CloudInitSource, secret: &Path) -> Result<Option<Vec<u8>>, Problem> {
    data(
        source.user_data.as_deref(),
        source.user_data_base64.as_deref(),
        source.secret_ref.is_some().then_some(secret),
        &USER_DATA_KEYS,
    )
}

fn network_data(source: &CloudInitSource, secret: &Path) -> Result<Option<Vec<u8>>, Problem> {
    data(
        source.network_data.as_deref(),
        source.network_data_base64.as_deref(),
        source.network_data_secret_ref.is_some().then_some(secret),
        &NETWORK_DATA_KEYS,
    )
}

/// One piece of data, given inline, inline in base64, or by a Secret mounted at `secret` under one of `keys`.
fn data(
    text: Option<&str>,
    base64: Option<&str>,
    secret: Option<&Path>,
    keys: &[&str],
) -> Result<Option<Vec<u8>>, Problem> {
    if let Some(text) = text {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    if let Some(encoded) = base64 {
        // Validation has decoded it once already; this cannot fail for a spec that passed it.
        return decode_base64(encoded)
            .map(Some)
            .map_err(|e| Problem::Base64(e.to_string()));
    }
    let Some(dir) = secret else {
        return Ok(None);
    };
    if !dir.is_dir() {
        return Err(Problem::NotProvided(dir.to_owned()));
    }
    for key in keys {
        let file = dir.join(key);
        match std::fs::read(&file) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Problem::Read(file, e)),
        }
    }
    Err(Problem::SecretKey {
        dir: dir.to_owned(),
        keys: keys.join(" or "),
    })
}

/// The public keys of every `accessCredentials` entry that propagates through a volume of `kind`, in order.
fn ssh_keys(vm: &VmSpec, kind: CloudInitKind, volumes: &PodVolumes) -> Result<Vec<String>, Problem> {
    let mut keys = Vec::new();
    for credential in &vm.spec.access_credentials {
        let key = &credential.ssh_public_key;
        let method = &key.propagation_method;
        let travels_here = match kind {
            CloudInitKind::NoCloud => method.no_cloud.is_some(),
            CloudInitKind::ConfigDrive => method.config_drive.is_some(),
        };
        if !travels_here {
            continue;
        }
        let dir = volumes.ssh_keys(&key.source.secret.secret_name);
        let entries = std::fs::read_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Problem::NotProvided(dir.clone()),
            _ => Problem::Read(dir.clone(), e),
        })?;
        // A mounted Secret holds one file per key, beside the kubelet's own `..data` links.
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
            .map(|entry| entry.path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| Problem::Read(file.clone(), e))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_owned),
            );
        }
    }
    Ok(keys)
}
