//! One layer blob: checked against its descriptor while it streams, decompressed, unpacked.

use std::io::{self, Read};
use std::path::Path;

use flate2::read::GzDecoder;
use oci_client::manifest::OciDescriptor;

use crate::digest::{Digest, Mismatch, VerifyingReader};
use crate::error::Error;
use crate::unpack::{self, Budget, UnpackError, Whiteouts};

/// A layer as its manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
}

impl Compression {
    /// The layer media types a containerDisk uses. zstd is left out: it would take a decoder crate of its own and
    /// no containerDisk publisher uses it. Non-distributable ("foreign") layers are left out on purpose: their
    /// content comes from URLs outside the registry.
    fn of(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
                Some(Compression::None)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            _ => None,
        }
    }
}

impl Layer {
    pub(crate) fn from_descriptor(reference: &str, descriptor: &OciDescriptor) -> Result<Layer, Error> {
        let digest = descriptor.digest.parse::<Digest>().map_err(|_| Error::InvalidImage {
            reference: reference.to_owned(),
            detail: format!("layer digest {:?} is not a sha256 digest", descriptor.digest),
        })?;
        let size = u64::try_from(descriptor.size).map_err(|_| Error::InvalidImage {
            reference: reference.to_owned(),
            detail: format!("layer {digest} has a negative size"),
        })?;
        let compression = Compression::of(&descriptor.media_type).ok_or_else(|| Error::UnsupportedMediaType {
            reference: reference.to_owned(),
            digest: digest.clone(),
            media_type: descriptor.media_type.clone(),
        })?;
        Ok(Layer {
            digest,
            size,
            compression,
        })
    }

    /// The descriptor to ask a registry with: no `urls`, so that nothing is fetched from outside the registry.
    pub(crate) fn descriptor(&self) -> OciDescriptor {
        OciDescriptor {
            digest: self.digest.to_string(),
            size: self.size as i64,
            ..OciDescriptor::default()
        }
    }
}

/// How applying a layer failed, before the image is named.
#[derive(Debug)]
pub(crate) enum LayerFailure {
    Mismatch(Mismatch),
    Unpack(UnpackError),
    /// The blob could not be read to its end.
    Read(io::Error),
}

/// Unpacks `blob` onto `target` and returns its size. The blob is checked whatever happens: when unpacking fails,
/// the rest is read so that a blob that is not what its manifest says is reported as such (and not as the broken
/// tar it looks like), which reads at most the announced size.
pub(crate) fn apply(
    blob: impl Read,
    layer: &Layer,
    target: &Path,
    budget: &mut Budget,
    whiteouts: Whiteouts,
) -> Result<u64, LayerFailure> {
    let mut verifier = VerifyingReader::new(blob, layer.digest.clone(), layer.size);
    let unpacked = match layer.compression {
        Compression::None => unpack::unpack(&mut verifier, target, budget, whiteouts),
        Compression::Gzip => unpack::unpack(GzDecoder::new(&mut verifier), target, budget, whiteouts),
    };
    match (verifier.finish(), unpacked) {
        (Ok(Err(mismatch)), _) => Err(LayerFailure::Mismatch(mismatch)),
        (_, Err(err)) => Err(LayerFailure::Unpack(err)),
        (Err(err), Ok(())) => Err(LayerFailure::Read(err)),
        (Ok(Ok(size)), Ok(())) => Ok(size),
    }
}

impl LayerFailure {
    pub(crate) fn into_error(self, reference: &str, layer: &Digest) -> Error {
        let reference = reference.to_owned();
        let layer = layer.clone();
        match self {
            LayerFailure::Mismatch(found) => Error::DigestMismatch {
                reference,
                digest: layer,
                found: found.to_string(),
            },
            LayerFailure::Unpack(UnpackError::Unsafe { path, why }) => Error::UnsafeEntry {
                reference,
                layer,
                path,
                why,
            },
            LayerFailure::Unpack(UnpackError::TooLarge { limit, what }) => Error::TooLarge { reference, limit, what },
            LayerFailure::Unpack(UnpackError::Malformed(err)) | LayerFailure::Read(err) => Error::BadLayer {
                reference,
                layer,
                detail: err.to_string(),
            },
            LayerFailure::Unpack(UnpackError::Io { action, path, source }) => Error::Io {
                reference,
                action,
                path,
                source,
            },
        }
    }
}
