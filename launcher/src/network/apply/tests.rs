//! The shared steps' pure parts, and every binding's setup against a recording fake: what it changes, that a
//! second run (a restarted launcher's, which reads the record back) changes nothing.

use std::net::Ipv4Addr;

use super::*;

#[test]
fn local_mac_is_local_unicast_and_never_the_one_avoided() {
    let guest = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07]);
    assert_eq!(local_mac([0xff, 1, 2, 3, 4, 5], guest), MacAddr([0xfe, 1, 2, 3, 4, 5]));
    assert_eq!(local_mac([0x00, 1, 2, 3, 4, 5], guest), MacAddr([0x02, 1, 2, 3, 4, 5]));
    assert_eq!(
        local_mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07], guest),
        MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x06])
    );
}

#[test]
fn state_file_round_trips_and_a_missing_one_is_no_record() {
    let dir = std::env::temp_dir().join(format!("vmlet-state-{}", std::process::id()));
    let state_file = dir.join("run/network-eth0.json");
    let record = PodRecord {
        interface: "eth0",
        resolv_conf: Path::new("/etc/resolv.conf"),
        state_file: &state_file,
    };
    assert_eq!(record.read().unwrap(), None);
    let recorded = Recorded {
        pod: PodInterface {
            name: "eth0".to_owned(),
            index: 2,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1400,
            ipv4: vec!["10.244.1.7/24".parse().unwrap()],
            ipv6: vec!["fd00::7/64".parse().unwrap()],
            ipv6_link_local: Some("fe80::1".parse().unwrap()),
            routes: vec![],
            gateway_v4: Some(Ipv4Addr::new(10, 244, 1, 1)),
            gateway_v6: None,
            gateway_v6_link_local: None,
        },
        dns: DnsConfig::parse("nameserver 10.96.0.10\nsearch cluster.local\n"),
        guest_mac: None,
    };
    record.write(&recorded).unwrap();
    assert_eq!(record.read().unwrap(), Some(recorded));
    fs::write(&state_file, b"{").unwrap();
    assert!(matches!(record.read(), Err(ApplyError::StateFileInvalid { .. })));
    fs::remove_dir_all(&dir).unwrap();
}

mod against_the_fake {
    use std::net::Ipv4Addr;

    use rtnetlink::packet_route::address::{AddressMessage, AddressScope};
    use rtnetlink::packet_route::route::RouteMessage;
    use vmlet_api::Binding;

    use super::super::{Wired, read_record};
    use crate::network::binding::BindingRequest;
    use crate::network::binding::masquerade::GuestSubnets;
    use crate::network::fake_netlink::{FakeNetlink, PodStack};
    use crate::network::pod_interface::tests::{link, v4_address, v4_route, v6_address, v6_route};

    fn stack(addresses: Vec<AddressMessage>, routes: Vec<RouteMessage>) -> PodStack {
        PodStack {
            links: vec![link()],
            addresses,
            routes,
            ..PodStack::default()
        }
    }

    fn link_local() -> AddressMessage {
        v6_address(2, "fe80::858:aff:fef4:107/64", AddressScope::Link)
    }

    fn v4() -> PodStack {
        stack(
            vec![v4_address(2, "10.244.1.7/24", AddressScope::Universe), link_local()],
            vec![v4_route("0.0.0.0/0", Some("10.244.1.1"), 2)],
        )
    }

    fn v6() -> PodStack {
        stack(
            vec![
                v6_address(2, "fd00:10:244:1::7/64", AddressScope::Universe),
                link_local(),
            ],
            vec![v6_route("::/0", Some("fe80::1"), 1024)],
        )
    }

    fn dual_stack() -> PodStack {
        let (mut pod, v6) = (v4(), v6());
        pod.addresses.extend(v6.addresses.into_iter().take(1));
        pod.routes.extend(v6.routes);
        pod
    }

    /// Calico's way: a /32, and a default route through 169.254.1.1, on the link by a route of its own.
    fn calico() -> PodStack {
        stack(
            vec![v4_address(2, "10.244.1.7/32", AddressScope::Universe), link_local()],
            vec![
                v4_route("169.254.1.1/32", None, 2),
                v4_route("0.0.0.0/0", Some("169.254.1.1"), 2),
            ],
        )
    }

    fn several_routes() -> PodStack {
        let mut pod = dual_stack();
        pod.routes.extend([
            v4_route("10.96.0.0/12", Some("10.244.1.1"), 2),
            v6_route("fd00:10:96::/112", Some("fe80::1"), 1024),
        ]);
        pod
    }

    fn request(binding: Binding, dir: &std::path::Path) -> BindingRequest {
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(&resolv_conf, "nameserver 10.96.0.10\nsearch cluster.local\n").unwrap();
        BindingRequest {
            binding,
            interface: "eth0".into(),
            run_dir: dir.join("run"),
            resolv_conf,
            hostname: "vm1".into(),
            subdomain: None,
            guest_mac: None,
            ports: Vec::new(),
            subnets: GuestSubnets::parse(None, None).unwrap(),
        }
    }

    async fn setup(request: &BindingRequest, fake: &FakeNetlink) -> Wired {
        super::super::setup(request, fake).await.unwrap()
    }

    /// Each binding changes the pod once; run again, as by a restarted launcher, it finds what it made, reads the
    /// record back and changes nothing.
    #[tokio::test]
    async fn applying_twice_changes_nothing_the_second_time() {
        let pods = [
            ("v4", v4()),
            ("v6", v6()),
            ("dual stack", dual_stack()),
            ("/32", calico()),
            ("several routes", several_routes()),
        ];
        for binding in [Binding::Bridge, Binding::ManagedTap, Binding::Tap, Binding::Masquerade] {
            for (pod, stack) in &pods {
                let dir = tempfile::tempdir().unwrap();
                let request = request(binding, dir.path());
                let fake = FakeNetlink::new(stack.clone());

                let first = setup(&request, &fake).await;
                let changes = fake.take_changes();
                assert!(
                    changes.contains(&"create tap tap-eth0".to_owned()),
                    "{binding:?}, {pod}: {changes:?}"
                );
                let after_first = fake.stack.borrow().clone();

                let second = setup(&request, &fake).await;
                assert_eq!(fake.take_changes(), Vec::<String>::new(), "{binding:?}, {pod}");
                assert_eq!(*fake.stack.borrow(), after_first, "{binding:?}, {pod}");
                assert_eq!(second, first, "{binding:?}, {pod}: the same guest network");
                assert!(request.state_file().exists());
            }
        }
    }

    /// Whether every one of `expected` is among `changes`.
    fn assert_changed(changes: &[String], expected: &[&str]) {
        for expected in expected {
            assert!(
                changes.contains(&(*expected).to_owned()),
                "{expected:?} missing from {changes:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_bridge_binding_frees_the_pod_interface_and_keeps_its_addresses_in_view() {
        let dir = tempfile::tempdir().unwrap();
        let request = request(Binding::Bridge, dir.path());
        let fake = FakeNetlink::new(dual_stack());
        let wired = setup(&request, &fake).await;
        let changes = fake.take_changes();
        for expected in [
            "replace table Bridge vmlet",
            "add link vb-eth0",
            "add address 169.254.75.10/32 to vb-eth0",
            "delete address 10.244.1.7/24 from eth0",
            "delete address fd00:10:244:1::7/64 from eth0",
            "set link eth0-nic",
            "set port eth0-nic",
            "create tap tap-eth0",
            "add link eth0",
            "add address 10.244.1.7/24 to eth0",
            "add address fd00:10:244:1::7/64 to eth0",
            // The pod's way to its guest, whose address is the pod's own.
            "replace table Bridge vmlet-guest-access",
            "route 169.254.75.11/32 dev vb-eth0 src 169.254.75.10",
        ] {
            assert!(
                changes.contains(&expected.to_owned()),
                "{expected:?} missing from {changes:?}"
            );
        }
        assert!(
            changes.contains(&format!(
                "neighbour 169.254.75.11 lladdr {} dev vb-eth0",
                wired.guest_mac
            )),
            "{changes:?}"
        );
        assert_eq!(
            (wired.served_link.as_str(), wired.tap.as_str()),
            ("vb-eth0", "tap-eth0")
        );
        assert_eq!(wired.server_address, Some(Ipv4Addr::new(169, 254, 75, 10)));
        assert_eq!(wired.pod.ipv4, ["10.244.1.7/24".parse().unwrap()]);
        assert_eq!(wired.pod.gateway_v4, Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_ne!(
            wired.pod_port_mac,
            Some(wired.guest_mac),
            "the pod interface gave the guest its MAC"
        );
    }

    #[tokio::test]
    async fn the_tap_binding_joins_the_pod_interface_and_the_tap_by_tc() {
        let dir = tempfile::tempdir().unwrap();
        let request = request(Binding::Tap, dir.path());
        let fake = FakeNetlink::new(dual_stack());
        let wired = setup(&request, &fake).await;
        let changes = fake.take_changes();
        assert_changed(
            &changes,
            &[
                "replace table Inet vmlet-tap",
                "delete address 10.244.1.7/24 from eth0",
                "set link eth0-nic",
                "create tap tap-eth0",
                "add address 169.254.75.10/32 to tap-eth0",
                "replace the ingress filters of tap-eth0",
                "replace the ingress filters of eth0-nic",
                "add link eth0",
                "add address 10.244.1.7/24 to eth0",
            ],
        );
        assert!(!changes.iter().any(|c| c.contains("vb-eth0")), "no bridge: {changes:?}");
        assert_eq!(
            (wired.served_link.as_str(), wired.tap.as_str()),
            ("tap-eth0", "tap-eth0")
        );
    }

    #[tokio::test]
    async fn the_masquerade_binding_leaves_the_pod_interface_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let request = request(Binding::Masquerade, dir.path());
        let fake = FakeNetlink::new(dual_stack());
        let wired = setup(&request, &fake).await;
        let changes = fake.take_changes();
        assert_changed(
            &changes,
            &[
                "add link vb-eth0",
                "add address 10.0.2.1/24 to vb-eth0",
                "add address fd10:0:2::1/120 to vb-eth0",
                "add address fe80::1/64 to vb-eth0",
                // Forwarding, over netlink.
                "set link eth0",
                "enable IPv6 forwarding",
                "create tap tap-eth0",
                "replace table Inet vmlet-nat",
                "route 169.254.75.11/32 dev vb-eth0 src 10.0.2.1",
            ],
        );
        assert!(
            !changes
                .iter()
                .any(|c| c.contains("from eth0") || c.contains("eth0-nic")),
            "the pod keeps its addresses and name: {changes:?}"
        );
        assert_eq!(wired.pod_port_mac, None);
        assert_eq!(wired.served_link_mac, crate::network::binding::masquerade::BRIDGE_MAC);
        let recorded = read_record(&request.state_file()).unwrap().unwrap();
        assert_eq!(
            recorded.guest_mac,
            Some(wired.guest_mac),
            "kept for a restarted launcher"
        );
    }
}
