//! The pod interface handed to the guest by the binding the VM's spec chose, and what the rest of the launcher needs
//! from it: the tap QEMU opens, the guest NIC's MAC address and MTU, which servers to run on which link, and the
//! addresses to report.
//!
//! Each binding's module holds its plan, worked out purely from the pod as recorded: the operations on the pod's
//! links in order ([`plan`]), the nftables tables and tc filters it loads, and what the guest is served once
//! [`super::apply`] has carried the operations out.

pub mod bridge;
pub mod managed_tap;
pub mod masquerade;
pub mod plan;
pub mod tap;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rtnetlink::Handle;
use vmlet_api::{Binding, Interface, PodNetwork};
use vmlet_dhcp::{MacAddr, ServerConfig, v6};

use crate::guest_addressing;

use self::masquerade::{ForwardedPort, GuestSubnets, forwarded_port};
use super::apply::{self, Wired};
use super::error::{ApplyError, PlanError};
use super::gateway::{self, RouterSearch};
use super::loopback_relay::LoopbackRelay;
use super::pod_interface::PodInterface;

/// The guest as the pod's own stack reaches it (`vmlet-launcher connect guest`, how `vmlet ssh` and `port-forward`
/// get to a guest on Kubernetes). Under `bridge` the guest has the pod's address, which inside the pod is the pod's
/// own: a connection to it never leaves the pod. So the pod calls the guest by this link-local name, and the bridge
/// translates it to the guest's address and back ([`bridge::guest_access_table`]). Under `masquerade` a DNAT rule does the
/// same. The same name in every pod.
pub const GUEST_FROM_POD: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 11);

/// One guest NIC to wire to the pod network.
#[derive(Clone, Debug)]
pub struct BindingRequest {
    pub binding: Binding,
    /// The pod interface, usually `eth0`.
    pub interface: String,
    /// Where the binding keeps its record of the pod network.
    pub run_dir: PathBuf,
    pub resolv_conf: PathBuf,
    /// The guest's host name, for DHCPv4.
    pub hostname: String,
    /// The spec's subdomain: the guest's first search domain becomes `SUBDOMAIN.NAMESPACE.svc.DOMAIN`.
    pub subdomain: Option<String>,
    /// The spec's MAC address for the guest NIC; otherwise the pod's, or under masquerade one made up.
    pub guest_mac: Option<MacAddr>,
    /// Forwarded to the guest under masquerade.
    pub ports: Vec<ForwardedPort>,
    pub subnets: GuestSubnets,
}

impl BindingRequest {
    /// The request for the spec's `interface` on the pod network `network`. The spec has been validated, so a
    /// failure here is a value validation lets through but the binding cannot use.
    pub fn new(
        interface: &Interface,
        network: Option<&PodNetwork>,
        pod_interface: &str,
        run_dir: &Path,
        resolv_conf: &Path,
        hostname: &str,
    ) -> Result<BindingRequest, PlanError> {
        let binding = interface.binding().ok_or(PlanError::NoBinding)?;
        let guest_mac = interface
            .mac_address
            .as_deref()
            .map(|mac| {
                mac.parse::<MacAddr>()
                    .map_err(|_| PlanError::InvalidMac(mac.to_owned()))
            })
            .transpose()?;
        let ports = interface
            .ports
            .iter()
            .map(|port| forwarded_port(port.protocol.as_deref(), port.port))
            .collect::<Result<_, _>>()?;
        let subnets = GuestSubnets::parse(
            network.and_then(|n| n.vm_network_cidr.as_deref()),
            network.and_then(|n| n.vm_ipv6_network_cidr.as_deref()),
        )?;
        Ok(BindingRequest {
            binding,
            interface: pod_interface.to_owned(),
            run_dir: run_dir.to_owned(),
            resolv_conf: resolv_conf.to_owned(),
            hostname: hostname.to_owned(),
            subdomain: None,
            guest_mac,
            ports,
            subnets,
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join(format!("network-{}.json", self.interface))
    }
}

/// A server and the link it listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served<C> {
    pub interface: String,
    pub config: C,
}

/// What the rest of the launcher needs from a binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNetwork {
    pub binding: Binding,
    /// The tap QEMU opens for the guest NIC.
    pub tap: String,
    pub guest_mac: MacAddr,
    pub mtu: u32,
    pub dhcpv4: Option<Served<ServerConfig>>,
    /// DHCPv6 and router advertisements.
    pub dhcpv6: Option<Served<v6::Config>>,
    /// The addresses the VM is reached at, for its status: the pod's, whatever the binding.
    pub addresses: Vec<IpAddr>,
    /// Ports the launcher relays from the pod's IPv6 loopback to the guest (`masquerade` only).
    pub loopback_relays: Vec<LoopbackRelay>,
    /// The search for the router of a global IPv6 gateway, whose router advertisements follow it (`bridge` and
    /// `tap` only).
    pub router_search: Option<RouterSearch>,
}

/// The binding's name as the spec spells it.
pub fn binding_name(binding: Binding) -> &'static str {
    match binding {
        Binding::Bridge => "bridge",
        Binding::Masquerade => "masquerade",
        Binding::Tap => "tap",
        Binding::ManagedTap => "managedTap",
    }
}

/// The pod's addresses with their prefix lengths, IPv4 then IPv6.
pub(super) fn pod_networks(pod: &PodInterface) -> Vec<IpNet> {
    pod.ipv4
        .iter()
        .map(|&net| IpNet::V4(net))
        .chain(pod.ipv6.iter().map(|&net| IpNet::V6(net)))
        .collect()
}

pub(super) fn pod_addresses(pod: &PodInterface) -> Vec<IpAddr> {
    pod_networks(pod).iter().map(IpNet::addr).collect()
}

pub(super) fn served<C>(interface: &str, config: C) -> Option<Served<C>> {
    Some(Served {
        interface: interface.to_owned(),
        config,
    })
}

/// Wires the guest NIC to the pod network as `request` says, or finishes what an earlier launcher in this pod
/// started.
pub async fn setup(request: &BindingRequest, handle: &Handle) -> Result<GuestNetwork, ApplyError> {
    let mut network = wire(request, handle).await?;
    if let (Some(subdomain), Some(dhcpv4)) = (&request.subdomain, &mut network.dhcpv4) {
        dhcpv4.config.search = with_subdomain(&dhcpv4.config.search, subdomain);
    }
    Ok(network)
}

/// The pod's search domains with `SUBDOMAIN.NAMESPACE.svc.DOMAIN` first, made from the pod's own
/// `NAMESPACE.svc.DOMAIN` (as Kubernetes writes it); unchanged without one, as in standalone mode.
pub fn with_subdomain(search: &[String], subdomain: &str) -> Vec<String> {
    let Some(namespace_domain) = search.iter().find(|d| d.split('.').nth(1) == Some("svc")) else {
        return search.to_vec();
    };
    let first = format!("{subdomain}.{namespace_domain}");
    std::iter::once(first.clone())
        .chain(search.iter().filter(|d| **d != first).cloned())
        .collect()
}

/// What the guest is served when it takes the pod's identity (`bridge`, `tap`): the pod's addresses, routes and DNS,
/// from the served link.
pub(super) fn pod_identity(request: &BindingRequest, wired: &Wired) -> GuestNetwork {
    let dhcpv6 = guest_addressing::dhcpv6_config(wired).and_then(|config| served(&wired.served_link, config));
    let router_search = dhcpv6.as_ref().and_then(|_| router_search(request, wired));
    GuestNetwork {
        binding: request.binding,
        tap: wired.tap.clone(),
        guest_mac: wired.guest_mac,
        mtu: wired.mtu,
        dhcpv4: guest_addressing::dhcpv4_config(wired, &request.hostname)
            .and_then(|config| served(&wired.served_link, config)),
        dhcpv6,
        addresses: pod_addresses(&wired.pod),
        loopback_relays: Vec::new(),
        router_search,
    }
}

/// The search for the router of the pod's IPv6 gateway, when the CNI named it by a global address whose router is
/// not known yet.
fn router_search(request: &BindingRequest, wired: &Wired) -> Option<RouterSearch> {
    let gateway = gateway::global_gateway(wired.pod.gateway_v6, wired.pod.gateway_v6_link_local)?;
    Some(RouterSearch {
        gateway,
        pod_port: wired.pod.index,
        pod_port_mac: wired.pod_port_mac?,
        wired: wired.clone(),
        state_file: request.state_file(),
    })
}

/// Wires the guest NIC to the pod network as `request` says, then works out what the guest is served.
async fn wire(request: &BindingRequest, handle: &Handle) -> Result<GuestNetwork, ApplyError> {
    let wired = apply::setup(request, handle).await?;
    Ok(match request.binding {
        Binding::Bridge | Binding::Tap => pod_identity(request, &wired),
        Binding::ManagedTap => managed_tap::guest_network(request, &wired),
        Binding::Masquerade => masquerade::guest_network(request, &wired),
    })
}

#[cfg(test)]
mod tests;
