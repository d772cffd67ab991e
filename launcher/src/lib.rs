//! The launcher's parts, which `vmlet-launcher` (`main.rs`) puts together: the pod network handed to the guest
//! ([`network`]), its DHCP ([`dhcp_serve`]), the VM through vmlet-driver ([`driver`]), the run that supervises it
//! ([`run`]) and the ways in from outside ([`connect`], [`guest_exec`]). A library so that the tests which need root
//! (the network against the kernel, the driver against QEMU) build as test programs of their own, apart from the
//! unit tests.

// The network layer's traits (netlink, neighbour discovery) are implemented and awaited only here and in the
// tests, on one thread at a time, so their futures need no `Send` bound for others to name.
#![allow(async_fn_in_trait)]

pub mod connect;
pub mod dhcp_serve;
pub mod driver;
mod guest_addressing;
mod guest_agent;
pub mod guest_exec;
pub mod network;
pub mod run;
mod spec;
mod storage;
mod usage;
pub mod vm_domain;
