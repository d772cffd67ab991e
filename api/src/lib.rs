//! The `VirtualMachine` custom resource (group `vmlet.dev`), shared by the handler, which reconciles it, and the
//! launcher, which runs the VM that its template describes.
//!
//! The types are not written yet: this crate only reserves their place in the workspace.
