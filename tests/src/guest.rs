//! The test guest of `images/guest/`, built once per test process (the build script caches it across runs).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The built guest: its kernel and initramfs.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
}

impl GuestImage {
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initramfs.cpio.gz")
    }
}

/// Builds the guest (or finds it in the cache) and returns where it is; panics with the build's log if it fails.
pub fn guest_image() -> GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/guest/build.sh");
            let output = Command::new(script).output().expect("running images/guest/build.sh");
            assert!(
                output.status.success(),
                "images/guest/build.sh failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            let dir = stdout
                .lines()
                .last()
                .expect("build.sh prints the guest's directory last")
                .trim();
            GuestImage {
                dir: PathBuf::from(dir),
            }
        })
        .clone()
}
