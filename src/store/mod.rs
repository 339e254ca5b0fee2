//! Image stores (DESIGN §3). This step has the local store (`file:///path/image.tgz`
//! and `-` for stdin) and the pass-through hashing every store shares; the Glance v1/v2
//! HTTP client comes with the rest of the download issue.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use md5::Md5;
use sha2::{Digest, Sha512};

use crate::error::{ErrorKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("endpoint {0:?}: only file:///path and - are supported in this build")]
    Unsupported(String),
    #[error("{}: cannot open the image", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checksum mismatch: the store declares {expected}, the bytes received hash to {actual}"
    )]
    Checksum { expected: String, actual: String },
}

impl Kind for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Unsupported(_) => ErrorKind::InvalidInput,
            StoreError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            StoreError::Open { .. } => ErrorKind::Io,
            StoreError::Checksum { .. } => ErrorKind::Retryable,
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Stdin,
}

impl Location {
    pub fn parse(endpoint: &str) -> Result<Location, StoreError> {
        if endpoint == "-" {
            return Ok(Location::Stdin);
        }
        match endpoint.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => Ok(Location::File(PathBuf::from(p))),
            _ => Err(StoreError::Unsupported(endpoint.to_string())),
        }
    }

    /// Open the image body for reading.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, StoreError> {
        match self {
            Location::Stdin => Ok(Box::new(io::stdin())),
            Location::File(p) => File::open(p)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|source| StoreError::Open {
                    path: p.clone(),
                    source,
                }),
        }
    }
}

/// MD5 (Glance `checksum`) and SHA-512 (`os_hash_value`) of what passes through, and
/// the byte count: a pass-through `Read` wrapper.
pub struct HashingReader<R> {
    inner: R,
    md5: Md5,
    sha512: Sha512,
    bytes: u64,
}

/// The digests of a finished stream, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Digests {
    pub md5: String,
    pub sha512: String,
    pub bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            md5: Md5::new(),
            sha512: Sha512::new(),
            bytes: 0,
        }
    }

    pub fn finish(self) -> Digests {
        Digests {
            md5: hex(&self.md5.finalize()),
            sha512: hex(&self.sha512.finalize()),
            bytes: self.bytes,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.md5.update(&buf[..n]);
        self.sha512.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_known_values() {
        let mut r = HashingReader::new(&b"abc"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let d = r.finish();
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert!(d.sha512.starts_with("ddaf35a193617aba"));
        assert_eq!(d.bytes, 3);
    }

    #[test]
    fn locations() {
        assert_eq!(Location::parse("-").unwrap(), Location::Stdin);
        assert_eq!(
            Location::parse("file:///x/y.tgz").unwrap(),
            Location::File("/x/y.tgz".into())
        );
        assert!(Location::parse("file://relative").is_err());
        assert!(Location::parse("http://glance:9292").is_err());
    }
}
