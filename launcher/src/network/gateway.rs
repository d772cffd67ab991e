//! The link-local address of a pod's IPv6 gateway that the CNI names by a global address.
//!
//! Router advertisements must come from the router's link-local address, which becomes the guest's default route, so
//! a global gateway (`default via fd00::1`) must be matched to its link-local address before the guest can use it.
//! The pod asks the link, before its interface is rewired: neighbour discovery for the gateway gives its MAC address;
//! the link-local address routers make from their MAC address (modified EUI-64, what Linux bridges and most routers
//! use) is then checked by neighbour discovery too, and taken only if the same MAC answers for it. A gateway whose
//! link-local address is made otherwise (stable privacy) is not found, and its guest gets no default route, as
//! before.

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use tracing::{info, warn};
use vmlet_dhcp::MacAddr;

use super::pod_interface::PodInterface;

/// How long neighbour discovery may take for each address. An answer on the pod's link takes milliseconds, but a
/// pod is set up right after its link came up, when the node's addresses on it (and the pod's own) may still be in
/// duplicate address detection: they answer nothing, and the pod cannot send from its own, for a random delay of up
/// to a second and then a second per probe (`dad_transmits`, `retrans_time_ms`; 1 to 2 s by default). The bound
/// covers several probes at slower timers; only a router whose link-local address is not its EUI-64 one (stable
/// privacy) waits for it in full, once per pod.
const RESOLVE_WITHIN: Duration = Duration::from_secs(10);
/// Neighbour discovery gives up after three solicitations a second apart; a new probe starts it again.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// The discard port: the datagrams only make the kernel resolve the neighbour, and nobody needs to read them.
const DISCARD_PORT: u16 = 9;

/// The modified EUI-64 link-local address of `mac` (RFC 4291 appendix A).
pub(crate) fn eui64_link_local(mac: MacAddr) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac.0;
    Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, a ^ 0x02, b, c, 0xff, 0xfe, d, e, f])
}

/// The MAC address the neighbour table holds for `ip` on the link `index`, if it is usable.
fn resolved(neighbours: &[NeighbourMessage], index: u32, ip: Ipv6Addr) -> Option<MacAddr> {
    neighbours
        .iter()
        .filter(|neighbour| neighbour.header.ifindex == index)
        .filter(|neighbour| {
            matches!(
                neighbour.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            )
        })
        .find(|neighbour| {
            neighbour
                .attributes
                .iter()
                .any(|attribute| matches!(attribute, NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) if *d == ip))
        })
        .and_then(|neighbour| {
            neighbour.attributes.iter().find_map(|attribute| match attribute {
                NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
                _ => None,
            })
        })
}

/// Makes the kernel resolve `ip` on the pod interface, and returns the MAC address that answered.
async fn resolve(handle: &Handle, pod: &PodInterface, ip: Ipv6Addr) -> Option<MacAddr> {
    let scope = if ip.is_unicast_link_local() { pod.index } else { 0 };
    let deadline = Instant::now() + RESOLVE_WITHIN;
    let mut next_probe = Instant::now();
    loop {
        let neighbours: Vec<NeighbourMessage> = handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet6)
            .execute()
            .try_collect()
            .await
            .ok()?;
        if let Some(mac) = resolved(&neighbours, pod.index, ip) {
            return Some(mac);
        }
        if Instant::now() > deadline {
            return None;
        }
        if Instant::now() >= next_probe {
            // Any datagram starts neighbour discovery (again, after a failed one); only its outcome in the neighbour
            // table matters.
            let sent = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
                .and_then(|socket| socket.send_to(b"", SocketAddrV6::new(ip, DISCARD_PORT, 0, scope)));
            match sent {
                // The pod's own addresses are still tentative: no source to send from yet.
                Err(err) if err.kind() == std::io::ErrorKind::AddrNotAvailable => {}
                Err(err) => {
                    warn!(gateway = %ip, error = %err, "cannot probe the IPv6 gateway");
                    return None;
                }
                Ok(_) => {}
            }
            next_probe = Instant::now() + PROBE_INTERVAL;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The link-local address of the pod's IPv6 gateway when the CNI gave a global one, found on the pod's link.
pub(crate) async fn gateway_link_local(handle: &Handle, pod: &PodInterface) -> Option<Ipv6Addr> {
    let gateway = pod.gateway_v6.filter(|gateway| !gateway.is_unicast_link_local())?;
    let Some(mac) = resolve(handle, pod, gateway).await else {
        warn!(%gateway, "the IPv6 gateway does not answer: the guest gets no IPv6 default route");
        return None;
    };
    let candidate = eui64_link_local(mac);
    if resolve(handle, pod, candidate).await == Some(mac) {
        info!(%gateway, link_local = %candidate, %mac, "found the IPv6 gateway's link-local address");
        Some(candidate)
    } else {
        warn!(
            %gateway,
            %mac,
            "the IPv6 gateway's link-local address is not its EUI-64 one: the guest gets no IPv6 default route"
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_local_address_is_made_from_the_mac_address() {
        assert_eq!(
            eui64_link_local(MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            eui64_link_local(MacAddr([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x01])),
            "fe80::42:aff:fef4:101".parse::<Ipv6Addr>().unwrap()
        );
    }

    fn neighbour(index: u32, ip: &str, mac: [u8; 6], state: NeighbourState) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.ifindex = index;
        message.header.state = state;
        message.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip.parse().unwrap())),
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        ];
        message
    }

    #[test]
    fn only_a_usable_entry_on_the_pod_link_counts() {
        let gateway: Ipv6Addr = "fd00::1".parse().unwrap();
        let table = [
            neighbour(3, "fd00::1", [2, 0, 0, 0, 0, 3], NeighbourState::Reachable),
            neighbour(2, "fd00::1", [2, 0, 0, 0, 0, 9], NeighbourState::Failed),
            neighbour(2, "fd00::2", [2, 0, 0, 0, 0, 2], NeighbourState::Stale),
        ];
        assert_eq!(resolved(&table, 2, gateway), None);
        let table = [neighbour(2, "fd00::1", [2, 0, 0, 0, 0, 1], NeighbourState::Stale)];
        assert_eq!(resolved(&table, 2, gateway), Some(MacAddr([2, 0, 0, 0, 0, 1])));
    }
}
