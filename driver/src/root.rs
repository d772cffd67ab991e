//! The embedded driver's root directory: where libvirt keeps its configuration, state and logs for this pod, the
//! `qemu.conf` the driver writes there, and the link to the node's shared capability cache.
//!
//! libvirt's layout under the root (for `qemu:///embed?root=ROOT`): `ROOT/etc/qemu.conf`, domain definitions in
//! `ROOT/etc/qemu/`, runtime state in `ROOT/run/qemu/`, QEMU's own log in `ROOT/log/qemu/`, the
//! capability cache in `ROOT/cache/qemu/capabilities/`.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// libvirt's QEMU driver configuration for a container: no systemd, no D-Bus, no daemons besides QEMU.
pub const QEMU_CONF: &str = r#"# Written by vmlet-driver at every start; changes here are lost.

# QEMU runs as vmlet-driver does: the pod, not a uid, is the isolation boundary.
user = "root"
group = "root"

# The pod's files already have the owners they need: nothing to chown at start nor to restore at stop.
dynamic_ownership = 0
remember_owner = 0

# No SELinux or AppArmor labelling inside a container.
security_driver = "none"

# The container runtime owns the pod's cgroup; libvirt makes none of its own (there is no systemd to ask).
cgroup_controllers = [ ]

# No private /dev per QEMU: the pod's mount namespace is private already.
namespaces = [ ]

# QEMU's stdout and stderr go to a plain file under log/: no virtlogd.
stdio_handler = "file"
"#;

/// Writes `qemu.conf` under `root` and links libvirt's capability cache to `cache_dir`, creating both as needed.
///
/// The cache is what makes a start fast: without it libvirt probes every QEMU binary (about 8 s here) before its
/// first answer. libvirt checks each entry against the ctime of the QEMU binary and of its own library and probes
/// again when either changed, so sharing the directory between pods that run the same image is safe. It rewrites a
/// stale entry in place rather than atomically: two launchers probing at once may both probe, and one that reads a
/// half-written entry fails to parse it and probes again; neither ever uses a wrong answer.
pub fn prepare(root: &Path, cache_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/qemu.conf"), QEMU_CONF)?;
    std::fs::create_dir_all(cache_dir)?;
    let link = capabilities_dir(root);
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&link)?,
        Ok(_) => std::fs::remove_file(&link)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(cache_dir, &link)
}

/// The longest path a unix socket can be bound at: `sun_path`'s 108 bytes less the terminating NUL.
const SOCKET_PATH_MAX: usize = 107;

/// The most libvirt adds under its root for a domain's sockets: `/lib/qemu/domain-ID-SHORTNAME/monitor.sock`,
/// libvirt's short name being the domain's first 20 bytes, and an ID of up to 5 digits.
const SOCKETS_UNDER_ROOT_MAX: usize = "/lib/qemu/domain-99999-".len() + 20 + "/monitor.sock".len();

/// Where the short names of long roots are: one symbolic link per root, named by a hash of the root's path. Not by
/// the driver's pid: each pod has a PID namespace of its own, where every driver has the same few pids.
pub const SHORT_ROOTS: &str = "/run/vmlet-driver";

/// Whether libvirt, given `root`, could make a socket whose path does not fit a unix socket address. A pod's run
/// directory on Kubernetes (`/var/run/vmlet`) leaves plenty of room; a standalone pod's, under its state folder
/// and named after the VM, may not.
pub fn too_long_for_sockets(root: &Path) -> bool {
    root.as_os_str().len() + SOCKETS_UNDER_ROOT_MAX > SOCKET_PATH_MAX
}

/// The short link's name for `root`: distinct roots (distinct pods) get distinct links, and a pod's next driver
/// the same one again.
fn short_name(links: &Path, root: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same name in every process of one build, which is all that shares the folder.
    let mut hasher = std::hash::DefaultHasher::new();
    root.hash(&mut hasher);
    links.join(format!("{:016x}", hasher.finish()))
}

/// The name to give libvirt for `root`: `root` itself when the sockets under it fit, else a short symbolic link to
/// it (`/run/vmlet-driver/HASH`), made now. libvirt builds every path from the root as named, so the files stay in
/// the run directory, and go with it, while the sockets' paths stay short.
///
/// Links whose run directory is gone are removed on the way; a link that still leads somewhere is never touched,
/// since libvirt, finding its root missing, would make a directory in the link's place and run there.
pub fn name_for_libvirt(root: &Path) -> io::Result<PathBuf> {
    name_in(Path::new(SHORT_ROOTS), root)
}

/// [`name_for_libvirt`] with the links in `links`.
fn name_in(links: &Path, root: &Path) -> io::Result<PathBuf> {
    if !too_long_for_sockets(root) {
        return Ok(root.to_owned());
    }
    std::fs::create_dir_all(links)?;
    for entry in std::fs::read_dir(links)? {
        let path = entry?.path();
        let dangling = path.is_symlink() && !path.exists();
        if dangling {
            let _ = std::fs::remove_file(&path);
        }
    }
    let link = short_name(links, root);
    match std::fs::symlink_metadata(&link) {
        // What a libvirt left whose link went while it ran: nothing of a pod's lives there.
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&link)?,
        Ok(_) => std::fs::remove_file(&link)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    std::os::unix::fs::symlink(root, &link)?;
    Ok(link)
}

/// Where libvirt caches QEMU's capabilities under `root`.
pub fn capabilities_dir(root: &Path) -> PathBuf {
    root.join("cache/qemu/capabilities")
}

/// The URI of the embedded QEMU driver rooted at `root`. The path is a query parameter, so every byte but the
/// unreserved ones and `/` is percent-encoded.
pub fn embed_uri(root: &Path) -> String {
    let mut uri = String::from("qemu:///embed?root=");
    for &byte in root.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use vmlet_testkit::ScratchDir;

    use super::*;

    /// The settings [`QEMU_CONF`] must make for libvirt to run inside a pod, as `key = value` lines.
    const REQUIRED_SETTINGS: [(&str, &str); 8] = [
        ("user", "\"root\""),
        ("group", "\"root\""),
        ("dynamic_ownership", "0"),
        ("remember_owner", "0"),
        ("security_driver", "\"none\""),
        ("cgroup_controllers", "[ ]"),
        ("namespaces", "[ ]"),
        ("stdio_handler", "\"file\""),
    ];

    fn settings(conf: &str) -> Vec<(&str, &str)> {
        conf.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (key, value) = line.split_once('=').expect("a key = value line");
                (key.trim(), value.trim())
            })
            .collect()
    }

    #[test]
    fn qemu_conf_makes_exactly_the_required_settings() {
        let mut made = settings(QEMU_CONF);
        made.sort_unstable();
        let mut required = REQUIRED_SETTINGS.to_vec();
        required.sort_unstable();
        assert_eq!(made, required);
    }

    #[test]
    fn a_root_is_named_by_a_short_link_only_when_its_sockets_would_not_fit() {
        assert!(!too_long_for_sockets(Path::new("/var/run/vmlet/libvirt")));
        // The default state folder of standalone mode, a VM of 13 bytes in `default`.
        let standalone = Path::new("/var/lib/vmlet/standalone/pods/default_vmi-ephemeral/run/libvirt");
        assert!(too_long_for_sockets(standalone));
        let longest_fitting = format!("/{}", "r".repeat(SOCKET_PATH_MAX - SOCKETS_UNDER_ROOT_MAX - 1));
        assert!(!too_long_for_sockets(Path::new(&longest_fitting)));
        assert!(too_long_for_sockets(Path::new(&format!("{longest_fitting}r"))));
        // The link itself leaves room.
        assert!(!too_long_for_sockets(&short_name(Path::new(SHORT_ROOTS), standalone)));
    }

    #[test]
    fn a_long_root_gets_a_link_that_leads_to_it() {
        let scratch = ScratchDir::new();
        let links = scratch.join("links");
        let root = scratch.join(format!("{}/libvirt", "long-".repeat(12)));
        std::fs::create_dir_all(&root).unwrap();
        let named = name_in(&links, &root).unwrap();
        assert_eq!(named, short_name(&links, &root));
        assert_eq!(std::fs::read_link(&named).unwrap(), root);
        // Again (the pod's next driver): the link is made anew.
        assert_eq!(name_in(&links, &root).unwrap(), named);
        let short = scratch.join("libvirt");
        assert_eq!(name_in(&links, &short).unwrap(), short);
    }

    #[test]
    fn pods_with_the_same_pids_keep_their_own_links() {
        let scratch = ScratchDir::new();
        let links = scratch.join("links");
        let long = |pod: &str| scratch.join(format!("{}/{pod}/run/libvirt", "long-".repeat(12)));
        let (one, two, gone) = (long("one"), long("two"), long("gone"));
        for root in [&one, &two, &gone] {
            std::fs::create_dir_all(root).unwrap();
        }
        let named_one = name_in(&links, &one).unwrap();
        let named_gone = name_in(&links, &gone).unwrap();
        std::fs::remove_dir_all(gone.parent().unwrap().parent().unwrap()).unwrap();
        // A libvirt whose link was taken away made a directory in its place.
        let stale = short_name(&links, &two);
        std::fs::create_dir_all(stale.join("run/qemu")).unwrap();

        let named_two = name_in(&links, &two).unwrap();
        assert_ne!(named_one, named_two);
        assert_eq!(std::fs::read_link(&named_one).unwrap(), one, "another pod's link stays");
        assert_eq!(std::fs::read_link(&named_two).unwrap(), two);
        assert!(!named_gone.is_symlink(), "the link of a pod that is gone is swept");
    }

    #[test]
    fn uri_encodes_the_root() {
        assert_eq!(
            embed_uri(Path::new("/run/vmlet/libvirt")),
            "qemu:///embed?root=/run/vmlet/libvirt"
        );
        assert_eq!(
            embed_uri(Path::new("/tmp/a b&c=d%e")),
            "qemu:///embed?root=/tmp/a%20b%26c%3Dd%25e"
        );
        assert_eq!(
            embed_uri(Path::new(OsStr::from_bytes(b"/tmp/\xff"))),
            "qemu:///embed?root=/tmp/%FF"
        );
    }

    #[test]
    fn prepare_writes_the_config_and_links_the_cache() {
        let scratch = ScratchDir::new();
        let root = scratch.join("libvirt");
        let cache = scratch.join("node-cache/image-1");
        prepare(&root, &cache).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("etc/qemu.conf")).unwrap(), QEMU_CONF);
        assert!(cache.is_dir());
        assert_eq!(std::fs::read_link(capabilities_dir(&root)).unwrap(), cache);

        // A restarted launcher may be given another cache, and may find a directory libvirt made itself.
        let other = scratch.join("node-cache/image-2");
        prepare(&root, &other).unwrap();
        assert_eq!(std::fs::read_link(capabilities_dir(&root)).unwrap(), other);
        std::fs::remove_file(capabilities_dir(&root)).unwrap();
        std::fs::create_dir(capabilities_dir(&root)).unwrap();
        std::fs::write(capabilities_dir(&root).join("stale.xml"), "").unwrap();
        prepare(&root, &cache).unwrap();
        assert_eq!(std::fs::read_link(capabilities_dir(&root)).unwrap(), cache);
        assert!(cache.is_dir());
    }
}
