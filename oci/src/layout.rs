//! OCI image layouts on disk (`oci:` directories, `oci-archive:` tars of them), for machines without a registry.
//! Blobs are checked against their descriptors exactly as registry blobs are.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::client::linux_amd64_resolver;
use oci_client::manifest::{OciImageIndex, OciImageManifest};

use crate::digest::Digest;
use crate::error::Error;
use crate::layer::{self, Layer};
use crate::reference::{LayoutKind, LayoutRef, Selector};
use crate::unpack::{self, Budget, Limits, TempTree, UnpackError, Whiteouts};

/// Where a layout's index names the tag of an image.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// More than any real manifest or index; a bound so that a hostile layout cannot make us read a huge JSON file.
const MAX_JSON: u64 = 4 << 20;
/// An index may point at an index (a tag for a multi-platform image); deeper nesting is not used in practice.
const MAX_NESTING: usize = 3;

pub(crate) struct LayoutSource {
    name: String,
    dir: PathBuf,
    selector: Option<Selector>,
    /// The unpacked archive, removed with the source.
    _unpacked: Option<TempTree>,
}

impl LayoutSource {
    /// Opens a layout directory, or unpacks an archive into `scratch` first (with the same rules as layers: an
    /// archive is as untrusted as a registry).
    pub(crate) fn open(layout: &LayoutRef, scratch: PathBuf, limits: Limits) -> Result<LayoutSource, Error> {
        let name = layout.to_string();
        let (dir, unpacked) = match layout.kind {
            LayoutKind::Directory => (layout.path.clone(), None),
            LayoutKind::Archive => {
                let file = fs::File::open(&layout.path).map_err(|err| match err.kind() {
                    std::io::ErrorKind::NotFound => Error::NotFound {
                        reference: name.clone(),
                        detail: "no such archive".to_owned(),
                    },
                    _ => Error::Io {
                        reference: name.clone(),
                        action: "open",
                        path: layout.path.clone(),
                        source: err,
                    },
                })?;
                let tree = TempTree::create(scratch.clone()).map_err(Error::io(&name, "create", &scratch))?;
                let mut budget = Budget::new(limits);
                unpack::unpack(file, tree.path(), &mut budget, Whiteouts::Ignore)
                    .map_err(|err| archive_error(&name, err))?;
                (tree.path().to_owned(), Some(tree))
            }
        };
        Ok(LayoutSource {
            name,
            dir,
            selector: layout.selector.clone(),
            _unpacked: unpacked,
        })
    }

    /// The image manifest (linux/amd64 when the selected entry is an index) and its digest.
    pub(crate) fn resolve(&self) -> Result<(Digest, OciImageManifest), Error> {
        let index_path = self.dir.join("index.json");
        if !index_path.is_file() {
            return Err(Error::NotFound {
                reference: self.name.clone(),
                detail: "no OCI layout there".to_owned(),
            });
        }
        let index: OciImageIndex =
            self.parse(&read_bounded(&index_path).map_err(Error::io(&self.name, "read", &index_path))?)?;
        let (mut digest, mut size) = match &self.selector {
            Some(Selector::Tag(tag)) => {
                let entry = index
                    .manifests
                    .iter()
                    .find(|entry| entry.annotations.as_ref().and_then(|a| a.get(REF_NAME)) == Some(tag))
                    .ok_or_else(|| Error::NotFound {
                        reference: self.name.clone(),
                        detail: format!("no image tagged {tag} in the layout"),
                    })?;
                (self.digest(&entry.digest)?, Some(entry.size))
            }
            Some(Selector::Digest(digest)) => {
                let size = index
                    .manifests
                    .iter()
                    .find(|entry| entry.digest == digest.to_string())
                    .map(|e| e.size);
                (digest.clone(), size)
            }
            None => match index.manifests.as_slice() {
                [entry] => (self.digest(&entry.digest)?, Some(entry.size)),
                entries => {
                    return Err(self.invalid(format!(
                        "the layout holds {} images, so one must be named",
                        entries.len()
                    )));
                }
            },
        };
        for _ in 0..MAX_NESTING {
            let bytes = self.read_json_blob(&digest, size)?;
            let value: serde_json::Value = self.parse(&bytes)?;
            if value.get("manifests").is_none() {
                return Ok((digest, self.parse(&bytes)?));
            }
            let index: OciImageIndex = self.parse(&bytes)?;
            let chosen = linux_amd64_resolver(&index.manifests).ok_or_else(|| Error::NotFound {
                reference: self.name.clone(),
                detail: format!("index {digest} has no linux/amd64 image"),
            })?;
            size = index
                .manifests
                .iter()
                .find(|entry| entry.digest == chosen)
                .map(|entry| entry.size);
            digest = self.digest(&chosen)?;
        }
        Err(self.invalid(format!("indexes nest deeper than {MAX_NESTING}")))
    }

    /// Unpacks a layer from its blob file and returns its size.
    pub(crate) fn apply_layer(&self, layer: &Layer, target: &Path, budget: &mut Budget) -> Result<u64, Error> {
        let blob = self.open_blob(&layer.digest)?;
        layer::apply(blob, layer, target, budget, Whiteouts::Apply)
            .map_err(|failure| failure.into_error(&self.name, &layer.digest))
    }

    fn open_blob(&self, digest: &Digest) -> Result<fs::File, Error> {
        let path = self.dir.join("blobs/sha256").join(digest.hex());
        unpack::open_no_follow(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                reference: self.name.clone(),
                detail: format!("blob {digest} is missing from the layout"),
            },
            _ => Error::Io {
                reference: self.name.clone(),
                action: "open",
                path,
                source: err,
            },
        })
    }

    /// A manifest or index blob, checked against its digest (and its size when a descriptor gave one).
    fn read_json_blob(&self, digest: &Digest, size: Option<i64>) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        self.open_blob(digest)?
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(Error::io(
                &self.name,
                "read",
                self.dir.join("blobs/sha256").join(digest.hex()),
            ))?;
        let mismatch = |found: String| Error::DigestMismatch {
            reference: self.name.clone(),
            digest: digest.clone(),
            found,
        };
        if let Some(size) = size
            && size != bytes.len() as i64
        {
            return Err(mismatch(format!("{} bytes, not the {size} announced", bytes.len())));
        }
        let got = Digest::of(&bytes);
        if got != *digest {
            return Err(mismatch(format!("its content hashes to {got}")));
        }
        Ok(bytes)
    }

    fn digest(&self, text: &str) -> Result<Digest, Error> {
        text.parse()
            .map_err(|_| self.invalid(format!("{text:?} is not a sha256 digest")))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|err| self.invalid(format!("unreadable JSON: {err}")))
    }

    fn invalid(&self, detail: String) -> Error {
        Error::InvalidImage {
            reference: self.name.clone(),
            detail,
        }
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(MAX_JSON).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn archive_error(name: &str, err: UnpackError) -> Error {
    let reference = name.to_owned();
    match err {
        UnpackError::Unsafe { path, why } => Error::InvalidImage {
            reference,
            detail: format!("the archive has an unsafe entry {}: {why}", path.display()),
        },
        UnpackError::TooLarge { limit, what } => Error::TooLarge { reference, limit, what },
        UnpackError::Malformed(err) => Error::InvalidImage {
            reference,
            detail: format!("the archive is not a tar: {err}"),
        },
        UnpackError::Io { action, path, source } => Error::Io {
            reference,
            action,
            path,
            source,
        },
    }
}
