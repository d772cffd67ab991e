//! Pod networks on one machine, for vmlet's standalone mode: what a CNI's `bridge` plugin with `host-local`
//! addresses and IP masquerade does on a Kubernetes node.
//!
//! Each pod is a named network namespace (`/run/netns/NAME`, as `ip netns` makes them) holding `eth0`, one end of a
//! veth pair whose other end is a port of the host bridge. The bridge holds the pool's first address, the pods'
//! gateway; traffic from the pool to anywhere else is masqueraded in an nftables table of its own. The launcher then
//! finds in the namespace exactly what a CNI leaves in a pod.
//!
//! The work is done by iproute2 and nft (through `vmlet-netfilter`, as the launcher does). What to run is worked out by pure functions, so the plans are tested
//! without root, and [`Host`] runs them.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use ipnet::Ipv4Net;
use vmlet_netfilter::{Family, Table, ToolError};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

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
}

/// The host side: one bridge, the pods' gateway, and NAT for the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The host bridge, for example `vmlet0`.
    pub bridge: String,
    /// The pool pods take their addresses from; its first address is the bridge's, the gateway.
    pub pool: Ipv4Net,
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

    /// The commands that make the host side, each harmless when what it makes exists: the bridge with the gateway
    /// address, forwarding, and the NAT table (replaced as a whole, one transaction).
    pub fn ensure_plan(&self, bridge_exists: bool) -> Result<Vec<Step>, PodNetError> {
        let gateway = Ipv4Net::new(self.gateway()?, self.pool.prefix_len()).expect("valid prefix");
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
        steps.push(Step::Nft(self.nat_ruleset()));
        Ok(steps)
    }

    /// The nftables table of this bridge and pool, `ip vmlet-standalone-BRIDGE-POOL`: each standalone handler of
    /// a machine replaces its own rules only, never another's.
    pub fn nat_table(&self) -> String {
        let pool = self.pool.trunc();
        let name: String = format!("{}-{}-{}", self.bridge, pool.addr(), pool.prefix_len())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' })
            .collect();
        format!("vmlet-standalone-{name}")
    }

    /// Pods reach the outside under the host's address; traffic among pods and to the host stays unchanged.
    fn nat_ruleset(&self) -> Table {
        let (bridge, pool) = (&self.bridge, self.pool.trunc());
        Table {
            family: Family::Ip,
            name: self.nat_table(),
            chains: format!(
                r#"    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {pool} oifname != "{bridge}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{bridge}" accept
        oifname "{bridge}" ct state established,related accept
    }}
"#
            ),
        }
    }

    /// The commands that give a new pod its network: a namespace, a veth pair between it and the bridge, the pod's
    /// address and default route. `host_end` names the veth end on the host (see [`host_end_name`]).
    pub fn attach_plan(&self, pod: &PodNetwork) -> Vec<Step> {
        let ns = pod.netns.as_str();
        let host_end = host_end_name(ns);
        let mtu = self.mtu.to_string();
        vec![
            Step::ip(&["netns", "add", ns]),
            Step::ip(&["-n", ns, "link", "set", "lo", "up"]),
            Step::ip(&[
                "link", "add", &host_end, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu, "netns", ns,
            ]),
            Step::ip(&["link", "set", &host_end, "master", &self.bridge, "up"]),
            Step::ip(&["-n", ns, "address", "add", &pod.address.to_string(), "dev", "eth0"]),
            Step::ip(&["-n", ns, "link", "set", "eth0", "up"]),
            Step::ip(&["-n", ns, "route", "add", "default", "via", &pod.gateway.to_string()]),
        ]
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
    /// An nftables table, replaced as a whole.
    Nft(Table),
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
            Step::Nft(table) => vmlet_netfilter::replace_tables(std::slice::from_ref(table)).map_err(PodNetError::Nft),
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
