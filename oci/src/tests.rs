//! Tests without a network: references, the unpacking rules, blob checks, and the store fed from OCI layouts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tar::EntryType;
use vmlet_testkit::ScratchDir;
use vmlet_testkit::registry::{LayoutLayer, write_layout};

use crate::digest::{Mismatch, VerifyingReader};
use crate::layer::{Compression, Layer, LayerFailure};
use crate::unpack::{Budget, UnpackError, Whiteouts};
use crate::*;

// ---- tars built by hand, so that they can be as malicious as needed ----

/// A tar entry written with raw header fields: the `tar` crate's builder refuses `..` and absolute paths.
struct Entry<'a> {
    kind: EntryType,
    path: &'a str,
    link: Option<&'a str>,
    mode: u32,
    data: &'a [u8],
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        kind: EntryType::Regular,
        path,
        link: None,
        mode: 0o644,
        data,
    }
}

fn dir(path: &str) -> Entry<'_> {
    Entry {
        kind: EntryType::Directory,
        path,
        link: None,
        mode: 0o755,
        data: b"",
    }
}

fn link<'a>(kind: EntryType, path: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        kind,
        path,
        link: Some(target),
        mode: 0o777,
        data: b"",
    }
}

fn special(kind: EntryType, path: &str) -> Entry<'_> {
    Entry {
        kind,
        path,
        link: None,
        mode: 0o644,
        data: b"",
    }
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_old();
        let old = header.as_old_mut();
        old.name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        if let Some(link) = entry.link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_size(entry.data.len() as u64);
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn unpack_with(tar: &[u8], target: &Path, limits: Limits) -> Result<(), UnpackError> {
    crate::unpack::unpack(tar, target, &mut Budget::new(limits), Whiteouts::Apply)
}

fn unpack(tar: &[u8], target: &Path) -> Result<(), UnpackError> {
    unpack_with(tar, target, Limits::default())
}

fn refused(result: Result<(), UnpackError>) -> (PathBuf, &'static str) {
    match result {
        Err(UnpackError::Unsafe { path, why }) => (path, why),
        other => panic!("expected an unsafe entry, got {other:?}"),
    }
}

/// A target directory inside a scratch directory, with a sibling that entries must never reach.
fn target() -> (ScratchDir, PathBuf) {
    let scratch = ScratchDir::new();
    let target = scratch.join("rootfs");
    fs::create_dir(&target).unwrap();
    fs::create_dir(scratch.join("outside")).unwrap();
    (scratch, target)
}

const QCOW2: &[u8] = b"QFI\xfb\x00\x00\x00\x03 a tiny qcow2 header";

// ---- references ----

fn registry_ref(input: &str) -> RegistryRef {
    match ImageRef::parse(input).unwrap() {
        ImageRef::Registry(r) => r,
        other => panic!("{input} parsed as {other:?}"),
    }
}

fn problem(input: &str) -> ReferenceProblem {
    match ImageRef::parse(input) {
        Err(Error::InvalidReference { problem, .. }) => problem,
        other => panic!("{input} gave {other:?}"),
    }
}

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn registry_references_take_docker_defaults() {
    let cases = [
        (
            "127.0.0.1:5000/vmlet/debian:12",
            "127.0.0.1:5000",
            "vmlet/debian",
            Some("12"),
        ),
        (
            "quay.io/containerdisks/fedora:40",
            "quay.io",
            "containerdisks/fedora",
            Some("40"),
        ),
        ("debian", "docker.io", "library/debian", None),
        ("debian:12", "docker.io", "library/debian", Some("12")),
        (
            "kubevirt/fedora-cloud-container-disk-demo",
            "docker.io",
            "kubevirt/fedora-cloud-container-disk-demo",
            None,
        ),
        ("docker.io/debian", "docker.io", "library/debian", None),
        (
            "index.docker.io/library/debian:latest",
            "docker.io",
            "library/debian",
            Some("latest"),
        ),
        ("localhost/disk", "localhost", "disk", None),
        // Without a slash a port is a tag, as Docker reads it.
        ("localhost:5000", "docker.io", "library/localhost", Some("5000")),
        (
            "[::1]:5000/a/b_c.d-e:v1.0_rc-1",
            "[::1]:5000",
            "a/b_c.d-e",
            Some("v1.0_rc-1"),
        ),
        ("docker://quay.io/x/y:1", "quay.io", "x/y", Some("1")),
    ];
    for (input, registry, repository, tag) in cases {
        let r = registry_ref(input);
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            (registry, repository, tag),
            "{input}"
        );
        assert_eq!(r.digest, None);
    }
}

#[test]
fn a_digest_pins_the_content() {
    let r = registry_ref(&format!("quay.io/x/disk:1@sha256:{HEX}"));
    assert_eq!(r.digest.as_ref().map(Digest::hex), Some(HEX));
    assert_eq!(r.to_string(), format!("quay.io/x/disk:1@sha256:{HEX}"));
    let r = registry_ref(&format!("disk@sha256:{HEX}"));
    assert_eq!((r.repository.as_str(), r.tag.as_deref()), ("library/disk", None));
}

#[test]
fn loopback_registries_are_recognised() {
    for (input, loopback) in [
        ("127.0.0.1:5000/a", true),
        ("127.1.2.3/a", true),
        ("localhost:5000/a", true),
        ("[::1]:5000/a", true),
        ("quay.io/a", false),
        ("10.0.0.1:5000/a", false),
        ("localhost.example.com/a", false),
        ("a", false),
    ] {
        assert_eq!(registry_ref(input).is_loopback(), loopback, "{input}");
    }
}

#[test]
fn bad_references_say_what_is_wrong() {
    let cases = [
        ("", ReferenceProblem::Empty),
        ("Debian", ReferenceProblem::Name),
        ("quay.io/a//b", ReferenceProblem::Name),
        ("a/-b", ReferenceProblem::Name),
        ("a/b..c", ReferenceProblem::Name),
        ("a:-tag", ReferenceProblem::Tag),
        ("a:", ReferenceProblem::Tag),
        ("a@md5:0123", ReferenceProblem::DigestAlgorithm),
        ("a@sha256:0123", ReferenceProblem::DigestHex),
        ("quay.io:port/a", ReferenceProblem::Registry),
        ("oci:", ReferenceProblem::NoPath),
        ("oci-archive::tag", ReferenceProblem::NoPath),
    ];
    for (input, expected) in cases {
        assert_eq!(problem(input), expected, "{input:?}");
    }
    let long = format!("a/{}", "b".repeat(300));
    assert_eq!(problem(&long), ReferenceProblem::TooLong);
    let message = ImageRef::parse("Debian").unwrap_err().to_string();
    assert!(message.contains("\"Debian\""), "{message}");
}

#[test]
fn layout_references_follow_skopeo() {
    let layout = |input: &str| match ImageRef::parse(input).unwrap() {
        ImageRef::Layout(l) => l,
        other => panic!("{input} parsed as {other:?}"),
    };
    let l = layout("oci:/srv/images/debian");
    assert_eq!(
        (l.kind, l.path.as_path(), l.selector),
        (LayoutKind::Directory, Path::new("/srv/images/debian"), None)
    );
    let l = layout("oci:/srv/images/debian:12");
    assert_eq!(
        (l.path.as_path(), l.selector),
        (Path::new("/srv/images/debian"), Some(Selector::Tag("12".into())))
    );
    let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
    for input in [format!("oci:/srv/d:@sha256:{HEX}"), format!("oci:/srv/d@sha256:{HEX}")] {
        let l = layout(&input);
        assert_eq!(
            (l.path.as_path(), l.selector),
            (Path::new("/srv/d"), Some(Selector::Digest(digest.clone())))
        );
    }
    let l = layout("oci-archive:/srv/disk.tar:v1");
    assert_eq!(
        (l.kind, l.path.as_path()),
        (LayoutKind::Archive, Path::new("/srv/disk.tar"))
    );
    assert_eq!(l.to_string(), "oci-archive:/srv/disk.tar:v1");
    // A colon inside a directory name is part of the path.
    assert_eq!(layout("oci:relative/a:b/dir").path, Path::new("relative/a:b/dir"));
}

#[test]
fn the_default_policy_is_kubernetes() {
    let policy = |input: &str| PullPolicy::default_for(&ImageRef::parse(input).unwrap());
    assert_eq!(policy("debian"), PullPolicy::Always);
    assert_eq!(policy("debian:latest"), PullPolicy::Always);
    assert_eq!(policy("debian:12"), PullPolicy::IfNotPresent);
    assert_eq!(policy(&format!("debian@sha256:{HEX}")), PullPolicy::IfNotPresent);
    assert_eq!(policy("oci:/x"), PullPolicy::Always);
    assert_eq!(policy("oci:/x:1"), PullPolicy::IfNotPresent);
}

// ---- unpacking ----

#[test]
fn entries_outside_the_target_are_refused() {
    let (scratch, target) = target();
    for path in ["../outside/x", "a/../../outside/x", "/etc/vmlet-test-x"] {
        let (named, _) = refused(unpack(&tar_of(&[file(path, b"x")]), &target));
        assert_eq!(named, Path::new(path));
    }
    assert!(!scratch.join("outside/x").exists());
    assert!(!Path::new("/etc/vmlet-test-x").exists());
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let (scratch, target) = target();
    let outside = scratch.join("outside");
    let tar = tar_of(&[
        link(EntryType::Symlink, "escape", outside.to_str().unwrap()),
        file("escape/x", b"through the link"),
    ]);
    let (path, why) = refused(unpack(&tar, &target));
    assert_eq!(
        (path.as_path(), why),
        (Path::new("escape/x"), "a path through a symlink")
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_where_it_points() {
    let (scratch, target) = target();
    let victim = scratch.write("outside/victim", "unchanged");
    unpack(
        &tar_of(&[link(EntryType::Symlink, "f", victim.to_str().unwrap())]),
        &target,
    )
    .unwrap();
    unpack(&tar_of(&[file("f", b"new")]), &target).unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "unchanged");
    assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "new");
}

#[test]
fn hard_links_must_point_at_files_of_the_image() {
    let (scratch, target) = target();
    let victim = scratch.write("outside/victim", "secret");
    for to in ["../outside/victim", victim.to_str().unwrap(), "missing"] {
        let (path, _) = refused(unpack(&tar_of(&[link(EntryType::Link, "h", to)]), &target));
        assert_eq!(path, Path::new("h"));
    }
    // Nor at a symlink of the image, which could point anywhere.
    let tar = tar_of(&[
        link(EntryType::Symlink, "s", victim.to_str().unwrap()),
        link(EntryType::Link, "h", "s"),
    ]);
    refused(unpack(&tar, &target));
    let tar = tar_of(&[file("a", b"shared"), link(EntryType::Link, "b", "a")]);
    unpack(&tar, &target).unwrap();
    assert_eq!(fs::read_to_string(target.join("b")).unwrap(), "shared");
}

#[test]
fn device_nodes_and_fifos_are_refused_by_name() {
    let (_scratch, target) = target();
    for (kind, why) in [
        (EntryType::Char, "a device node"),
        (EntryType::Block, "a device node"),
        (EntryType::Fifo, "a fifo"),
    ] {
        let (path, reason) = refused(unpack(&tar_of(&[special(kind, "dev/thing")]), &target));
        assert_eq!((path.as_path(), reason), (Path::new("dev/thing"), why));
        assert!(!target.join("dev/thing").exists());
    }
}

#[test]
fn set_id_bits_are_stripped() {
    let (_scratch, target) = target();
    let mut setuid = file("bin/tool", b"#!/bin/sh\n");
    setuid.mode = 0o6755;
    unpack(&tar_of(&[setuid, file("etc/conf", b"x")]), &target).unwrap();
    let mode = |p: &str| fs::metadata(target.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/tool") & 0o7000, 0);
    crate::unpack::make_read_only(&target).unwrap();
    assert_eq!((mode("bin/tool"), mode("etc/conf"), mode("bin")), (0o555, 0o444, 0o555));
    crate::unpack::remove_tree(&target).unwrap();
}

#[test]
fn size_and_entry_bombs_stop_at_the_limits() {
    let (_scratch, target) = target();
    let big = vec![7u8; 5000];
    let limits = Limits {
        max_bytes: 4096,
        max_entries: 100,
    };
    match unpack_with(
        &tar_of(&[file("a", &big[..3000]), file("b", &big[..3000])]),
        &target,
        limits,
    ) {
        Err(UnpackError::TooLarge {
            limit: 4096,
            what: "bytes",
        }) => {}
        other => panic!("{other:?}"),
    }
    let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = names.iter().map(|n| file(n, b"")).collect();
    let limits = Limits {
        max_bytes: 4096,
        max_entries: 5,
    };
    match unpack_with(&tar_of(&entries), &target, limits) {
        Err(UnpackError::TooLarge {
            limit: 5,
            what: "entries",
        }) => {}
        other => panic!("{other:?}"),
    }
    // The size counted is the one declared, before any byte is written: a gzip bomb is stopped at its header.
    let bomb = gzip(&tar_of(&[file("disk/bomb.img", &vec![0u8; 1 << 20])]));
    let layer = Layer {
        digest: Digest::of(&bomb),
        size: bomb.len() as u64,
        compression: Compression::Gzip,
    };
    let limits = Limits {
        max_bytes: 1 << 16,
        max_entries: 100,
    };
    let result = crate::layer::apply(&bomb[..], &layer, &target, &mut Budget::new(limits), Whiteouts::Apply);
    assert!(
        matches!(
            result,
            Err(LayerFailure::Unpack(UnpackError::TooLarge { what: "bytes", .. }))
        ),
        "{result:?}"
    );
    assert!(!target.join("disk/bomb.img").exists());
}

#[test]
fn whiteouts_hide_what_lower_layers_made() {
    let (_scratch, target) = target();
    let lower = tar_of(&[
        file("a/x", b"1"),
        file("a/y", b"2"),
        file("b/z", b"3"),
        file("d/old", b"4"),
        file("keep", b"5"),
    ]);
    unpack(&lower, &target).unwrap();
    let upper = tar_of(&[
        file("a/.wh.x", b""),
        file(".wh.b", b""),
        file("d/new", b"6"),
        file("d/.wh..wh..opq", b""),
        // A whiteout never hides what its own layer made.
        file("keep2", b"7"),
        file(".wh.keep2", b""),
    ]);
    unpack(&upper, &target).unwrap();
    let exists = |p: &str| target.join(p).symlink_metadata().is_ok();
    assert!(!exists("a/x") && exists("a/y"));
    assert!(!exists("b"));
    assert!(!exists("d/old") && exists("d/new"));
    assert!(exists("keep") && exists("keep2"));
    assert!(!exists("a/.wh.x") && !exists("d/.wh..wh..opq"));
    let (path, _) = refused(unpack(&tar_of(&[file("a/.wh..", b"")]), &target));
    assert_eq!(path, Path::new("a/.wh.."));
}

#[test]
fn zeros_become_holes_and_the_content_survives() {
    let (_scratch, target) = target();
    let mut content = vec![0u8; 3 << 20];
    content[..4].copy_from_slice(b"QFI\xfb");
    content[(2 << 20) + 5] = 9;
    unpack(&tar_of(&[dir("disk"), file("disk/d.img", &content)]), &target).unwrap();
    assert_eq!(fs::read(target.join("disk/d.img")).unwrap(), content);
}

// ---- blob checks ----

#[test]
fn blobs_are_checked_for_size_and_digest_as_they_stream() {
    let blob = b"some layer bytes".to_vec();
    let digest = Digest::of(&blob);
    let finish = |bytes: &[u8], size: u64| VerifyingReader::new(bytes, digest.clone(), size).finish().unwrap();
    assert_eq!(finish(&blob, blob.len() as u64), Ok(blob.len() as u64));
    assert_eq!(
        finish(&blob[..4], blob.len() as u64),
        Err(Mismatch::TooShort { expected: 16, got: 4 })
    );
    assert_eq!(finish(&blob, 10), Err(Mismatch::TooLong { expected: 10 }));
    let mut other = blob.clone();
    other[0] ^= 1;
    assert_eq!(
        finish(&other, blob.len() as u64),
        Err(Mismatch::Digest {
            got: Digest::of(&other)
        })
    );
}

#[test]
fn a_corrupt_layer_is_reported_as_a_mismatch_not_as_a_bad_tar() {
    let (_scratch, target) = target();
    let good = gzip(&tar_of(&[file("disk/d.img", QCOW2)]));
    let layer = Layer {
        digest: Digest::of(&good),
        size: good.len() as u64,
        compression: Compression::Gzip,
    };
    let mut bad = good.clone();
    for byte in &mut bad[10..30] {
        *byte ^= 0x5a;
    }
    let result = crate::layer::apply(
        &bad[..],
        &layer,
        &target,
        &mut Budget::new(Limits::default()),
        Whiteouts::Apply,
    );
    assert!(
        matches!(result, Err(LayerFailure::Mismatch(Mismatch::Digest { .. }))),
        "{result:?}"
    );
}

// ---- registry plumbing without a registry ----

#[test]
fn credentials_come_from_the_docker_config_of_the_registry() {
    use oci_client::secrets::RegistryAuth;
    let json = br#"{"auths": {
        "127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"},
        "https://index.docker.io/v1/": {"username": "hub", "password": "secret"}
    }}"#;
    let basic = |auth| match auth {
        RegistryAuth::Basic(u, p) => (u, p),
        other => panic!("{other:?}"),
    };
    let creds = crate::registry::credentials_for(json, "127.0.0.1:5000").unwrap();
    assert_eq!(basic(creds), ("user".to_owned(), "pass".to_owned()));
    let creds = crate::registry::credentials_for(json, "docker.io").unwrap();
    assert_eq!(basic(creds), ("hub".to_owned(), "secret".to_owned()));
    assert!(matches!(
        crate::registry::credentials_for(json, "quay.io"),
        Ok(RegistryAuth::Anonymous)
    ));
    assert!(crate::registry::credentials_for(b"not json", "quay.io").is_err());
}

#[test]
fn client_errors_map_to_status_reasons() {
    use oci_client::errors::{OciDistributionError, OciEnvelope};
    let envelope = |code: &str| {
        let json = format!(r#"{{"errors":[{{"code":"{code}","message":"the registry says so"}}]}}"#);
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str::<OciEnvelope>(&json).unwrap(),
            url: "u".into(),
        }
    };
    let map = |err| crate::registry::client_error("r/x:1", err);
    assert!(matches!(map(envelope("MANIFEST_UNKNOWN")), Error::NotFound { .. }));
    assert!(matches!(map(envelope("NAME_UNKNOWN")), Error::NotFound { .. }));
    match map(envelope("DENIED")) {
        Error::Refused { message, .. } => assert!(message.contains("the registry says so"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        map(OciDistributionError::UnauthorizedError { url: "u".into() }),
        Error::Refused { .. }
    ));
    let server = |code| OciDistributionError::ServerError {
        code,
        url: "u".into(),
        message: "m".into(),
    };
    assert!(matches!(map(server(404)), Error::NotFound { .. }));
    assert!(matches!(map(server(403)), Error::Refused { .. }));
    assert!(matches!(map(server(503)), Error::Unreachable { .. }));
    assert!(matches!(map(server(500)), Error::Registry { .. }));
    assert!(map(server(500)).to_string().contains("r/x:1"));
}

// ---- the store, fed from OCI layouts ----

fn disk_layer(name: &str, content: &[u8]) -> LayoutLayer {
    LayoutLayer::tar_gzip(gzip(&tar_of(&[dir("disk"), file(&format!("disk/{name}"), content)])))
}

fn store(scratch: &ScratchDir) -> Store {
    Store::open(scratch.join("store")).unwrap()
}

fn pull(store: &Store, reference: &str) -> Result<Pulled, Error> {
    pull_with(store, reference, PullOptions::default())
}

fn pull_with(store: &Store, reference: &str, options: PullOptions) -> Result<Pulled, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(store.pull(&ImageRef::parse(reference).unwrap(), &options))
}

/// The image directories of the store, and whatever is left in its `tmp/`.
fn store_contents(store: &Store) -> (Vec<Digest>, Vec<PathBuf>) {
    let tmp = fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    (store.images().unwrap(), tmp)
}

#[test]
fn a_layout_image_is_unpacked_once_read_only_and_its_disk_found() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    let base = LayoutLayer::tar(tar_of(&[dir("etc"), file("etc/os-release", b"ID=test\n")]));
    let image = write_layout(&layout, "1", &[base, disk_layer("fedora.qcow2", QCOW2)]);
    let store = store(&scratch);
    let reference = format!("oci:{}:1", layout.display());

    let pulled = pull(&store, &reference).unwrap();
    assert_eq!(pulled.digest.to_string(), image.manifest_digest);
    assert_eq!(pulled.rootfs, store.image_dir(&pulled.digest).join("rootfs"));
    let disk = pulled.disk.clone().unwrap();
    assert_eq!(
        (disk.path, disk.format, disk.size),
        (
            pulled.rootfs.join("disk/fedora.qcow2"),
            DiskFormat::Qcow2,
            QCOW2.len() as u64
        )
    );
    let layer_bytes: u64 = image.layer_digests.iter().map(|d| blob_len(&layout, d)).sum();
    assert_eq!(pulled.downloaded_bytes, layer_bytes);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&pulled.rootfs.join("disk/fedora.qcow2")), 0o444);
    assert_eq!(mode(&pulled.rootfs.join("disk")), 0o555);
    assert_eq!(mode(&store.image_dir(&pulled.digest)), 0o555);

    // Pinned by tag: the layout is not even read again.
    fs::remove_dir_all(&layout).unwrap();
    let again = pull(&store, &reference).unwrap();
    assert_eq!((again.digest, again.downloaded_bytes), (pulled.digest.clone(), 0));
    assert_eq!(store_contents(&store), (vec![pulled.digest.clone()], vec![]));

    assert!(store.remove(&pulled.digest).unwrap());
    assert!(!store.remove(&pulled.digest).unwrap());
    assert_eq!(store_contents(&store), (vec![], vec![]));
    let options = PullOptions {
        policy: Some(PullPolicy::Never),
        ..PullOptions::default()
    };
    assert!(matches!(
        pull_with(&store, &reference, options),
        Err(Error::NotPresent { .. })
    ));
}

fn blob_len(layout: &Path, digest: &str) -> u64 {
    fs::metadata(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:")))
        .unwrap()
        .len()
}

#[test]
fn always_asks_the_source_but_fetches_no_blob_of_a_stored_digest() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    write_layout(&layout, "latest", &[disk_layer("d.img", b"raw disk")]);
    let store = store(&scratch);
    let reference = format!("oci:{}", layout.display());
    let first = pull(&store, &reference).unwrap();
    assert_eq!(first.disk.unwrap().format, DiskFormat::Raw);
    let second = pull(&store, &reference).unwrap();
    assert_eq!(second.downloaded_bytes, 0);
    // Always does ask: without the layout it fails.
    fs::remove_dir_all(&layout).unwrap();
    assert!(matches!(pull(&store, &reference), Err(Error::NotFound { .. })));
}

#[test]
fn an_archive_of_a_layout_is_a_source_too() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    let image = write_layout(&layout, "v1", &[disk_layer("d.qcow2", QCOW2)]);
    let archive = scratch.join("image.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout).unwrap();
    builder.finish().unwrap();
    let store = store(&scratch);
    let pulled = pull(&store, &format!("oci-archive:{}:v1", archive.display())).unwrap();
    assert_eq!(pulled.digest.to_string(), image.manifest_digest);
    assert_eq!(pulled.disk.unwrap().format, DiskFormat::Qcow2);
    // The unpacked archive is gone with the pull.
    assert_eq!(store_contents(&store).1, Vec::<PathBuf>::new());
}

#[test]
fn a_layer_with_an_unsafe_entry_leaves_nothing_in_the_store() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    let good = disk_layer("d.img", b"disk");
    let evil = LayoutLayer::tar(tar_of(&[file("disk/ok", b"fine"), file("../escape", b"evil")]));
    let image = write_layout(&layout, "1", &[good, evil]);
    let store = store(&scratch);
    match pull(&store, &format!("oci:{}:1", layout.display())) {
        Err(Error::UnsafeEntry {
            layer, path, reference, ..
        }) => {
            assert_eq!(layer.to_string(), image.layer_digests[1]);
            assert_eq!(path, Path::new("../escape"));
            assert!(reference.ends_with(":1"), "{reference}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store_contents(&store), (vec![], vec![]));
    assert!(!scratch.join("store/escape").exists() && !scratch.join("escape").exists());
}

#[test]
fn a_corrupted_blob_fails_its_digest_and_leaves_nothing() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    let image = write_layout(&layout, "1", &[disk_layer("d.img", &vec![3u8; 100_000])]);
    let blob = layout
        .join("blobs/sha256")
        .join(image.layer_digests[0].trim_start_matches("sha256:"));
    let mut bytes = fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let store = store(&scratch);
    match pull(&store, &format!("oci:{}:1", layout.display())) {
        Err(Error::DigestMismatch { digest, .. }) => assert_eq!(digest.to_string(), image.layer_digests[0]),
        other => panic!("{other:?}"),
    }
    assert_eq!(store_contents(&store), (vec![], vec![]));
}

#[test]
fn the_disk_must_be_one_file_under_disk_unless_named() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    let two = LayoutLayer::tar(tar_of(&[file("disk/a.img", b"a"), file("disk/b.qcow2", QCOW2)]));
    write_layout(&layout, "two", &[two]);
    write_layout(
        &layout,
        "none",
        &[LayoutLayer::tar(tar_of(&[file("boot/vmlinuz", b"k")]))],
    );
    let store = store(&scratch);
    let at = |tag: &str| format!("oci:{}:{tag}", layout.display());
    match pull(&store, &at("two")) {
        Err(Error::SeveralDisks { disks, .. }) => {
            assert_eq!(disks, [PathBuf::from("/disk/a.img"), PathBuf::from("/disk/b.qcow2")]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(pull(&store, &at("none")), Err(Error::NoDisk { .. })));
    assert_eq!(store_contents(&store), (vec![], vec![]));
    let named = PullOptions {
        disk: DiskLookup::At("/disk/b.qcow2".into()),
        ..PullOptions::default()
    };
    assert_eq!(
        pull_with(&store, &at("two"), named).unwrap().disk.unwrap().format,
        DiskFormat::Qcow2
    );
    let skip = PullOptions {
        disk: DiskLookup::Skip,
        ..PullOptions::default()
    };
    assert_eq!(pull_with(&store, &at("none"), skip).unwrap().disk, None);
}

#[test]
fn concurrent_pulls_of_one_image_unpack_it_once() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    write_layout(&layout, "1", &[disk_layer("d.img", &vec![1u8; 1 << 20])]);
    let store = store(&scratch);
    let reference = ImageRef::parse(&format!("oci:{}:1", layout.display())).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = PullOptions::default();
    let (a, b) =
        runtime.block_on(async { tokio::join!(store.pull(&reference, &options), store.pull(&reference, &options)) });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.digest, b.digest);
    assert!(
        a.downloaded_bytes == 0 || b.downloaded_bytes == 0,
        "{} and {}",
        a.downloaded_bytes,
        b.downloaded_bytes
    );
    assert_eq!(store_contents(&store), (vec![a.digest], vec![]));
}

#[test]
fn a_layout_with_several_images_needs_a_tag() {
    let scratch = ScratchDir::new();
    let layout = scratch.join("layout");
    write_layout(&layout, "a", &[disk_layer("d.img", b"a")]);
    write_layout(&layout, "b", &[disk_layer("d.img", b"b")]);
    let store = store(&scratch);
    assert!(matches!(
        pull(&store, &format!("oci:{}", layout.display())),
        Err(Error::InvalidImage { .. })
    ));
    assert!(matches!(
        pull(&store, &format!("oci:{}:c", layout.display())),
        Err(Error::NotFound { .. })
    ));
}
