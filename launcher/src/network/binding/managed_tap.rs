//! The `managedTap` binding's plan: the plumbing of `bridge` (see [`super::bridge`]), with no address on the bridge
//! and nothing served by the launcher: the pod network's own DHCP server and routers reach the guest, which has the
//! pod's MAC address. The guard only keeps the pod's own stack off the pod network ([`super::bridge::Guard`]).

use super::plan::{LinkNames, NetworkPlan};
use super::{BindingRequest, GuestNetwork, bridge, pod_addresses};
use crate::network::apply::{Recorded, Wired};

/// The operations of `bridge` with no address on the bridge: the launcher serves nothing.
pub fn plan(request: &BindingRequest, recorded: &Recorded, names: &LinkNames) -> NetworkPlan {
    bridge::plan(request, recorded, names, None)
}

/// What the guest gets from the launcher: a tap and a MAC address, and no servers.
pub fn guest_network(request: &BindingRequest, wired: &Wired) -> GuestNetwork {
    GuestNetwork {
        binding: request.binding,
        tap: wired.tap.clone(),
        guest_mac: wired.guest_mac,
        mtu: wired.mtu,
        dhcpv4: None,
        dhcpv6: None,
        addresses: pod_addresses(&wired.pod),
        loopback_relays: Vec::new(),
        router_search: None,
    }
}
