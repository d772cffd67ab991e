//! `vmlet-bench pull`: the standalone handler's pull of the Debian containerDisk (`vmlet_oci::Store::pull`, the
//! call the handler makes) from a real registry on loopback, against `skopeo copy` of the same image from the same
//! registry; and, once the store holds the image, the way from "the store has it" to "the overlay is ready"
//! against the overlay alone (the floor) and a full copy of the disk (what vmlet avoids).
//!
//! Cold pulls take turns, each into a fresh store or directory, with `sync` between them (not timed), so that one
//! pull's writeback does not land in the next one's time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use serde::Serialize;
use vmlet_oci::{ImageRef, PullOptions, Store};
use vmlet_testkit::registry::Registry;
use vmlet_testkit::{ScratchDir, cloud_image, output_within};

use crate::stats::{Latency, ratio, taking_turns};

#[derive(clap::Args)]
pub struct Args {
    /// Cold pulls of each kind (vmlet, skopeo), taking turns, each into a fresh store or directory.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// Rounds of the warm measurements: a pull the store answers plus the overlay, the overlay alone, a full copy.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    warm_rounds: u16,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// The tag is not `latest`, so the default policy is IfNotPresent, as for a VM that names a version.
const REPOSITORY: &str = "vmlet/debian:12";
/// The bound on one cold pull or copy of the 137 MB image, and on each command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
enum Cold {
    Vmlet,
    Skopeo,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
enum Warm {
    /// `Store::pull` with the default policy, answered by the store, then the overlay.
    PullAndOverlay,
    /// The overlay alone: the floor.
    Overlay,
    /// A full copy of the disk, as KubeVirt makes of a containerDisk (kubevirt#2378), left in the page cache.
    Copy,
    /// The same copy, written to the disk (`sync FILE`, an fsync): what the copy costs once written back.
    DurableCopy,
}

#[derive(Serialize)]
struct ColdPull {
    who: Cold,
    seconds: f64,
    /// Blob downloads the registry logged for this pull.
    blob_gets: usize,
}

#[derive(Serialize)]
struct Report {
    reference: String,
    /// The compressed layer, as the registry serves it.
    layer_bytes: u64,
    /// The disk, as unpacked.
    disk_bytes: u64,
    cold: Vec<ColdPull>,
    warm: Vec<(Warm, f64)>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark builds the cloud image (loop devices, chroot): run it as root"
    );
    crate::require_tools(&["skopeo", "docker-registry", "qemu-img"])?;
    let image = cloud_image();
    let registry = Registry::start();
    registry.push(&format!("oci-archive:{}", image.oci_archive().display()), REPOSITORY);
    let name = format!("{}/{REPOSITORY}", registry.host());
    let reference = ImageRef::parse(&name)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let mut cold = Vec::new();
    let mut layer_bytes = 0;
    for round in 1..=usize::from(args.rounds) {
        for who in taking_turns(round, &[Cold::Vmlet, Cold::Skopeo]) {
            let dir = ScratchDir::new();
            let gets_before = registry.blob_gets().len();
            let started = Instant::now();
            match who {
                Cold::Vmlet => {
                    let store = Store::open(dir.join("images"))?;
                    let pulled = runtime.block_on(store.pull(&reference, &PullOptions::default()))?;
                    ensure!(pulled.downloaded_bytes > 0, "a fresh store had the image already");
                    layer_bytes = pulled.downloaded_bytes;
                }
                Cold::Skopeo => {
                    let mut skopeo = Command::new("skopeo");
                    skopeo
                        .args(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"])
                        .arg(format!("docker://{name}"))
                        .arg(format!("oci:{}:12", dir.join("layout").display()));
                    run_command(&mut skopeo)?;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            let blob_gets = registry.blob_gets().len() - gets_before;
            eprintln!("pull: round {round}, {who:?}: {seconds:.2} s, {blob_gets} blob downloads");
            cold.push(ColdPull {
                who,
                seconds,
                blob_gets,
            });
            // Written back before the next contestant starts, and not on its time.
            run_command(&mut Command::new("sync"))?;
        }
    }

    // One store that holds the image, as a machine's store does after its first VM.
    let dir = ScratchDir::new();
    let store = Store::open(dir.join("images"))?;
    let pulled = runtime.block_on(store.pull(&reference, &PullOptions::default()))?;
    let disk = pulled.disk.context("the image has no disk")?;
    run_command(&mut Command::new("sync"))?;
    let requests = || registry.blob_gets().len() + registry.manifest_requests().len();
    let requests_before = requests();
    let mut warm = Vec::new();
    for round in 1..=usize::from(args.warm_rounds) {
        let contestants = [Warm::PullAndOverlay, Warm::Overlay, Warm::Copy, Warm::DurableCopy];
        for what in taking_turns(round, &contestants) {
            let target = dir.join(format!("pod-{round}.qcow2"));
            let started = Instant::now();
            match what {
                Warm::PullAndOverlay => {
                    let again = runtime.block_on(store.pull(&reference, &PullOptions::default()))?;
                    ensure!(again.downloaded_bytes == 0, "the store did not answer the pull");
                    let disk = again.disk.context("the image has no disk")?;
                    make_overlay(&disk.path, &target)?;
                }
                Warm::Overlay => make_overlay(&disk.path, &target)?,
                Warm::Copy => run_command(Command::new("cp").arg(&disk.path).arg(&target))?,
                Warm::DurableCopy => {
                    run_command(Command::new("cp").arg(&disk.path).arg(&target))?;
                    run_command(Command::new("sync").arg(&target))?;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            std::fs::remove_file(&target)?;
            run_command(&mut Command::new("sync"))?;
            warm.push((what, seconds));
        }
    }
    ensure!(
        requests() == requests_before,
        "a warm pull asked the registry: {:?}",
        registry.log()
    );

    let report = Report {
        reference: name,
        layer_bytes,
        disk_bytes: disk.size,
        cold,
        warm,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args);
    }
    Ok(())
}

/// A qcow2 overlay at `overlay` backed by the qcow2 `backing`, as the launcher makes for a containerDisk: only the
/// backing file's header is read.
pub fn make_overlay(backing: &Path, overlay: &Path) -> anyhow::Result<()> {
    run_command(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(backing)
            .arg(overlay),
    )
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`]; fails with what it printed unless it succeeds.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let output = output_within(command, COMMAND_TIMEOUT).with_context(|| format!("{command:?}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(anyhow!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The times of one contestant.
fn times<T: PartialEq>(samples: &[(T, f64)], who: T) -> Option<Latency> {
    let samples: Vec<Duration> = samples
        .iter()
        .filter(|(w, _)| *w == who)
        .map(|(_, seconds)| Duration::from_secs_f64(*seconds))
        .collect();
    Latency::of(&samples)
}

fn print_report(report: &Report, args: &Args) {
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "containerDisk {}: layer {:.1} MiB (gzip), disk {:.1} MiB; registry on loopback",
        report.reference,
        report.layer_bytes as f64 / MIB,
        report.disk_bytes as f64 / MIB
    );
    println!();
    let row = |label: &str, latency: &Latency, unit: f64, suffix: &str| {
        println!(
            "{label:<44} {:>9.1} {:>9.1} {:>9.1}   {suffix}",
            latency.median_us / unit,
            latency.min_us / unit,
            latency.max_us / unit
        );
    };
    println!("Cold, {} rounds taking turns; ms", args.rounds);
    println!("{:<44} {:>9} {:>9} {:>9}", "", "median", "min", "max");
    let cold: Vec<(Cold, f64)> = report.cold.iter().map(|p| (p.who, p.seconds)).collect();
    let gets = |who: Cold| {
        let counts: Vec<usize> = report
            .cold
            .iter()
            .filter(|p| p.who == who)
            .map(|p| p.blob_gets)
            .collect();
        format!("blob downloads per pull: {counts:?}")
    };
    let vmlet = times(&cold, Cold::Vmlet);
    let skopeo = times(&cold, Cold::Skopeo);
    if let (Some(vmlet), Some(skopeo)) = (vmlet, skopeo) {
        row("vmlet pull (fetch, verify, unpack)", &vmlet, 1e3, &gets(Cold::Vmlet));
        row(
            "skopeo copy docker:// → oci: (fetch, verify)",
            &skopeo,
            1e3,
            &gets(Cold::Skopeo),
        );
        println!("skopeo / vmlet (medians): {:.2}x", ratio(&skopeo, &vmlet));
    }
    println!();
    println!(
        "Warm: the store holds the image; {} rounds taking turns; ms",
        args.warm_rounds
    );
    println!("{:<44} {:>9} {:>9} {:>9}", "", "median", "min", "max");
    let pull = times(&report.warm, Warm::PullAndOverlay);
    let overlay = times(&report.warm, Warm::Overlay);
    let copy = times(&report.warm, Warm::Copy);
    let durable = times(&report.warm, Warm::DurableCopy);
    if let (Some(pull), Some(overlay), Some(copy), Some(durable)) = (pull, overlay, copy, durable) {
        row("pull (IfNotPresent, no request) + overlay", &pull, 1e3, "");
        row("overlay alone (qemu-img create -b), floor", &overlay, 1e3, "");
        row("full copy of the disk (cp)", &copy, 1e3, "");
        row("full copy, written to the disk (cp; sync FILE)", &durable, 1e3, "");
        println!(
            "pull + overlay / floor: {:.2}x, {:.1} ms above it; copy / (pull + overlay): {:.1}x, written to the \
             disk: {:.1}x",
            ratio(&pull, &overlay),
            (pull.median_us - overlay.median_us) / 1e3,
            ratio(&copy, &pull),
            ratio(&durable, &pull)
        );
    }
}
