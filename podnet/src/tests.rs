use super::*;

fn node() -> NodeNetwork {
    NodeNetwork {
        bridge: "vmlet0".into(),
        pool: "10.111.0.0/24".parse().unwrap(),
        pool_v6: None,
        mtu: 1500,
    }
}

fn dual_stack() -> NodeNetwork {
    NodeNetwork {
        pool_v6: Some("fd00:6d76:6c74::/64".parse().unwrap()),
        ..node()
    }
}

fn ip_lines(plan: &[Step]) -> Vec<String> {
    plan.iter()
        .filter_map(|s| match s {
            Step::Ip(args) => Some(args.join(" ")),
            _ => None,
        })
        .collect()
}

#[test]
fn the_gateway_is_the_pools_first_address_and_pods_take_the_lowest_free_one() {
    let node = node();
    assert_eq!(node.gateway().unwrap(), Ipv4Addr::new(10, 111, 0, 1));
    assert_eq!(node.allocate(&[]).unwrap().to_string(), "10.111.0.2/24");
    let used = [Ipv4Addr::new(10, 111, 0, 2), Ipv4Addr::new(10, 111, 0, 4)];
    assert_eq!(node.allocate(&used).unwrap().to_string(), "10.111.0.3/24");
}

#[test]
fn a_full_pool_is_an_error() {
    let node = NodeNetwork {
        pool: "10.111.0.0/30".parse().unwrap(),
        ..node()
    };
    let used = [Ipv4Addr::new(10, 111, 0, 2)];
    assert!(matches!(node.allocate(&used), Err(PodNetError::PoolExhausted { .. })));
    let tiny = NodeNetwork {
        pool: "10.111.0.7/32".parse().unwrap(),
        ..node
    };
    assert!(matches!(tiny.allocate(&[]), Err(PodNetError::PoolTooSmall(_))));
}

#[test]
fn the_host_side_is_made_once_and_refreshed_after() {
    let fresh = node().ensure_plan(false).unwrap();
    assert_eq!(fresh[0], Step::ip(&["link", "add", "vmlet0", "type", "bridge"]));
    assert!(fresh.contains(&Step::ip(&["address", "replace", "10.111.0.1/24", "dev", "vmlet0"])));
    let Some(Step::Nft(tables)) = fresh.last() else {
        panic!("the plan ends with the NAT rules: {fresh:?}")
    };
    assert_eq!(tables.len(), 1, "no IPv6 table without an IPv6 pool");
    let rules = tables[0].ruleset();
    assert!(
        rules.contains(r#"ip saddr 10.111.0.0/24 oifname != "vmlet0" masquerade"#),
        "{rules}"
    );
    let again = node().ensure_plan(true).unwrap();
    assert_eq!(again.len(), fresh.len() - 1);
    assert!(!again.iter().any(|s| matches!(s, Step::Ip(a) if a[1] == "add")));
    assert!(
        !fresh
            .iter()
            .any(|s| matches!(s, Step::Sysctl { key, .. } if key.starts_with("net/ipv6"))),
        "IPv6 forwarding changes how the host takes router advertisements: only with an IPv6 pool"
    );
}

#[test]
fn a_dual_stack_host_side_holds_both_gateways_forwards_ipv6_and_masquerades_both_pools() {
    let plan = dual_stack().ensure_plan(true).unwrap();
    let lines = ip_lines(&plan);
    assert!(
        lines.contains(&"address replace 10.111.0.1/24 dev vmlet0".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"-6 address replace fd00:6d76:6c74::1/64 dev vmlet0 nodad".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"-6 address replace fe80::1/64 dev vmlet0 nodad".to_owned()),
        "{lines:?}"
    );
    let sysctls: Vec<(&str, &str)> = plan
        .iter()
        .filter_map(|s| match s {
            Step::Sysctl { key, value } => Some((key.as_str(), value.as_str())),
            _ => None,
        })
        .collect();
    assert!(sysctls.contains(&("net/ipv6/conf/all/forwarding", "1")), "{sysctls:?}");
    assert!(
        sysctls.contains(&("net/ipv6/conf/vmlet0/disable_ipv6", "0")),
        "{sysctls:?}"
    );
    let Some(Step::Nft(tables)) = plan.last() else {
        panic!("the plan ends with the NAT rules: {plan:?}")
    };
    let families: Vec<Family> = tables.iter().map(|t| t.family).collect();
    assert_eq!(families, [Family::Ip, Family::Ip6]);
    assert!(tables.iter().all(|t| t.name == "vmlet-standalone-vmlet0-10-111-0-0-24"));
    let rules = tables[1].ruleset();
    assert!(
        rules.contains(r#"ip6 saddr fd00:6d76:6c74::/64 oifname != "vmlet0" masquerade"#),
        "{rules}"
    );
}

/// A pod's IPv6 address follows from its IPv4 one, so the IPv4 allocation alone keeps both unique.
#[test]
fn a_pods_ipv6_address_is_at_its_ipv4_addresss_offset_in_the_ipv6_pool() {
    let v6 = |a: Ipv4Addr| dual_stack().address_v6(a).unwrap().unwrap().to_string();
    assert_eq!(v6(Ipv4Addr::new(10, 111, 0, 1)), "fd00:6d76:6c74::1/64");
    assert_eq!(v6(Ipv4Addr::new(10, 111, 0, 2)), "fd00:6d76:6c74::2/64");
    assert_eq!(v6(Ipv4Addr::new(10, 111, 0, 254)), "fd00:6d76:6c74::fe/64");
    assert_eq!(node().address_v6(Ipv4Addr::new(10, 111, 0, 2)).unwrap(), None);
    let wide = NodeNetwork {
        pool: "10.112.0.0/16".parse().unwrap(),
        pool_v6: Some("fd00:1::/112".parse().unwrap()),
        ..dual_stack()
    };
    assert_eq!(
        wide.address_v6(Ipv4Addr::new(10, 112, 3, 4))
            .unwrap()
            .unwrap()
            .to_string(),
        "fd00:1::304/112"
    );
    let narrow = NodeNetwork {
        pool_v6: Some("fd00:1::/120".parse().unwrap()),
        ..wide
    };
    assert!(matches!(
        narrow.address_v6(Ipv4Addr::new(10, 112, 3, 4)),
        Err(PodNetError::PoolV6TooSmall { .. })
    ));
    assert!(matches!(
        narrow.ensure_plan(true),
        Err(PodNetError::PoolV6TooSmall { .. })
    ));
}

#[test]
fn a_pod_gets_a_namespace_a_veth_on_the_bridge_an_address_and_a_default_route() {
    let pod = PodNetwork {
        netns: "vmlet-default-demo".into(),
        address: "10.111.0.2/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 111, 0, 1),
        address_v6: None,
    };
    let plan = node().attach_plan(&pod);
    let host_end = host_end_name("vmlet-default-demo");
    let lines = ip_lines(&plan);
    assert_eq!(lines.len(), plan.len(), "only ip commands: {plan:?}");
    assert_eq!(
        lines,
        [
            "netns add vmlet-default-demo".to_owned(),
            "-n vmlet-default-demo link set lo up".into(),
            format!("link add {host_end} mtu 1500 type veth peer name eth0 mtu 1500 netns vmlet-default-demo"),
            format!("link set {host_end} master vmlet0 up"),
            "-n vmlet-default-demo address add 10.111.0.2/24 dev eth0".into(),
            "-n vmlet-default-demo link set eth0 up".into(),
            "-n vmlet-default-demo route add default via 10.111.0.1".into(),
        ]
    );
}

#[test]
fn a_dual_stack_pod_also_gets_its_ipv6_address_and_a_default_route_through_the_link_local_gateway() {
    let pod = PodNetwork {
        netns: "vmlet-default-demo".into(),
        address: "10.111.0.2/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 111, 0, 1),
        address_v6: Some("fd00:6d76:6c74::2/64".parse().unwrap()),
    };
    let lines = ip_lines(&dual_stack().attach_plan(&pod));
    assert_eq!(
        lines[lines.len() - 2..],
        [
            "-n vmlet-default-demo -6 address add fd00:6d76:6c74::2/64 dev eth0 nodad",
            "-n vmlet-default-demo -6 route add default via fe80::1 dev eth0",
        ]
    );
}

#[test]
fn host_end_names_are_short_stable_and_differ_between_pods() {
    let a = host_end_name("vmlet-default-a-very-long-virtual-machine-name");
    assert!(a.len() <= 15, "{a}");
    assert_eq!(a, host_end_name("vmlet-default-a-very-long-virtual-machine-name"));
    assert_ne!(a, host_end_name("vmlet-default-b"));
}

/// Two handlers of one machine, each with its bridge and pool, each replace only their own NAT rules.
#[test]
fn each_bridge_and_pool_has_a_nat_table_of_its_own() {
    let other = NodeNetwork {
        bridge: "vmlet1".into(),
        pool: "10.112.0.0/24".parse().unwrap(),
        ..node()
    };
    assert_eq!(node().nat_table(), "vmlet-standalone-vmlet0-10-111-0-0-24");
    assert_eq!(other.nat_table(), "vmlet-standalone-vmlet1-10-112-0-0-24");
    for network in [node(), other] {
        let Some(Step::Nft(tables)) = network.ensure_plan(true).unwrap().pop() else {
            panic!("the plan ends with the NAT rules")
        };
        let rules = tables[0].ruleset();
        let tables: Vec<&str> = rules
            .lines()
            .filter(|line| line.contains("table ip "))
            .filter_map(|line| line.split_whitespace().skip_while(|word| *word != "ip").nth(1))
            .collect();
        let table = network.nat_table();
        assert_eq!(tables, [table.as_str(); 3], "{rules}");
    }
}
