//! The transfer engines, shared by the CLI and the plugin (DESIGN §4–§5): [`download`]
//! (image store → gzipped tarball → staging → SR) and [`Uploader`] (SR → staging →
//! gzipped tarball → image store). This is the one module that sees both ends: it
//! drives [`crate::store`] for the wire, [`crate::bundle`] for the tarball and
//! [`crate::sr`] for the files, and none of those knows the others.
//!
//! The engines only move bytes and report what they moved; retries, locks and display
//! belong to the callers. The one piece of memory across attempts that belongs here —
//! "did the attempt whose answer was lost complete after all?" — is [`Uploader`]'s.

mod download;
mod upload;

pub use download::{download, Downloaded, ImportOptions};
pub use upload::{upload, Uploaded, Uploader};

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bundle::BundleError;
use crate::error::{ErrorKind, Kind};
use crate::progress::{Counting, Progress};
use crate::sr::SrError;
use crate::store::StoreError;
use crate::stream::{Deadline, RateLimited};
use crate::vhd::VhdError;

/// What went wrong, by where: each source keeps its own kind (a relink EIO stays an I/O
/// error, a store 503 stays retryable, a hostile member stays invalid input).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sr(#[from] SrError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The staged chain could not be laid out as one VHD (`upload --flatten`).
    #[error("cannot flatten the chain")]
    Flatten(#[from] VhdError),
    /// The tar/gzip producer could not read a staged VHD.
    #[error("{}: cannot read the chain for upload", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Kind for TransferError {
    fn kind(&self) -> ErrorKind {
        match self {
            TransferError::Store(e) => e.kind(),
            TransferError::Sr(e) => e.kind(),
            TransferError::Bundle(e) => e.kind(),
            TransferError::Flatten(e) => e.kind(),
            TransferError::Read { .. } => ErrorKind::Io,
        }
    }
}

impl TransferError {
    /// The image store's own answer (not the SR's, the tarball's or the VHD engine's):
    /// only such a 404 is Nova's `ImageNotFound`.
    pub fn from_store(&self) -> bool {
        matches!(self, TransferError::Store(_))
    }
}

pub type Result<T, E = TransferError> = std::result::Result<T, E>;

/// How bytes move, for download and upload alike (the CLI's `--rate-limit` and its
/// progress display; the plugin's syslog progress lines).
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// Bytes per second on the wire (the gzipped tarball), if limited.
    pub rate_limit: Option<u64>,
    /// Counted into as the transfer runs, once per byte of one stream only: wire bytes
    /// for a download (its total is the size the store declares), VHD bytes read for
    /// an upload (total: the chain's size, known before the first byte; the gzipped
    /// size is not).
    pub progress: Option<Arc<Progress>>,
    /// An overall time limit that grows with the image (the plugin's; the CLI has
    /// `--deadline` on the HTTP client instead).
    pub deadline: Option<SizedDeadline>,
}

/// A time limit for a whole transfer, proportional to the image: `floor` plus the time
/// the image takes at `min_rate`. The rate is the slowest average a transfer may keep
/// and still be called working, not an expected speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizedDeadline {
    pub floor: Duration,
    /// Bytes per second (at least 1).
    pub min_rate: u64,
}

impl SizedDeadline {
    /// The limit for an image of `bytes`.
    pub fn limit(&self, bytes: u64) -> Duration {
        self.floor
            .saturating_add(Duration::from_secs(bytes / self.min_rate.max(1)))
    }

    /// `body`, failing once the limit for `bytes` since `start` has passed; `what`
    /// names the transfer in the error. No size, no limit (Glance declares one for
    /// every image; only the idle limit applies without it).
    fn wrap<'a, R: Read + Send + 'a>(
        &self,
        body: R,
        start: Instant,
        bytes: Option<u64>,
        what: &str,
    ) -> Box<dyn Read + Send + 'a> {
        let Some(bytes) = bytes else {
            return Box::new(body);
        };
        let limit = self.limit(bytes);
        let message = format!(
            "the {what} passed its deadline of {} s ({} s, plus 1 s per {} bytes of its {bytes} bytes)",
            limit.as_secs(),
            self.floor.as_secs(),
            self.min_rate.max(1)
        );
        Box::new(Deadline::new(body, start + limit, message))
    }
}

impl Transfer {
    /// `body` under [`Transfer::deadline`], if one is set.
    fn timed<'a, R: Read + Send + 'a>(
        &self,
        body: R,
        start: Instant,
        bytes: Option<u64>,
        what: &str,
    ) -> Box<dyn Read + Send + 'a> {
        match &self.deadline {
            Some(d) => d.wrap(body, start, bytes, what),
            None => Box::new(body),
        }
    }

    /// A download's body off the wire, rate-limited and counted: plain `Read`
    /// adaptors, nothing flows back to the caller but the bytes.
    fn counted_wire<'a, R: Read + Send + 'a>(&self, body: R) -> Box<dyn Read + Send + 'a> {
        self.limited(Counting::new(body, self.progress.clone()))
    }

    /// An upload's body onto the wire, rate-limited only: its progress is the VHD bytes
    /// the packer reads ([`crate::bundle::pack::pack_with`]). Counting the gzipped
    /// bytes here too added them to the same total — an upload ended at about twice
    /// its size (199 % in syslog).
    fn limited<'a, R: Read + Send + 'a>(&self, body: R) -> Box<dyn Read + Send + 'a> {
        match self.rate_limit {
            Some(rate) => Box::new(RateLimited::new(body, rate)),
            None => Box::new(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_the_image() {
        let d = SizedDeadline {
            floor: Duration::from_secs(600),
            min_rate: 1 << 20,
        };
        assert_eq!(d.limit(0), Duration::from_secs(600));
        assert_eq!(d.limit(20 << 30), Duration::from_secs(600 + 20 * 1024));
        assert_eq!(
            d.limit(u64::MAX),
            Duration::from_secs(600 + (u64::MAX >> 20))
        );
        let now = SizedDeadline {
            floor: Duration::ZERO,
            min_rate: 1 << 20,
        };
        let mut late = now.wrap(&b"x"[..], Instant::now(), Some(1), "download");
        let e = late.read(&mut [0; 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            e.to_string()
                .contains("download passed its deadline of 0 s"),
            "{e}"
        );
        // No declared size: no deadline.
        let mut open = now.wrap(&b"x"[..], Instant::now(), None, "download");
        assert_eq!(open.read(&mut [0; 1]).unwrap(), 1);
    }
}
