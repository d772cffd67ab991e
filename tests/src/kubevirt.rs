//! KubeVirt's own example manifests (`shared/kubevirt-examples` beside the repository, not part of it) as a new
//! user ports them to vmlet: each document's `apiVersion` changed to vmlet's, a `VirtualMachineInstance` taken as
//! the template of a VM with `runStrategy: Always`, nothing else changed.

use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

const API_VERSION: &str = "vmlet.dev/v1alpha1";

/// Where KubeVirt's examples are: `VMLET_KUBEVIRT_EXAMPLES` when set (a worktree further down than the repository
/// itself), else `shared/kubevirt-examples` beside the repository.
/// The examples `tests/tests/kubevirt_examples.rs` boots in standalone mode (their image reference changed too).
pub const BOOTED: [&str; 2] = ["vmi-fedora.yaml", "vmi-masquerade.yaml"];

pub fn examples_dir() -> PathBuf {
    match std::env::var_os("VMLET_KUBEVIRT_EXAMPLES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/kubevirt-examples"),
    }
}

/// Every document of `text` in vmlet's group; a VirtualMachineInstance becomes a VM that runs it.
pub fn convert(text: &str) -> Result<String, String> {
    let mut out = String::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut value = Value::deserialize(document).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        let group = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if group.starts_with("kubevirt.io/") || group.contains(".kubevirt.io/") {
            value["apiVersion"] = Value::from(API_VERSION);
        }
        if value.get("kind").and_then(Value::as_str) == Some("VirtualMachineInstance") {
            value = vm_of_instance(value);
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn vm_of_instance(instance: Value) -> Value {
    let metadata = instance
        .get("metadata")
        .cloned()
        .unwrap_or(Value::Mapping(Mapping::new()));
    let mut template_metadata = Mapping::new();
    for key in ["labels", "annotations"] {
        if let Some(value) = metadata.get(key) {
            template_metadata.insert(key.into(), value.clone());
        }
    }
    let mut template = Mapping::new();
    if !template_metadata.is_empty() {
        template.insert("metadata".into(), Value::Mapping(template_metadata));
    }
    template.insert("spec".into(), instance.get("spec").cloned().unwrap_or(Value::Null));
    let mut spec = Mapping::new();
    spec.insert("runStrategy".into(), "Always".into());
    spec.insert("template".into(), Value::Mapping(template));
    let mut vm = Mapping::new();
    vm.insert("apiVersion".into(), API_VERSION.into());
    vm.insert("kind".into(), "VirtualMachine".into());
    vm.insert("metadata".into(), metadata);
    vm.insert("spec".into(), Value::Mapping(spec));
    Value::Mapping(vm)
}
