use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::ReferenceProblem;

/// Why an image could not be had. Every message names the image; the variants are grouped so that a caller can
/// map each to a VM status reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{input:?} is not an image reference: {problem}")]
    InvalidReference { input: String, problem: ReferenceProblem },

    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },

    #[error("image {reference} is not in the store and the pull policy is Never")]
    NotPresent { reference: String },

    #[error("the registry refused image {reference}: {message}")]
    Refused { reference: String, message: String },

    #[error("the registry of image {reference} is unreachable: {detail}")]
    Unreachable { reference: String, detail: String },

    #[error("the connection was lost while pulling blob {digest} of image {reference}: {detail}")]
    ConnectionLost {
        reference: String,
        digest: Digest,
        detail: String,
    },

    #[error("the registry failed to serve image {reference}: {detail}")]
    Registry { reference: String, detail: String },

    #[error("the credentials file {path} for image {reference} is unusable: {detail}")]
    Credentials {
        reference: String,
        path: PathBuf,
        detail: String,
    },

    #[error("blob {digest} of image {reference} does not match its descriptor: {found}")]
    DigestMismatch {
        reference: String,
        digest: Digest,
        found: String,
    },

    #[error("layer {layer} of image {reference} has an unsafe entry {path}: {why}")]
    UnsafeEntry {
        reference: String,
        layer: Digest,
        path: PathBuf,
        why: &'static str,
    },

    #[error("layer {layer} of image {reference} is not a readable tar: {detail}")]
    BadLayer {
        reference: String,
        layer: Digest,
        detail: String,
    },

    #[error("image {reference} unpacks to more than {limit} {what}")]
    TooLarge {
        reference: String,
        limit: u64,
        what: &'static str,
    },

    #[error("blob {digest} of image {reference} has the unsupported media type {media_type}")]
    UnsupportedMediaType {
        reference: String,
        digest: Digest,
        media_type: String,
    },

    #[error("image {reference} is not a usable image: {detail}")]
    InvalidImage { reference: String, detail: String },

    #[error("image {reference} has no disk at {path}")]
    NoDisk { reference: String, path: PathBuf },

    #[error("image {reference} has several disks ({}), so one must be named", list(.disks))]
    SeveralDisks { reference: String, disks: Vec<PathBuf> },

    #[error("cannot {action} the image store at {path}")]
    Store {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot {action} {path} for image {reference}")]
    Io {
        reference: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub(crate) fn io(
        reference: impl ToString,
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let reference = reference.to_string();
        let path = path.into();
        move |source| Error::Io {
            reference,
            action,
            path,
            source,
        }
    }
}
