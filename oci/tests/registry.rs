//! Pulls from a real registry (the distribution server Debian packages as `docker-registry`) on a loopback port:
//! by tag and by digest, from the cache, with and without credentials, through a connection that breaks, and of a
//! blob corrupted in the registry's storage. Each test starts its own registry and stops it when done.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use vmlet_oci::{DiskFormat, Error, ImageRef, PullOptions, PullPolicy, Pulled, RegistryOptions, Store};
use vmlet_testkit::ScratchDir;
use vmlet_testkit::registry::{CuttingProxy, LayoutImage, LayoutLayer, Registry, write_layout};

const QCOW2_HEADER: &[u8] = b"QFI\xfb\x00\x00\x00\x03";

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Bytes that do not compress, from a fixed seed.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Builds a one-disk image as an OCI layout and pushes it as `name_tag`.
fn push_disk(registry: &Registry, scratch: &ScratchDir, name_tag: &str, layer: LayoutLayer) -> LayoutImage {
    let layout = scratch.join(format!("layout-{}", name_tag.replace(['/', ':'], "-")));
    let image = write_layout(&layout, "t", &[layer]);
    registry.push(&format!("oci:{}:t", layout.display()), name_tag);
    image
}

fn qcow2_layer() -> LayoutLayer {
    let mut disk = QCOW2_HEADER.to_vec();
    disk.extend(noise(64 << 10));
    LayoutLayer::tar_gzip(gzip(&tar_of(&[("disk/disk.qcow2", &disk)])))
}

fn pull(store: &Store, reference: &str, options: &PullOptions) -> Result<Pulled, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(store.pull(&ImageRef::parse(reference).unwrap(), options))
}

fn policy(policy: PullPolicy) -> PullOptions {
    PullOptions {
        policy: Some(policy),
        ..PullOptions::default()
    }
}

fn assert_store_empty(store: &Store) {
    assert_eq!(store.images().unwrap(), vec![]);
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "tmp/ is not empty"
    );
}

#[test]
fn pulls_by_tag_and_by_digest_and_a_cached_image_downloads_nothing() {
    let registry = Registry::start();
    let scratch = ScratchDir::new();
    let image = push_disk(&registry, &scratch, "vmlet/disk:1", qcow2_layer());
    let store = Store::open(scratch.join("store")).unwrap();
    let by_tag = format!("{}/vmlet/disk:1", registry.host());

    let pulled = pull(&store, &by_tag, &policy(PullPolicy::Always)).unwrap();
    assert_eq!(pulled.digest.to_string(), image.manifest_digest);
    assert_eq!(pulled.disk.as_ref().unwrap().format, DiskFormat::Qcow2);
    assert!(pulled.downloaded_bytes > 0);
    assert_eq!(registry.blob_gets().len(), 1, "one layer, one GET");

    // Always resolves the tag again, and finds the digest stored.
    let manifests = registry.manifest_requests().len();
    let again = pull(&store, &by_tag, &policy(PullPolicy::Always)).unwrap();
    assert_eq!((again.digest, again.downloaded_bytes), (pulled.digest.clone(), 0));
    assert!(registry.manifest_requests().len() > manifests);
    assert_eq!(
        registry.blob_gets().len(),
        1,
        "a cached image fetched a blob:\n{}",
        registry.log()
    );

    // IfNotPresent (the default for a tag other than latest) asks nothing of the registry.
    let manifests = registry.manifest_requests().len();
    let cached = pull(&store, &by_tag, &PullOptions::default()).unwrap();
    assert_eq!(cached.downloaded_bytes, 0);
    assert_eq!(registry.manifest_requests().len(), manifests);

    // By digest, into an empty store.
    let other = Store::open(scratch.join("other-store")).unwrap();
    let by_digest = format!("{}/vmlet/disk@{}", registry.host(), image.manifest_digest);
    let pulled = pull(&other, &by_digest, &PullOptions::default()).unwrap();
    assert_eq!(pulled.digest.to_string(), image.manifest_digest);
    assert!(pulled.downloaded_bytes > 0);
    assert_eq!(registry.blob_gets().len(), 2);
    // A digest pins the content: the second pull asks nothing.
    let manifests = registry.manifest_requests().len();
    assert_eq!(
        pull(&other, &by_digest, &PullOptions::default())
            .unwrap()
            .downloaded_bytes,
        0
    );
    assert_eq!(registry.manifest_requests().len(), manifests);
}

#[test]
fn an_image_that_does_not_exist_is_not_found() {
    let registry = Registry::start();
    let scratch = ScratchDir::new();
    push_disk(&registry, &scratch, "vmlet/disk:1", qcow2_layer());
    let store = Store::open(scratch.join("store")).unwrap();
    for reference in [
        format!("{}/vmlet/disk:2", registry.host()),
        format!("{}/vmlet/nothing:1", registry.host()),
    ] {
        match pull(&store, &reference, &PullOptions::default()) {
            Err(err @ Error::NotFound { .. }) => assert!(err.to_string().contains(&reference), "{err}"),
            other => panic!("{reference}: {other:?}"),
        }
    }
    assert_store_empty(&store);
}

#[test]
fn a_registry_that_wants_credentials_refuses_without_them() {
    let registry = Registry::start_with_basic_auth("vmlet", "s3cret");
    let scratch = ScratchDir::new();
    push_disk(&registry, &scratch, "vmlet/disk:1", qcow2_layer());
    let store = Store::open(scratch.join("store")).unwrap();
    let reference = format!("{}/vmlet/disk:1", registry.host());
    match pull(&store, &reference, &PullOptions::default()) {
        Err(err @ Error::Refused { .. }) => assert!(err.to_string().contains(&reference), "{err}"),
        other => panic!("{other:?}"),
    }
    let with_auth = |user_password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(user_password);
        let json = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.host());
        let path = scratch.write(&format!("config-{user_password}.json"), json);
        PullOptions {
            registry: RegistryOptions {
                auth_file: Some(path),
                ..RegistryOptions::default()
            },
            ..PullOptions::default()
        }
    };
    assert!(matches!(
        pull(&store, &reference, &with_auth("vmlet:wrong")),
        Err(Error::Refused { .. })
    ));
    assert_store_empty(&store);
    let pulled = pull(&store, &reference, &with_auth("vmlet:s3cret")).unwrap();
    assert!(pulled.downloaded_bytes > 0);
}

#[test]
fn a_registry_that_is_gone_is_unreachable() {
    let mut registry = Registry::start();
    let host = registry.host();
    registry.stop();
    let scratch = ScratchDir::new();
    let store = Store::open(scratch.join("store")).unwrap();
    match pull(&store, &format!("{host}/vmlet/disk:1"), &PullOptions::default()) {
        Err(Error::Unreachable { detail, .. }) => assert!(detail.to_lowercase().contains("connect"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_connection_lost_mid_pull_fails_it_and_leaves_nothing() {
    let registry = Registry::start();
    let scratch = ScratchDir::new();
    let big = noise(8 << 20);
    // Compressed already: skopeo would compress a plain tar layer on the way, changing its digest.
    let layer = LayoutLayer::tar_gzip(gzip(&tar_of(&[("disk/big.img", &big)])));
    let image = push_disk(&registry, &scratch, "vmlet/big:1", layer);
    let proxy = CuttingProxy::start(registry.addr(), 1 << 20);
    let store = Store::open(scratch.join("store")).unwrap();
    let reference = format!("{}/vmlet/big:1", proxy.addr());
    match pull(&store, &reference, &PullOptions::default()) {
        Err(Error::ConnectionLost { digest, .. }) => assert_eq!(digest.to_string(), image.layer_digests[0]),
        other => panic!("{other:?}"),
    }
    assert_store_empty(&store);
    drop(proxy);
    // The same pull straight from the registry works.
    let direct = format!("{}/vmlet/big:1", registry.host());
    assert_eq!(
        pull(&store, &direct, &PullOptions::default())
            .unwrap()
            .disk
            .unwrap()
            .size,
        big.len() as u64
    );
}

#[test]
fn a_blob_corrupted_in_the_registry_fails_its_digest() {
    let registry = Registry::start();
    let scratch = ScratchDir::new();
    let image = push_disk(&registry, &scratch, "vmlet/disk:1", qcow2_layer());
    let blob = registry.blob_path(&image.layer_digests[0]);
    let size = std::fs::metadata(&blob).unwrap().len() as usize;
    // Same size, other bytes: the registry serves the file as it is.
    overwrite(&blob, &noise(size + 1)[1..]);
    let store = Store::open(scratch.join("store")).unwrap();
    match pull(
        &store,
        &format!("{}/vmlet/disk:1", registry.host()),
        &PullOptions::default(),
    ) {
        Err(Error::DigestMismatch { digest, found, .. }) => {
            assert_eq!(digest.to_string(), image.layer_digests[0]);
            assert!(found.contains("hashes to"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    assert_store_empty(&store);
}

fn overwrite(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}
