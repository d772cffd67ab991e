//! What the guest is told by DHCP, DHCPv6 and router advertisements when it takes over the pod's identity (the
//! `bridge` and `tap` bindings): the pod's first IPv4 and first global IPv6 address, its gateways and routes, its
//! DNS, its MTU.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use vmlet_dhcp::{Route, ServerConfig, v6};

use crate::network::apply::Wired;

/// What the guest is told over DHCPv4 under every binding besides its address, gateway and routes: the pod's IPv4
/// resolvers and search domains, the MTU and its host name.
pub fn dhcpv4_base(wired: &Wired, address: Ipv4Net, server_address: Ipv4Addr, hostname: &str) -> ServerConfig {
    let mut config = ServerConfig::new(wired.guest_mac, address, server_address);
    config.dns = wired.dns.ipv4_nameservers();
    config.search = wired.dns.search.clone();
    config.mtu = u16::try_from(wired.mtu).ok();
    config.hostname = Some(hostname.to_owned());
    config
}

/// What the guest is told over DHCPv6 and router advertisements under every binding besides its address, router and
/// routes: the pod's IPv6 resolvers and search domains, and the MTU.
pub fn dhcpv6_base(wired: &Wired, address: Ipv6Net) -> v6::Config {
    let mut config = v6::Config::new(wired.guest_mac, address, wired.served_link_mac);
    config.dns = wired.dns.ipv6_nameservers();
    config.search = wired.dns.search.clone();
    config.mtu = Some(wired.mtu);
    config
}

/// The DHCPv4 server's configuration for a guest that takes the pod's address, or `None` for a pod without IPv4 or a
/// binding that serves nothing.
pub fn dhcpv4_config(wired: &Wired, hostname: &str) -> Option<ServerConfig> {
    let pod = &wired.pod;
    let address = *pod.ipv4.first()?;
    let mut config = dhcpv4_base(wired, address, wired.server_address?, hostname);
    config.gateway = pod.gateway_v4;
    config.routes = pod
        .routes
        .iter()
        .filter_map(|route| {
            let IpNet::V4(destination) = route.destination else {
                return None;
            };
            let gateway = match route.gateway {
                Some(IpAddr::V4(gateway)) => gateway,
                Some(IpAddr::V6(_)) => return None,
                None => Ipv4Addr::UNSPECIFIED,
            };
            // The default route is option 3's and 121's last entry; the subnet route comes with the mask.
            let is_default = destination.prefix_len() == 0;
            let is_subnet = gateway.is_unspecified() && destination == address.trunc();
            (!is_default && !is_subnet).then_some(Route { destination, gateway })
        })
        .collect();
    Some(config)
}

/// The DHCPv6 and router advertisement configuration for a guest that takes the pod's address, or `None` for a pod
/// without a global IPv6 address. They are served from the hardware address of the served link.
///
/// Router advertisements must come from the router's link-local address, so the pod's IPv6 default gateway becomes
/// the guest's router when it is link-local, as most CNIs that give pods IPv6 set it, or when a global gateway's
/// link-local address was found on the link ([`PodInterface::gateway_v6_link_local`]). Otherwise the guest gets its
/// address, DNS and MTU but no default route or further routes.
pub fn dhcpv6_config(wired: &Wired) -> Option<v6::Config> {
    let pod = &wired.pod;
    let address = *pod.ipv6.first()?;
    let mut config = dhcpv6_base(wired, address);
    let router = match pod.gateway_v6 {
        Some(gateway) if gateway.is_unicast_link_local() => Some(gateway),
        Some(_) => pod.gateway_v6_link_local,
        None => None,
    };
    config.router = router.map(|link_local| v6::Router { link_local, mac: None });
    // Route information options name no gateway of their own: only routes through the advertised router fit, by
    // either of its addresses.
    let through_router = |gateway| router.is_some() && (Some(gateway) == router || Some(gateway) == pod.gateway_v6);
    config.routes = pod
        .routes
        .iter()
        .filter_map(|route| match (route.destination, route.gateway) {
            (IpNet::V6(destination), Some(IpAddr::V6(gateway)))
                if destination.prefix_len() > 0 && through_router(gateway) =>
            {
                Some(destination)
            }
            _ => None,
        })
        .collect();
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::pod_interface::{PodInterface, PodRoute};
    use crate::network::resolv_conf::DnsConfig;
    use vmlet_dhcp::MacAddr;

    fn route(destination: &str, gateway: Option<&str>) -> PodRoute {
        crate::network::pod_interface::tests::route(destination, gateway, false, 0)
    }

    fn pod(ipv4: &[&str], routes: Vec<PodRoute>, gateway: Option<&str>) -> PodInterface {
        PodInterface {
            name: "eth0".into(),
            index: 2,
            mac: MacAddr([2, 0x42, 10, 244, 1, 7]),
            mtu: 1400,
            ipv4: ipv4.iter().map(|a| a.parse().unwrap()).collect(),
            ipv6: vec!["fd00::7/64".parse().unwrap()],
            ipv6_link_local: None,
            routes,
            gateway_v4: gateway.map(|g| g.parse().unwrap()),
            gateway_v6: None,
            gateway_v6_link_local: None,
        }
    }

    fn dns() -> DnsConfig {
        DnsConfig {
            nameservers: vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            ndots: Some(5),
            options: vec![],
        }
    }

    /// What the `bridge` binding made of `pod`.
    fn wired(pod: &PodInterface) -> Wired {
        Wired {
            served_link: "vb-eth0".into(),
            served_link_mac: SERVER_MAC,
            server_address: Some(Ipv4Addr::new(169, 254, 75, 10)),
            tap: "tap-eth0".into(),
            guest_mac: pod.mac,
            pod_port_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
            mtu: pod.mtu,
            pod: pod.clone(),
            dns: dns(),
        }
    }

    fn config(pod: &PodInterface) -> ServerConfig {
        dhcpv4_config(&wired(pod), "vm1").unwrap()
    }

    #[test]
    fn the_guest_gets_the_pods_address_dns_mtu_and_name() {
        let pod = pod(
            &["10.244.1.7/24"],
            vec![route("10.244.1.0/24", None), route("0.0.0.0/0", Some("10.244.1.1"))],
            Some("10.244.1.1"),
        );
        let c = config(&pod);
        assert_eq!(c.client_mac, pod.mac);
        assert_eq!(c.address, "10.244.1.7/24".parse().unwrap());
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(c.routes, [], "the subnet and default routes need no option 121");
        assert_eq!(
            c.dns,
            [Ipv4Addr::new(10, 96, 0, 10)],
            "DHCPv4 carries IPv4 resolvers only"
        );
        assert_eq!(c.search, ["default.svc.cluster.local", "cluster.local"]);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.hostname.as_deref(), Some("vm1"));
        assert_eq!(c.server_id, Ipv4Addr::new(169, 254, 75, 10));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_calico_pod_keeps_its_on_link_gateway_and_extra_routes() {
        let pod = pod(
            &["10.244.1.7/32"],
            vec![
                route("169.254.1.1/32", None),
                route("10.96.0.0/12", Some("169.254.1.1")),
                route("0.0.0.0/0", Some("169.254.1.1")),
                route("fd00::/64", None),
            ],
            Some("169.254.1.1"),
        );
        let routes: Vec<String> = config(&pod)
            .classless_routes()
            .iter()
            .map(|r| format!("{}={}", r.destination, r.gateway))
            .collect();
        assert_eq!(
            routes,
            [
                "169.254.1.1/32=0.0.0.0",
                "10.96.0.0/12=169.254.1.1",
                "0.0.0.0/0=169.254.1.1"
            ]
        );
    }

    const SERVER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    fn dual_stack(ipv6: &str, routes: Vec<PodRoute>, gateway_v6: Option<&str>) -> PodInterface {
        PodInterface {
            ipv6: vec![ipv6.parse().unwrap()],
            ipv6_link_local: Some("fe80::42:aff:fef4:107".parse().unwrap()),
            gateway_v6: gateway_v6.map(|g| g.parse().unwrap()),
            ..pod(&["10.244.1.7/24"], routes, Some("10.244.1.1"))
        }
    }

    fn config6(pod: &PodInterface) -> v6::Config {
        dhcpv6_config(&wired(pod)).unwrap()
    }

    #[test]
    fn the_guest_gets_the_pods_ipv6_address_router_dns_and_mtu() {
        let pod = dual_stack(
            "fd00:10:244:1::7/64",
            vec![
                route("10.244.1.0/24", None),
                route("0.0.0.0/0", Some("10.244.1.1")),
                route("fd00:10:244:1::/64", None),
                route("fd00:10:96::/112", Some("fe80::1")),
                route("fd00:20::/64", Some("fe80::2")),
                route("::/0", Some("fe80::1")),
            ],
            Some("fe80::1"),
        );
        let c = config6(&pod);
        assert_eq!(c.client_mac, pod.mac);
        assert_eq!(c.server_mac, SERVER_MAC);
        assert_eq!(c.address, "fd00:10:244:1::7/64".parse().unwrap());
        assert_eq!(
            c.router,
            Some(v6::Router {
                link_local: "fe80::1".parse().unwrap(),
                mac: None
            })
        );
        assert_eq!(
            c.routes,
            ["fd00:10:96::/112".parse().unwrap()],
            "the subnet is the prefix's, the default the router's; another gateway's route cannot be advertised"
        );
        assert_eq!(
            c.dns,
            ["fd00::10".parse::<std::net::Ipv6Addr>().unwrap()],
            "IPv6 resolvers only"
        );
        assert_eq!(c.search, ["default.svc.cluster.local", "cluster.local"]);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_pod_with_a_128_keeps_it() {
        let pod = dual_stack(
            "fd00:10:244:1::7/128",
            vec![route("::/0", Some("fe80::1"))],
            Some("fe80::1"),
        );
        let c = config6(&pod);
        assert_eq!(c.address, "fd00:10:244:1::7/128".parse().unwrap());
        assert_eq!(c.router.map(|r| r.link_local), Some("fe80::1".parse().unwrap()));
        assert_eq!(c.routes, []);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_global_ipv6_gateway_gives_no_router() {
        let pod = dual_stack(
            "fd00:10:244:1::7/64",
            vec![
                route("fd00:10:96::/112", Some("fd00:10:244:1::1")),
                route("::/0", Some("fd00:10:244:1::1")),
            ],
            Some("fd00:10:244:1::1"),
        );
        let c = config6(&pod);
        assert_eq!((c.router, c.routes.len()), (None, 0));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_global_ipv6_gateway_whose_link_local_address_was_found_is_the_router() {
        let pod = PodInterface {
            gateway_v6_link_local: Some("fe80::42:aff:fef4:101".parse().unwrap()),
            ..dual_stack(
                "fd00:10:244:1::7/64",
                vec![
                    route("fd00:10:96::/112", Some("fd00:10:244:1::1")),
                    route("fd00:20::/64", Some("fd00:10:244:1::2")),
                    route("::/0", Some("fd00:10:244:1::1")),
                ],
                Some("fd00:10:244:1::1"),
            )
        };
        let c = config6(&pod);
        assert_eq!(c.router.map(|r| r.link_local), pod.gateway_v6_link_local);
        assert_eq!(c.routes, ["fd00:10:96::/112".parse().unwrap()]);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_pod_without_ipv6_has_no_dhcpv6() {
        let pod = PodInterface {
            ipv6: vec![],
            ..pod(&["10.244.1.7/24"], vec![], Some("10.244.1.1"))
        };
        assert!(dhcpv6_config(&wired(&pod)).is_none());
    }

    #[test]
    fn an_ipv6_only_pod_has_no_dhcpv4() {
        let pod = pod(&[], vec![], None);
        assert!(dhcpv4_config(&wired(&pod), "vm1").is_none());
    }
}
