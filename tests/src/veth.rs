//! A veth pair joining two namespaces.

use std::process::Command;

use crate::child::run;
use crate::netns::NetNs;

/// How one end of a veth pair is set up. Both ends are created inside their namespaces, so the names only need to
/// be unique there and never clash with the host's interfaces or another test's.
#[derive(Clone, Debug)]
pub struct VethEnd {
    name: String,
    mac: Option<String>,
    mtu: Option<u32>,
    addresses: Vec<String>,
}

impl VethEnd {
    pub fn named(name: &str) -> VethEnd {
        VethEnd {
            name: name.to_owned(),
            mac: None,
            mtu: None,
            addresses: Vec::new(),
        }
    }

    pub fn mac(mut self, mac: &str) -> VethEnd {
        self.mac = Some(mac.to_owned());
        self
    }

    pub fn mtu(mut self, mtu: u32) -> VethEnd {
        self.mtu = Some(mtu);
        self
    }

    /// An address with its prefix, like `10.0.0.1/24`; may be given several times.
    pub fn address(mut self, cidr: &str) -> VethEnd {
        self.addresses.push(cidr.to_owned());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn link_args(&self) -> Vec<String> {
        let mut args = vec!["name".to_owned(), self.name.clone()];
        if let Some(mac) = &self.mac {
            args.extend(["address".to_owned(), mac.clone()]);
        }
        if let Some(mtu) = self.mtu {
            args.extend(["mtu".to_owned(), mtu.to_string()]);
        }
        args
    }

    fn configure(&self, ns: &NetNs) {
        for address in &self.addresses {
            ns.ip(&["addr", "add", address, "dev", &self.name]);
        }
        ns.ip(&["link", "set", &self.name, "up"]);
    }
}

/// Creates a veth pair with end `a` in `ns_a` and end `b` in `ns_b`, assigns the addresses and brings both ends
/// up. The pair goes away with its namespaces.
pub fn link(ns_a: &NetNs, a: &VethEnd, ns_b: &NetNs, b: &VethEnd) {
    run(Command::new("ip")
        .args(["-n", ns_a.name(), "link", "add"])
        .args(a.link_args())
        .args(["type", "veth", "peer"])
        .args(b.link_args())
        .args(["netns", ns_b.name()]));
    a.configure(ns_a);
    b.configure(ns_b);
}
