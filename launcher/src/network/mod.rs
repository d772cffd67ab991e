//! The launcher's network layer: what the CNI gave the pod, and the bindings that hand it to the guest.
//!
//! In a pod the launcher already runs in the pod's network namespace, so the code takes a rtnetlink
//! [`Handle`](rtnetlink::Handle) opened there; [`netns::in_netns`] runs the same code in another namespace.

pub(crate) mod apply;
pub(crate) mod binding;
pub(crate) mod error;
#[cfg(test)]
mod fake_netlink;
mod gateway;
pub(crate) mod loopback_relay;
mod netlink;
#[cfg(test)]
pub(crate) mod netns;
pub(crate) mod pod_interface;
pub(crate) mod resolv_conf;
mod tap_device;
#[cfg(test)]
mod tests;
