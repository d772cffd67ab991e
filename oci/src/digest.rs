//! Content digests, and a reader that checks a blob against its descriptor while it streams.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 hex>` content digest, the only algorithm registries use for images in practice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest as a file name: `sha256-<hex>` (a colon is awkward in paths).
    pub fn dir_name(&self) -> String {
        format!("sha256-{}", self.hex)
    }

    /// The inverse of [`Digest::dir_name`].
    pub fn from_dir_name(name: &str) -> Option<Digest> {
        name.strip_prefix("sha256-")
            .and_then(|hex| format!("sha256:{hex}").parse().ok())
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestProblem {
    /// Another algorithm than sha256, or no algorithm at all.
    Algorithm,
    /// Not 64 lowercase hex digits.
    Hex,
}

impl FromStr for Digest {
    type Err = DigestProblem;

    fn from_str(s: &str) -> Result<Digest, DigestProblem> {
        let hex = s.strip_prefix("sha256:").ok_or(DigestProblem::Algorithm)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestProblem::Hex);
        }
        Ok(Digest { hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// How a blob differed from its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// More bytes arrived than the descriptor announced; reading stopped there.
    TooLong {
        expected: u64,
    },
    TooShort {
        expected: u64,
        got: u64,
    },
    Digest {
        got: Digest,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::TooLong { expected } => write!(f, "more than the {expected} bytes announced"),
            Mismatch::TooShort { expected, got } => write!(f, "{got} bytes, not the {expected} announced"),
            Mismatch::Digest { got } => write!(f, "its content hashes to {got}"),
        }
    }
}

/// Hashes and counts what passes through, so that a blob is checked while it is consumed instead of being stored
/// first. Reading past the announced size fails at once: a registry cannot make us read (or unpack) more than the
/// manifest promised.
pub struct VerifyingReader<R> {
    inner: R,
    expected: Digest,
    size: u64,
    read: u64,
    hasher: Sha256,
    mismatch: Option<Mismatch>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, size: u64) -> VerifyingReader<R> {
        VerifyingReader {
            inner,
            expected,
            size,
            read: 0,
            hasher: Sha256::new(),
            mismatch: None,
        }
    }

    /// Reads what the consumer left (a tar ends before its padding, gzip before its trailer) and checks the whole.
    pub fn finish(mut self) -> io::Result<Result<u64, Mismatch>> {
        if let Some(mismatch) = self.mismatch.take() {
            return Ok(Err(mismatch));
        }
        let mut sink = [0u8; 64 * 1024];
        loop {
            match self.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) if self.mismatch.is_some() => break,
                Err(err) => return Err(err),
            }
        }
        if let Some(mismatch) = self.mismatch.take() {
            return Ok(Err(mismatch));
        }
        if self.read != self.size {
            return Ok(Err(Mismatch::TooShort {
                expected: self.size,
                got: self.read,
            }));
        }
        let got = Digest {
            hex: hex::encode(self.hasher.finalize()),
        };
        Ok(if got == self.expected {
            Ok(self.read)
        } else {
            Err(Mismatch::Digest { got })
        })
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(mismatch) = &self.mismatch {
            return Err(io::Error::new(io::ErrorKind::InvalidData, mismatch.to_string()));
        }
        // Never ask for more than one byte past the announced size: that byte is enough to know it is too long.
        let allowed = (self.size - self.read).saturating_add(1);
        let len = buf.len().min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        if self.read + n as u64 > self.size {
            let mismatch = Mismatch::TooLong { expected: self.size };
            let err = io::Error::new(io::ErrorKind::InvalidData, mismatch.to_string());
            self.mismatch = Some(mismatch);
            return Err(err);
        }
        self.read += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
