//! The image store: each image once per machine, by manifest digest, unpacked read-only.
//!
//! ```text
//! ROOT/sha256-<hex>/rootfs/…         the image's files (0444 / 0555, directories 0555)
//! ROOT/sha256-<hex>/manifest.json    the image manifest it was unpacked from
//! ROOT/refs/<sha256 of reference>    reference → digest, for IfNotPresent and Never
//! ROOT/locks/sha256-<hex>.lock       flock'ed while the image is unpacked or removed
//! ROOT/tmp/                          unpacking in progress, renamed into place when complete
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use oci_client::manifest::OciImageManifest;

use crate::digest::Digest;
use crate::disk::{self, Disk, DiskLookup};
use crate::error::Error;
use crate::layer::Layer;
use crate::layout::LayoutSource;
use crate::reference::{ImageRef, Selector};
use crate::registry::{RegistryOptions, RegistrySource};
use crate::unpack::{self, Budget, Limits, TempTree};

/// When to ask the source, as Kubernetes' `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference every time; blobs are fetched only for a digest not in the store.
    Always,
    /// Ask the source only if the reference was never pulled (or its image was removed).
    IfNotPresent,
    /// Never ask the source; fail if the store does not hold the image.
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `Always` for `:latest` or no tag, `IfNotPresent` for another tag or a digest.
    pub fn default_for(reference: &ImageRef) -> PullPolicy {
        if reference.pins_content() {
            PullPolicy::IfNotPresent
        } else {
            PullPolicy::Always
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// `None` for [`PullPolicy::default_for`] the reference.
    pub policy: Option<PullPolicy>,
    pub registry: RegistryOptions,
    pub limits: Limits,
    pub disk: DiskLookup,
}

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The reference as pulled, with defaults filled in (`docker.io/library/debian:12`).
    pub reference: String,
    /// The image manifest's digest (the linux/amd64 one when the reference names an index).
    pub digest: Digest,
    /// The image's files, read-only.
    pub rootfs: PathBuf,
    /// `None` only with [`DiskLookup::Skip`].
    pub disk: Option<Disk>,
    /// Layer bytes fetched by this pull (read from the files of a layout); 0 when the store had the image.
    pub downloaded_bytes: u64,
}

/// A directory of images, shared by every pull on the machine.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Distinguishes the temporary directories of one process.
static SCRATCH: AtomicU64 = AtomicU64::new(0);

enum Source {
    Registry(Box<RegistrySource>),
    Layout(Arc<LayoutSource>),
}

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes what dead processes left in its `tmp/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, Error> {
        let store = Store { root: root.into() };
        for dir in [
            store.root.clone(),
            store.root.join("refs"),
            store.root.join("locks"),
            store.tmp(),
        ] {
            fs::create_dir_all(&dir).map_err(|source| Error::Store {
                action: "create",
                path: dir.clone(),
                source,
            })?;
        }
        store.sweep_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the image of `digest` is (or would be).
    pub fn image_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.dir_name())
    }

    /// Whether the store holds the image of `digest`.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.image_dir(digest).join("rootfs").is_dir()
    }

    /// The digests of the images in the store.
    pub fn images(&self) -> Result<Vec<Digest>, Error> {
        let entries = fs::read_dir(&self.root).map_err(|source| Error::Store {
            action: "list",
            path: self.root.clone(),
            source,
        })?;
        let mut digests: Vec<Digest> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().and_then(Digest::from_dir_name))
            .collect();
        digests.sort();
        Ok(digests)
    }

    /// Pulls `reference` into the store (or finds it there) and locates its disk.
    pub async fn pull(&self, reference: &ImageRef, options: &PullOptions) -> Result<Pulled, Error> {
        let name = reference.to_string();
        let policy = options.policy.unwrap_or_else(|| PullPolicy::default_for(reference));
        if policy != PullPolicy::Always {
            if let Some(digest) = self.known_digest(reference) {
                tracing::debug!(reference = %name, %digest, "image in the store, source not asked");
                return self.pulled(name, digest, 0, &options.disk);
            }
            if policy == PullPolicy::Never {
                return Err(Error::NotPresent { reference: name });
            }
        }
        let source = match reference {
            ImageRef::Registry(image) => Source::Registry(Box::new(RegistrySource::new(image, &options.registry)?)),
            ImageRef::Layout(layout) => {
                let (layout, scratch, limits) = (layout.clone(), self.scratch("archive"), options.limits);
                let opened = blocking(move || LayoutSource::open(&layout, scratch, limits)).await?;
                Source::Layout(Arc::new(opened))
            }
        };
        let (digest, manifest) = match &source {
            Source::Registry(registry) => registry.resolve().await?,
            Source::Layout(layout) => {
                let layout = layout.clone();
                blocking(move || layout.resolve()).await?
            }
        };
        let mut downloaded = 0;
        if !self.contains(&digest) {
            let lock = self.lock(&name, &digest).await?;
            // Another pull of the same image may have finished while this one waited for the lock.
            if !self.contains(&digest) {
                downloaded = self.unpack(&source, &name, &digest, &manifest, options).await?;
            }
            drop(lock);
        }
        self.record(&name, &digest)?;
        self.pulled(name, digest, downloaded, &options.disk)
    }

    /// Removes the image of `digest` and the references that pointed to it; returns whether it was there. The
    /// caller knows whether a VM still uses it.
    pub fn remove(&self, digest: &Digest) -> Result<bool, Error> {
        let name = digest.to_string();
        let _lock = lock_file(&self.lock_path(digest)).map_err(Error::io(&name, "lock", self.lock_path(digest)))?;
        let dir = self.image_dir(digest);
        let doomed = self.scratch("removing");
        // Out of sight at once, so that no pull takes a half-removed image for a cached one. Moving a directory to
        // another parent rewrites its `..`, which only root may do in a read-only one.
        match set_mode(&dir, 0o755) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            result => result.map_err(Error::io(&name, "make writable", &dir))?,
        }
        match fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(Error::io(&name, "move away", &dir)(err)),
        }
        unpack::remove_tree(&doomed).map_err(Error::io(&name, "remove", &doomed))?;
        let refs = self.root.join("refs");
        for entry in fs::read_dir(&refs).map_err(Error::io(&name, "list", &refs))?.flatten() {
            if read_ref(&entry.path()).as_ref() == Some(digest) {
                fs::remove_file(entry.path()).map_err(Error::io(&name, "remove", entry.path()))?;
            }
        }
        Ok(true)
    }

    /// The digest of an image the store holds for `reference`, without asking the source.
    fn known_digest(&self, reference: &ImageRef) -> Option<Digest> {
        let pinned = match reference {
            ImageRef::Registry(image) => image.digest.clone(),
            ImageRef::Layout(layout) => match &layout.selector {
                Some(Selector::Digest(digest)) => Some(digest.clone()),
                _ => None,
            },
        };
        pinned
            .filter(|digest| self.contains(digest))
            .or_else(|| read_ref(&self.ref_path(&reference.to_string())))
            .filter(|digest| self.contains(digest))
    }

    async fn unpack(
        &self,
        source: &Source,
        name: &str,
        digest: &Digest,
        manifest: &OciImageManifest,
        options: &PullOptions,
    ) -> Result<u64, Error> {
        let layers = manifest
            .layers
            .iter()
            .map(|d| Layer::from_descriptor(name, d))
            .collect::<Result<Vec<_>, _>>()?;
        if layers.is_empty() {
            return Err(Error::InvalidImage {
                reference: name.to_owned(),
                detail: "the image has no layers".to_owned(),
            });
        }
        // Only the lock holder uses this name, so whatever is there was left by a pull that died.
        let tmp_path = self.tmp().join(digest.dir_name());
        let tmp = TempTree::create(tmp_path.clone()).map_err(Error::io(name, "create", &tmp_path))?;
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir(&rootfs).map_err(Error::io(name, "create", &rootfs))?;
        let mut budget = Budget::new(options.limits);
        let mut downloaded = 0;
        for layer in &layers {
            tracing::debug!(reference = name, layer = %layer.digest, size = layer.size, "applying layer");
            let size;
            (size, budget) = match source {
                Source::Registry(registry) => registry.apply_layer(layer, &rootfs, budget).await?,
                Source::Layout(layout) => {
                    let (layout, layer, rootfs) = (layout.clone(), layer.clone(), rootfs.clone());
                    blocking(move || layout.apply_layer(&layer, &rootfs, &mut budget).map(|n| (n, budget))).await?
                }
            };
            downloaded += size;
        }
        // An image without the disk the caller needs is not worth keeping.
        disk::find(name, &rootfs, &options.disk)?;
        let manifest_path = tmp.path().join("manifest.json");
        let json = serde_json::to_vec_pretty(manifest).unwrap_or_default();
        fs::write(&manifest_path, json).map_err(Error::io(name, "write", &manifest_path))?;
        unpack::make_read_only(&rootfs).map_err(Error::io(name, "make read-only", &rootfs))?;
        unpack::make_read_only(&manifest_path).map_err(Error::io(name, "make read-only", &manifest_path))?;
        let dir = self.image_dir(digest);
        // The rename is what makes the image exist: a pull that fails before it leaves nothing in the store. The
        // image directory itself is made read-only after the move, which needs it writable.
        fs::rename(tmp.path(), &dir).map_err(Error::io(name, "move into place", &dir))?;
        tmp.keep();
        set_mode(&dir, 0o555).map_err(Error::io(name, "make read-only", &dir))?;
        tracing::info!(reference = name, %digest, bytes = downloaded, "image unpacked");
        Ok(downloaded)
    }

    fn pulled(
        &self,
        reference: String,
        digest: Digest,
        downloaded_bytes: u64,
        lookup: &DiskLookup,
    ) -> Result<Pulled, Error> {
        let rootfs = self.image_dir(&digest).join("rootfs");
        let disk = disk::find(&reference, &rootfs, lookup)?;
        Ok(Pulled {
            reference,
            digest,
            rootfs,
            disk,
            downloaded_bytes,
        })
    }

    async fn lock(&self, name: &str, digest: &Digest) -> Result<Flock<File>, Error> {
        let path = self.lock_path(digest);
        let (name, locked) = (name.to_owned(), path.clone());
        // Waits as long as the other pull takes: that pull is downloading what this one needs.
        blocking(move || lock_file(&locked).map_err(Error::io(&name, "lock", &locked))).await
    }

    /// Remembers which image `name` resolved to, for later pulls that do not ask the source.
    fn record(&self, name: &str, digest: &Digest) -> Result<(), Error> {
        let path = self.ref_path(name);
        let tmp = self.scratch("ref");
        let json = serde_json::json!({ "reference": name, "digest": digest.to_string() }).to_string();
        fs::write(&tmp, json).map_err(Error::io(name, "write", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io(name, "write", &path))
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root.join("refs").join(Digest::of(name.as_bytes()).hex())
    }

    fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("locks").join(format!("{}.lock", digest.dir_name()))
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh name in `tmp/` that records this process, so that a later [`Store::open`] can tell it is stale.
    fn scratch(&self, kind: &str) -> PathBuf {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        self.tmp().join(format!("{kind}-{}-{n}", std::process::id()))
    }

    /// Removes `KIND-PID-N` entries of processes that no longer run. (`sha256-…` entries are removed by the next
    /// pull of their image, under its lock.)
    fn sweep_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split('-').nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let dead = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
            if dead {
                let _ = unpack::remove_tree(&entry.path()).or_else(|_| fs::remove_file(entry.path()));
            }
        }
    }
}

fn read_ref(path: &Path) -> Option<Digest> {
    let json: serde_json::Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    json.get("digest")?.as_str()?.parse().ok()
}

fn lock_file(path: &Path) -> io::Result<Flock<File>> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}
