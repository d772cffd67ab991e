use std::path::Path;
use std::process::Command;

use vmlet_control::PodVolumes;
use vmlet_domain::{Boot, DiskBus, DiskCache, DiskFormat, DiskMedia, DiskSource, Firmware};

use super::*;
use crate::spec::test_vm;
use vmlet_api::CloudInitKind;

/// A VM with the given disks and volumes (YAML flow lists), booting from disk.
fn vm(disks: &str, volumes: &str) -> VmSpec {
    test_vm(&format!(
        r#"
metadata: {{name: vm1, namespace: default}}
spec:
  template:
    spec:
      domain:
        memory: {{guest: 128Mi}}
        devices:
          disks: {disks}
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes: {volumes}
"#
    ))
}

struct Pod {
    _dir: tempfile::TempDir,
    volumes: PodVolumes,
    run_dir: PathBuf,
}

fn pod() -> Pod {
    let dir = tempfile::tempdir().unwrap();
    Pod {
        volumes: PodVolumes::new(dir.path().join("volumes")),
        run_dir: dir.path().join("run"),
        _dir: dir,
    }
}

/// A containerDisk image root for `volume` holding `files` (path, content).
fn image(pod: &Pod, volume: &str, files: &[(&str, &[u8])]) {
    let root = pod.volumes.disk(volume);
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    std::fs::create_dir_all(root).unwrap();
}

fn problem(result: Result<Storage, StorageError>) -> String {
    result.map(|_| ()).unwrap_err().to_string()
}

#[test]
fn disk_options_map_to_the_domain() {
    let vm = vm(
        "[{name: a, disk: {}}, {name: b, cdrom: {}}, {name: c, disk: {bus: scsi, readonly: true}, bootOrder: 1, \
         serial: D-1, cache: none}, {name: d, cdrom: {bus: scsi, readonly: false}}]",
        "[{name: a, emptyDisk: {capacity: 1Mi}}, {name: b, emptyDisk: {capacity: 1Mi}}, \
         {name: c, emptyDisk: {capacity: 1Mi}}, {name: d, emptyDisk: {capacity: 1Mi}}]",
    );
    let pod = pod();
    let storage = prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    let summary: Vec<_> = storage
        .disks
        .iter()
        .map(|d| (d.media, d.bus, d.readonly, d.boot_order, d.serial.as_deref(), d.cache))
        .collect();
    assert_eq!(
        summary,
        [
            (DiskMedia::Disk, DiskBus::Virtio, false, None, None, None),
            (DiskMedia::Cdrom, DiskBus::Sata, true, None, None, None),
            (
                DiskMedia::Disk,
                DiskBus::Scsi,
                true,
                Some(1),
                Some("D-1"),
                Some(DiskCache::None)
            ),
            (DiskMedia::Cdrom, DiskBus::Scsi, false, None, None, None),
        ]
    );
    assert_eq!((storage.firmware, storage.boot), (Firmware::Bios, Boot::Disk));
}

#[test]
fn an_empty_disk_is_created_once_and_never_wiped() {
    let vm = vm(
        "[{name: scratch, disk: {}}]",
        "[{name: scratch, emptyDisk: {capacity: 1Mi}}]",
    );
    let pod = pod();
    prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    let path = pod.run_dir.join("disks/scratch.img");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    std::fs::write(&path, b"guest data").unwrap();
    prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"guest data");
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_container_disk_gets_an_overlay_and_the_image_is_left_alone() {
    let vm = vm(
        "[{name: root, disk: {}}]",
        "[{name: root, containerDisk: {image: example/disk}}]",
    );
    let pod = pod();
    image(&pod, "root", &[("disk/disk.img", &[7u8; 4096])]);
    let image_file = pod.volumes.disk("root").join("disk/disk.img");
    let storage = prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    let overlay = pod.run_dir.join("disks/root.qcow2");
    assert_eq!(
        storage.disks[0].source,
        DiskSource::File {
            path: overlay.clone(),
            format: DiskFormat::Qcow2
        }
    );
    let info = qemu_img_info(&overlay);
    assert_eq!(
        info["backing-filename"],
        image_file.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(info["virtual-size"], 4096);
    // A restarted launcher keeps the guest's writes.
    let before = std::fs::metadata(&overlay).unwrap().modified().unwrap();
    prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    assert_eq!(std::fs::metadata(&overlay).unwrap().modified().unwrap(), before);
    assert_eq!(std::fs::read(&image_file).unwrap(), [7u8; 4096]);
}

#[test]
fn a_qcow2_image_is_the_overlay_s_qcow2_backing() {
    let vm = vm(
        "[{name: root, disk: {}}]",
        "[{name: root, containerDisk: {image: example/disk}}]",
    );
    let pod = pod();
    let root = pod.volumes.disk("root").join("disk");
    std::fs::create_dir_all(&root).unwrap();
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(root.join("cloud.qcow2"))
        .arg("1M")
        .status()
        .unwrap();
    assert!(status.success());
    prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    let info = qemu_img_info(&pod.run_dir.join("disks/root.qcow2"));
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["virtual-size"], 1 << 20);
}

#[test]
fn what_a_container_disk_lacks_is_named() {
    let vm_with = |path: &str| {
        vm(
            "[{name: root, disk: {}}]",
            &format!("[{{name: root, containerDisk: {{image: example/disk{path}}}}}]"),
        )
    };
    let pod = pod();
    let root = pod.volumes.disk("root");
    assert_eq!(
        problem(prepare(&vm_with(""), &pod.volumes, &pod.run_dir)),
        format!("volume \"root\": the pod provides no data for it at {}", root.display())
    );
    image(&pod, "root", &[("etc/os-release", b"")]);
    assert_eq!(
        problem(prepare(&vm_with(""), &pod.volumes, &pod.run_dir)),
        "volume \"root\": the image has no disk under /disk"
    );
    image(&pod, "root", &[("disk/a.qcow2", b""), ("disk/b.img", b"")]);
    assert_eq!(
        problem(prepare(&vm_with(""), &pod.volumes, &pod.run_dir)),
        "volume \"root\": the image has several disks under /disk (a.qcow2, b.img); name one with containerDisk.path"
    );
    assert_eq!(
        problem(prepare(&vm_with(", path: /disk/c.img"), &pod.volumes, &pod.run_dir)),
        "volume \"root\": the image has no file /disk/c.img"
    );
    prepare(&vm_with(", path: /disk/b.img"), &pod.volumes, &pod.run_dir).unwrap();
    assert!(!pod.run_dir.join("disks/root.partial").exists());
}

#[test]
fn a_claim_gets_a_sparse_disk_once() {
    let vm = vm(
        "[{name: data, disk: {}}]",
        "[{name: data, persistentVolumeClaim: {claimName: data}}]",
    );
    let pod = pod();
    let claim = pod.volumes.disk("data");
    assert_eq!(
        problem(prepare(&vm, &pod.volumes, &pod.run_dir)),
        format!(
            "volume \"data\": the pod provides no data for it at {}",
            claim.display()
        )
    );
    std::fs::create_dir_all(&claim).unwrap();
    let storage = prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    let file = claim.join("disk.img");
    assert_eq!(
        storage.disks[0].source,
        DiskSource::File {
            path: file.clone(),
            format: DiskFormat::Raw
        }
    );
    let metadata = std::fs::metadata(&file).unwrap();
    assert!(metadata.len() > 0 && metadata.len().is_multiple_of(1 << 20));
    std::fs::write(&file, b"kept").unwrap();
    prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"kept");
}

#[test]
fn a_kernel_from_an_image_is_found_in_it() {
    let vm = test_vm(
        r#"
metadata: {name: vm1}
spec:
  template:
    spec:
      domain:
        memory: {guest: 128Mi}
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0
            container: {image: example/kernel, kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd.img}
        devices:
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default, pod: {}}]
"#,
    );
    let pod = pod();
    let root = pod.volumes.kernel_image();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), b"").unwrap();
    assert_eq!(
        problem(prepare(&vm, &pod.volumes, &pod.run_dir)),
        "volume \"kernelBoot.container\": the image has no file /boot/initrd.img"
    );
    std::fs::write(root.join("boot/initrd.img"), b"").unwrap();
    let storage = prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    assert_eq!(
        storage.boot,
        Boot::Kernel {
            kernel: root.join("boot/vmlinuz"),
            initrd: Some(root.join("boot/initrd.img")),
            cmdline: "console=ttyS0".into()
        }
    );
}

#[test]
fn efi_is_secure_unless_turned_off() {
    let efi = |secure: &str| {
        test_vm(&format!(
            r#"
metadata: {{name: vm1}}
spec:
  template:
    spec:
      domain:
        memory: {{guest: 128Mi}}
        firmware: {{bootloader: {{efi: {{{secure}}}}}}}
        devices:
          disks: [{{name: a, disk: {{}}}}]
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes: [{{name: a, emptyDisk: {{capacity: 1Mi}}}}]
"#
        ))
    };
    let pod = pod();
    for (secure, code) in [("", OVMF_SECURE_CODE), ("secureBoot: false", OVMF_CODE)] {
        let result = prepare(&efi(secure), &pod.volumes, &pod.run_dir);
        if !Path::new(code).exists() {
            assert_eq!(
                problem(result),
                format!("volume \"firmware.bootloader.efi\": UEFI firmware {code} is missing (Debian's package ovmf)")
            );
            continue;
        }
        match result.unwrap().firmware {
            Firmware::Efi {
                code: chosen,
                vars,
                secure_boot,
                ..
            } => {
                assert_eq!(chosen, Path::new(code));
                assert_eq!(secure_boot, secure.is_empty());
                assert_eq!(vars, pod.run_dir.join("efi-vars.fd"));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A VM with the cloud-init `volume` and one SSH key Secret propagated by `method`.
fn cloud_init_vm(volume: &str, secret: &str, method: &str) -> VmSpec {
    test_vm(&format!(
        r#"
metadata: {{name: vm1, namespace: lab, uid: 4a7c-uid}}
spec:
  template:
    spec:
      hostname: web-1
      domain:
        memory: {{guest: 128Mi}}
        devices:
          disks: [{{name: ci, disk: {{}}}}]
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes: [{volume}]
      accessCredentials:
      - sshPublicKey: {{source: {{secret: {{secretName: {secret}}}}}, propagationMethod: {{{method}: {{}}}}}}
"#
    ))
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

#[test]
fn a_no_cloud_seed_takes_inline_data_secrets_and_the_keys_that_travel_its_way() {
    let vm = cloud_init_vm(
        "{name: ci, cloudInitNoCloud: {userDataBase64: I2Nsb3VkLWNvbmZpZwo=, networkDataSecretRef: {name: net}}}",
        "keys",
        "noCloud",
    );
    let pod = pod();
    write(
        &pod.volumes.network_data_secret("ci"),
        &[("networkData", "version: 2\n")],
    );
    // A mounted Secret's files, beside the kubelet's hidden bookkeeping.
    write(
        &pod.volumes.ssh_keys("keys"),
        &[
            ("b", "ssh-ed25519 BBBB b@x\n"),
            ("a", "# team\nssh-ed25519 AAAA a@x\n\n"),
            ("..data", "x"),
        ],
    );
    let volume = &vm.spec.volumes[0];
    let seed = cloud_init::seed(&vm, volume, CloudInitKind::NoCloud, &pod.volumes).unwrap();
    assert_eq!(
        seed,
        vmlet_cloudinit::Seed {
            instance_id: "4a7c-uid".into(),
            hostname: "web-1".into(),
            user_data: Some(b"#cloud-config\n".to_vec()),
            network_data: Some(b"version: 2\n".to_vec()),
            ssh_keys: vec!["ssh-ed25519 AAAA a@x".into(), "ssh-ed25519 BBBB b@x".into()],
            key_propagation: vmlet_cloudinit::KeyPropagation::NoCloud,
        }
    );
    let storage = prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    let iso = pod.run_dir.join("cloud-init/ci.iso");
    assert_eq!(
        storage.disks[0].source,
        DiskSource::File {
            path: iso.clone(),
            format: DiskFormat::Raw
        }
    );
    // ISO 9660's primary volume descriptor, at 32 KiB, carries the label cloud-init looks for.
    let image = std::fs::read(&iso).unwrap();
    assert_eq!(&image[0x8001..0x8006], b"CD001");
    assert_eq!(String::from_utf8_lossy(&image[0x8028..0x8048]).trim_end(), "cidata");
}

#[test]
fn what_a_cloud_init_volume_lacks_is_named() {
    let pod = pod();
    let vm = cloud_init_vm(
        "{name: ci, cloudInitConfigDrive: {secretRef: {name: ud}}}",
        "other",
        "configDrive",
    );
    let secret = pod.volumes.user_data_secret("ci");
    assert_eq!(
        problem(prepare(&vm, &pod.volumes, &pod.run_dir)),
        format!("volume \"ci\": the pod provides no data for it at {}", secret.display())
    );
    write(&secret, &[("user-data", "x")]);
    assert_eq!(
        problem(prepare(&vm, &pod.volumes, &pod.run_dir)),
        format!(
            "volume \"ci\": the Secret mounted at {} has no key userdata or userData",
            secret.display()
        )
    );
    write(&secret, &[("userdata", "#cloud-config\n")]);
    assert_eq!(
        problem(prepare(&vm, &pod.volumes, &pod.run_dir)),
        format!(
            "volume \"ci\": the pod provides no data for it at {}",
            pod.volumes.ssh_keys("other").display()
        )
    );
    write(&pod.volumes.ssh_keys("other"), &[("key", "ssh-ed25519 CCCC c@x")]);
    let volume = &vm.spec.volumes[0];
    let seed = cloud_init::seed(&vm, volume, CloudInitKind::ConfigDrive, &pod.volumes).unwrap();
    assert_eq!(seed.ssh_keys, ["ssh-ed25519 CCCC c@x"]);
    assert_eq!(seed.key_propagation, vmlet_cloudinit::KeyPropagation::ConfigDrive);
    prepare(&vm, &pod.volumes, &pod.run_dir).unwrap();
    assert!(pod.run_dir.join("cloud-init/ci.iso").is_file());
}
