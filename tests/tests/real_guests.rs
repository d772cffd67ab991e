//! Real guests in standalone mode: the Debian cloud image of `images/cloud/` as a containerDisk pulled from a real
//! registry on loopback, configured by cloud-init, reached over SSH at its pod's address; a persistent claim that
//! outlives its VM; a config drive with network data under UEFI; and every way a volume can be wrong, each reported
//! with the volume named and nothing started.
//!
//! The registry runs on the test machine's loopback; the handler, in the namespace that plays the machine, reaches
//! it through a forwarded loopback port ([`Machine::forward_loopback_port`]), and SSH reaches the guests from inside
//! that namespace. Needs root, the built workspace and the packages of `scripts/setup`.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};
use vmlet_testkit::registry::{CuttingProxy, LayoutLayer, Registry, write_layout};
use vmlet_testkit::standalone::{Machine, WAIT};
use vmlet_testkit::tmux::Tmux;
use vmlet_testkit::vm_pod::one_guest_at_a_time;
use vmlet_testkit::{ScratchDir, binary, cloud_image, output_within, poll_until, run};

/// From a manifest to SSH answering with cloud-init's work done: 30 to 60 s of boot under TCG, more on a loaded
/// machine, plus the first pull.
const BOOT: Duration = Duration::from_secs(420);
const IMAGE: &str = "vmlet/debian:12";

/// A machine with the handler running, a registry holding the cloud image's containerDisk, and an SSH key pair.
struct World {
    machine: Machine,
    registry: Registry,
    keys: ScratchDir,
}

impl World {
    fn new() -> World {
        let image = cloud_image();
        let registry = Registry::start();
        registry.push(&format!("oci-archive:{}", image.oci_archive().display()), IMAGE);
        let mut machine = Machine::new();
        machine.forward_loopback_port(registry.addr().port());
        machine.start_handler();
        let keys = ScratchDir::new();
        for name in ["user", "granted"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(keys.join(name)));
        }
        World {
            machine,
            registry,
            keys,
        }
    }

    fn image(&self) -> String {
        format!("{}/{IMAGE}", self.registry.addr())
    }

    fn public_key(&self, name: &str) -> String {
        std::fs::read_to_string(self.keys.join(format!("{name}.pub")))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn write(&self, file: &str, manifest: &str) -> PathBuf {
        let path = self.machine.manifests().join(file);
        std::fs::write(&path, manifest).unwrap();
        path
    }

    /// Runs `command` in the guest at `address` as `user` with the key `key`, once SSH answers.
    fn ssh(&self, key: &str, user: &str, address: &str, command: &str, vm: &str) -> String {
        let attempt = || {
            let mut ssh = self.machine.host().exec("ssh");
            ssh.arg("-i")
                .arg(self.keys.join(key))
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=5",
                    "-o",
                    "LogLevel=ERROR",
                ])
                .arg(format!("{user}@{address}"))
                .arg(command);
            output_within(&mut ssh, Duration::from_secs(30))
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        };
        poll_until(
            format!("ssh {user}@{address} {command:?}"),
            BOOT,
            Duration::from_secs(2),
            attempt,
        )
        .unwrap_or_else(|timeout| panic!("{timeout}\n{}", self.machine.diagnostics(vm)))
    }

    /// The VM's IP as its status shows it, once it is Running.
    fn address(&self, vm: &str) -> String {
        poll_until(
            format!("{vm} running with an address"),
            BOOT,
            Duration::from_millis(500),
            || {
                let status = self.machine.status();
                let row: Vec<&str> = status
                    .lines()
                    .find(|row| row.split_whitespace().nth(1) == Some(vm))?
                    .split_whitespace()
                    .collect();
                if !row.contains(&"Running") {
                    return None;
                }
                row.iter()
                    .find(|cell| cell.starts_with("10.111.0."))
                    .map(|cell| (*cell).to_owned())
            },
        )
        .unwrap_or_else(|timeout| panic!("{timeout}\n{}", self.machine.diagnostics(vm)))
    }

    /// Waits until the VM's status file holds `text`, and returns the file.
    fn wait_status_text(&self, vm: &str, text: &str, within: Duration) -> String {
        poll_until(
            format!("{vm}'s status to say {text:?}"),
            within,
            Duration::from_millis(500),
            || {
                let status = self.machine.status_file(vm);
                status.contains(text).then_some(status)
            },
        )
        .unwrap_or_else(|timeout| panic!("{timeout}\n{}", self.machine.diagnostics(vm)))
    }

    /// Removes a VM's manifest and waits until its pod and status are gone.
    fn delete(&self, file: &Path, vm: &str) {
        std::fs::remove_file(file).unwrap();
        poll_until(format!("{vm} to be gone"), WAIT * 3, Duration::from_millis(500), || {
            let gone = !self.machine.pod_dir(vm).exists()
                && !self.machine.manifests().join(format!("{vm}.status.yaml")).exists();
            gone.then_some(())
        })
        .unwrap_or_else(|timeout| panic!("{timeout}\n{}", self.machine.diagnostics(vm)));
    }

    /// The one image in the machine's store: its disk's digest, and whether any of its files can be written.
    fn stored_disk(&self) -> (String, bool) {
        let store = self.machine.dir().join("state/images");
        let images: Vec<PathBuf> = std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("sha256-"))
            .collect();
        assert_eq!(images.len(), 1, "one image in {}: {images:?}", store.display());
        let disk = images[0].join("rootfs/disk/disk.qcow2");
        let digest: String = Sha256::digest(std::fs::read(&disk).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let writable = [&disk, &disk.parent().unwrap().to_owned()]
            .iter()
            .any(|p| std::fs::metadata(p).unwrap().permissions().mode() & 0o222 != 0);
        (digest, writable)
    }
}

/// The VM of the first test: the containerDisk, a claim, a NoCloud seed whose runcmd formats the claim once and
/// mounts it, and an SSH key granted through accessCredentials.
fn web_manifest(world: &World) -> String {
    format!(
        r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: web}}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        cpu: {{cores: 2}}
        memory: {{guest: 1Gi}}
        devices:
          disks: [{{name: root, disk: {{}}}}, {{name: data, disk: {{}}}}, {{name: seed, disk: {{}}}}]
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes:
      - {{name: root, containerDisk: {{image: "{image}"}}}}
      - {{name: data, persistentVolumeClaim: {{claimName: web-data}}}}
      - name: seed
        cloudInitNoCloud:
          userData: |
            #cloud-config
            hostname: web-guest
            users:
            - default
            - name: tester
              shell: /bin/bash
              sudo: ALL=(ALL) NOPASSWD:ALL
              ssh_authorized_keys: ["{user_key}"]
              # For the serial console's login prompt only: SSH takes keys alone.
              lock_passwd: false
              plain_text_passwd: {console_password}
            runcmd:
            - blkid /dev/vdb || mkfs.ext4 -q /dev/vdb
            - mkdir -p /data && mount /dev/vdb /data
            - echo cloud-init-ran > /run/proof
      # Ready once the test says so: the probe's program runs in the guest, through its agent.
      readinessProbe: {{exec: {{command: [/usr/bin/test, -e, /run/ready-now]}}, periodSeconds: 2, timeoutSeconds: 10}}
      accessCredentials:
      - sshPublicKey: {{source: {{secret: {{secretName: granted}}}}, propagationMethod: {{noCloud: {{}}}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: web-data}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 256Mi}}}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: granted}}
stringData: {{key: "{granted_key}"}}
"#,
        image = world.image(),
        user_key = world.public_key("user"),
        granted_key = world.public_key("granted"),
        console_password = CONSOLE_PASSWORD,
    )
}

const CONSOLE_PASSWORD: &str = "serial-7Kq2";

/// A containerDisk from the registry with NoCloud user data boots at its pod's address and answers SSH with what
/// cloud-init was told; readiness probes run a program in the guest and ping its agent; `vmlet ssh`, `scp` and `console` (a login at the serial prompt) reach it; its guest agent's
/// word reaches status. A second VM of the same image pulls nothing and neither VM changes the stored image. A file
/// on the claim outlives the VM's deletion; one on the containerDisk does not.
#[test]
fn a_cloud_image_boots_with_cloud_init_and_its_claim_outlives_it() {
    let _guest = one_guest_at_a_time();
    let world = World::new();
    let manifest = world.write("web.yaml", &web_manifest(&world));

    let address = world.address("web");
    let said = world.ssh(
        "user",
        "tester",
        &address,
        "hostname && cat /run/proof && ip -4 -o addr show scope global",
        "web",
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[..2], ["web-guest", "cloud-init-ran"], "{said}");
    assert!(
        said.contains(&format!(" {address}/24 ")),
        "the guest has its pod's address {address}: {said}"
    );
    // The key of accessCredentials reaches the image's default user.
    assert_eq!(
        world.ssh("granted", "debian", &address, "whoami", "web").trim(),
        "debian"
    );

    // The readiness probe's program ran in the guest and failed: Running and not Ready, the condition saying why.
    let waiting = world.wait_status_text("web", "/run/ready-now\"] exited with 1", WAIT * 4);
    assert!(waiting.contains("reason: GuestNotReady"), "{waiting}");
    world.ssh("user", "tester", &address, "sudo touch /run/ready-now", "web");
    world.machine.wait_status("web", &["Running", "True"], WAIT);

    // `vmlet ssh` finds the VM's address itself.
    let mut vmlet_ssh = world.machine.host().exec(binary("vmlet"));
    vmlet_ssh
        .arg("--manifests")
        .arg(world.machine.manifests())
        .args(["ssh", "-i"])
        .arg(world.keys.join("user"))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "tester@web",
            "hostname",
        ]);
    assert_eq!(run(&mut vmlet_ssh).trim(), "web-guest");
    // `vmlet scp` both ways, the VM named as `USER@VM:PATH`.
    let sent = world.keys.join("sent.txt");
    std::fs::write(&sent, "carried by scp\n").unwrap();
    let back = world.keys.join("back.txt");
    for (from, to) in [
        (sent.display().to_string(), "tester@web:/tmp/carried.txt".to_owned()),
        ("tester@web:/tmp/carried.txt".to_owned(), back.display().to_string()),
    ] {
        let mut vmlet_scp = world.machine.host().exec(binary("vmlet"));
        vmlet_scp
            .arg("--manifests")
            .arg(world.machine.manifests())
            .args(["scp", "-i"])
            .arg(world.keys.join("user"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                &from,
                &to,
            ]);
        run(&mut vmlet_scp);
    }
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "carried by scp\n");

    // `vmlet console` as a person uses it: log in at the prompt, run a command, leave with Ctrl-], and find the
    // same session on the next attach.
    let tmux = Tmux::new();
    let attach = format!(
        "{} --manifests {} console web; echo CONSOLE-LEFT; sleep 600",
        binary("vmlet").display(),
        world.machine.manifests().display()
    );
    tmux.start(&attach, true);
    tmux.wait_for("connected to the console of web", WAIT);
    tmux.keys(&["Enter"]);
    tmux.wait_for("web-guest login:", WAIT);
    tmux.keys(&["tester", "Enter"]);
    tmux.wait_for("Password:", WAIT);
    tmux.keys(&[CONSOLE_PASSWORD, "Enter"]);
    tmux.wait_for("tester@web-guest", WAIT);
    tmux.keys(&["X=first-attach; echo sum=$((6*7))", "Enter"]);
    tmux.wait_for("sum=42", WAIT);
    tmux.keys(&["C-]"]);
    tmux.wait_for("CONSOLE-LEFT", WAIT);
    tmux.start(&attach, false);
    tmux.wait_for("connected to the console of web", WAIT);
    tmux.keys(&["echo again=$X", "Enter"]);
    tmux.wait_for("again=first-attach", WAIT);
    tmux.keys(&["exit", "Enter", "C-]"]);
    drop(tmux);
    let status = world.wait_status_text("web", "guestOSInfo", WAIT * 4);
    assert!(status.contains("Debian GNU/Linux"), "{status}");

    world.ssh(
        "user",
        "tester",
        &address,
        "sudo sh -c 'echo kept > /data/proof && echo lost > /var/tmp/proof && sync'",
        "web",
    );
    assert_eq!(world.registry.blob_gets().len(), 1, "{}", world.registry.log());
    let (stored, writable) = world.stored_disk();
    assert!(!writable, "the stored image is read-only");

    // A second VM of the same image starts from the store.
    let second = world.write(
        "other.yaml",
        &web_manifest(&world)
            .split("---")
            .next()
            .unwrap()
            .replace("{name: web}", "{name: other}")
            .replace(
                "readinessProbe: {exec: {command: [/usr/bin/test, -e, /run/ready-now]}",
                "readinessProbe: {guestAgentPing: {}",
            )
            .replace(
                "      - {name: data, persistentVolumeClaim: {claimName: web-data}}\n",
                "      - {name: data, emptyDisk: {capacity: 64Mi}}\n",
            ),
    );
    // Ready once its guest agent answers a ping.
    world.machine.wait_status("other", &["Running", "True"], BOOT);
    assert_eq!(
        world.registry.blob_gets().len(),
        1,
        "one pull: {}",
        world.registry.log()
    );
    world.delete(&second, "other");

    // Deleted and made again: a new VM (cloud-init runs again) on the same claim, with a fresh containerDisk.
    world.delete(&manifest, "web");
    let claim = world.machine.dir().join("state/claims/default_web-data/disk.img");
    assert!(claim.exists(), "the claim outlives its VM");
    world.write("web.yaml", &web_manifest(&world));
    let address = world.address("web");
    let said = world.ssh(
        "user",
        "tester",
        &address,
        "cat /run/proof && cat /data/proof && (test -e /var/tmp/proof && echo containerDisk-kept || echo containerDisk-fresh)",
        "web",
    );
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["cloud-init-ran", "kept", "containerDisk-fresh"]
    );
    assert_eq!(world.registry.blob_gets().len(), 1, "{}", world.registry.log());
    assert_eq!(world.stored_disk(), (stored, false), "the stored image is unchanged");
}

/// The same image booted by OVMF, configured through a config drive whose user data comes from a Secret and whose
/// network data sets the NIC's MTU, behind the masquerade binding (SSH reaches it through the pod's address). First,
/// with Secure Boot (KubeVirt's default for `efi: {}`), the firmware really enforces it: the image's boot loader is
/// not signed, and OVMF refuses to run it.
#[test]
fn a_config_drive_with_network_data_under_uefi() {
    let _guest = one_guest_at_a_time();
    let world = World::new();
    let secure = world.write(
        "secure.yaml",
        &format!(
            r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: secure}}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {{guest: 512Mi}}
        firmware: {{bootloader: {{efi: {{}}}}}}
        devices:
          disks: [{{name: root, disk: {{}}}}]
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes: [{{name: root, containerDisk: {{image: "{image}"}}}}]
"#,
            image = world.image()
        ),
    );
    poll_until(
        "Secure Boot to refuse the unsigned boot loader",
        BOOT,
        Duration::from_secs(1),
        || world.machine.console("secure").contains("Access Denied").then_some(()),
    )
    .unwrap_or_else(|timeout| panic!("{timeout}\n{}", world.machine.diagnostics("secure")));
    world.delete(&secure, "secure");
    let network_data = r#"{"links": [{"id": "nic", "type": "phy", "ethernet_mac_address": "02:00:00:00:00:42", "mtu": 1280}], "networks": [{"id": "net", "link": "nic", "type": "ipv4_dhcp"}]}"#;
    world.write(
        "efi.yaml",
        &format!(
            r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: efi}}
spec:
  runStrategy: Always
  template:
    spec:
      hostname: efi-guest
      domain:
        cpu: {{cores: 2}}
        memory: {{guest: 1Gi}}
        firmware: {{bootloader: {{efi: {{secureBoot: false}}}}}}
        devices:
          disks: [{{name: root, disk: {{}}}}, {{name: drive, disk: {{}}}}]
          interfaces: [{{name: default, masquerade: {{}}, macAddress: "02:00:00:00:00:42"}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes:
      - {{name: root, containerDisk: {{image: "{image}"}}}}
      - {{name: drive, cloudInitConfigDrive: {{secretRef: {{name: efi-init}}, networkData: '{network_data}'}}}}
      accessCredentials:
      - sshPublicKey: {{source: {{secret: {{secretName: granted}}}}, propagationMethod: {{configDrive: {{}}}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: efi-init}}
stringData:
  userdata: |
    #cloud-config
    runcmd:
    - echo config-drive > /run/proof
---
apiVersion: v1
kind: Secret
metadata: {{name: granted}}
stringData: {{key: "{granted_key}"}}
"#,
            image = world.image(),
            granted_key = world.public_key("granted"),
        ),
    );
    let address = world.address("efi");
    let said = world.ssh(
        "granted",
        "debian",
        &address,
        "hostname && cat /run/proof && test -d /sys/firmware/efi && echo efi && \
         cat /sys/class/net/$(ip -o link | awk -F': ' '/02:00:00:00:00:42/ {print $2}')/mtu",
        "efi",
    );
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["efi-guest", "config-drive", "efi", "1280"],
        "{}",
        world.machine.diagnostics("efi")
    );
}

/// Every way a volume can be wrong is a status whose reason and message name it, with no pod made and nothing half
/// pulled left in the store.
#[test]
fn volumes_that_cannot_be_served_are_reported_by_name() {
    let mut world = World::new();
    let scratch = ScratchDir::new();
    // A registry that wants credentials the handler does not have.
    let locked = Registry::start_with_basic_auth("someone", "secret");
    world.machine.forward_loopback_port(locked.addr().port());
    // A registry whose connection is cut a megabyte into the layer.
    let cutting = CuttingProxy::start(world.registry.addr(), 1 << 20);
    world.machine.forward_loopback_port(cutting.addr().port());
    // An image with no disk, and one whose layer the registry serves corrupted.
    let tar = |entries: &[(&str, &[u8])]| {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_path(path).unwrap();
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    };
    let gzip = |bytes: Vec<u8>| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &bytes).unwrap();
        encoder.finish().unwrap()
    };
    write_layout(
        &scratch.join("nodisk"),
        "1",
        &[LayoutLayer::tar_gzip(gzip(tar(&[("etc/os-release", b"ID=none\n")])))],
    );
    world
        .registry
        .push(&format!("oci:{}:1", scratch.join("nodisk").display()), "vmlet/nodisk:1");
    let corrupt = write_layout(
        &scratch.join("corrupt"),
        "1",
        &[LayoutLayer::tar_gzip(gzip(tar(&[("disk/disk.img", &[1u8; 4096])])))],
    );
    world.registry.push(
        &format!("oci:{}:1", scratch.join("corrupt").display()),
        "vmlet/corrupt:1",
    );
    let blob = world.registry.blob_path(&corrupt.layer_digests[0]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    // A layer with an entry that climbs out of its folder, from an OCI layout on disk (the air-gapped source).
    let mut escape = tar(&[("disk/disk.img", &[0u8; 512])]);
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../../escape");
    header.set_cksum();
    let tail = escape.split_off(escape.len() - 1024);
    escape.extend_from_slice(header.as_bytes());
    escape.extend_from_slice(b"evil");
    escape.extend(std::iter::repeat_n(0u8, 512 - 4));
    escape.extend(tail);
    write_layout(&scratch.join("escape"), "1", &[LayoutLayer::tar(escape)]);

    let registry = world.registry.addr();
    let cases = [
        (
            "missing",
            format!("containerDisk: {{image: \"{registry}/vmlet/nothing:1\"}}"),
            "ImagePull",
            "volume \"root\": image",
            "not found",
        ),
        (
            "refused",
            format!("containerDisk: {{image: \"{}/{IMAGE}\"}}", locked.addr()),
            "ImagePull",
            "volume \"root\": the registry refused image",
            "",
        ),
        (
            "cut",
            format!("containerDisk: {{image: \"{}/{IMAGE}\"}}", cutting.addr()),
            "ImagePull",
            "volume \"root\": the connection was lost while pulling blob",
            "",
        ),
        (
            "nodisk",
            format!("containerDisk: {{image: \"{registry}/vmlet/nodisk:1\"}}"),
            "ImagePull",
            "volume \"root\":",
            "/disk",
        ),
        (
            "corrupt",
            format!("containerDisk: {{image: \"{registry}/vmlet/corrupt:1\"}}"),
            "ErrImagePull",
            &format!("volume \"root\": blob {}", corrupt.layer_digests[0]),
            "does not match",
        ),
        (
            "escape",
            format!(
                "containerDisk: {{image: \"oci:{}:1\"}}",
                scratch.join("escape").display()
            ),
            "ImagePull",
            "volume \"root\": layer",
            "../../escape",
        ),
        (
            "noclaim",
            "persistentVolumeClaim: {claimName: nowhere}".to_owned(),
            "reason: PvcNotFound",
            "volume \"root\": the claim default/nowhere is not in the manifests folder",
            "",
        ),
        (
            "badbase64",
            "cloudInitNoCloud: {userDataBase64: 'not base64!'}".to_owned(),
            "reason: InvalidSpec",
            "volumes[0].cloudInitNoCloud.userDataBase64: not valid base64",
            "",
        ),
    ];
    let mut files = Vec::new();
    for (name, source, _, _, _) in &cases {
        files.push(world.write(
            &format!("{name}.yaml"),
            &format!(
                r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {{guest: 256Mi}}
        devices:
          disks: [{{name: root, disk: {{}}}}]
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes: [{{name: root, {source}}}]
"#
            ),
        ));
    }
    for (name, _, reason, message, detail) in &cases {
        let status = world.wait_status_text(name, reason, WAIT * 4);
        assert!(
            status.contains(message) && status.contains(detail),
            "{name}: {message:?} and {detail:?} in\n{status}"
        );
        assert!(!world.machine.pod_dir(name).exists(), "{name} has no pod");
    }
    let row = world.machine.wait_status("noclaim", &["ErrorPvcNotFound"], WAIT);
    assert!(row.contains("False"), "{row}");
    let images = world.machine.dir().join("state/images");
    let stored: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sha256-"))
        .collect();
    assert!(stored.is_empty(), "nothing was kept: {stored:?}");
    let tmp: Vec<_> = std::fs::read_dir(images.join("tmp"))
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(tmp.iter().all(|&n| n == 0), "no half-pulled image is left");
    assert!(world.machine.pod_namespaces().is_empty());

    // Their manifests removed, their statuses go too.
    for file in &files {
        std::fs::remove_file(file).unwrap();
    }
    poll_until("every status to go", WAIT, Duration::from_millis(500), || {
        let left = std::fs::read_dir(world.machine.manifests())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".status.yaml")
            })
            .count();
        (left == 0).then_some(())
    })
    .unwrap_or_else(|timeout| panic!("{timeout}"));
    let escaped = run(Command::new("find")
        .arg(world.machine.dir().path())
        .args(["-name", "escape"]));
    assert_eq!(escaped.trim(), "", "nothing was written outside an image");
}
