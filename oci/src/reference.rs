//! Image references: registry names as Docker reads them, and the on-disk sources of air-gapped machines in skopeo's
//! transport syntax (`oci:` and `oci-archive:`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use crate::digest::{Digest, DigestProblem};
use crate::error::Error;

/// Where Docker looks for a name without a registry.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of a name without tag or digest.
pub const DEFAULT_TAG: &str = "latest";

/// An image to pull: from a registry, or from an OCI image layout on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Registry(RegistryRef),
    Layout(LayoutRef),
}

/// `registry/repository[:tag][@digest]`, with Docker's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`, `docker.io` when the name had none.
    pub registry: String,
    /// `library/debian` for a one-part Docker Hub name.
    pub repository: String,
    pub tag: Option<String>,
    /// Wins over the tag when both are given, as with Docker.
    pub digest: Option<Digest>,
}

/// An OCI image layout: a directory (`oci:`) or a tar of one (`oci-archive:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutRef {
    pub kind: LayoutKind,
    pub path: PathBuf,
    /// Which image of the layout's index; `None` when it holds exactly one.
    pub selector: Option<Selector>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    Directory,
    Archive,
}

/// An image of a layout, by the tag in its `org.opencontainers.image.ref.name` annotation or by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Tag(String),
    Digest(Digest),
}

/// What is wrong with a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceProblem {
    Empty,
    /// A path component is empty or not `[a-z0-9]` parts joined by `.`, `_`, `__` or dashes.
    Name,
    /// The registry part is not `host[:port]`.
    Registry,
    /// Not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    Tag,
    DigestAlgorithm,
    DigestHex,
    /// More than 255 characters of name, Docker's bound.
    TooLong,
    /// `oci:` or `oci-archive:` without a path.
    NoPath,
}

impl fmt::Display for ReferenceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReferenceProblem::Empty => "it is empty",
            ReferenceProblem::Name => "the repository name is not lowercase letters, digits and separators",
            ReferenceProblem::Registry => "the registry is not host[:port]",
            ReferenceProblem::Tag => "the tag is not 1 to 128 letters, digits, '_', '.' or '-'",
            ReferenceProblem::DigestAlgorithm => "the digest is not sha256",
            ReferenceProblem::DigestHex => "the digest is not 64 lowercase hex digits",
            ReferenceProblem::TooLong => "the name is longer than 255 characters",
            ReferenceProblem::NoPath => "the layout path is missing",
        })
    }
}

impl From<DigestProblem> for ReferenceProblem {
    fn from(problem: DigestProblem) -> ReferenceProblem {
        match problem {
            DigestProblem::Algorithm => ReferenceProblem::DigestAlgorithm,
            DigestProblem::Hex => ReferenceProblem::DigestHex,
        }
    }
}

impl ImageRef {
    /// Reads `quay.io/containerdisks/fedora:40`, `debian`, `name@sha256:…`, `oci:/dir[:tag|:@sha256:…]` or
    /// `oci-archive:/file.tar[:tag|:@sha256:…]`.
    pub fn parse(input: &str) -> Result<ImageRef, Error> {
        let invalid = |problem| Error::InvalidReference {
            input: input.to_owned(),
            problem,
        };
        if let Some(rest) = input.strip_prefix("oci-archive:") {
            return parse_layout(LayoutKind::Archive, rest)
                .map(ImageRef::Layout)
                .map_err(invalid);
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            return parse_layout(LayoutKind::Directory, rest)
                .map(ImageRef::Layout)
                .map_err(invalid);
        }
        // skopeo's name for a registry; accepted so that one syntax covers all sources.
        let name = input.strip_prefix("docker://").unwrap_or(input);
        parse_registry(name).map(ImageRef::Registry).map_err(invalid)
    }

    /// The tag that decides the default pull policy: the explicit one, else `latest` unless a digest pins it.
    pub fn pins_content(&self) -> bool {
        let (tag, digest) = match self {
            ImageRef::Registry(r) => (r.tag.as_deref(), r.digest.is_some()),
            ImageRef::Layout(l) => match &l.selector {
                Some(Selector::Digest(_)) => (None, true),
                Some(Selector::Tag(tag)) => (Some(tag.as_str()), false),
                None => (None, false),
            },
        };
        digest || tag.is_some_and(|tag| tag != DEFAULT_TAG)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<ImageRef, Error> {
        ImageRef::parse(s)
    }
}

impl RegistryRef {
    /// The tag to ask for when there is no digest.
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// Whether the registry is this machine (`localhost`, 127.0.0.0/8, `::1`): the only registries spoken to over
    /// plain http, since traffic to them never leaves the host.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(host_of(&self.registry))
    }
}

fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_registry(input: &str) -> Result<RegistryRef, ReferenceProblem> {
    if input.is_empty() {
        return Err(ReferenceProblem::Empty);
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
        None => (input, None),
    };
    // A tag follows the last colon unless that colon is a registry's port (a slash comes after it).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let (registry, path) = match name.split_once('/') {
        // Docker's rule: the first part is a registry if it looks like a host (a dot, a port, or localhost).
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') => {
            check_registry(first)?;
            (first.to_owned(), path.to_owned())
        }
        Some(_) => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        None => (DEFAULT_REGISTRY.to_owned(), format!("library/{name}")),
    };
    if name.len() > 255 {
        return Err(ReferenceProblem::TooLong);
    }
    if !path.split('/').all(is_path_component) {
        return Err(ReferenceProblem::Name);
    }
    let registry = if registry == "index.docker.io" {
        DEFAULT_REGISTRY.to_owned()
    } else {
        registry
    };
    let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag: tag.map(str::to_owned),
        digest,
    })
}

fn check_registry(registry: &str) -> Result<(), ReferenceProblem> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(ReferenceProblem::Registry)?;
        ip.parse::<Ipv6Addr>().map_err(|_| ReferenceProblem::Registry)?;
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or(ReferenceProblem::Registry)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(ReferenceProblem::Registry);
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(ReferenceProblem::Registry);
    }
    Ok(())
}

/// `[a-z0-9]+` parts joined by one `.`, one or two `_`, or any number of `-`, as the distribution spec says.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "." || separator == "_" || separator == "__" || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(tag: &str) -> Result<(), ReferenceProblem> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && ok(tag.as_bytes()[0])
        && tag.bytes().all(|b| ok(b) || b == b'.' || b == b'-');
    if valid { Ok(()) } else { Err(ReferenceProblem::Tag) }
}

/// `PATH`, `PATH:TAG`, `PATH@sha256:…` or `PATH:@sha256:…`.
fn parse_layout(kind: LayoutKind, input: &str) -> Result<LayoutRef, ReferenceProblem> {
    let (path, selector) = if let Some(at) = input.rfind("@sha256:") {
        let digest = input[at + 1..].parse::<Digest>()?;
        let path = &input[..at];
        (path.strip_suffix(':').unwrap_or(path), Some(Selector::Digest(digest)))
    } else {
        match input.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => {
                check_tag(tag)?;
                (path, Some(Selector::Tag(tag.to_owned())))
            }
            _ => (input, None),
        }
    };
    if path.is_empty() {
        return Err(ReferenceProblem::NoPath);
    }
    Ok(LayoutRef {
        kind,
        path: PathBuf::from(path),
        selector,
    })
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = match self.kind {
            LayoutKind::Directory => "oci",
            LayoutKind::Archive => "oci-archive",
        };
        write!(f, "{transport}:{}", self.path.display())?;
        match &self.selector {
            Some(Selector::Tag(tag)) => write!(f, ":{tag}"),
            Some(Selector::Digest(digest)) => write!(f, "@{digest}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::Layout(l) => l.fmt(f),
        }
    }
}
