//! Download: open the image at the store, hash it on a prefetch thread while it streams
//! into a staging directory in the SR, compare with the store's checksums, and only
//! then link the chain and move it into the SR.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Result, Transfer};
use crate::bundle::{self, Limits};
use crate::log;
use crate::retry::Budget;
use crate::sr::{self, Imported};
use crate::store::{Digests, Expected, HashingReader, Source, StoreError};
use crate::stream::Prefetch;

/// Where and how to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub sr_path: PathBuf,
    /// The plugin's `uuid_stack`: one UUID is popped from the **end** per file, leaf
    /// first. Generated when `None`.
    pub uuid_stack: Option<Vec<String>>,
    /// Directory of the SM lock files ([`sr::sm_lock_dir`]); the lock is
    /// `<dir>/<sr-uuid>/sr`.
    pub lock_dir: PathBuf,
    pub transfer: Transfer,
    /// The job's retries, which a Glance v2 body that breaks may spend resuming in place
    /// (`store::resume`); `None`: a break fails the attempt, as with every other store.
    pub resume: Option<Arc<Budget>>,
    /// Import a `swap.vhd` in the tarball as a VDI of its own, after the chain's UUIDs
    /// (Diablo/Essex `download_vhd`); otherwise it is skipped, as Folsom and later did.
    pub keep_swap: bool,
}

/// A finished download: the imported chain and what the wire carried.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Downloaded {
    pub imported: Imported,
    pub stream: Digests,
    pub expected: Expected,
}

/// Download the image at `source` into the SR. Nothing reaches the SR unless the whole
/// body arrived, hashes to what the store declares, and links into a valid chain; on
/// every error the staging directory goes and the SR is as it was.
pub fn download(source: &Source, opts: &ImportOptions) -> Result<Downloaded> {
    // The deadline counts from here: the store's answer is part of the transfer.
    let start = std::time::Instant::now();
    // The SR (checked by `Import::begin`), its staging directory and the UUIDs before
    // the first request: a bad `sr_path` or UUID is refused without the store seeing us
    // (DESIGN §10).
    let import = sr::Import::begin(&opts.sr_path)?;
    if let Some(stack) = &opts.uuid_stack {
        sr::check_new_vdis(&opts.sr_path, "uuid_stack", stack)?;
    }
    let (body, expected) = source.open(opts.resume.clone())?;
    log::step(&format!(
        "unpacking the image into {}{}",
        import.dir().display(),
        expected
            .size
            .map_or(String::new(), |n| format!(" ({n} bytes declared)"))
    ));
    if let (Some(p), Some(size)) = (&opts.transfer.progress, expected.size) {
        p.set_total(size);
    }
    // The network read and the hashes run on their own thread, ahead of the inflate;
    // SHA-512 only where it is compared or shown (`Source::hashes_sha512`).
    let body = opts.transfer.timed(body, start, expected.size, "download");
    let mut body = Prefetch::new(HashingReader::new(
        opts.transfer.counted_wire(body),
        source.hashes_sha512(&expected),
    ));
    let limits = Limits {
        free_space: import.free_space()?,
        // One UUID per VHD: the member beyond them is refused before it is written.
        max_vhds: opts
            .uuid_stack
            .as_ref()
            .map_or(bundle::MAX_FILES, |s| s.len().min(bundle::MAX_FILES)),
        keep_swap: opts.keep_swap,
        ..Limits::default()
    };
    let unpacked = bundle::unpack_with(
        &mut body,
        import.dir(),
        limits,
        opts.transfer.progress.as_deref(),
    )?;
    // The store's checksums are compared before anything is written into a VHD or
    // reaches the SR: a corrupt download never becomes a VDI.
    let stream = body
        .finished()
        .ok_or_else(|| StoreError::Protocol("the image was not read to its end".into()))?
        .digests();
    expected.verify(&stream)?;
    log::step(&format!(
        "{} bytes received, md5 {}: as the store declares",
        stream.bytes, stream.md5
    ));
    let named = import.link(
        &unpacked.files,
        unpacked.swap.as_deref(),
        opts.uuid_stack.as_deref(),
    )?;
    log::step(&format!(
        "{} VHDs linked and checked as a chain",
        unpacked.files.len()
    ));
    let imported = import.publish(named, &opts.lock_dir, unpacked.bytes)?;
    log::step(&format!(
        "published into {}: {}",
        opts.sr_path.display(),
        imported.uuids.join(", ")
    ));
    Ok(Downloaded {
        imported,
        stream,
        expected,
    })
}
