use super::*;

fn node() -> NodeNetwork {
    NodeNetwork {
        bridge: "vmlet0".into(),
        pool: "10.111.0.0/24".parse().unwrap(),
        mtu: 1500,
    }
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
    let Some(Step::Nft(table)) = fresh.last() else {
        panic!("the plan ends with the NAT rules: {fresh:?}")
    };
    let rules = table.ruleset();
    assert!(
        rules.contains(r#"ip saddr 10.111.0.0/24 oifname != "vmlet0" masquerade"#),
        "{rules}"
    );
    let again = node().ensure_plan(true).unwrap();
    assert_eq!(again.len(), fresh.len() - 1);
    assert!(!again.iter().any(|s| matches!(s, Step::Ip(a) if a[1] == "add")));
}

#[test]
fn a_pod_gets_a_namespace_a_veth_on_the_bridge_an_address_and_a_default_route() {
    let pod = PodNetwork {
        netns: "vmlet-default-demo".into(),
        address: "10.111.0.2/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 111, 0, 1),
    };
    let plan = node().attach_plan(&pod);
    let host_end = host_end_name("vmlet-default-demo");
    let lines: Vec<String> = plan
        .iter()
        .map(|s| match s {
            Step::Ip(args) => args.join(" "),
            other => panic!("only ip commands: {other:?}"),
        })
        .collect();
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
        let Some(Step::Nft(table)) = network.ensure_plan(true).unwrap().pop() else {
            panic!("the plan ends with the NAT rules")
        };
        let rules = table.ruleset();
        let tables: Vec<&str> = rules
            .lines()
            .filter(|line| line.contains("table ip "))
            .filter_map(|line| line.split_whitespace().skip_while(|word| *word != "ip").nth(1))
            .collect();
        let table = network.nat_table();
        assert_eq!(tables, [table.as_str(); 3], "{rules}");
    }
}
