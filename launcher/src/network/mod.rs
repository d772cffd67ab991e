//! The launcher's network layer: what the CNI gave the pod, and the bindings that hand it to the guest: each
//! binding's plan in [`binding`], made purely from the pod as recorded, and the one applier that carries any plan
//! out in [`apply`].
//!
//! In a pod the launcher already runs in the pod's network namespace, so the applier takes a rtnetlink
//! [`Handle`](rtnetlink::Handle) opened there, as its [`netlink::Netlink`]; [`netns::in_netns`] runs the same code
//! in another namespace, and the tests' fake runs it in memory.

pub mod apply;
pub mod binding;
pub mod error;
#[cfg(test)]
mod fake_netlink;
pub mod gateway;
pub mod loopback_relay;
pub mod netlink;
pub mod netns;
pub mod pod_interface;
pub mod resolv_conf;
pub mod tap_device;
