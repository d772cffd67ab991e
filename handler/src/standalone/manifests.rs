//! The VMs of standalone mode: `VirtualMachine` manifests in a folder, the same YAML as for Kubernetes, beside the
//! `Secret`s (cloud-init data, SSH keys) and `PersistentVolumeClaim`s (disks that outlive their VM) the VMs name.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file in the folder is read, each YAML document in it a manifest; status
//! files (`*.status.yaml`, written beside the manifests) are skipped. A manifest that does not parse or does not
//! validate is kept as an error under the VM's name when the name can be read, so its status says what is wrong
//! and a VM that already runs is left alone rather than stopped over a typo.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vmlet_api::VirtualMachine;
use vmlet_api::defaults::ClusterDefaults;
use vmlet_api::instancetype::{self, Catalog};
use vmlet_api::manifest::API_VERSION;

/// A VM's identity: namespace (`default` when the manifest gives none) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmKey {
    pub namespace: String,
    pub name: String,
}

impl VmKey {
    /// The key as one path component: `NAMESPACE_NAME` (neither may hold `_` in Kubernetes).
    pub fn file_stem(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }

    pub fn from_file_stem(stem: &str) -> Option<VmKey> {
        let (namespace, name) = stem.split_once('_')?;
        Some(VmKey {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for VmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One manifest as read: the VM, or why it cannot run.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub file: PathBuf,
    pub vm: Result<Box<VirtualMachine>, String>,
}

/// What the folder holds: the manifests by VM, the Secrets and claims by namespace and name, and the problems
/// that have no VM name to be reported under.
#[derive(Debug, Default)]
pub struct Folder {
    pub vms: BTreeMap<VmKey, Manifest>,
    /// Each Secret's data, `stringData` merged over the decoded `data` as the API server does.
    pub secrets: BTreeMap<VmKey, BTreeMap<String, Vec<u8>>>,
    pub claims: BTreeMap<VmKey, Claim>,
    pub unnamed: Vec<String>,
    /// Applied to each VM before it is checked.
    pub defaults: ClusterDefaults,
    /// The instance types and preferences the VMs may name.
    pub catalog: Catalog,
}

/// A `PersistentVolumeClaim`: in standalone mode a disk file of the requested size, kept until the claim's
/// manifest is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub bytes: u64,
}

/// Whether a file of the folder is a status file rather than a manifest.
pub fn is_status_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".status.yaml"))
}

/// Reads every manifest in `dir`, each VM with `defaults` applied.
pub fn read(dir: &Path, defaults: ClusterDefaults) -> std::io::Result<Folder> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let ext = path.extension().and_then(|e| e.to_str());
            matches!(ext, Some("yaml" | "yml" | "json")) && !is_status_file(path) && path.is_file()
        })
        .collect();
    files.sort();
    let mut folder = Folder {
        defaults,
        ..Folder::default()
    };
    let mut texts = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(err) => folder.unnamed.push(format!("{}: {err}", file.display())),
        }
    }
    // Every file's instance types and preferences first: a VM may name one from any file.
    let read = read_catalog(texts.iter().map(|(file, text)| (file.as_path(), text.as_str())));
    folder.catalog = read.catalog;
    folder.unnamed.extend(read.unusable.into_iter().chain(read.duplicates));
    for (file, text) in &texts {
        add_documents(file, text, &mut folder);
    }
    Ok(folder)
}

/// Adds the manifests of one file to `folder`.
#[cfg(test)]
pub fn parse_file(file: &Path, text: &str, folder: &mut Folder) {
    let read = read_catalog([(file, text)]);
    folder.catalog = read.catalog;
    folder.unnamed.extend(read.unusable.into_iter().chain(read.duplicates));
    add_documents(file, text, folder);
}

/// The instance types and preferences of a set of files.
#[derive(Debug, Default)]
pub struct CatalogRead {
    pub catalog: Catalog,
    /// Those that cannot be used: no name, a spec that does not read.
    pub unusable: Vec<String>,
    /// Those defined in more than one place, each naming every file: none of their definitions is used, since
    /// which one a VM would get depends on nothing it says.
    pub duplicates: Vec<String>,
}

/// Reads the instance types and preferences of `files` (each with its text).
pub fn read_catalog<'a>(files: impl IntoIterator<Item = (&'a Path, &'a str)>) -> CatalogRead {
    let mut read = CatalogRead::default();
    // By kind, namespace (empty for the cluster-wide kinds) and name: every definition, with its file.
    type Definitions<'f> = Vec<(&'f Path, serde_json::Value)>;
    let mut found: BTreeMap<(&'static str, String, String), Definitions<'a>> = BTreeMap::new();
    for (file, text) in files {
        for document in serde_yaml::Deserializer::from_str(text) {
            // A document that does not parse is reported when the file's other manifests are read.
            let Ok(value) = serde_yaml::Value::deserialize(document) else {
                break;
            };
            let Some(kind) = value
                .get("kind")
                .and_then(|k| k.as_str())
                .and_then(|k| instancetype::KINDS.iter().find(|known| **known == k))
            else {
                continue;
            };
            let Some(mut key) = name_of(&value) else {
                read.unusable
                    .push(format!("{}: a {kind} has no metadata.name", file.display()));
                continue;
            };
            if matches!(
                *kind,
                instancetype::CLUSTER_INSTANCETYPE | instancetype::CLUSTER_PREFERENCE
            ) {
                // Cluster-wide: one per name, whatever namespace its manifest says.
                key.namespace = String::new();
            }
            let spec = value.get("spec").cloned().unwrap_or_default();
            match serde_json::to_value(spec) {
                Ok(spec) => found
                    .entry((*kind, key.namespace, key.name))
                    .or_default()
                    .push((file, spec)),
                Err(e) => read
                    .unusable
                    .push(format!("{}: {kind} {}: {e}", file.display(), key.name)),
            }
        }
    }
    for ((kind, namespace, name), mut definitions) in found {
        let shown = if namespace.is_empty() {
            name.clone()
        } else {
            format!("{namespace}/{name}")
        };
        if definitions.len() > 1 {
            let files: Vec<String> = definitions.iter().map(|(file, _)| file.display().to_string()).collect();
            read.duplicates.push(format!(
                "{kind} {shown} is defined more than once, in {}: none is used",
                files.join(" and ")
            ));
            continue;
        }
        let Some((file, spec)) = definitions.pop() else {
            continue;
        };
        if let Err(why) = read.catalog.insert(kind, &namespace, &name, spec) {
            read.unusable.push(format!("{}: {kind} {shown}: {why}", file.display()));
        }
    }
    read
}

/// Adds the VMs, Secrets and claims of one file to `folder`.
fn add_documents(file: &Path, text: &str, folder: &mut Folder) {
    // Each document twice: as a value to tell its kind, and from its text so that errors give the line.
    let documents = serde_yaml::Deserializer::from_str(text).zip(serde_yaml::Deserializer::from_str(text));
    for (document, typed) in documents {
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(err) => {
                folder.unnamed.push(format!("{}: {err}", file.display()));
                break;
            }
        };
        let key = name_of(&value);
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Secret") => {
                add_other(file, key, parse_secret(value), &mut folder.secrets, &mut folder.unnamed);
                continue;
            }
            Some("PersistentVolumeClaim") => {
                add_other(file, key, parse_claim(value), &mut folder.claims, &mut folder.unnamed);
                continue;
            }
            Some(kind) if instancetype::KINDS.contains(&kind) => continue,
            _ => {}
        }
        let vm = parse_vm(&value, typed, &folder.defaults, &folder.catalog)
            .map(Box::new)
            .map_err(|problems| problems.join("; "));
        match key {
            Some(key) if folder.vms.contains_key(&key) => folder.unnamed.push(format!(
                "{}: {key} is defined more than once; the first definition counts",
                file.display()
            )),
            Some(key) => {
                folder.vms.insert(
                    key,
                    Manifest {
                        file: file.to_owned(),
                        vm,
                    },
                );
            }
            None => {
                let why = vm
                    .err()
                    .unwrap_or_else(|| "the VirtualMachine has no metadata.name".into());
                folder.unnamed.push(format!("{}: {why}", file.display()));
            }
        }
    }
}

/// Adds a Secret or a claim under its key, or reports why it cannot be used.
fn add_other<T>(
    file: &Path,
    key: Option<VmKey>,
    parsed: Result<T, String>,
    into: &mut BTreeMap<VmKey, T>,
    unnamed: &mut Vec<String>,
) {
    match (key, parsed) {
        (Some(key), _) if into.contains_key(&key) => unnamed.push(format!(
            "{}: {key} is defined more than once; the first definition counts",
            file.display()
        )),
        (Some(key), Ok(object)) => {
            into.insert(key, object);
        }
        (Some(key), Err(why)) => unnamed.push(format!("{}: {key}: {why}", file.display())),
        (None, _) => unnamed.push(format!("{}: a manifest has no metadata.name", file.display())),
    }
}

pub(crate) fn parse_secret(value: serde_yaml::Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let secret: k8s_openapi::api::core::v1::Secret = serde_yaml::from_value(value).map_err(|e| e.to_string())?;
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, bytes)| (key, bytes.0))
        .collect();
    for (key, text) in secret.string_data.unwrap_or_default() {
        data.insert(key, text.into_bytes());
    }
    for key in data.keys() {
        // The key names a file in the pod's folder.
        if key.is_empty() || key.starts_with('.') || key.contains('/') {
            return Err(format!("the key {key:?} cannot name a file"));
        }
    }
    Ok(data)
}

pub(crate) fn parse_claim(value: serde_yaml::Value) -> Result<Claim, String> {
    let claim: k8s_openapi::api::core::v1::PersistentVolumeClaim =
        serde_yaml::from_value(value).map_err(|e| e.to_string())?;
    let spec = claim.spec.unwrap_or_default();
    if spec.volume_mode.as_deref().is_some_and(|mode| mode != "Filesystem") {
        return Err("standalone mode makes Filesystem claims only (a disk file)".into());
    }
    let storage = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|mut requests| requests.remove("storage"))
        .ok_or("spec.resources.requests.storage is required")?;
    let bytes = vmlet_api::parse_quantity(&storage.0).map_err(|e| format!("spec.resources.requests.storage: {e}"))?;
    Ok(Claim { bytes })
}

/// The VM's key as far as the document gives it, before it is parsed as a whole.
fn name_of(value: &serde_yaml::Value) -> Option<VmKey> {
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata.get("namespace").and_then(|n| n.as_str()).unwrap_or("default");
    Some(VmKey {
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// The VM of a document (`value`, and `document` its text), with the defaults applied and checked: or every
/// problem, each naming its field.
pub fn parse_vm(
    value: &serde_yaml::Value,
    document: serde_yaml::Deserializer<'_>,
    defaults: &ClusterDefaults,
    catalog: &Catalog,
) -> Result<VirtualMachine, Vec<String>> {
    let kind = value.get("kind").and_then(|k| k.as_str());
    if kind != Some("VirtualMachine") {
        return Err(vec![format!(
            "kind is {kind:?}: only VirtualMachine manifests are read"
        )]);
    }
    let api_version = value.get("apiVersion").and_then(|k| k.as_str());
    if api_version != Some(API_VERSION) {
        return Err(vec![format!(
            "apiVersion is {api_version:?}: vmlet reads {API_VERSION}"
        )]);
    }
    let mut vm = vmlet_api::manifest::parse_vm(document).map_err(|e| vec![e.to_string()])?;
    let lines = |invalid: vmlet_api::InvalidSpec| -> Vec<String> {
        invalid
            .0
            .into_iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    };
    catalog.resolve(&mut vm).map_err(lines)?;
    vmlet_api::defaults::apply(&mut vm, defaults);
    vm.validate().map_err(lines)?;
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: a}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {guest: 128Mi}
        firmware:
          kernelBoot:
            hostPath: {kernelPath: /boot/vmlinux, initrdPath: /boot/initrd}
        devices:
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default, pod: {}}]
";

    fn parse(text: &str) -> Folder {
        let mut folder = Folder::default();
        parse_file(Path::new("vms.yaml"), text, &mut folder);
        folder
    }

    #[test]
    fn every_document_is_a_vm_under_its_namespace_and_name() {
        let two = format!("{VM}---\n{}", VM.replace("{name: a}", "{name: b, namespace: lab}"));
        let folder = parse(&two);
        let keys: Vec<String> = folder.vms.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["default/a", "lab/b"]);
        for manifest in folder.vms.values() {
            assert!(manifest.vm.is_ok(), "{:?}", manifest.vm);
        }
        assert!(folder.unnamed.is_empty());
    }

    #[test]
    fn an_invalid_manifest_is_kept_under_its_name_with_the_reason() {
        let bad = VM.replace("bridge: {}", "bridge: {}, masquerade: {}");
        let folder = parse(&bad);
        let manifest = &folder.vms[&VmKey::from_file_stem("default_a").unwrap()];
        let why = manifest.vm.as_ref().unwrap_err();
        assert!(why.contains("binding"), "{why}");
        let unknown = parse(&VM.replace("runStrategy: Always", "runStrategy: Always\n  colour: blue"));
        let why = unknown.vms.values().next().unwrap().vm.as_ref().unwrap_err();
        assert!(why.contains("colour"), "{why}");
    }

    #[test]
    fn documents_without_a_name_or_of_another_kind_are_reported() {
        let folder = parse(&format!(
            "{}---\nkind: ConfigMap\nmetadata: {{name: c}}\n",
            VM.replace("{name: a}", "{}")
        ));
        assert_eq!(folder.unnamed.len(), 1, "{:?}", folder.unnamed);
        let other = &folder.vms[&VmKey::from_file_stem("default_c").unwrap()];
        assert!(other.vm.as_ref().unwrap_err().contains("ConfigMap"));
        let garbage = parse("{ not yaml");
        assert_eq!(garbage.unnamed.len(), 1);
    }

    #[test]
    fn secrets_and_claims_are_read_beside_the_vms() {
        let folder = parse(concat!(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: init, namespace: lab}\n",
            "data: {userdata: I2Nsb3VkLWNvbmZpZwo=}\nstringData: {networkdata: 'version: 2'}\n",
            "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n",
            "spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2Gi}}}\n",
            "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: raw}\n",
            "spec: {volumeMode: Block, resources: {requests: {storage: 1Gi}}}\n",
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: bad}\nstringData: {../x: y}\n",
        ));
        let secret = &folder.secrets[&VmKey::from_file_stem("lab_init").unwrap()];
        assert_eq!(secret["userdata"], b"#cloud-config\n");
        assert_eq!(secret["networkdata"], b"version: 2");
        assert_eq!(
            folder.claims[&VmKey::from_file_stem("default_data").unwrap()],
            Claim { bytes: 2 << 30 }
        );
        assert_eq!(
            folder.unnamed,
            [
                "vms.yaml: default/raw: standalone mode makes Filesystem claims only (a disk file)",
                "vms.yaml: default/bad: the key \"../x\" cannot name a file",
            ]
        );
        assert!(folder.vms.is_empty());
    }

    #[test]
    fn an_instance_type_defined_in_two_files_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let small = |cpus: u32| {
            format!(
                "apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachineInstancetype\nmetadata: {{name: small}}\n\
                 spec: {{cpu: {{guest: {cpus}}}, memory: {{guest: 128Mi}}}}\n"
            )
        };
        let cluster = "apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachineClusterPreference\n\
                       metadata: {name: fast, namespace: x}\nspec: {}\n";
        std::fs::write(dir.path().join("a.yaml"), format!("{}---\n{cluster}", small(1))).unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            format!("{}---\n{}", small(2), cluster.replace("namespace: x", "namespace: y")),
        )
        .unwrap();
        let uses_it = VM.replace(
            "spec:\n  runStrategy",
            "spec:\n  instancetype: {kind: VirtualMachineInstancetype, name: small}\n  runStrategy",
        );
        std::fs::write(dir.path().join("vm.yaml"), uses_it).unwrap();
        let folder = read(dir.path(), ClusterDefaults::default()).unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        assert_eq!(
            folder.unnamed,
            [
                format!(
                    "VirtualMachineClusterPreference fast is defined more than once, in {} and {}: none is used",
                    a.display(),
                    b.display()
                ),
                format!(
                    "VirtualMachineInstancetype default/small is defined more than once, in {} and {}: none is used",
                    a.display(),
                    b.display()
                ),
            ]
        );
        // Neither definition is used: the VM that names it does not run with whichever came last.
        let why = folder.vms.values().next().unwrap().vm.as_ref().unwrap_err();
        assert!(why.contains("small"), "{why}");
    }

    #[test]
    fn status_files_are_not_manifests() {
        assert!(is_status_file(Path::new("/x/a.status.yaml")));
        assert!(!is_status_file(Path::new("/x/a.yaml")));
    }
}
