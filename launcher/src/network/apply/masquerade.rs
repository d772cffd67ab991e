//! Applies the `masquerade` binding's plan: the bridge with the gateway addresses, the tap, forwarding, and the NAT
//! table (see [`crate::network::binding::masquerade`]).
//!
//! The guest's MAC address is the spec's or one made up once and kept in the state file, with the pod network as it
//! was found, so a restarted launcher gives the guest the same one.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::address::AddressFlags;

use crate::network::netlink::{IPV6_FORWARDING, Netlink};
use tracing::info;
use vmlet_dhcp::MacAddr;

use super::{
    LinkNames, PodRecord, Recorded, Wired, attach_port, ensure_addresses, ensure_bridge, ensure_tap, failed_to,
    local_mac, no_ipv6_addresses, random_bytes, set_ipv4_conf,
};
use crate::network::binding::masquerade::{BRIDGE_MAC, GATEWAY_LINK_LOCAL, nat_table};
use crate::network::binding::{BindingRequest, GUEST_FROM_POD};
use crate::network::error::{ApplyError, PlanError};

/// Builds the guest's private network and the NAT, or finishes what an earlier launcher in this pod started.
pub(crate) async fn setup(request: &BindingRequest, handle: &impl Netlink) -> Result<Wired, ApplyError> {
    let names = LinkNames::for_interface(&request.interface)?;
    let state_file = request.state_file();
    let record = PodRecord::for_request(request, &state_file);
    let draw_mac = || -> Result<MacAddr, ApplyError> {
        let random = random_bytes().map_err(ApplyError::RandomMac)?;
        Ok(request.guest_mac.unwrap_or(local_mac(random, BRIDGE_MAC)))
    };
    let mut recorded = record.load_or_record(handle, None, || draw_mac().map(Some)).await?;
    let guest_mac = match (request.guest_mac, recorded.guest_mac) {
        (Some(mac), _) | (None, Some(mac)) => mac,
        // A record from before the binding kept a MAC address: make one now, and keep it from now on.
        (None, None) => {
            let mac = draw_mac()?;
            recorded.guest_mac = Some(mac);
            record.write(&recorded)?;
            mac
        }
    };
    let Recorded { pod, dns, .. } = recorded;
    if pod.ipv4.is_empty() && pod.ipv6.is_empty() {
        return Err(PlanError::NoPodAddress("IPv4 or IPv6").into());
    }

    let bridge = ensure_bridge(handle, &names.bridge, pod.mtu).await?;
    let bridge_index = bridge.header.index;
    // The gateway's own addresses only: no kernel-made link-local address beside fe80::1.
    no_ipv6_addresses(handle, &bridge, &names.bridge).await?;
    handle
        .set_link(
            LinkUnspec::new_with_index(bridge_index)
                .address(BRIDGE_MAC.0.to_vec())
                .mtu(pod.mtu)
                .up()
                .build(),
        )
        .await
        .map_err(failed_to("bring the bridge up"))?;
    let mut gateway: Vec<IpNet> = Vec::new();
    if !pod.ipv4.is_empty() {
        gateway.push(request.subnets.gateway_v4().into());
    }
    if !pod.ipv6.is_empty() {
        gateway.push(request.subnets.gateway_v6().into());
        gateway.push(IpNet::new(IpAddr::V6(GATEWAY_LINK_LOCAL), 64).unwrap_or_default());
    }
    // No duplicate address detection: the link is the launcher's own, and the addresses are needed at once.
    ensure_addresses(handle, bridge_index, &gateway, AddressFlags::Nodad)
        .await
        .map_err(failed_to("give the bridge the gateway addresses"))?;
    set_ipv4_conf(
        handle,
        bridge_index,
        "forwarding and route_localnet on the bridge",
        |conf| {
            conf.forwarding = 1;
            conf.route_localnet = 1;
        },
    )
    .await?;
    set_ipv4_conf(handle, pod.index, "forwarding on the pod interface", |conf| {
        conf.forwarding = 1;
    })
    .await?;
    if !pod.ipv6.is_empty() {
        let failed = |source| ApplyError::Forwarding {
            path: IPV6_FORWARDING,
            source,
        };
        if handle.enable_ipv6_forwarding().map_err(failed)? {
            info!("IPv6 forwarding enabled in the pod");
        }
    }
    let tap = ensure_tap(handle, &names.tap).await?;
    attach_port(handle, tap.header.index, &names.tap, bridge_index, pod.mtu).await?;
    handle
        .replace_tables(&[nat_table(&pod, &names.bridge, &request.subnets, &request.ports)])
        .map_err(ApplyError::Nft)?;
    if !pod.ipv4.is_empty() {
        // The guest's other name leads out of the bridge, from the gateway's address, which the guest answers
        // directly; the table's DNAT gives the connection the guest's address on its way.
        handle
            .replace_host_route(GUEST_FROM_POD, bridge_index, request.subnets.gateway_v4().addr())
            .await
            .map_err(failed_to("route the pod's way to its guest"))?;
    }

    info!(
        interface = %pod.name,
        bridge = %names.bridge,
        tap = %names.tap,
        %guest_mac,
        subnet_v4 = %request.subnets.v4,
        subnet_v6 = %request.subnets.v6,
        forwarded_ports = request.ports.len(),
        "guest network behind NAT ready"
    );
    Ok(Wired {
        served_link: names.bridge,
        served_link_mac: BRIDGE_MAC,
        server_address: Some(request.subnets.gateway_v4().addr()),
        tap: names.tap,
        guest_mac,
        pod_port_mac: None,
        mtu: pod.mtu,
        pod,
        dns,
    })
}
