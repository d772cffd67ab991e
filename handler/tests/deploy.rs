#![allow(clippy::unwrap_used)]
//! A cheap guard on deploy/ and examples/, with no cluster: every manifest parses as the kinds it should hold,
//! `kubectl apply -k deploy/` would apply every file, the roles grant each role what it uses and no more, and the
//! examples are VMs the launcher accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::Value;
use vmlet_api::VirtualMachine;

const NAMESPACE: &str = "vmlet-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect()
}

/// Every object of deploy/, each parsed as its kind's type, in a form to look into.
#[derive(Default)]
struct Deploy {
    namespaces: Vec<Namespace>,
    crds: Vec<CustomResourceDefinition>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, doc: &Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {} {e}", doc["kind"]))
}

fn load() -> Deploy {
    let dir = repo().join("deploy");
    let mut deploy = Deploy::default();
    for file in yaml_files(&dir) {
        if file == "kustomization.yaml" {
            continue;
        }
        for doc in documents(&dir.join(&file)) {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a document without a kind"));
            let namespaced = !matches!(
                kind,
                "Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
            );
            if namespaced {
                assert_eq!(
                    doc["metadata"]["namespace"], NAMESPACE,
                    "{file}: {kind} {}",
                    doc["metadata"]["name"]
                );
            }
            match kind {
                "Namespace" => deploy.namespaces.push(parse(&file, &doc)),
                "CustomResourceDefinition" => deploy.crds.push(parse(&file, &doc)),
                "ServiceAccount" => deploy.service_accounts.push(parse(&file, &doc)),
                "ClusterRole" => deploy.cluster_roles.push(parse(&file, &doc)),
                "ClusterRoleBinding" => deploy.cluster_role_bindings.push(parse(&file, &doc)),
                "Role" => deploy.roles.push(parse(&file, &doc)),
                "RoleBinding" => deploy.role_bindings.push(parse(&file, &doc)),
                "Deployment" => deploy.deployments.push(parse(&file, &doc)),
                "DaemonSet" => deploy.daemon_sets.push(parse(&file, &doc)),
                other => panic!("{file}: unexpected kind {other}"),
            }
        }
    }
    deploy
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = repo().join("deploy");
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    assert_eq!(kustomization["kind"], "Kustomization");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut files = yaml_files(&dir);
    files.remove("kustomization.yaml");
    assert_eq!(listed, files);
}

#[test]
fn every_manifest_is_of_a_kind_it_should_hold() {
    let deploy = load();
    assert_eq!(deploy.namespaces[0].metadata.name.as_deref(), Some(NAMESPACE));
    assert_eq!(
        deploy.crds[0].metadata.name.as_deref(),
        Some("virtualmachines.vmlet.dev")
    );
    assert_eq!((deploy.deployments.len(), deploy.daemon_sets.len()), (1, 1));
    assert_eq!(deploy.service_accounts.len(), 2);
}

fn rules_of<'a>(deploy: &'a Deploy, name: &str) -> Vec<&'a PolicyRule> {
    let cluster = deploy
        .cluster_roles
        .iter()
        .filter(|r| r.metadata.name.as_deref() == Some(name));
    let namespaced = deploy.roles.iter().filter(|r| r.metadata.name.as_deref() == Some(name));
    cluster
        .flat_map(|r| r.rules.iter().flatten())
        .chain(namespaced.flat_map(|r| r.rules.iter().flatten()))
        .collect()
}

/// The verbs `rules` grant on `group`/`resource`.
fn verbs(rules: &[&PolicyRule], group: &str, resource: &str) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| r.api_groups.iter().flatten().any(|g| g == group))
        .filter(|r| r.resources.iter().flatten().any(|res| res == resource))
        .flat_map(|r| r.verbs.iter().cloned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn each_role_is_granted_what_it_uses_and_no_more() {
    let deploy = load();
    for rule in deploy.cluster_roles.iter().flat_map(|r| r.rules.iter().flatten()) {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "no wildcards: {rule:?}");
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "*"),
            "no wildcards: {rule:?}"
        );
    }

    let controller = rules_of(&deploy, "vmlet-controller");
    assert_eq!(
        verbs(&controller, "vmlet.dev", "virtualmachines"),
        set(&["list", "watch", "patch"])
    );
    assert_eq!(
        verbs(&controller, "vmlet.dev", "virtualmachines/status"),
        set(&["patch"])
    );
    assert_eq!(
        verbs(&controller, "vmlet.dev", "virtualmachines/finalizers"),
        set(&["update"])
    );
    assert_eq!(
        verbs(&controller, "", "pods"),
        set(&["list", "watch", "create", "delete"])
    );
    assert_eq!(
        verbs(&controller, "", "persistentvolumeclaims"),
        set(&["get"]),
        "a claim's volume mode, before its VM's launcher Pod is made"
    );
    assert!(
        verbs(&controller, "", "secrets").is_empty(),
        "the kubelet mounts the VMs' Secrets"
    );
    assert_eq!(verbs(&controller, "events.k8s.io", "events"), set(&["create", "patch"]));
    assert_eq!(
        verbs(&controller, "coordination.k8s.io", "leases"),
        set(&["get", "list", "watch", "create", "update"])
    );
    assert!(verbs(&controller, "", "nodes").is_empty());

    let node = rules_of(&deploy, "vmlet-node");
    assert_eq!(verbs(&node, "vmlet.dev", "virtualmachines"), set(&["get"]));
    assert_eq!(verbs(&node, "vmlet.dev", "virtualmachines/status"), set(&["patch"]));
    assert_eq!(verbs(&node, "", "nodes"), set(&["patch"]));
    assert_eq!(
        verbs(&node, "", "pods"),
        set(&["get", "list", "watch"]),
        "the node role reads its launcher Pods and makes none"
    );
    assert!(verbs(&node, "events.k8s.io", "events").is_empty());
    assert_eq!(verbs(&node, "coordination.k8s.io", "leases"), set(&["create", "patch"]));

    // Leases only in the handler's namespace: never through a ClusterRole.
    for role in &deploy.cluster_roles {
        let rules: Vec<_> = role.rules.iter().flatten().collect();
        assert!(verbs(&rules, "coordination.k8s.io", "leases").is_empty());
    }
}

/// `vmlet-user` grants exactly what the `vmlet` command's verbs ask for (`vmlet_cli::rbac::PERMISSIONS`, which the
/// command's mock API tests check every request against): every verb of every resource, and nothing else.
#[test]
fn the_user_role_grants_what_the_vmlet_command_uses_and_no_more() {
    let deploy = load();
    let role = deploy
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("vmlet-user"))
        .expect("the ClusterRole vmlet-user");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = vmlet_cli::rbac::PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(|v| (p.group.to_owned(), p.resource.to_owned(), (*v).to_owned()))
        })
        .collect();
    assert_eq!(granted, used);
    assert!(
        !deploy
            .cluster_role_bindings
            .iter()
            .any(|b| b.role_ref.name == "vmlet-user"),
        "people are bound to it by the cluster's admins, not by vmlet's manifests"
    );
}

#[test]
fn bindings_join_existing_roles_and_service_accounts() {
    let deploy = load();
    let accounts: BTreeSet<_> = deploy
        .service_accounts
        .iter()
        .filter_map(|a| a.metadata.name.clone())
        .collect();
    let cluster_roles: BTreeSet<_> = deploy
        .cluster_roles
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    let roles: BTreeSet<_> = deploy.roles.iter().filter_map(|r| r.metadata.name.clone()).collect();
    let subjects = deploy
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.role_ref, &b.subjects, &cluster_roles, "ClusterRole"))
        .chain(
            deploy
                .role_bindings
                .iter()
                .map(|b| (&b.role_ref, &b.subjects, &roles, "Role")),
        );
    for (role_ref, subjects, known, kind) in subjects {
        assert_eq!(role_ref.kind, kind);
        assert!(known.contains(&role_ref.name), "{kind} {}", role_ref.name);
        for subject in subjects.iter().flatten() {
            assert_eq!(
                (subject.kind.as_str(), subject.namespace.as_deref()),
                ("ServiceAccount", Some(NAMESPACE))
            );
            assert!(accounts.contains(&subject.name), "{}", subject.name);
        }
    }
    let pod_specs = deploy
        .deployments
        .iter()
        .map(|d| d.spec.as_ref().unwrap().template.spec.as_ref().unwrap())
        .chain(
            deploy
                .daemon_sets
                .iter()
                .map(|d| d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()),
        );
    for spec in pod_specs {
        assert!(accounts.contains(spec.service_account_name.as_ref().unwrap()));
    }
}

fn env_field_path(container: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    let var = container.env.iter().flatten().find(|e| e.name == name)?;
    Some(var.value_from.as_ref()?.field_ref.as_ref()?.field_path.clone())
}

#[test]
fn the_controller_is_leader_elected_and_the_node_agent_sees_its_node() {
    let deploy = load();
    let controller = deploy.deployments[0].spec.as_ref().unwrap();
    assert!(controller.replicas.unwrap() >= 1);
    let container = &controller.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.command.as_deref().unwrap(), ["vmlet-handler", "controller"]);
    assert_eq!(
        env_field_path(container, "VMLET_POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        env_field_path(container, "VMLET_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert!(
        container
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "VMLET_LAUNCHER_IMAGE" && e.value.is_some())
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, None);
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );

    let node = deploy.daemon_sets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let container = &node.containers[0];
    assert_eq!(container.command.as_deref().unwrap(), ["vmlet-handler", "node"]);
    assert_eq!(env_field_path(container, "NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(
        env_field_path(container, "VMLET_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "the node's Lease where the controller looks for it"
    );
    // The launcher Pods' run directories (the controller mounts /var/run/vmlet/pods/<namespace>_<pod>).
    let run = node.volumes.iter().flatten().find(|v| v.name == "run").unwrap();
    assert_eq!(run.host_path.as_ref().unwrap().path, "/var/run/vmlet/pods");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "run")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/run/vmlet/pods");
    assert_ne!(mount.read_only, Some(true), "it removes the directories of gone Pods");
}

#[test]
fn the_examples_are_vms_the_launcher_accepts() {
    let dir = repo().join("examples");
    let files = yaml_files(&dir);
    assert!(files.contains("vm.yaml"));
    for file in files {
        for doc in documents(&dir.join(&file)) {
            let vm: VirtualMachine = serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            vm.spec
                .template
                .spec
                .validate()
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    // The paths standalone mode and the docs rewrite to the test guest's files.
    let example: VirtualMachine = serde_json::from_value(documents(&dir.join("vm.yaml")).remove(0)).unwrap();
    let boot = example
        .spec
        .template
        .spec
        .domain
        .firmware
        .unwrap()
        .kernel_boot
        .unwrap()
        .host_path
        .unwrap();
    assert_eq!(boot.kernel_path, "/var/lib/vmlet/guest/vmlinux");
    assert_eq!(boot.initrd_path.as_deref(), Some("/var/lib/vmlet/guest/initramfs"));
}
