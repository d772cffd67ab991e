//! What the verbs ask of the API server, as RBAC sees it. `deploy/rbac-user.yaml`'s ClusterRole `vmlet-user` grants
//! exactly [`PERMISSIONS`] (handler/tests/deploy.rs checks it), and the mock API tests check that every request a
//! verb makes is one of them ([`needs`]).

/// One rule of `vmlet-user`.
#[derive(Debug, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

pub const PERMISSIONS: &[Permission] = &[
    // status, list: get and list; start, stop, restart: get, then a merge patch of one field.
    Permission {
        group: "vmlet.dev",
        resource: "virtualmachines",
        verbs: &["get", "list", "patch"],
    },
    // console, vnc, pause, unpause, stop --force/--grace-period, restart, and ssh, scp, port-forward:
    // `vmlet-launcher connect` in the launcher container. A websocket exec is a GET, which RBAC reads as `get`; API
    // servers since 1.31 also require `create` on it (as for the POST that SPDY clients send).
    Permission {
        group: "",
        resource: "pods/exec",
        verbs: &["get", "create"],
    },
    // logs
    Permission {
        group: "",
        resource: "pods/log",
        verbs: &["get"],
    },
];

/// The RBAC verbs a request needs: its API group, resource (with subresource) and verbs. `None` for a request vmlet
/// should never make.
pub fn needs(method: &str, path: &str) -> Option<(String, String, Vec<&'static str>)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let upgrade = resource.ends_with("/exec");
    let verbs = match (method, named) {
        ("GET", _) if upgrade => vec!["get", "create"],
        ("GET", true) => vec!["get"],
        ("GET", false) => vec!["list"],
        ("PATCH", true) => vec!["patch"],
        _ => return None,
    };
    Some((group.to_owned(), resource, verbs))
}

/// Whether `vmlet-user` allows the request.
pub fn allowed(method: &str, path: &str) -> bool {
    needs(method, path).is_some_and(|(group, resource, verbs)| {
        PERMISSIONS
            .iter()
            .any(|p| p.group == group && p.resource == resource && verbs.iter().all(|v| p.verbs.contains(v)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_rbac_does() {
        assert_eq!(
            needs("GET", "/apis/vmlet.dev/v1alpha1/namespaces/ns/virtualmachines/web"),
            Some(("vmlet.dev".into(), "virtualmachines".into(), vec!["get"]))
        );
        assert_eq!(
            needs("GET", "/apis/vmlet.dev/v1alpha1/virtualmachines"),
            Some(("vmlet.dev".into(), "virtualmachines".into(), vec!["list"]))
        );
        assert_eq!(
            needs("GET", "/api/v1/namespaces/ns/pods/p/exec"),
            Some(("".into(), "pods/exec".into(), vec!["get", "create"]))
        );
        assert!(allowed(
            "PATCH",
            "/apis/vmlet.dev/v1alpha1/namespaces/ns/virtualmachines/web"
        ));
        assert!(!allowed("DELETE", "/api/v1/namespaces/ns/pods/p"));
        assert!(!allowed("GET", "/api/v1/namespaces/ns/secrets/s"));
    }
}
