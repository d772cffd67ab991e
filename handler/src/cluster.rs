//! What the controller and the node role agree on in a cluster: the labels of launcher Pods and Nodes, the node
//! role's Lease, and where a launcher Pod's run directory lies on its node. Neither role reads the other's
//! internals; both read this.

use std::path::{Path, PathBuf};

/// The VM's name, for people (`kubectl get pods -l vmlet.dev/vm=NAME`); programs go by the owner reference.
pub const VM_NAME_LABEL: &str = "vmlet.dev/vm";
/// The label the controller's and the node role's Pod watches select on.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "vmlet-controller";
/// The launcher's container in its Pod.
pub const CONTAINER: &str = "launcher";

/// The Node label that says whether the node role runs there and can serve VMs (`true` or `false`).
pub const SCHEDULABLE_LABEL: &str = "vmlet.dev/schedulable";

/// The node directory under which each launcher Pod's run directory lives, as `<namespace>_<pod>`: the control
/// socket, console, lease and libvirt state of that Pod, shared with the node role.
pub const RUN_DIRS_ON_HOST: &str = "/var/run/vmlet/pods";

/// The name of a launcher Pod's run directory in [`RUN_DIRS_ON_HOST`]: a Pod's, not its VM's, so that a VM's next
/// launcher never finds the previous one's network record (the node role finds each by its Pod).
pub fn run_dir_name(namespace: &str, pod: &str) -> String {
    format!("{namespace}_{pod}")
}

/// A launcher Pod's run directory on the node, in `pods_dir` (normally [`RUN_DIRS_ON_HOST`]).
pub fn run_dir(pods_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    pods_dir.join(run_dir_name(namespace, pod))
}

/// The name of a node's heartbeat Lease, in the handler's namespace; the controller reads it to tell a dead node.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}

/// The node whose heartbeat `lease` is, if it is one.
pub fn node_of_lease(lease: &str) -> Option<&str> {
    lease.strip_prefix(LEASE_PREFIX).filter(|node| !node.is_empty())
}

const LEASE_PREFIX: &str = "vmlet-node-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_name_gives_back_its_node() {
        assert_eq!(node_of_lease(&lease_name("node-a")), Some("node-a"));
        assert_eq!(node_of_lease("vmlet-node-"), None);
        assert_eq!(node_of_lease("vmlet-controller"), None);
    }
}
