//! The time to write a typical NoCloud seed image: `write_iso` in process against genisoimage spawned with
//! KubeVirt's options, taking turns, with the median of each and their ratio.
//!
//! `cargo run --release -p vmlet-cloudinit --example iso_bench [ROUNDS]` (needs genisoimage).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use vmlet_cloudinit::{Flavor, KeyPropagation, Seed, files, write_iso};

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(200, |n| n.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("vmlet-iso-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A few KiB of cloud-config, network config and two keys: what a VM spec typically carries.
    let mut user_data = String::from("#cloud-config\npackages: [nginx, jq]\nruncmd:\n");
    while user_data.len() < 4096 {
        user_data.push_str("- [sh, -c, 'echo configuring this guest >> /var/log/seed.log']\n");
    }
    let seed = Seed {
        instance_id: "vm1.default".into(),
        hostname: "vm1".into(),
        user_data: Some(user_data.into_bytes()),
        network_data: Some(b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_vec()),
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAaaa alice@example.test".into()],
        key_propagation: KeyPropagation::NoCloud,
    };
    let files = files(&seed, Flavor::NoCloud).unwrap();
    let seed_dir = dir.join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    for f in &files {
        std::fs::write(seed_dir.join(f.path), &f.contents).unwrap();
    }

    let rust_iso = dir.join("rust.iso");
    let gen_iso = dir.join("genisoimage.iso");
    let mut rust = Vec::with_capacity(rounds);
    let mut genisoimage = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        write_iso(&files, "cidata", &rust_iso).unwrap();
        rust.push(start.elapsed());

        // KubeVirt's command, over the files it has written already (as here, outside the timing).
        let start = Instant::now();
        let status = Command::new("genisoimage")
            .args([
                "-quiet",
                "-output",
                gen_iso.to_str().unwrap(),
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
            ])
            .args(files.iter().map(|f| seed_dir.join(f.path)))
            .status()
            .unwrap();
        assert!(status.success());
        genisoimage.push(start.elapsed());
    }
    let (rust, genisoimage) = (median(rust), median(genisoimage));
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    println!(
        "seed: {} files, {} bytes",
        files.len(),
        files.iter().map(|f| f.contents.len()).sum::<usize>()
    );
    println!(
        "write_iso    median {:>8.1} µs  image {} bytes",
        micros(rust),
        size(&rust_iso)
    );
    println!(
        "genisoimage  median {:>8.1} µs  image {} bytes",
        micros(genisoimage),
        size(&gen_iso)
    );
    println!(
        "genisoimage / write_iso: {:.1}x ({rounds} rounds each)",
        micros(genisoimage) / micros(rust)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
