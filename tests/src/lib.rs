//! Fixtures for vmlet's end-to-end tests: network namespaces, veth pairs, sandboxes for programs that write system
//! files, and child processes, all of which clean up after themselves when dropped, even when a test fails.
//!
//! Every name the kit makes (namespaces, scratch directories) records the creating process (`vmlet-t-PID-START-N`,
//! START being the process start time, so a reused pid is not mistaken for its predecessor). The first fixture a
//! process creates removes whatever processes that no longer exist left behind, so a test run killed by a timeout
//! leaves nothing for good.
//!
//! Every wait is bounded and fails with a message that says what was awaited and what the process printed.
//!
//! The fixtures need root (namespaces, mounts). Programs under test are found with [`binary`]: run
//! `cargo build --workspace` (or `-p vmlet-launcher`) with the same profile before `cargo test`.

use std::path::PathBuf;
use std::sync::Once;

mod child;
pub mod cloud_image;
pub mod guest;
pub mod kubevirt;
mod netns;
mod owner;
pub mod registry;
mod scratch;
pub mod standalone;
pub mod tmux;
pub mod veth;
pub mod vm_pod;
mod wait;

pub use child::{Child, output_within, run};
pub use cloud_image::{CloudImage, cloud_image};
pub use guest::{GuestImage, guest_image};
pub use netns::{NetNs, namespaces, remove_namespaces};
pub use owner::{PREFIX, unique_name};
pub use scratch::{Sandbox, ScratchDir};
pub use veth::VethEnd;
pub use wait::{Timeout, poll_until};

/// Panics unless the process runs as root: fixtures that need root must fail loudly, never pass by doing nothing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, veth pairs, mounts); run it as root"
    );
}

/// Removes namespaces and scratch directories left by test processes that no longer exist; runs once per process.
pub(crate) fn sweep_stale() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        netns::sweep_stale();
        scratch::sweep_stale();
    });
}

/// The path of a binary built from this workspace, such as `vmlet-launcher`.
///
/// Tests in one crate cannot ask Cargo for another crate's binaries, so this looks in the target directory of the
/// running executable (`target/PROFILE/`, also when run from `target/PROFILE/deps/`), or in `$VMLET_BIN_DIR`.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("VMLET_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("locating the running executable");
            let dir = exe.parent().expect("an executable has a parent directory");
            if dir.ends_with("deps") {
                dir.parent().unwrap_or(dir)
            } else {
                dir
            }
            .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first with `cargo build -p {name}` using the same profile as this run (or set \
         VMLET_BIN_DIR to the directory holding it)",
        path.display()
    );
    path
}
