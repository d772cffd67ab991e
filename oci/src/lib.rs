//! containerDisk images for standalone mode: pulled from a registry (or read from an OCI layout on a machine
//! without one), checked against their digests while they stream, unpacked without trusting their tars, and kept
//! once per machine by manifest digest, read-only.
//!
//! [`ImageRef::parse`] reads a reference; [`Store::pull`] does the rest and returns a [`Pulled`], whose `disk` is
//! what a VM boots from. The layout of the store and what unpacking refuses are described in `docs/images.md`.

mod digest;
mod disk;
mod error;
mod layer;
mod layout;
mod reference;
mod registry;
mod store;
mod unpack;

pub use digest::{Digest, DigestProblem};
pub use disk::{DISK_DIR, Disk, DiskFormat, DiskLookup};
pub use error::Error;
pub use reference::{
    DEFAULT_REGISTRY, DEFAULT_TAG, ImageRef, LayoutKind, LayoutRef, ReferenceProblem, RegistryRef, Selector,
};
pub use registry::RegistryOptions;
pub use store::{PullOptions, PullPolicy, Pulled, Store};
pub use unpack::Limits;

#[cfg(test)]
mod tests;
