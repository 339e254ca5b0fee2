//! The storage repository side (DESIGN §5): staging directories inside the SR, the
//! import of a downloaded chain, the SM SR lock, and `sweep`.
//!
//! Import: unpack into a fresh mode-0700 staging directory on the SR's own file system
//! (so renames are atomic), name each file after its UUID, relink children to parents
//! natively, validate every file and the chain, then move the chain into the SR while
//! holding the SR lock that `SR.scan` takes. Nothing reaches the SR before the whole
//! chain is valid; the staging directory is removed on every path.

mod export;
mod lock;
mod staging;

pub use export::{export, ChainSpec, Exported};
pub use lock::{JobLock, SrLock};
pub use staging::{sweep, Staging, STAGING_PREFIX};

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::pack::PackOptions;
use crate::bundle::{self, BundleError, Limits};
use crate::error::{ErrorKind, Kind};
use crate::progress::{Counting, Progress};
use crate::store::{Digests, Expected, HashingReader, Source, StoreError, Target};
use crate::stream::{Prefetch, RateLimited};
use crate::vhd::{self, LinkError, VhdError};

pub use crate::vhd::MAX_IMAGE_CHAIN;

#[derive(Debug, thiserror::Error)]
pub enum SrError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Vhd(#[from] VhdError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{file}: {rule}")]
    Chain { file: String, rule: String },
    /// The cause is the source, so `image member <name> (<uuid>.vhd): <cause>` in the
    /// printed chain.
    #[error("image member {member}")]
    Link {
        member: String,
        #[source]
        source: LinkError,
    },
    #[error("{}: cannot {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Args(String),
    #[error("{} already exists in the SR; refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("{} is held by another run ({holder}); not waiting longer", path.display())]
    Locked { path: PathBuf, holder: String },
}

impl Kind for SrError {
    fn kind(&self) -> ErrorKind {
        match self {
            SrError::Bundle(e) => e.kind(),
            SrError::Vhd(e) => e.kind(),
            SrError::Store(e) => e.kind(),
            SrError::Link { source, .. } => source.kind(),
            SrError::Chain { .. } | SrError::Args(_) => ErrorKind::InvalidInput,
            SrError::Io { .. } | SrError::Exists { .. } => ErrorKind::Io,
            SrError::Locked { .. } => ErrorKind::Locked,
        }
    }
}

pub type Result<T, E = SrError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> SrError {
    let path = path.to_path_buf();
    move |source| SrError::Io { path, op, source }
}

/// Where and how to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub sr_path: PathBuf,
    /// The plugin's `uuid_stack`: one UUID is popped from the **end** per file, leaf
    /// first. Generated when `None`.
    pub uuid_stack: Option<Vec<String>>,
    /// Directory of the SM lock files (`/var/lock/sm`); the lock is `<dir>/<sr-uuid>/sr`.
    pub lock_dir: PathBuf,
    pub transfer: Transfer,
}

/// How bytes move, for download and upload alike (the CLI's `--rate-limit` and its
/// progress display; the plugin's syslog progress lines).
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// Bytes per second on the wire (the gzipped tarball), if limited.
    pub rate_limit: Option<u64>,
    /// Counted into as the transfer runs: wire bytes for a download (its total is the
    /// size the store declares), VHD bytes read for an upload (total: the chain's size).
    pub progress: Option<Arc<Progress>>,
    /// Filled by an upload whose whole tarball was handed to the store, whatever the
    /// outcome: if the answer was lost, the store may have the complete image, and a
    /// retry can recognise it by these digests ([`Target::completed_by`]).
    pub sent: Arc<std::sync::Mutex<Option<Uploaded>>>,
}

impl Transfer {
    /// `body` with the rate limit and the progress count applied.
    fn wrap<'a, R: Read + Send + 'a>(&self, body: R) -> Box<dyn Read + Send + 'a> {
        let counted = Counting::new(body, self.progress.clone());
        match self.rate_limit {
            Some(rate) => Box::new(RateLimited::new(counted, rate)),
            None => Box::new(counted),
        }
    }
}

/// The imported chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    /// VDI UUIDs, leaf first.
    pub uuids: Vec<String>,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

impl Imported {
    /// The plugin's return shape: `{'root': {'uuid': leaf}}`.
    pub fn root_uuid(&self) -> &str {
        &self.uuids[0]
    }
}

/// Import a gzipped tarball of VHDs from `body` into the SR. `verify` runs once the
/// body is read to its end and before anything reaches the SR: the store's checksums are
/// compared there, so a corrupt download never becomes a VDI.
pub fn import<R: Read>(
    mut body: R,
    opts: &ImportOptions,
    verify: impl FnOnce(&mut R) -> Result<(), StoreError>,
) -> Result<Imported> {
    let sr = &opts.sr_path;
    let meta = std::fs::metadata(sr).map_err(io_err(sr, "open the SR directory"))?;
    if !meta.is_dir() {
        return Err(SrError::Args(format!(
            "{} is not a directory",
            sr.display()
        )));
    }
    let staging = Staging::create(sr)?;
    let limits = Limits {
        free_space: free_space(sr)?,
        ..Limits::default()
    };
    let unpacked = bundle::unpack_with(
        &mut body,
        staging.path(),
        limits,
        opts.transfer.progress.as_deref(),
    )?;
    verify(&mut body)?;
    let n = unpacked.files.len();
    let mut stack = match &opts.uuid_stack {
        Some(s) => s.clone(),
        None => (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect(),
    };
    if stack.len() < n {
        return Err(SrError::Args(format!(
            "the image holds {n} VHDs but only {} UUIDs were given",
            stack.len()
        )));
    }
    // Rename each file to its VDI UUID, leaf first, popping from the end as the Python
    // plugin did.
    let mut uuids = Vec::with_capacity(n);
    let mut files = Vec::with_capacity(n);
    for f in &unpacked.files {
        let u = stack.pop().expect("length checked");
        let u = uuid::Uuid::parse_str(&u)
            .map_err(|_| SrError::Args(format!("{u:?} is not a UUID")))?
            .to_string();
        if uuids.contains(&u) {
            return Err(SrError::Args(format!("UUID {u} given twice")));
        }
        let to = staging.path().join(format!("{u}.vhd"));
        std::fs::rename(f, &to).map_err(io_err(f, "rename in staging"))?;
        uuids.push(u);
        files.push(to);
    }
    // Errors name the image member and the VDI it was to become.
    vhd::link_chain(&files).map_err(|e| SrError::Link {
        member: format!(
            "{} ({})",
            unpacked
                .files
                .get(e.index)
                .map(|f| file_name(f))
                .unwrap_or_default(),
            files.get(e.index).map(|f| file_name(f)).unwrap_or_default()
        ),
        source: e,
    })?;
    let _lock = SrLock::acquire(&opts.lock_dir, sr)?;
    let moved = staging.publish(&files, sr)?;
    Ok(Imported {
        uuids,
        files: moved,
        bytes: unpacked.bytes,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Bytes available to us on the SR's file system.
pub fn free_space(sr: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(sr).map_err(|e| SrError::Io {
        path: sr.to_path_buf(),
        op: "statvfs",
        source: io::Error::from(e),
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// A finished download: the imported chain and what the wire carried.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Downloaded {
    pub imported: Imported,
    pub stream: Digests,
    pub expected: Expected,
}

/// The download engine shared by the CLI and the plugin: open the image at `source`,
/// hash it while it streams into [`import`], and compare with the store's checksums
/// before the chain is moved into the SR.
pub fn download(source: &Source, opts: &ImportOptions) -> Result<Downloaded> {
    let (body, expected) = source.open()?;
    if let Some(p) = &opts.transfer.progress {
        let local_size = match source {
            Source::Local(crate::store::Location::File(f)) => {
                std::fs::metadata(f).ok().map(|m| m.len())
            }
            _ => None,
        };
        if let Some(size) = expected.size.or(local_size) {
            p.set_total(size);
        }
    }
    let mut stream = None;
    // The network read and both hashes run on their own thread, ahead of the inflate.
    let body = Prefetch::new(HashingReader::new(opts.transfer.wrap(body)));
    let imported = import(body, opts, |p| {
        let got = p
            .finished()
            .ok_or_else(|| StoreError::Protocol("the image was not read to its end".into()))?
            .digests();
        let verdict = expected.verify(&got);
        stream = Some(got);
        verdict
    })?;
    Ok(Downloaded {
        imported,
        stream: stream.expect("verify ran"),
        expected,
    })
}

/// A finished upload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Uploaded {
    /// VDI UUIDs sent, in member order (leaf first).
    pub uuids: Vec<String>,
    pub members: Vec<String>,
    /// What went over the wire (the gzipped tarball).
    pub stream: Digests,
}

/// The upload engine shared by the CLI and the plugin: stage the chain, then tar and
/// gzip it on a producer thread (all cores) into a bounded pipe that the store reads
/// while hashing. If anything fails while streaming, the store gets a broken stream,
/// never a short complete image; the record is read back and compared afterwards.
pub fn upload(
    sr: &Path,
    spec: &ChainSpec,
    target: &Target,
    pack: PackOptions,
    transfer: &Transfer,
) -> Result<Uploaded> {
    target.prepare()?;
    let exported = export(sr, spec)?;
    let (writer, reader) = crate::stream::pipe(8);
    // Test hook (README "Testing hooks"): break the stream after N bytes, to show that
    // a failed upload is never terminated.
    let fail_after = crate::testhooks::fail_upload_after();
    let (sent, produced) = std::thread::scope(|s| {
        let members = &exported.members;
        let producer = s.spawn(move || {
            let out = FailAfter {
                inner: writer,
                left: fail_after.unwrap_or(u64::MAX),
            };
            crate::bundle::pack::pack_with(members, out, pack, transfer.progress.clone())
                .and_then(|w| w.inner.close())
        });
        // The rate limit applies to what goes on the wire; the pipe's back-pressure
        // slows the compressors to match.
        let mut body = HashingReader::new(transfer.wrap(reader));
        let sent = target.send(&mut body).map(|rec| (rec, body.digests()));
        if body.at_eof() {
            if let Ok(mut s) = transfer.sent.lock() {
                *s = Some(Uploaded {
                    uuids: exported.uuids.clone(),
                    members: exported.members.iter().map(|(n, _)| n.clone()).collect(),
                    stream: body.digests(),
                });
            }
        }
        // Let the producer see a closed pipe before waiting for it.
        drop(body);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the tar/gzip producer panicked")));
        (sent, produced)
    });
    // The producer's own error explains a broken stream better than the store's view,
    // unless it only saw the store hang up.
    let (v1_record, stream) = match (sent, produced) {
        (Ok(s), Ok(())) => s,
        (Err(e), Err(p)) if p.kind() == io::ErrorKind::BrokenPipe => return Err(e.into()),
        (_, Err(p)) => {
            return Err(SrError::Io {
                path: exported.staging.path().to_path_buf(),
                op: "read the chain for upload",
                source: p,
            })
        }
        (Err(e), Ok(())) => return Err(e.into()),
    };
    target.verify(&stream, v1_record)?;
    Ok(Uploaded {
        uuids: exported.uuids.clone(),
        members: exported.members.iter().map(|(n, _)| n.clone()).collect(),
        stream,
    })
}

/// A writer that fails once `left` bytes have passed (the upload test hook).
struct FailAfter<W> {
    inner: W,
    left: u64,
}

impl<W: io::Write> io::Write for FailAfter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other(
                "injected failure (GLANCE_VHD_TEST_FAIL_UPLOAD_AFTER)",
            ));
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.write(&buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
