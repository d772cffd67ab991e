//! The cloud-init seed a VM boots with, as KubeVirt gives it for its `cloudInitNoCloud` and `cloudInitConfigDrive`
//! volumes: [`files`] lays out the files cloud-init reads (pure), [`write_iso`] puts them on the ISO 9660 image the
//! guest sees as a CD-ROM.
//!
//! The layouts are those cloud-init 22.4 (Debian 12) reads: `DataSourceNoCloud` looks for a filesystem labelled
//! `cidata` holding `meta-data` and `user-data` (both required) and `network-config`; `DataSourceConfigDrive` for one
//! labelled `config-2` holding `openstack/latest/meta_data.json` (required, with `uuid`), `user_data` and
//! `network_data.json` beside it.

use std::path::PathBuf;

use serde::Serialize;

mod iso;
mod user_data;

pub use iso::write_iso;

/// The most user data, or network data, a seed takes. KubeVirt's admission refuses inline `userData` and
/// `networkData` over 2048 bytes, but that is a check on the VM spec, and data from a Secret reaches it unchecked up
/// to the Secret limit of 1 MiB; so 1 MiB accepts whatever KubeVirt would boot, and still bounds the image the
/// launcher builds in memory.
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// What the guest is told about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    /// Changes when the guest is a new instance: cloud-init runs its once-per-instance modules again.
    pub instance_id: String,
    pub hostname: String,
    /// Given as is, unless SSH keys are merged into it (see [`KeyPropagation::NoCloud`]).
    pub user_data: Option<Vec<u8>>,
    /// Network configuration version 1 or 2 (YAML) for NoCloud, OpenStack `network_data.json` for ConfigDrive.
    pub network_data: Option<Vec<u8>>,
    /// Public keys for the guest's default user, one key a string.
    pub ssh_keys: Vec<String>,
    pub key_propagation: KeyPropagation,
}

/// Where the SSH keys travel, as KubeVirt's `accessCredentials` `propagationMethod`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyPropagation {
    /// In the user data, as `ssh_authorized_keys` of a cloud-config: the whole user data when there is none, else a
    /// cloud-config part beside the user's own in a MIME message, which cloud-init merges. Works with either flavor.
    #[default]
    NoCloud,
    /// In `meta_data.json`'s `public_keys`, which only a ConfigDrive seed has.
    ConfigDrive,
}

/// The two layouts cloud-init finds on a labelled filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    NoCloud,
    ConfigDrive,
}

impl Flavor {
    /// The volume label cloud-init looks for.
    pub fn label(self) -> &'static str {
        match self {
            Flavor::NoCloud => "cidata",
            Flavor::ConfigDrive => "config-2",
        }
    }
}

/// One file of the seed: its path inside the image, `/`-separated, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedFile {
    pub path: &'static str,
    pub contents: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the instance id is empty")]
    EmptyInstanceId,
    #[error("the hostname is empty")]
    EmptyHostname,
    #[error("ssh key {index} is empty or spans several lines")]
    SshKey { index: usize },
    #[error("{part} is {size} bytes, over the limit of {MAX_DATA_BYTES}")]
    TooLarge { part: &'static str, size: usize },
    #[error("ssh keys propagate through config drive metadata, which a NoCloud seed does not have")]
    KeysNeedConfigDrive,
    #[error("the cloud-config in user data is not valid YAML")]
    CloudConfigYaml(#[source] serde_yaml::Error),
    #[error("the cloud-config in user data is not a mapping")]
    CloudConfigNotMapping,
    #[error("ssh_authorized_keys in the user data's cloud-config is not a list")]
    AuthorizedKeysNotList,
    /// A gzip-compressed MIME message would reach cloud-init as an opaque part, and be lost, so no compressed user
    /// data gets keys merged; uncompressed user data, or ConfigDrive propagation, carries them.
    #[error("user data is gzip-compressed, so ssh keys cannot be merged into it")]
    CompressedUserData,
    #[error("cannot build the ISO image")]
    Iso(#[source] std::io::Error),
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files of `seed` in `flavor`'s layout, in the order they go on the image.
pub fn files(seed: &Seed, flavor: Flavor) -> Result<Vec<SeedFile>, Error> {
    if seed.instance_id.trim().is_empty() {
        return Err(Error::EmptyInstanceId);
    }
    if seed.hostname.trim().is_empty() {
        return Err(Error::EmptyHostname);
    }
    for (part, data) in [("user data", &seed.user_data), ("network data", &seed.network_data)] {
        if let Some(data) = data
            && data.len() > MAX_DATA_BYTES
        {
            return Err(Error::TooLarge { part, size: data.len() });
        }
    }
    let keys = ssh_keys(&seed.ssh_keys)?;
    let (user_data, metadata_keys) = match (seed.key_propagation, keys.is_empty()) {
        (_, true) => (seed.user_data.clone(), &[][..]),
        (KeyPropagation::NoCloud, false) => (Some(user_data::with_keys(seed.user_data.as_deref(), &keys)?), &[][..]),
        (KeyPropagation::ConfigDrive, false) if flavor == Flavor::NoCloud => return Err(Error::KeysNeedConfigDrive),
        (KeyPropagation::ConfigDrive, false) => (seed.user_data.clone(), &keys[..]),
    };
    if let Some(data) = &user_data
        && data.len() > MAX_DATA_BYTES
    {
        return Err(Error::TooLarge {
            part: "user data with ssh keys",
            size: data.len(),
        });
    }

    let mut files = Vec::new();
    match flavor {
        Flavor::NoCloud => {
            // Double-quoted (JSON's escapes are YAML's): cloud-init reads YAML 1.1, where a plain `yes` is a boolean
            // and `0123` a number.
            let meta = format!(
                "instance-id: {}\nlocal-hostname: {}\n",
                serde_json::Value::from(seed.instance_id.as_str()),
                serde_json::Value::from(seed.hostname.as_str())
            );
            files.push(SeedFile {
                path: "meta-data",
                contents: meta.into_bytes(),
            });
            // NoCloud requires user-data even when only network data is given: an empty file is no user data.
            files.push(SeedFile {
                path: "user-data",
                contents: user_data.unwrap_or_default(),
            });
            if let Some(network) = &seed.network_data {
                files.push(SeedFile {
                    path: "network-config",
                    contents: network.clone(),
                });
            }
        }
        Flavor::ConfigDrive => {
            let meta = ConfigDriveMetadata {
                uuid: &seed.instance_id,
                hostname: &seed.hostname,
                name: &seed.hostname,
                // Keyed by index, as KubeVirt and Nova do; cloud-init takes the values of the map.
                public_keys: metadata_keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| (i.to_string(), key.as_str()))
                    .collect(),
            };
            let json = serde_json::to_vec(&meta).expect("metadata of strings serializes to JSON");
            files.push(SeedFile {
                path: "openstack/latest/meta_data.json",
                contents: json,
            });
            if let Some(data) = user_data {
                files.push(SeedFile {
                    path: "openstack/latest/user_data",
                    contents: data,
                });
            }
            if let Some(network) = &seed.network_data {
                files.push(SeedFile {
                    path: "openstack/latest/network_data.json",
                    contents: network.clone(),
                });
            }
        }
    }
    Ok(files)
}

/// The keys trimmed, each once: a key from a Secret often ends in a newline, and one that still spans lines would
/// put two entries in `authorized_keys`.
fn ssh_keys(keys: &[String]) -> Result<Vec<String>, Error> {
    let mut unique: Vec<String> = Vec::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        let key = key.trim();
        if key.is_empty() || key.contains(['\n', '\r']) {
            return Err(Error::SshKey { index });
        }
        if !unique.iter().any(|k| k == key) {
            unique.push(key.to_string());
        }
    }
    Ok(unique)
}

#[derive(Serialize)]
struct ConfigDriveMetadata<'a> {
    uuid: &'a str,
    hostname: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    public_keys: std::collections::BTreeMap<String, &'a str>,
}

#[cfg(test)]
mod tests;
