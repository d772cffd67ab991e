//! Pod networks on one machine, for vmlet's standalone mode: what a CNI's `bridge` plugin with `host-local`
//! addresses and IP masquerade does on a Kubernetes node.
//!
//! Each pod is a named network namespace (`/run/netns/NAME`, as `ip netns` makes them) holding `eth0`, one end of a
//! veth pair whose other end is a port of the host bridge. The bridge holds the pool's first address, the pods'
//! gateway; traffic from the pool to anywhere else is masqueraded in an nftables table of its own. The launcher then
//! finds in the namespace exactly what a CNI leaves in a pod.
//!
//! An IPv6 pool is optional (dual stack): each pod's IPv6 address is the one at its IPv4 address's offset in the
//! IPv6 pool, so the IPv4 allocation alone decides both and no second allocation can race with the first.
//!
//! The work is done by iproute2 and nft (through `vmlet-netfilter`, as the launcher does). What to run is worked out
//! by pure functions, so the plans are tested without root, and [`Host`] runs them.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use ipnet::{Ipv4Net, Ipv6Net};
use vmlet_netfilter::{Family, Table, ToolError};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The pods' IPv6 gateway: a fixed link-local address on the bridge, beside the IPv6 pool's first address. A
/// default route through a link-local address is what a pod's IPv6 default route usually is, and the launcher then
/// names that router in the guest's router advertisements as it is; through the pool's global address, the launcher
/// would have to find the router's link-local address on the link, one made from the bridge's MAC, which changes
/// as ports come and go.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Why a pod network could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot replace the NAT rules")]
    Nft(#[source] ToolError),
    #[error("the pool {pool} has no free address left")]
    PoolExhausted { pool: Ipv4Net },
    #[error("the pool {0} is too small: it needs room for a gateway and at least one pod")]
    PoolTooSmall(Ipv4Net),
    #[error("the IPv6 pool {pool_v6} is smaller than the IPv4 pool {pool}, whose addresses it mirrors")]
    PoolV6TooSmall { pool_v6: Ipv6Net, pool: Ipv4Net },
}

/// The host side: one bridge, the pods' gateway, and NAT for the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The host bridge, for example `vmlet0`.
    pub bridge: String,
    /// The pool pods take their addresses from; its first address is the bridge's, the gateway.
    pub pool: Ipv4Net,
    /// The IPv6 pool, for dual-stack pods: its first address is the bridge's too, and each pod's address is at the
    /// offset of its IPv4 address in `pool`.
    pub pool_v6: Option<Ipv6Net>,
    /// The MTU of the bridge and every pod interface.
    pub mtu: u32,
}

/// One pod's network as it is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The namespace's name under [`NETNS_DIR`].
    pub netns: String,
    /// The pod's address in the pool, with the pool's prefix.
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The pod's IPv6 address, with the IPv6 pool's prefix; its gateway is [`GATEWAY_V6`].
    pub address_v6: Option<Ipv6Net>,
}

impl NodeNetwork {
    /// The gateway: the pool's first host address, held by the bridge.
    pub fn gateway(&self) -> Result<Ipv4Addr, PodNetError> {
        let mut hosts = self.pool.hosts();
        match (hosts.next(), hosts.next()) {
            (Some(gateway), Some(_)) => Ok(gateway),
            _ => Err(PodNetError::PoolTooSmall(self.pool)),
        }
    }

    /// The lowest address of the pool that is neither the gateway nor in `used`.
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Result<Ipv4Net, PodNetError> {
        let gateway = self.gateway()?;
        let address = self
            .pool
            .hosts()
            .find(|a| *a != gateway && !used.contains(a))
            .ok_or(PodNetError::PoolExhausted { pool: self.pool })?;
        Ok(Ipv4Net::new(address, self.pool.prefix_len()).expect("the pool's own prefix length is valid"))
    }

    /// The IPv6 address of the pod that has `address` in the IPv4 pool: the same offset in the IPv6 pool. None
    /// without an IPv6 pool.
    pub fn address_v6(&self, address: Ipv4Addr) -> Result<Option<Ipv6Net>, PodNetError> {
        let Some(pool_v6) = self.pool_v6 else {
            return Ok(None);
        };
        let v4_host_bits = 32 - u32::from(self.pool.prefix_len());
        let v6_host_bits = 128 - u32::from(pool_v6.prefix_len());
        if v6_host_bits < v4_host_bits {
            return Err(PodNetError::PoolV6TooSmall {
                pool_v6,
                pool: self.pool,
            });
        }
        let offset = u32::from(address).wrapping_sub(u32::from(self.pool.network()));
        let address = Ipv6Addr::from(u128::from(pool_v6.network()) + u128::from(offset));
        Ok(Some(
            Ipv6Net::new(address, pool_v6.prefix_len()).expect("the pool's own prefix length is valid"),
        ))
    }

    /// The commands that make the host side, each harmless when what it makes exists: the bridge with the gateway
    /// addresses, forwarding, and the NAT tables (replaced as a whole, one transaction).
    pub fn ensure_plan(&self, bridge_exists: bool) -> Result<Vec<Step>, PodNetError> {
        let gateway_ip = self.gateway()?;
        let gateway = Ipv4Net::new(gateway_ip, self.pool.prefix_len()).expect("valid prefix");
        let gateway_v6 = self.address_v6(gateway_ip)?;
        let bridge = self.bridge.as_str();
        let mut steps = Vec::new();
        if !bridge_exists {
            steps.push(Step::ip(&["link", "add", bridge, "type", "bridge"]));
        }
        let mtu = self.mtu.to_string();
        steps.push(Step::ip(&["link", "set", bridge, "mtu", &mtu, "up"]));
        steps.push(Step::ip(&["address", "replace", &gateway.to_string(), "dev", bridge]));
        steps.push(Step::Sysctl {
            key: "net/ipv4/ip_forward".into(),
            value: "1".into(),
        });
        if let Some(gateway_v6) = gateway_v6 {
            steps.push(Step::Sysctl {
                key: format!("net/ipv6/conf/{bridge}/disable_ipv6"),
                value: "0".into(),
            });
            // No duplicate address detection: the addresses are the bridge's by construction, and usable at once.
            for address in [gateway_v6, Ipv6Net::new(GATEWAY_V6, 64).expect("valid prefix")] {
                let address = address.to_string();
                steps.push(Step::ip(&[
                    "-6", "address", "replace", &address, "dev", bridge, "nodad",
                ]));
            }
            // Machine-wide, as IPv6 has no per-link switch: the host then ignores router advertisements on every
            // link (accept_ra=1 applies to hosts, not routers), which is why the IPv6 pool is opt-in.
            steps.push(Step::Sysctl {
                key: "net/ipv6/conf/all/forwarding".into(),
                value: "1".into(),
            });
        }
        steps.push(Step::Nft(self.nat_tables()));
        Ok(steps)
    }

    /// The nftables table of this bridge and pool, `ip vmlet-standalone-BRIDGE-POOL` (and the IPv6 pool's, of the
    /// same name in `ip6`): each standalone handler of a machine replaces its own rules only, never another's.
    pub fn nat_table(&self) -> String {
        let pool = self.pool.trunc();
        let name: String = format!("{}-{}-{}", self.bridge, pool.addr(), pool.prefix_len())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' })
            .collect();
        format!("vmlet-standalone-{name}")
    }

    /// Pods reach the outside under the host's address; traffic among pods and to the host stays unchanged.
    fn nat_tables(&self) -> Vec<Table> {
        let table = |family: Family, pool: String| {
            let (bridge, keyword) = (&self.bridge, if family == Family::Ip6 { "ip6" } else { "ip" });
            Table {
                family,
                name: self.nat_table(),
                chains: format!(
                    r#"    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        {keyword} saddr {pool} oifname != "{bridge}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{bridge}" accept
        oifname "{bridge}" ct state established,related accept
    }}
"#
                ),
            }
        };
        let mut tables = vec![table(Family::Ip, self.pool.trunc().to_string())];
        if let Some(pool_v6) = self.pool_v6 {
            tables.push(table(Family::Ip6, pool_v6.trunc().to_string()));
        }
        tables
    }

    /// The commands that give a new pod its network: a namespace, a veth pair between it and the bridge, the pod's
    /// address and default route. `host_end` names the veth end on the host (see [`host_end_name`]).
    pub fn attach_plan(&self, pod: &PodNetwork) -> Vec<Step> {
        let ns = pod.netns.as_str();
        let host_end = host_end_name(ns);
        let mtu = self.mtu.to_string();
        let mut steps = vec![
            Step::ip(&["netns", "add", ns]),
            Step::ip(&["-n", ns, "link", "set", "lo", "up"]),
            Step::ip(&[
                "link", "add", &host_end, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu, "netns", ns,
            ]),
            Step::ip(&["link", "set", &host_end, "master", &self.bridge, "up"]),
            Step::ip(&["-n", ns, "address", "add", &pod.address.to_string(), "dev", "eth0"]),
            Step::ip(&["-n", ns, "link", "set", "eth0", "up"]),
            Step::ip(&["-n", ns, "route", "add", "default", "via", &pod.gateway.to_string()]),
        ];
        if let Some(address_v6) = pod.address_v6 {
            // No duplicate address detection: the address is the pod's alone by construction, and usable at once.
            let (address, gateway) = (address_v6.to_string(), GATEWAY_V6.to_string());
            steps.push(Step::ip(&[
                "-n", ns, "-6", "address", "add", &address, "dev", "eth0", "nodad",
            ]));
            steps.push(Step::ip(&[
                "-n", ns, "-6", "route", "add", "default", "via", &gateway, "dev", "eth0",
            ]));
        }
        steps
    }
}

/// The host end of a pod's veth pair: a short, stable name derived from the namespace's (interface names have at
/// most 15 bytes).
pub fn host_end_name(netns: &str) -> String {
    // FNV-1a: stable across runs and Rust versions, unlike the standard library's hasher.
    let hash = netns.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("vp{:08x}", hash as u32)
}

/// One command of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `ip ARGS...`
    Ip(Vec<String>),
    /// A sysctl of the current network namespace, written under `/proc/sys`.
    Sysctl { key: String, value: String },
    /// nftables tables, each replaced as a whole, all in one transaction.
    Nft(Vec<Table>),
}

impl Step {
    fn ip(args: &[&str]) -> Step {
        Step::Ip(args.iter().map(|a| (*a).to_owned()).collect())
    }
}

/// Runs plans on this machine, in the network namespace of the calling process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Host;

impl Host {
    /// Makes the host side of `node` (idempotent).
    pub fn ensure(&self, node: &NodeNetwork) -> Result<(), PodNetError> {
        let exists = self.link_exists(&node.bridge)?;
        self.run_all(&node.ensure_plan(exists)?)
    }

    /// Gives a new pod its network. A namespace of the same name left by an earlier attempt is removed first.
    pub fn attach(&self, node: &NodeNetwork, pod: &PodNetwork) -> Result<(), PodNetError> {
        self.detach(&pod.netns)?;
        let result = self.run_all(&node.attach_plan(pod));
        if result.is_err() {
            let _ = self.detach(&pod.netns);
        }
        result
    }

    /// Removes a pod's namespace; its veth pair goes with it. Nothing to remove is no error.
    pub fn detach(&self, netns: &str) -> Result<(), PodNetError> {
        if !netns_exists(netns) {
            return Ok(());
        }
        self.run(&Step::ip(&["netns", "delete", netns]))
    }

    fn link_exists(&self, name: &str) -> Result<bool, PodNetError> {
        let output = spawn(Command::new("ip").args(["link", "show", "dev", name]), "ip")?;
        Ok(output.status.success())
    }

    fn run_all(&self, steps: &[Step]) -> Result<(), PodNetError> {
        steps.iter().try_for_each(|step| self.run(step))
    }

    fn run(&self, step: &Step) -> Result<(), PodNetError> {
        match step {
            Step::Ip(args) => check(spawn(Command::new("ip").args(args), "ip")?, || {
                format!("ip {}", args.join(" "))
            }),
            Step::Sysctl { key, value } => {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value).map_err(|source| PodNetError::Spawn {
                    program: format!("a write to {}", path.display()),
                    source,
                })
            }
            Step::Nft(tables) => vmlet_netfilter::replace_tables(tables).map_err(PodNetError::Nft),
        }
    }
}

/// Whether the named namespace exists.
pub fn netns_exists(netns: &str) -> bool {
    Path::new(NETNS_DIR).join(netns).exists()
}

fn spawn(command: &mut Command, program: &str) -> Result<std::process::Output, PodNetError> {
    command.output().map_err(|source| PodNetError::Spawn {
        program: program.into(),
        source,
    })
}

fn check(output: std::process::Output, command: impl FnOnce() -> String) -> Result<(), PodNetError> {
    if output.status.success() {
        return Ok(());
    }
    Err(PodNetError::Failed {
        command: command(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests;
