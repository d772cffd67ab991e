//! vmlet's CRDs, generated from the Rust types so that the schema the API server checks never drifts from what the
//! programs read.

use kube::CustomResourceExt;

use crate::VirtualMachine;
use crate::instancetype::{
    VirtualMachineClusterInstancetype, VirtualMachineClusterPreference, VirtualMachineInstancetype,
    VirtualMachinePreference,
};

type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The `VirtualMachine` CRD as the API server takes it without warnings: integers in the formats it knows (`int32`,
/// `int64`), the bounds of Rust's unsigned and small types kept as `minimum` and `maximum`.
pub fn crd() -> Crd {
    with_known_formats(VirtualMachine::crd())
}

/// Every CRD of vmlet's group, as the API server takes them without warnings (as [`crd`]): VirtualMachine, then
/// the instance types and preferences.
pub fn crds() -> Vec<Crd> {
    vec![
        crd(),
        with_known_formats(VirtualMachineInstancetype::crd()),
        with_known_formats(VirtualMachineClusterInstancetype::crd()),
        with_known_formats(VirtualMachinePreference::crd()),
        with_known_formats(VirtualMachineClusterPreference::crd()),
    ]
}

fn with_known_formats(crd: Crd) -> Crd {
    let mut crd = serde_json::to_value(crd).expect("a CRD is JSON");
    known_integer_formats(&mut crd);
    serde_json::from_value(crd).expect("changing integer formats leaves a CRD")
}

fn known_integer_formats(schema: &mut serde_json::Value) {
    use serde_json::Value;
    match schema {
        Value::Object(fields) => {
            let bounds = match fields.get("format").and_then(Value::as_str) {
                Some("int8") => Some((i64::from(i8::MIN), i64::from(i8::MAX))),
                Some("int16") => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
                Some("uint8") => Some((0, i64::from(u8::MAX))),
                Some("uint16") => Some((0, i64::from(u16::MAX))),
                Some("uint32") => Some((0, i64::from(u32::MAX))),
                Some("uint64" | "uint") => Some((0, i64::MAX)),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                let tighter = |key: &str, bound: i64, keep: fn(f64, f64) -> bool| {
                    let given = fields.get(key).and_then(Value::as_f64);
                    match given {
                        Some(given) if keep(given, bound as f64) => given,
                        _ => bound as f64,
                    }
                };
                let minimum = tighter("minimum", min, |given, bound| given >= bound);
                let maximum = tighter("maximum", max, |given, bound| given <= bound);
                let format = if minimum >= f64::from(i32::MIN) && maximum <= f64::from(i32::MAX) {
                    "int32"
                } else {
                    "int64"
                };
                fields.insert("format".into(), format.into());
                fields.insert("minimum".into(), minimum.into());
                fields.insert("maximum".into(), maximum.into());
            }
            fields.values_mut().for_each(known_integer_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(known_integer_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_has_names_columns_and_status_subresource() {
        let crd = VirtualMachine::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("virtualmachines.vmlet.dev"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["vm".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Status", "Ready", "IP", "Node", "Age"]);
        let schema = serde_json::to_string(&version.schema).unwrap();
        let at = schema
            .find("additionalProperties\":false")
            .map(|i| &schema[i.saturating_sub(300)..i]);
        assert!(at.is_none(), "structural schemas forbid it: {at:?}");
        assert!(schema.contains("\"enum\":[\"Always\",\"RerunOnFailure\",\"Once\",\"Manual\",\"Halted\"]"));
    }

    const VM: &str = r#"
apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: vm1, namespace: default}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {guest: 256Mi}
        devices:
          disks: [{name: root, disk: {}}]
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default, pod: {}}]
      volumes: [{name: root, hostDisk: {path: /var/lib/vmlet/root.img, type: Disk}}]
"#;

    /// The messages of the CEL rules `yaml` breaks, as the API server would evaluate them.
    fn cel_messages(yaml: &str) -> Vec<String> {
        let vm: VirtualMachine = serde_yaml::from_str(yaml).unwrap();
        match kube::core::cel::validate_cel(&vm) {
            Ok(()) => Vec::new(),
            Err(errors) => {
                let mut messages: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
                messages.sort();
                messages
            }
        }
    }

    #[test]
    fn cel_rules_accept_a_sound_vm() {
        assert_eq!(cel_messages(VM), Vec::<String>::new());
    }

    #[test]
    fn cel_rules_refuse_bindings_and_sources_that_are_not_exactly_one() {
        let two = VM.replace("bridge: {}", "bridge: {}, masquerade: {}");
        assert_eq!(
            cel_messages(&two),
            ["exactly one binding is required: bridge, masquerade, tap or managedTap"]
        );
        let none = VM.replace("bridge: {}", "model: virtio");
        assert_eq!(
            cel_messages(&none),
            ["exactly one binding is required: bridge, masquerade, tap or managedTap"]
        );
        let sources = VM.replace("type: Disk}", "type: Disk}, emptyDisk: {capacity: 1Gi}");
        assert_eq!(
            cel_messages(&sources),
            [
                "exactly one source is required: containerDisk, emptyDisk, hostDisk, persistentVolumeClaim, cloudInitNoCloud or cloudInitConfigDrive"
            ]
        );
        let both = VM.replace("disk: {}", "disk: {}, cdrom: {}");
        assert_eq!(cel_messages(&both), ["a disk is either a disk or a cdrom"]);
    }

    #[test]
    fn cel_rules_refuse_cloud_init_data_given_twice_and_ambiguous_choices() {
        let cloud_init = VM
            .replace(
                "disks: [{name: root, disk: {}}]",
                "disks: [{name: root, disk: {}}, {name: ci, disk: {}}]",
            )
            .replace(
                "volumes: [{name: root, hostDisk: {path: /var/lib/vmlet/root.img, type: Disk}}]",
                "volumes: [{name: root, hostDisk: {path: /var/lib/vmlet/root.img, type: Disk}}, \
                 {name: ci, cloudInitNoCloud: {userData: x, secretRef: {name: s}, networkData: y, \
                 networkDataBase64: eQ==}}]",
            );
        assert_eq!(
            cel_messages(&cloud_init),
            [
                "give network data at most one way: networkData, networkDataBase64 or networkDataSecretRef",
                "give user data at most one way: userData, userDataBase64 or secretRef",
            ]
        );
        let keys = VM.replace(
            "      networks:",
            "      accessCredentials: [{sshPublicKey: {source: {secret: {secretName: k}}, \
             propagationMethod: {noCloud: {}, configDrive: {}}}}]\n      networks:",
        );
        assert_eq!(
            cel_messages(&keys),
            ["exactly one propagation method is required: noCloud or configDrive"]
        );
        let firmware = VM.replace(
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n        firmware: {bootloader: {bios: {}, efi: {}}}",
        );
        assert_eq!(cel_messages(&firmware), ["a bootloader is either bios or efi"]);
    }

    #[test]
    fn cel_rules_refuse_running_with_run_strategy_and_two_clocks() {
        let both = VM.replace("runStrategy: Always", "runStrategy: Always\n  running: true");
        assert_eq!(cel_messages(&both), ["running and runStrategy are mutually exclusive"]);
        let clocks = VM.replace(
            "memory: {guest: 256Mi}",
            "memory: {guest: 256Mi}\n        clock: {utc: {}, timezone: Europe/Paris}",
        );
        assert_eq!(cel_messages(&clocks), ["a clock is either utc or timezone"]);
    }

    #[test]
    fn cel_rules_refuse_a_probe_without_exactly_one_check() {
        let probe = |text: &str| {
            VM.replace(
                "      networks:",
                &format!("      readinessProbe: {text}\n      networks:"),
            )
        };
        assert_eq!(cel_messages(&probe("{tcpSocket: {port: 22}}")), Vec::<String>::new());
        let message = ["exactly one check is required: tcpSocket, httpGet, exec or guestAgentPing"];
        assert_eq!(cel_messages(&probe("{periodSeconds: 5}")), message);
        assert_eq!(
            cel_messages(&probe("{tcpSocket: {port: 22}, exec: {command: [true]}}")),
            message
        );
    }

    #[test]
    fn cel_rules_refuse_names_that_refer_to_nothing() {
        let network = VM.replace("networks: [{name: default", "networks: [{name: other");
        assert_eq!(
            cel_messages(&network),
            [
                "every interface must name a network of spec.networks",
                "every network must have an interface of the same name",
            ]
        );
        let volume = VM.replace("volumes: [{name: root", "volumes: [{name: data");
        assert_eq!(cel_messages(&volume), ["every disk must name a volume of spec.volumes"]);
        let no_volumes = VM.replace(
            "      volumes: [{name: root, hostDisk: {path: /var/lib/vmlet/root.img, type: Disk}}]\n",
            "",
        );
        assert_eq!(
            cel_messages(&no_volumes),
            ["every disk must name a volume of spec.volumes"]
        );
    }

    /// The API server warns of formats it does not know (`uint32`): every integer is int32 or int64, within the
    /// bounds of its Rust type.
    #[test]
    fn integers_have_formats_the_api_server_knows() {
        let formats_of = |text: &str| -> std::collections::BTreeSet<String> {
            text.match_indices("\"format\":\"")
                .map(|(at, found)| {
                    let rest = &text[at + found.len()..];
                    rest[..rest.find('"').unwrap()].to_owned()
                })
                .collect()
        };
        // Every CRD of the group, the instance types' and preferences' too.
        for crd in crds() {
            let text = serde_json::to_string(&crd).unwrap();
            let formats = formats_of(&text);
            assert!(
                formats
                    .iter()
                    .all(|f| ["date-time", "int32", "int64"].contains(&f.as_str())),
                "{}: {formats:?}",
                crd.metadata.name.unwrap_or_default()
            );
        }
        let crd = serde_json::to_value(crd()).unwrap();
        let formats = formats_of(&crd.to_string());
        assert_eq!(formats, ["date-time", "int32", "int64"].map(String::from).into());
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        let restarts = &status["properties"]["restartCount"];
        assert_eq!(restarts["format"], "int64");
        assert_eq!(restarts["minimum"], 0.0);
        assert_eq!(restarts["maximum"], f64::from(u32::MAX));
        let template = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]
            ["properties"]["spec"];
        let port = &template["properties"]["domain"]["properties"]["devices"]["properties"]["interfaces"]["items"]["properties"]
            ["ports"]["items"]["properties"]["port"];
        assert_eq!(port["format"], "int32", "{port}");
        assert_eq!(
            (port["minimum"].clone(), port["maximum"].clone()),
            (1.0.into(), 65535.0.into())
        );
    }

    /// The API server refuses a CRD whose rules it cannot bound in cost: every list a rule walks needs a maximum
    /// length, and so do the names it compares.
    #[test]
    fn every_list_a_rule_walks_is_bounded() {
        let crd = serde_json::to_value(VirtualMachine::crd()).unwrap();
        let template = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]
            ["properties"]["spec"];
        let lists = [
            &template["properties"]["networks"],
            &template["properties"]["volumes"],
            &template["properties"]["domain"]["properties"]["devices"]["properties"]["disks"],
            &template["properties"]["domain"]["properties"]["devices"]["properties"]["interfaces"],
        ];
        for list in lists {
            assert!(list["maxItems"].is_u64(), "{list}");
            assert_eq!(list["x-kubernetes-list-type"], "map");
            assert!(list["items"]["properties"]["name"]["maxLength"].is_u64(), "{list}");
        }
    }
}
