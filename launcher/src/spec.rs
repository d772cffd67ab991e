//! The VM this pod runs, as the pod is given it: a `VirtualMachine` manifest, or just its template, in YAML or
//! JSON, from a file or an environment variable. Everything is checked before the launcher touches anything.

use std::path::{Path, PathBuf};

use vmlet_api::defaults::ClusterDefaults;
use vmlet_api::{InvalidSpec, VirtualMachine, VirtualMachineInstanceSpec, VirtualMachineTemplate};

/// The environment variable a pod passes the VM in.
pub const SPEC_ENV: &str = "VMLET_VM_SPEC";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no VM spec: pass --vm-spec FILE or set {SPEC_ENV}")]
    Missing,
    #[error("cannot read the VM spec {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the VM spec from {origin} does not parse: {message}")]
    Parse { origin: String, message: String },
    #[error("the VM has no name: give the VirtualMachine's metadata.name or --name")]
    NoName,
    #[error(transparent)]
    Invalid(#[from] InvalidSpec),
}

/// The VM to run, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub name: String,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub spec: VirtualMachineInstanceSpec,
}

impl VmSpec {
    /// The guest's host name: the spec's, else the VM's name.
    pub fn hostname(&self) -> &str {
        self.spec.hostname.as_deref().unwrap_or(&self.name)
    }
}

/// Reads the VM from `file`, else from the environment, and checks it. `name` overrides the manifest's.
pub fn load(file: Option<&Path>, env: Option<String>, name: Option<String>) -> Result<VmSpec, SpecError> {
    let (origin, text) = match (file, env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read(path.to_owned(), e))?;
            (path.display().to_string(), text)
        }
        (None, Some(text)) => (SPEC_ENV.to_owned(), text),
        (None, None) => return Err(SpecError::Missing),
    };
    parse(&origin, &text, name)
}

/// Parses a `VirtualMachine` (recognised by its `kind`) or a bare template. JSON is read as the YAML it also is.
fn parse(origin: &str, text: &str, name: Option<String>) -> Result<VmSpec, SpecError> {
    let parse_error = |e: serde_yaml::Error| SpecError::Parse {
        origin: origin.to_owned(),
        message: vmlet_api::manifest::describe(&e),
    };
    let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(parse_error)?;
    let (metadata_name, namespace, uid, template) = if document.get("kind").is_some() {
        // From the text, not the value: errors then carry the field's path and line.
        let vm: VirtualMachine = serde_yaml::from_str(text).map_err(parse_error)?;
        let meta = vm.metadata;
        (meta.name, meta.namespace, meta.uid, vm.spec.template)
    } else {
        let template: VirtualMachineTemplate = serde_yaml::from_str(text).map_err(parse_error)?;
        (None, None, None, template)
    };
    let name = name.or(metadata_name).ok_or(SpecError::NoName)?;
    // The handler gives the launcher its VM with the defaults applied; a spec given by hand gets them here.
    let mut spec = template.spec;
    vmlet_api::defaults::apply_instance(&mut spec, &ClusterDefaults::default());
    spec.validate()?;
    Ok(VmSpec {
        name,
        namespace,
        uid,
        spec,
    })
}

/// The VM of a `VirtualMachine` manifest given without its `apiVersion` and `kind`, for tests.
#[cfg(test)]
pub fn test_vm(manifest: &str) -> VmSpec {
    let document = format!("apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachine\n{manifest}");
    parse("test", &document, None).expect("a valid test VM")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = r#"
apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: vm1, namespace: default, uid: 0d4c8f2e-8e2b-4c7e-9d3c-3a1f1e2b7c11}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {guest: 256Mi}
        firmware: {kernelBoot: {hostPath: {kernelPath: /k}}}
        devices:
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default, pod: {}}]
"#;

    #[test]
    fn a_virtual_machine_manifest_gives_name_and_spec() {
        let vm = parse("test", VM, None).unwrap();
        assert_eq!(vm.name, "vm1");
        assert_eq!(vm.namespace.as_deref(), Some("default"));
        assert_eq!(vm.uid.as_deref(), Some("0d4c8f2e-8e2b-4c7e-9d3c-3a1f1e2b7c11"));
        assert_eq!(vm.hostname(), "vm1");
        assert_eq!(vm.spec.guest_memory_bytes(), Some(256 << 20));
    }

    #[test]
    fn a_bare_template_in_json_needs_a_name() {
        let vm: VirtualMachine = serde_yaml::from_str(VM).unwrap();
        let json = serde_json::to_string(&vm.spec.template).unwrap();
        assert!(matches!(parse("env", &json, None), Err(SpecError::NoName)));
        assert_eq!(parse("env", &json, Some("vm2".into())).unwrap().name, "vm2");
    }

    #[test]
    fn errors_say_where_and_what() {
        let err = parse("vm.yaml", &VM.replace("bridge: {}", "sriov: {}"), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the VM spec from vm.yaml does not parse: "), "{err}");
        assert!(
            err.ends_with(
                "spec.template.spec.domain.devices.interfaces[0].sriov: not supported by vmlet (line 13 column 40)"
            ),
            "{err}"
        );
        let err = parse("vm.yaml", &VM.replace("256Mi", "lots"), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid VM spec: domain.memory.guest: \"lots\" is not a quantity of bytes like 256Mi or 2Gi"
        );
        let err = load(None, None, None).unwrap_err().to_string();
        assert_eq!(err, "no VM spec: pass --vm-spec FILE or set VMLET_VM_SPEC");
    }
}
