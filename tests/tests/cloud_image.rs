//! The cloud image of `images/cloud/` (the fixture is `vmlet_testkit::cloud_image`) boots under bare QEMU with TCG,
//! with SeaBIOS and with OVMF, takes a NoCloud seed on a virtio disk, and answers SSH with what the seed asked for:
//! the hostname, a user with the test's key, a file written by `runcmd`. The guest has no network but QEMU's
//! user-mode network with `restrict=on`, which reaches nothing outside; SSH comes in through a port forwarded from
//! the host's loopback. The containerDisk holds that disk as KubeVirt expects.
//!
//! Needs root (the image's build) and the packages of `scripts/setup`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use vmlet_testkit::vm_pod::one_guest_at_a_time;
use vmlet_testkit::{Child, ScratchDir, cloud_image, output_within, poll_until, run};

/// From QEMU's start to the first console output: firmware and boot loader print at once, so silence means a hang.
const FIRST_OUTPUT: Duration = Duration::from_secs(60);
/// From QEMU's start to SSH answering with the runcmd's file (about 40 to 50 s under TCG on two cores).
const BOOT: Duration = Duration::from_secs(240);
const HOSTNAME: &str = "vmlet-cloud";
const USER: &str = "tester";
const PROOF: &str = "/run/vmlet-proof";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Firmware {
    Bios,
    Efi,
}

#[test]
fn boots_under_bios_and_takes_its_nocloud_seed() {
    boot_and_check(Firmware::Bios);
}

#[test]
fn boots_under_uefi_and_takes_its_nocloud_seed() {
    boot_and_check(Firmware::Efi);
}

#[test]
fn the_container_disk_holds_the_disk_as_kubevirt_expects() {
    let image = cloud_image();
    let layout = image.oci_layout();
    let read_json = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    };
    let blob = |digest: &serde_json::Value| {
        let digest = digest.as_str().unwrap();
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    };
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let manifest_digest = &manifests[0]["digest"];
    let manifest = read_json(&blob(manifest_digest));
    let config = read_json(&blob(&manifest["config"]["digest"]));
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer, FROM scratch: {manifest}");

    // tar's verbose listing: mode, owner/group, size, date, time, name.
    let listing = run(Command::new("tar").arg("-tvzf").arg(blob(&layers[0]["digest"])));
    let entries: Vec<(String, String, String, String)> = listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 6, "{line}");
            (fields[0].into(), fields[1].into(), fields[2].into(), fields[5].into())
        })
        .collect();
    let disk_size = std::fs::metadata(image.disk()).unwrap().len().to_string();
    assert_eq!(
        entries,
        [
            ("drwxr-xr-x".into(), "107/107".into(), "0".into(), "disk/".into()),
            (
                "-r--r-----".into(),
                "107/107".into(),
                disk_size,
                "disk/disk.qcow2".into()
            ),
        ],
        "the disk at /disk/, owned by KubeVirt's qemu user"
    );

    // The archive is the same image: skopeo reads it as such.
    let inspect: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", image.oci_archive().display()))))
    .unwrap();
    assert_eq!(&inspect["Digest"], manifest_digest, "{inspect}");
}

fn boot_and_check(firmware: Firmware) {
    let image = cloud_image();
    let _guest = one_guest_at_a_time();
    let disk = image.disk();
    let before = stamp(&disk);
    let dir = ScratchDir::new();

    let key = dir.join("key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vmlet-test", "-f"])
        .arg(&key));
    let public_key = std::fs::read_to_string(dir.join("key.pub")).unwrap();
    // Unique to this boot, so that an answer cannot come from anything else.
    let token = format!("proof-{}-{:?}", std::process::id(), firmware);
    dir.write(
        "user-data",
        format!(
            "#cloud-config\n\
             hostname: {HOSTNAME}\n\
             users:\n  \
               - name: {USER}\n    \
                 shell: /bin/bash\n    \
                 ssh_authorized_keys:\n      \
                   - {}\n\
             runcmd:\n  \
               - echo {token} > {PROOF}\n",
            public_key.trim()
        ),
    );
    dir.write(
        "meta-data",
        format!("instance-id: vmlet-{token}\nlocal-hostname: {HOSTNAME}\n"),
    );
    let seed = dir.join("seed.iso");
    run(Command::new("genisoimage")
        .args(["-quiet", "-V", "cidata", "-J", "-r", "-o"])
        .arg(&seed)
        .arg(dir.join("user-data"))
        .arg(dir.join("meta-data")));
    // The guest writes to an overlay; the cached image is only read.
    let overlay = dir.join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&disk)
        .arg(&overlay));

    let port = free_port();
    let console = dir.join("console.log");
    let agent = dir.join("qga.sock");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-machine", "q35", "-m", "1024", "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,readonly=on", seed.display()))
        .arg("-netdev")
        .arg(format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .arg("-chardev")
        .arg(format!("socket,id=qga0,path={},server=on,wait=off", agent.display()))
        .args(["-device", "virtio-serial-pci"])
        .args(["-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]);
    if firmware == Firmware::Efi {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        qemu.arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
    }
    let started = Instant::now();
    let qemu = Child::spawn(format!("qemu ({firmware:?})"), &mut qemu);
    let guest = Guest {
        qemu: &qemu,
        console: &console,
    };

    guest
        .poll("console output (a hung boot otherwise)", FIRST_OUTPUT, || {
            std::fs::metadata(&console).is_ok_and(|m| m.len() > 0).then_some(())
        })
        .unwrap_or_else(|err| guest.fail(&err));
    let ssh = Ssh { key: &key, port };
    let answer = guest
        .poll("SSH answering with the hostname and the runcmd's file", BOOT, || {
            ssh.run(&format!("hostname; cat {PROOF}"))
        })
        .unwrap_or_else(|err| guest.fail(&err));
    let boot = started.elapsed();
    assert_eq!(
        answer.lines().collect::<Vec<_>>(),
        [HOSTNAME, token.as_str()],
        "the seed's hostname and runcmd took effect"
    );
    eprintln!(
        "{firmware:?}: SSH answered {:.1} s after QEMU started",
        boot.as_secs_f64()
    );

    let facts = ssh
        .run("[ -d /sys/firmware/efi ] && echo efi || echo bios; ls /etc/ssh/ssh_host_*_key.pub; cloud-init status")
        .unwrap_or_else(|| guest.fail("a second SSH command failed"));
    let facts: Vec<&str> = facts.lines().collect();
    let expected_firmware = match firmware {
        Firmware::Bios => "bios",
        Firmware::Efi => "efi",
    };
    assert_eq!(
        facts,
        [expected_firmware, "/etc/ssh/ssh_host_ed25519_key.pub", "status: done"],
        "booted through the expected firmware, made only an ed25519 host key, cloud-init finished"
    );

    // The guest agent answers on its virtio-serial port.
    let reply = guest
        .poll("the guest agent to answer guest-ping", Duration::from_secs(30), || {
            agent_ping(&agent)
        })
        .unwrap_or_else(|err| guest.fail(&err));
    assert_eq!(reply, r#"{"return": {}}"#);

    drop(qemu);
    assert_eq!(stamp(&disk), before, "the cached image was not written");
}

/// The running guest, for bounded waits that fail with its console.
struct Guest<'a> {
    qemu: &'a Child,
    console: &'a Path,
}

impl Guest<'_> {
    /// Calls `check` every second until it returns `Some`, for at most `timeout`; gives up early if QEMU exits.
    fn poll<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T, String> {
        let pid = nix::unistd::Pid::from_raw(self.qemu.pid() as i32);
        let mut exited = false;
        let found = poll_until(what, timeout, Duration::from_secs(1), || {
            // QEMU is our unreaped child: once it ends it stays a zombie, its pid ours, until the Child reaps it.
            if !exited && is_zombie(pid) {
                exited = true;
            }
            if exited {
                return Some(None);
            }
            check().map(Some)
        })
        .map_err(|err| err.to_string())?;
        found.ok_or_else(|| format!("QEMU exited while waiting for {what}"))
    }

    fn fail(&self, why: &str) -> ! {
        let console = std::fs::read_to_string(self.console).unwrap_or_default();
        panic!(
            "{why}\n--- console ---\n{console}\n--- end of console ---\n--- QEMU ---\n{}--- end of QEMU ---",
            self.qemu.output()
        );
    }
}

/// Whether the process has ended (and awaits being reaped).
fn is_zombie(pid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the command name, which is in parentheses and may contain spaces.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

struct Ssh<'a> {
    key: &'a Path,
    port: u16,
}

impl Ssh<'_> {
    /// Runs `command` in the guest as the seed's user; `None` unless it connects and the command succeeds.
    fn run(&self, command: &str) -> Option<String> {
        let output = output_within(
            Command::new("ssh")
                .arg("-i")
                .arg(self.key)
                .args(["-p", &self.port.to_string()])
                .args([
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "ConnectTimeout=5",
                ])
                .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
                .args(["-o", "LogLevel=ERROR", "-F", "/dev/null"])
                .arg(format!("{USER}@127.0.0.1"))
                .arg(command),
            Duration::from_secs(30),
        )
        .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Sends `guest-ping` to the guest agent and returns its reply line.
fn agent_ping(socket: &Path) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"{\"execute\": \"guest-ping\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let line = line.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// A loopback port nothing listens on right now, for QEMU's forward to the guest's SSH.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Size and modification time: what a write to the file would change.
fn stamp(path: &Path) -> (u64, SystemTime) {
    let metadata = std::fs::metadata(path).unwrap();
    (metadata.len(), metadata.modified().unwrap())
}
