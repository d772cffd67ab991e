//! A VM as the controller's cache keeps it: its metadata and status as they are, its spec as compact JSON text,
//! read into the typed spec when the VM is reconciled.
//!
//! The typed `VirtualMachine` is about 2.5 KiB before any of its strings, most of it optional parts a VM seldom
//! has, which took about 25 MiB of the controller at 10,000 VMs; the spec's JSON is a few hundred bytes. A VM is
//! reconciled far less often than it is held, and reading its spec back costs microseconds (`docs/benchmarks.md`,
//! "Scale").

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};
use vmlet_api::{VirtualMachine, VirtualMachineSpec, VirtualMachineStatus};

/// The annotation `kubectl apply` keeps a whole copy of the object in; the controller never reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Clone, Debug, Deserialize)]
pub struct CachedVm {
    #[serde(deserialize_with = "trimmed_metadata")]
    pub metadata: ObjectMeta,
    /// The spec as the API server sent it, as JSON text.
    #[serde(deserialize_with = "json_text")]
    spec: Box<str>,
    #[serde(default)]
    pub status: Option<VirtualMachineStatus>,
}

impl CachedVm {
    /// The VM, its spec read back; an error only for a spec the API server should not have taken (its schema
    /// refuses what the typed spec cannot read).
    pub fn to_vm(&self) -> Result<VirtualMachine, serde_json::Error> {
        let spec: VirtualMachineSpec = serde_json::from_str(&self.spec)?;
        Ok(VirtualMachine {
            metadata: self.metadata.clone(),
            spec,
            status: self.status.clone(),
        })
    }
}

impl From<&VirtualMachine> for CachedVm {
    fn from(vm: &VirtualMachine) -> CachedVm {
        CachedVm {
            metadata: vm.metadata.clone(),
            spec: serde_json::to_string(&vm.spec)
                .expect("a typed spec is JSON")
                .into_boxed_str(),
            status: vm.status.clone(),
        }
    }
}

/// The metadata without what only other clients read: the field managers' records, and kubectl's copy of the
/// last applied object (each as large as the VM itself on a real cluster).
fn trimmed_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let mut metadata = ObjectMeta::deserialize(deserializer)?;
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.remove(LAST_APPLIED);
    }
    Ok(metadata)
}

fn json_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Box<str>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value.to_string().into_boxed_str())
}

impl Resource for CachedVm {
    type DynamicType = ();
    type Scope = <VirtualMachine as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        VirtualMachine::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        VirtualMachine::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        VirtualMachine::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        VirtualMachine::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_vm_reads_back_as_the_vm_without_what_others_keep() {
        let json = serde_json::json!({
            "apiVersion": "vmlet.dev/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "vm1",
                "namespace": "ns",
                "annotations": {LAST_APPLIED: "{\"a\": 1}", "vmlet.dev/run": "start"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "runStrategy": "Manual",
                "template": {"spec": {"domain": {"memory": {"guest": "256Mi"}}}},
            },
            "status": {"printableStatus": "Stopped"},
        });
        let cached: CachedVm = serde_json::from_value(json.clone()).unwrap();
        let vm = cached.to_vm().unwrap();
        let mut expected: VirtualMachine = serde_json::from_value(json).unwrap();
        expected.metadata.managed_fields = None;
        expected.metadata.annotations = Some([("vmlet.dev/run".to_owned(), "start".to_owned())].into());
        assert_eq!(vm, expected);
        assert_eq!(CachedVm::from(&vm).to_vm().unwrap(), vm);
        assert_eq!(CachedVm::kind(&()), "VirtualMachine");
        assert_eq!(CachedVm::plural(&()), "virtualmachines");
    }
}
