//! `vmlet-bench cloud-boot`: the Debian cloud image of `images/cloud/` as a containerDisk, from `vmlet-launcher
//! run`'s start to SSH answering with the key cloud-init gave the user, against a bare `qemu-system-x86_64` booting
//! the same disk (through an overlay) with the same cloud-init seed on a bridge with dnsmasq; and the resident
//! memory of every process of the VM pod at that moment.
//!
//! The image is pulled once into a store of its own with `vmlet_oci` (from its OCI archive: the store's image is
//! the same as from a registry, and the pull is the `pull` benchmark's subject), and linked where the pod provides
//! a containerDisk, as the standalone handler does. The launcher makes the overlay and the seed itself; the bare run
//! gets an overlay made the same way and a seed written by `vmlet-cloudinit` from the same data, before QEMU starts.
//! Each guest is killed once SSH answers: an orderly shutdown of a Debian guest under TCG takes seconds and
//! measures nothing here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail, ensure};
use serde::Serialize;
use vmlet_cloudinit::{Flavor, KeyPropagation, Seed};
use vmlet_oci::{ImageRef, PullOptions, Store};
use vmlet_testkit::{NetNs, ScratchDir, cloud_image};

use crate::bare::{BareGuest, BareNetwork};
use crate::pidns::{self, ProcessMemory};
use crate::pod::{LauncherMarks, LauncherPod, POD_ADDRESS, VM_NAME};
use crate::procfs::has_exited;
use crate::pull::make_overlay;
use crate::stats::taking_turns;
use crate::table;
use crate::timeline::{LogEvents, ms_between};

#[derive(clap::Args)]
pub struct Args {
    /// Boots of each kind (launcher, bare QEMU), taking turns.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// The accelerator of both: tcg, or kvm where the host really has it.
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    accel: String,
    /// vCPUs of both guests.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory of both guests, MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u32,
    /// The bound on one boot, from its start to SSH answering, in seconds.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Leave out the third contestant: the bare QEMU with the devices the launcher's domain has beyond it.
    #[arg(long)]
    no_devices_peer: bool,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Launcher,
    Bare,
    /// The bare QEMU with what libvirt gives the launcher's domain beyond it: VGA with a VNC server, the guest
    /// agent's virtio-serial port (the guest then starts its agent), a virtio-rng device, no HPET, the RTC's drift
    /// fix. What remains between this and the launcher is the pod and libvirt, not the guest's devices.
    BareWithDevices,
}

/// The VM's uid, which the launcher makes the seed's instance id; the bare seed takes the same.
const UID: &str = "3f6b2d8e-6a1c-4f0e-9b7d-2c5e8a1f4b90";
const USER: &str = "bench";
/// How often the console, the DHCP server's output and the SSH attempt are looked at.
const POLL: Duration = Duration::from_millis(10);
/// Between two SSH attempts, and the bound on one.
const SSH_RETRY: Duration = Duration::from_millis(500);
const SSH_ATTEMPT: Duration = Duration::from_secs(20);
/// The console lines an error shows.
const CONSOLE_TAIL: usize = 80;

/// The guest's side of one boot.
#[derive(Clone, Copy, Debug)]
struct GuestTimes {
    first_byte: SystemTime,
    lease: SystemTime,
    ssh: SystemTime,
}

/// One launcher boot: consecutive phases that add up to `total_ms`.
#[derive(Serialize)]
struct LauncherBoot {
    /// Spawn → `storage prepared`: the launcher's processes, the spec, the overlay and the seed.
    storage_ms: f64,
    /// → `starting`: the runtime and the accelerator's probe.
    start_ms: f64,
    /// → `network ready`: the bridge binding.
    network_ms: f64,
    /// → the driver's ready line: `vmlet-driver` started, libvirt's QEMU driver open.
    driver_ms: f64,
    /// → `domain started`: define and start, QEMU's own start included.
    define_start_ms: f64,
    /// → the guest's first console byte.
    first_byte_ms: f64,
    /// → the launcher's DHCP server acknowledging the guest's request.
    lease_ms: f64,
    /// → SSH logging in with the user's key.
    ssh_ms: f64,
    total_ms: f64,
    /// From QEMU's process start (from `/proc`, 10 ms resolution) to SSH: comparable with a bare boot.
    qemu_to_ssh_ms: f64,
    /// Whether the launcher's seed holds the same files as the bare run's (the images differ in their time stamps).
    same_seed: bool,
    /// At SSH answering.
    processes: Vec<ProcessMemory>,
}

impl LauncherBoot {
    /// The launcher's own time: from its start to the domain running.
    fn overhead_ms(&self) -> f64 {
        self.storage_ms + self.start_ms + self.network_ms + self.driver_ms + self.define_start_ms
    }
}

/// One bare boot, from spawning QEMU.
#[derive(Serialize)]
struct BareBoot {
    first_byte_ms: f64,
    lease_ms: f64,
    ssh_ms: f64,
    total_ms: f64,
    qemu: ProcessMemory,
    dnsmasq: ProcessMemory,
}

#[derive(Serialize)]
struct Report {
    accel: String,
    cpus: u32,
    memory_mib: u32,
    rounds: u16,
    launcher: Vec<LauncherBoot>,
    bare: Vec<BareBoot>,
    bare_with_devices: Vec<BareBoot>,
}

/// What both kinds of boot share.
struct Setup {
    /// The image's root in the store, which the pod links as its containerDisk.
    image_root: PathBuf,
    disk: PathBuf,
    key: PathBuf,
    /// The files of the bare run's seed, as [`seed_files`] reads them.
    seed_files: Vec<Vec<u8>>,
    manifest: String,
    cache: PathBuf,
    work: ScratchDir,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark creates network and PID namespaces: run it as root"
    );
    crate::require_tools(&[
        "qemu-system-x86_64",
        "qemu-img",
        "dnsmasq",
        "unshare",
        "ss",
        "ssh",
        "ssh-keygen",
        "isoinfo",
    ])?;
    let setup = Setup::new(args)?;
    let timeout = Duration::from_secs(args.boot_timeout);
    let (mut launcher, mut bare, mut bare_with_devices) = (Vec::new(), Vec::new(), Vec::new());
    let kinds: &[Kind] = if args.no_devices_peer {
        &[Kind::Launcher, Kind::Bare]
    } else {
        &[Kind::Launcher, Kind::Bare, Kind::BareWithDevices]
    };
    for round in 1..=usize::from(args.rounds) {
        for kind in taking_turns(round, kinds) {
            if kind == Kind::Launcher {
                eprintln!("cloud-boot: launcher, round {round}/{}", args.rounds);
                let boot = boot_launcher(args, &setup, timeout).with_context(|| format!("launcher round {round}"))?;
                eprintln!(
                    "  overhead {:.0} ms, console {:.0}, lease {:.0}, SSH {:.0} ms after the launcher's start",
                    boot.overhead_ms(),
                    boot.overhead_ms() + boot.first_byte_ms,
                    boot.overhead_ms() + boot.first_byte_ms + boot.lease_ms,
                    boot.total_ms
                );
                launcher.push(boot);
            } else {
                let devices = kind == Kind::BareWithDevices;
                let what = if devices {
                    "bare QEMU + libvirt's devices"
                } else {
                    "bare QEMU"
                };
                eprintln!("cloud-boot: {what} + dnsmasq, round {round}/{}", args.rounds);
                let boot =
                    boot_bare(args, &setup, timeout, devices).with_context(|| format!("{what}, round {round}"))?;
                eprintln!(
                    "  console {:.0}, lease {:.0}, SSH {:.0} ms after QEMU's start",
                    boot.first_byte_ms,
                    boot.first_byte_ms + boot.lease_ms,
                    boot.total_ms
                );
                if devices {
                    bare_with_devices.push(boot)
                } else {
                    bare.push(boot)
                }
            }
        }
    }
    let report = Report {
        accel: args.accel.clone(),
        cpus: args.cpus,
        memory_mib: args.memory_mib,
        rounds: args.rounds,
        launcher,
        bare,
        bare_with_devices,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

impl Setup {
    fn new(args: &Args) -> anyhow::Result<Setup> {
        let image = cloud_image();
        let work = ScratchDir::new();
        let store = Store::open(work.join("images"))?;
        let archive = ImageRef::parse(&format!("oci-archive:{}", image.oci_archive().display()))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let pulled = runtime.block_on(store.pull(&archive, &PullOptions::default()))?;
        let disk = pulled.disk.context("the image has no disk")?.path;

        let key = work.join("key");
        crate::pull::run_command(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "vmlet-bench", "-f"])
                .arg(&key),
        )?;
        let public_key = std::fs::read_to_string(work.join("key.pub"))?;
        let user_data = format!(
            "#cloud-config\nusers:\n  - name: {USER}\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - {}\n",
            public_key.trim()
        );
        // What the launcher's seed holds for this spec: the uid as instance id, the VM's name as host name.
        let seed = Seed {
            instance_id: UID.to_owned(),
            hostname: VM_NAME.to_owned(),
            user_data: Some(user_data.clone().into_bytes()),
            network_data: None,
            ssh_keys: Vec::new(),
            key_propagation: KeyPropagation::NoCloud,
        };
        let seed_path = work.join("seed.iso");
        let files = vmlet_cloudinit::files(&seed, Flavor::NoCloud)?;
        vmlet_cloudinit::write_iso(&files, Flavor::NoCloud.label(), &seed_path)?;
        let cache = vmlet_testkit::vm_pod::qemu_cache_dir();
        std::fs::create_dir_all(&cache)?;
        Ok(Setup {
            image_root: pulled.rootfs,
            disk,
            key,
            seed_files: seed_files(&seed_path)?,
            manifest: manifest(args, &user_data),
            cache,
            work,
        })
    }

    fn seed_path(&self) -> PathBuf {
        self.work.join("seed.iso")
    }

    /// `ssh` from `ns` to the guest as the seed's user, running `hostname`.
    fn ssh(&self, ns: &NetNs) -> Command {
        let mut ssh = ns.exec("ssh");
        ssh.arg("-i")
            .arg(&self.key)
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg(format!("{USER}@{POD_ADDRESS}"))
            .arg("hostname");
        ssh
    }
}

/// The VM: the containerDisk `root` and a NoCloud seed with `user_data`, both on virtio, the bridge binding.
fn manifest(args: &Args, user_data: &str) -> String {
    let user_data: String = user_data.lines().map(|line| format!("            {line}\n")).collect();
    format!(
        r#"apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {VM_NAME}, namespace: default, uid: {UID}}}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        cpu: {{cores: {cpus}}}
        memory: {{guest: {memory}Mi}}
        devices:
          disks: [{{name: root, disk: {{}}}}, {{name: seed, disk: {{}}}}]
          interfaces: [{{name: default, bridge: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes:
      - {{name: root, containerDisk: {{image: "vmlet/debian:12"}}}}
      - name: seed
        cloudInitNoCloud:
          userData: |
{user_data}"#,
        cpus = args.cpus,
        memory = args.memory_mib,
    )
}

fn boot_launcher(args: &Args, setup: &Setup, timeout: Duration) -> anyhow::Result<LauncherBoot> {
    let pod = LauncherPod::start(
        &setup.manifest,
        &setup.cache,
        &args.accel,
        &[("root", &setup.image_root)],
    )?;
    let explain = |err: anyhow::Error| pod.explain(with_console(err, &pod.console_log()));
    // The launcher's DHCP server logs each answer; the first ACK is the lease.
    let lease = || {
        let output = pod.output();
        if !output.contains("\"Ack\"") {
            return None;
        }
        LogEvents::parse(&output).first_where("answered", |fields| fields["reply"] == "Ack")
    };
    let guest = watch_guest(
        &pod.console_log(),
        lease,
        || setup.ssh(&pod.node),
        || pod.has_exited(),
        timeout,
    )
    .map_err(explain)?;
    let (processes, qemu_started) = pod.processes().map_err(explain)?;
    let marks = LauncherMarks::of(&LogEvents::parse(&pod.output())).map_err(explain)?;
    let launcher_seed = seed_files(&pod.run_dir().join("cloud-init/seed.iso")).map_err(explain)?;
    Ok(LauncherBoot {
        storage_ms: ms_between(pod.spawned, marks.storage),
        start_ms: ms_between(marks.storage, marks.starting),
        network_ms: ms_between(marks.starting, marks.network),
        driver_ms: ms_between(marks.network, marks.driver),
        define_start_ms: ms_between(marks.driver, marks.domain),
        first_byte_ms: ms_between(marks.domain, guest.first_byte),
        lease_ms: ms_between(guest.first_byte, guest.lease),
        ssh_ms: ms_between(guest.lease, guest.ssh),
        total_ms: ms_between(pod.spawned, guest.ssh),
        qemu_to_ssh_ms: ms_between(qemu_started, guest.ssh),
        same_seed: launcher_seed == setup.seed_files,
        processes,
    })
}

fn boot_bare(args: &Args, setup: &Setup, timeout: Duration, devices: bool) -> anyhow::Result<BareBoot> {
    let net = BareNetwork::start()?;
    let overlay = net.dir.join("root.qcow2");
    make_overlay(&setup.disk, &overlay)?;
    let mut qemu = net.qemu(&args.accel, args.memory_mib, args.cpus);
    qemu.arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            setup.seed_path().display()
        ));
    if devices {
        // As libvirt has them in the launcher's domain (its QEMU command line), without PCIe root ports.
        qemu.args(["-no-hpet", "-rtc", "base=utc,driftfix=slew"])
            .args(["-device", "VGA,vgamem_mb=16", "-vnc"])
            .arg(format!("unix:{}", net.dir.join("vnc.sock").display()))
            .args(["-device", "virtio-serial-pci", "-chardev"])
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                net.dir.join("agent.sock").display()
            ))
            .args(["-device", "virtserialport,chardev=agent,name=org.qemu.guest_agent.0"])
            .args(["-object", "rng-random,id=rng0,filename=/dev/urandom"])
            .args(["-device", "virtio-rng-pci,rng=rng0"]);
    }
    let bare = BareGuest::spawn(net, &mut qemu);
    let explain = |err: anyhow::Error| bare.explain(with_console(err, &bare.console_log()));
    let ack = format!("DHCPACK(br0) {POD_ADDRESS} ");
    let lease = || bare.net.dnsmasq.output().contains(&ack).then(SystemTime::now);
    let qemu_pid = bare.qemu.pid();
    let guest = watch_guest(
        &bare.console_log(),
        lease,
        || setup.ssh(&bare.net.ns),
        || has_exited(qemu_pid),
        timeout,
    )
    .map_err(explain)?;
    let memory = |pid: u32| pidns::describe(pid).ok_or_else(|| anyhow!("cannot read the memory of {pid}"));
    Ok(BareBoot {
        first_byte_ms: ms_between(bare.spawned, guest.first_byte),
        lease_ms: ms_between(guest.first_byte, guest.lease),
        ssh_ms: ms_between(guest.lease, guest.ssh),
        total_ms: ms_between(bare.spawned, guest.ssh),
        qemu: memory(qemu_pid)?,
        dnsmasq: memory(bare.net.dnsmasq.pid())?,
    })
}

/// The NoCloud files of a seed image, read back with `isoinfo` (Rock Ridge names); empty for a file it lacks.
fn seed_files(iso: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    ["/meta-data", "/user-data", "/network-config"]
        .into_iter()
        .map(|file| {
            let output = Command::new("isoinfo")
                .arg("-i")
                .arg(iso)
                .args(["-R", "-x", file])
                .output()?;
            ensure!(output.status.success(), "isoinfo cannot read {}", iso.display());
            Ok(output.stdout)
        })
        .collect()
}

/// `err` with the last lines of the guest's console.
fn with_console(err: anyhow::Error, console: &Path) -> anyhow::Error {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(CONSOLE_TAIL)..].join("\n");
    anyhow!(
        "{err:#}\n--- console ({}, last {CONSOLE_TAIL} lines) ---\n{tail}",
        console.display()
    )
}

/// Waits for the guest's first console byte, its lease (`lease` says when, once it has happened) and SSH logging in
/// with the user's key and printing the VM's name (`ssh` makes the attempt, tried again every [`SSH_RETRY`] from the
/// lease on). Fails at `timeout` or once `exited`, saying what was seen.
fn watch_guest(
    console: &Path,
    lease: impl Fn() -> Option<SystemTime>,
    ssh: impl Fn() -> Command,
    exited: impl Fn() -> bool,
    timeout: Duration,
) -> anyhow::Result<GuestTimes> {
    let started = Instant::now();
    let (mut first_byte, mut leased) = (None, None);
    let mut attempt: Option<(std::process::Child, Instant)> = None;
    let mut next_attempt = Instant::now();
    let seen = |first_byte: Option<SystemTime>, leased: Option<SystemTime>| {
        format!(
            "first console byte: {}, lease: {}",
            if first_byte.is_some() { "seen" } else { "not seen" },
            if leased.is_some() { "seen" } else { "not seen" }
        )
    };
    loop {
        if first_byte.is_none() && std::fs::metadata(console).is_ok_and(|m| m.len() > 0) {
            first_byte = Some(SystemTime::now());
        }
        if leased.is_none() {
            leased = lease();
        }
        if let Some((child, since)) = &mut attempt {
            if let Some(status) = child.try_wait()? {
                let mut stdout = String::new();
                if let Some(mut out) = child.stdout.take() {
                    out.read_to_string(&mut stdout)?;
                }
                if status.success() && stdout.trim() == VM_NAME {
                    let ssh = SystemTime::now();
                    return match (first_byte, leased) {
                        (Some(first_byte), Some(lease)) => Ok(GuestTimes { first_byte, lease, ssh }),
                        _ => bail!("SSH answered, but {}", seen(first_byte, leased)),
                    };
                }
                attempt = None;
                next_attempt = Instant::now() + SSH_RETRY;
            } else if since.elapsed() > SSH_ATTEMPT {
                let _ = child.kill();
                let _ = child.wait();
                attempt = None;
            }
        } else if leased.is_some() && Instant::now() >= next_attempt {
            let child = ssh()
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run ssh")?;
            attempt = Some((child, Instant::now()));
        }
        if exited() {
            bail!(
                "QEMU or the launcher exited before SSH answered ({})",
                seen(first_byte, leased)
            );
        }
        if started.elapsed() >= timeout {
            if let Some((mut child, _)) = attempt.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            bail!("SSH did not answer within {timeout:?} ({})", seen(first_byte, leased));
        }
        std::thread::sleep(POLL);
    }
}

fn print_report(report: &Report) {
    println!(
        "Cloud image (Debian 12, containerDisk) to SSH: q35, {}, {} MiB, {} vCPU; {} rounds of each, taking turns; ms",
        report.accel, report.memory_mib, report.cpus, report.rounds
    );
    println!();
    table::print_header(&[
        "storage",
        "start",
        "network",
        "libvirt",
        "def+start",
        "overhead",
        "console",
        "lease",
        "SSH",
        "total",
        "QEMU→SSH",
    ]);
    let launcher: [table::Column<LauncherBoot>; 11] = [
        |b| Some(b.storage_ms),
        |b| Some(b.start_ms),
        |b| Some(b.network_ms),
        |b| Some(b.driver_ms),
        |b| Some(b.define_start_ms),
        |b| Some(b.overhead_ms()),
        |b| Some(b.first_byte_ms),
        |b| Some(b.lease_ms),
        |b| Some(b.ssh_ms),
        |b| Some(b.total_ms),
        |b| Some(b.qemu_to_ssh_ms),
    ];
    table::print_spread("launcher", &report.launcher, &launcher);
    let none: table::Column<BareBoot> = |_| None;
    let bare: [table::Column<BareBoot>; 11] = [
        none,
        none,
        none,
        none,
        none,
        none,
        |b| Some(b.first_byte_ms),
        |b| Some(b.lease_ms),
        |b| Some(b.ssh_ms),
        |b| Some(b.total_ms),
        |b| Some(b.total_ms),
    ];
    table::print_spread("bare QEMU", &report.bare, &bare);
    table::print_spread("bare + devices", &report.bare_with_devices, &bare);
    println!(
        "(console: from `domain started`, or from the bare QEMU's spawn, to the first console byte; lease and SSH"
    );
    println!(" each from the step before)");
    let median = |column: Option<crate::stats::Latency>| column.map(|l| l.median_us / 1e3);
    let launcher_total = median(table::spread_ms(&report.launcher, |b| Some(b.total_ms)));
    let launcher_qemu = median(table::spread_ms(&report.launcher, |b| Some(b.qemu_to_ssh_ms)));
    let overhead = median(table::spread_ms(&report.launcher, |b| Some(b.overhead_ms())));
    let bare_total = median(table::spread_ms(&report.bare, |b| Some(b.total_ms)));
    if let (Some(launcher), Some(qemu), Some(overhead), Some(bare)) =
        (launcher_total, launcher_qemu, overhead, bare_total)
    {
        println!(
            "launcher total / bare total (medians): {:.2}x ({:+.0} ms); QEMU→SSH launcher / bare: {:.2}x; the \
             launcher's overhead (start to domain started): {overhead:.0} ms",
            launcher / bare,
            launcher - bare,
            qemu / bare
        );
    }
    let devices_total = median(table::spread_ms(&report.bare_with_devices, |b| Some(b.total_ms)));
    if let (Some(launcher), Some(devices), Some(bare)) = (launcher_total, devices_total, bare_total) {
        println!(
            "bare + libvirt's devices / bare: {:.2}x ({:+.0} ms); launcher total / bare + devices: {:.2}x ({:+.0} ms)",
            devices / bare,
            devices - bare,
            launcher / devices,
            launcher - devices
        );
    }
    let same: Vec<bool> = report.launcher.iter().map(|b| b.same_seed).collect();
    println!("launcher's seed holds the bare run's files (meta-data, user-data, network-config): {same:?}");
    println!();
    println!("Memory at SSH answering (last run of each), KiB:");
    pidns::print_header();
    if let Some(last) = report.launcher.last() {
        pidns::print_pod("launcher pod", &last.processes);
        let rss_mib = |role: &str| {
            last.processes
                .iter()
                .filter(|p| p.role == role)
                .map(|p| p.memory.rss_kib)
                .sum::<u64>() as f64
                / 1024.0
        };
        let pod = pidns::all_but_qemu(&last.processes);
        println!(
            "aims: launcher {:.1} MiB RSS (< 10: {}); everything but QEMU {:.1} MiB RSS, {:.1} MiB anonymous (< 50: {})",
            rss_mib("launcher"),
            if rss_mib("launcher") < 10.0 { "met" } else { "missed" },
            pod.memory.rss_kib as f64 / 1024.0,
            pod.memory.anonymous_kib as f64 / 1024.0,
            if pod.memory.rss_kib < 50 * 1024 {
                "met"
            } else {
                "missed"
            },
        );
    }
    if let Some(last) = report.bare.last() {
        pidns::print_row("bare: QEMU", &last.qemu);
        pidns::print_row("bare: dnsmasq", &last.dnsmasq);
    }
    if let Some(last) = report.bare_with_devices.last() {
        pidns::print_row("bare + devices: QEMU", &last.qemu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_carries_the_user_data_as_a_block() {
        let args = Args {
            rounds: 1,
            accel: "tcg".to_owned(),
            cpus: 2,
            memory_mib: 512,
            boot_timeout: 1,
            no_devices_peer: false,
            json: false,
        };
        let manifest = manifest(&args, "#cloud-config\nusers:\n  - name: bench\n");
        assert!(manifest.contains("cpu: {cores: 2}"), "{manifest}");
        assert!(manifest.contains("memory: {guest: 512Mi}"), "{manifest}");
        assert!(
            manifest.ends_with(
                "          userData: |\n            #cloud-config\n            users:\n              - name: bench\n"
            ),
            "{manifest}"
        );
    }
}
