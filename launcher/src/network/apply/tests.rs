//! The shared steps' pure parts, and every binding's setup against a recording fake: what it changes, that a
//! second run (a restarted launcher's, which reads the record back) changes nothing.

use std::net::Ipv4Addr;

use super::*;

#[test]
fn links_are_named_after_the_pod_interface() {
    assert_eq!(
        LinkNames::for_interface("eth0").unwrap(),
        LinkNames {
            pod_port: "eth0-nic".to_owned(),
            bridge: "vb-eth0".to_owned(),
            tap: "tap-eth0".to_owned(),
            placeholder: "eth0".to_owned(),
        }
    );
    assert!(LinkNames::for_interface("net1-abcdefg").is_err());
    assert!(LinkNames::for_interface("net1-abcdef").is_ok());
    assert!(LinkNames::for_interface("").is_err());
}

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

    use rtnetlink::packet_route::address::AddressScope;
    use vmlet_api::Binding;

    use super::super::Wired;
    use crate::network::binding::BindingRequest;
    use crate::network::binding::masquerade::GuestSubnets;
    use crate::network::fake_netlink::{FakeNetlink, PodStack};
    use crate::network::pod_interface::tests::{link, v4_address, v4_route, v6_address};

    /// A pod as a CNI leaves it: `eth0` with an IPv4 and an IPv6 address, a default route.
    fn pod() -> PodStack {
        PodStack {
            links: vec![link()],
            addresses: vec![
                v4_address(2, "10.244.1.7/24", AddressScope::Universe),
                v6_address(2, "fd00:10:244:1::7/64", AddressScope::Universe),
                v6_address(2, "fe80::858:aff:fef4:107/64", AddressScope::Link),
            ],
            routes: vec![v4_route("0.0.0.0/0", Some("10.244.1.1"), 2)],
            ..PodStack::default()
        }
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

    async fn setup(binding: Binding, request: &BindingRequest, fake: &FakeNetlink) -> Wired {
        match binding {
            Binding::Bridge | Binding::ManagedTap => super::super::bridge::setup(request, fake).await,
            Binding::Tap => super::super::tap::setup(request, fake).await,
            Binding::Masquerade => super::super::masquerade::setup(request, fake).await,
        }
        .unwrap()
    }

    /// Each binding changes the pod once; run again, as by a restarted launcher, it finds what it made, reads the
    /// record back and changes nothing.
    #[tokio::test]
    async fn applying_twice_changes_nothing_the_second_time() {
        for binding in [Binding::Bridge, Binding::ManagedTap, Binding::Tap, Binding::Masquerade] {
            let dir = tempfile::tempdir().unwrap();
            let request = request(binding, dir.path());
            let fake = FakeNetlink::new(pod());

            let first = setup(binding, &request, &fake).await;
            let changes = fake.take_changes();
            assert!(
                changes.contains(&"create tap tap-eth0".to_owned()),
                "{binding:?}: {changes:?}"
            );
            let after_first = fake.stack.borrow().clone();

            let second = setup(binding, &request, &fake).await;
            assert_eq!(fake.take_changes(), Vec::<String>::new(), "{binding:?}");
            assert_eq!(*fake.stack.borrow(), after_first, "{binding:?}");
            assert_eq!(second, first, "{binding:?}: the same guest network");
            assert!(request.state_file().exists());
        }
    }

    #[tokio::test]
    async fn the_bridge_binding_frees_the_pod_interface_and_keeps_its_addresses_in_view() {
        let dir = tempfile::tempdir().unwrap();
        let request = request(Binding::Bridge, dir.path());
        let fake = FakeNetlink::new(pod());
        let wired = setup(Binding::Bridge, &request, &fake).await;
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
}
