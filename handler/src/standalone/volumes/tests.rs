use std::path::Path;

use super::*;
use crate::standalone::manifests::parse_file;

/// The folder of `manifests` (YAML documents), parsed.
fn folder(manifests: &str) -> Folder {
    let mut folder = Folder::default();
    parse_file(Path::new("m.yaml"), manifests, &mut folder);
    assert!(folder.unnamed.is_empty(), "{:?}", folder.unnamed);
    folder
}

const VM: &str = r#"
apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: web, namespace: lab}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {guest: 512Mi}
        devices:
          disks: [{name: root, disk: {}}, {name: data, disk: {}}, {name: ci, disk: {}}]
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default, pod: {}}]
      volumes:
      - {name: root, containerDisk: {image: "127.0.0.1:5000/vmlet/debian:12", imagePullPolicy: Always}}
      - {name: data, persistentVolumeClaim: {claimName: web-data}}
      - {name: ci, cloudInitNoCloud: {secretRef: {name: web-init}}}
      accessCredentials:
      - sshPublicKey: {source: {secret: {secretName: keys}}, propagationMethod: {noCloud: {}}}
"#;

const CLAIM: &str = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: web-data, namespace: lab}\n\
                     spec: {resources: {requests: {storage: 1Gi}}}\n";
const SECRETS: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: web-init, namespace: lab}\n\
                       stringData: {userdata: '#cloud-config'}\n---\napiVersion: v1\nkind: Secret\n\
                       metadata: {name: keys, namespace: lab}\nstringData: {alice: ssh-ed25519 AAAA}\n";

fn vm(folder: &Folder) -> &VirtualMachine {
    folder.vms.values().next().unwrap().vm.as_ref().unwrap()
}

#[test]
fn a_vm_needs_its_container_disks_and_kernel_images() {
    let folder = folder(VM);
    assert_eq!(
        needs(vm(&folder)),
        [ImageNeed {
            volume: "root".into(),
            image: "127.0.0.1:5000/vmlet/debian:12".into(),
            policy: Some("Always".into()),
            disk: DiskLookup::Find,
        }]
    );
}

#[test]
fn the_layout_links_images_and_claims_and_writes_the_secrets() {
    let all = folder(&format!("{VM}---\n{CLAIM}---\n{SECRETS}"));
    let pulled = Pulled::from([("root".to_owned(), PathBuf::from("/state/images/sha256-ab/rootfs"))]);
    let layout = layout(vm(&all), "lab", &all, Path::new("/state/claims"), &pulled).unwrap();
    assert_eq!(
        layout.links,
        [
            (PathBuf::from("disks/data"), PathBuf::from("/state/claims/lab_web-data")),
            (
                PathBuf::from("disks/root"),
                PathBuf::from("/state/images/sha256-ab/rootfs")
            ),
        ]
    );
    assert_eq!(
        layout.files,
        [
            (PathBuf::from("cloud-init/ci/user/userdata"), b"#cloud-config".to_vec()),
            (PathBuf::from("ssh-keys/keys/alice"), b"ssh-ed25519 AAAA".to_vec()),
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    write(&layout, dir.path()).unwrap();
    let volumes = PodVolumes::new(dir.path());
    assert_eq!(
        std::fs::read_link(volumes.disk("root")).unwrap(),
        Path::new("/state/images/sha256-ab/rootfs")
    );
    assert_eq!(
        std::fs::read(volumes.user_data_secret("ci").join("userdata")).unwrap(),
        b"#cloud-config"
    );
}

#[test]
fn a_missing_claim_or_secret_is_named() {
    let without_claim = folder(&format!("{VM}---\n{SECRETS}"));
    let why = layout(
        vm(&without_claim),
        "lab",
        &without_claim,
        Path::new("/c"),
        &Pulled::new(),
    )
    .unwrap_err();
    assert_eq!(
        why,
        NotReady {
            printable: PrintableStatus::ErrorPvcNotFound,
            reason: "PvcNotFound",
            message: "volume \"data\": the claim lab/web-data is not in the manifests folder".into(),
        }
    );
    let without_keys = folder(&format!(
        "{VM}---\n{CLAIM}---\n{}",
        SECRETS.split("---").next().unwrap()
    ));
    let why = layout(vm(&without_keys), "lab", &without_keys, Path::new("/c"), &Pulled::new()).unwrap_err();
    assert_eq!(why.reason, "SecretNotFound");
    assert_eq!(
        why.message,
        "volume \"accessCredentials[0]\": the Secret lab/keys is not in the manifests folder"
    );
}

#[test]
fn a_claim_s_disk_is_made_once_at_its_size() {
    let all = folder(CLAIM);
    let dir = tempfile::tempdir().unwrap();
    ensure_claims(&all.claims, dir.path()).unwrap();
    let disk = dir.path().join("lab_web-data/disk.img");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30);
    std::fs::write(&disk, b"data").unwrap();
    ensure_claims(&all.claims, dir.path()).unwrap();
    assert_eq!(std::fs::read(&disk).unwrap(), b"data");
}
