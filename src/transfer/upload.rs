//! Upload: stage the chain (hard links), tar and gzip it on a producer thread (all
//! cores) into a bounded pipe that the store reads while hashing, then compare the
//! store's record with what was sent. If anything fails while streaming — a member that
//! grows, shrinks or has its footer rewritten while it is read included — the store gets
//! a broken stream ([`crate::stream::PipeReader`] never fakes an end), never a short or
//! torn complete image.
//!
//! Flattened (`upload --flatten`), the chain is staged and checked the same way, but
//! what is packed is one dynamic VHD made from it as it is read ([`crate::vhd::flatten`]):
//! `./0.vhd` alone, whose size and layout are known before its first byte.

use std::io;
use std::path::Path;

use super::{Result, Transfer, TransferError};
use crate::bundle::codec::Engine;
use crate::bundle::pack::{self, PackOptions};
use crate::sr::{self, ChainSpec, Exported};
use crate::store::{Digests, HashingReader, StoreError, Target};
use crate::vhd::chain::Chain;
use crate::vhd::flatten::Flat;
use crate::vhd::{OpenMode, Vhd};

/// A finished upload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Uploaded {
    /// VDI UUIDs sent, in member order (leaf first); flattened, the chain's VDIs read
    /// to make the one member.
    pub uuids: Vec<String>,
    pub members: Vec<String>,
    /// What went over the wire (the gzipped tarball).
    pub stream: Digests,
    /// This attempt found the image already active with exactly the bytes of the
    /// previous attempt, whose answer was lost: nothing was sent again.
    #[serde(skip)]
    pub completed_earlier: bool,
}

/// One chain to upload, attempt after attempt. It remembers what the last attempt
/// handed over in full, so that a retry which finds the image no longer `queued` can
/// tell "the lost attempt completed" (the image is active with exactly our MD5,
/// SHA-512 and size: done) from "someone else's image" (fail).
pub struct Uploader<'a> {
    sr: &'a Path,
    spec: &'a ChainSpec,
    pack: PackOptions,
    transfer: Transfer,
    flatten: bool,
    /// The last attempt's stream, if the store read it to its end.
    handed_over: Option<Uploaded>,
}

impl<'a> Uploader<'a> {
    pub fn new(sr: &'a Path, spec: &'a ChainSpec, pack: PackOptions, transfer: Transfer) -> Self {
        Uploader {
            sr,
            spec,
            pack,
            transfer,
            flatten: false,
            handed_over: None,
        }
    }

    /// Send one dynamic VHD holding the leaf's whole content instead of the chain.
    pub fn flatten(mut self, yes: bool) -> Self {
        self.flatten = yes;
        self
    }

    /// One attempt into `target`.
    pub fn attempt(&mut self, target: &Target) -> Result<Uploaded> {
        let previous = self.handed_over.take();
        let (result, handed_over) = send(
            self.sr,
            self.spec,
            target,
            self.pack,
            &self.transfer,
            self.flatten,
        );
        self.handed_over = handed_over;
        match result {
            Err(TransferError::Store(StoreError::NotQueued { .. }))
                if previous
                    .as_ref()
                    .is_some_and(|p| target.completed_by(&p.stream)) =>
            {
                let mut done = previous.expect("checked");
                done.completed_earlier = true;
                Ok(done)
            }
            r => r,
        }
    }
}

/// A single upload, no retry (the plugin: Nova owns retries).
pub fn upload(
    sr: &Path,
    spec: &ChainSpec,
    target: &Target,
    pack: PackOptions,
    transfer: Transfer,
) -> Result<Uploaded> {
    Uploader::new(sr, spec, pack, transfer).attempt(target)
}

/// The staged chain opened again from the files checked (not through the locators,
/// which name the SR's files) and the flattened image's layout.
fn plan_flat(exported: &Exported) -> Result<(Chain, Flat)> {
    let mut vhds = Vec::with_capacity(exported.members.len());
    for m in &exported.members {
        let file = m.file.try_clone().map_err(|e| TransferError::Read {
            path: m.path.clone(),
            source: e,
        })?;
        vhds.push(Vhd::from_file(&m.path, file, m.size, OpenMode::READ)?);
    }
    let chain = Chain::of(vhds)?;
    let flat = Flat::plan(&chain)?;
    Ok((chain, flat))
}

/// Check and stage the chain, prepare the store, stream, verify. Also returns what the store read to its end, whatever the
/// outcome: if the answer was lost, the store may hold the complete image.
fn send(
    sr: &Path,
    spec: &ChainSpec,
    target: &Target,
    pack: PackOptions,
    transfer: &Transfer,
    flatten: bool,
) -> (Result<Uploaded>, Option<Uploaded>) {
    // The deadline counts from here: checking the chain and preparing the image are
    // part of the transfer.
    let start = std::time::Instant::now();
    // The chain is checked (and staged) before the store hears of this attempt: a list
    // that is not a chain sends nothing, not even the image's properties.
    let exported = match sr::export(sr, spec) {
        Ok(x) => x,
        Err(e) => return (Err(e.into()), None),
    };
    crate::log::step(&format!(
        "staged {} VHDs for upload in {}",
        exported.members.len(),
        exported.staging.path().display()
    ));
    crate::log::step(&format!(
        "gzip level {} ({}) on {} compressor threads",
        pack.level,
        Engine::for_level(pack.level),
        pack.threads
    ));
    // Laid out before the store hears of the attempt, as the chain is checked.
    let flat = match flatten.then(|| plan_flat(&exported)).transpose() {
        Ok(f) => f,
        Err(e) => return (Err(e), None),
    };
    if let Some((_, f)) = &flat {
        crate::log::step(&format!(
            "flattening {} VHDs into one of {} bytes ({} blocks allocated, VHD UUID {})",
            exported.members.len(),
            f.size(),
            f.allocated_blocks(),
            f.uuid()
        ));
    }
    if let Err(e) = target.prepare() {
        return (Err(e.into()), None);
    }
    let uploaded = |stream: Digests| Uploaded {
        uuids: exported.uuids.clone(),
        members: match flat {
            Some(_) => vec![FLAT_MEMBER.to_string()],
            None => exported.members.iter().map(|m| m.name.clone()).collect(),
        },
        stream,
        completed_earlier: false,
    };
    let (writer, reader) = crate::stream::pipe(8);
    let fail_after = crate::testhooks::fail_upload_after();
    // Each member as the SR checked it: the producer fails (and the store never sees
    // the stream end) if one is not the same when it is read.
    let members: Vec<pack::Member<'_>> = exported
        .members
        .iter()
        .map(|m| pack::Member {
            name: &m.name,
            path: &m.path,
            file: &m.file,
            size: m.size,
            tail: &m.tail,
        })
        .collect();
    let (sent, produced, handed_over) = std::thread::scope(|s| {
        let members = &members;
        let flat = &flat;
        let producer = s.spawn(move || {
            let out = FailAfter {
                inner: writer,
                left: fail_after.unwrap_or(u64::MAX),
            };
            let progress = transfer.progress.clone();
            match flat {
                Some((chain, f)) => {
                    let image = pack::Generated {
                        name: FLAT_MEMBER,
                        size: f.size(),
                        data: f.reader(chain),
                        sources: members,
                    };
                    pack::pack_generated_with(image, out, pack, progress)
                }
                None => pack::pack_with(members, out, pack, progress),
            }
            .and_then(|w| w.inner.close())
        });
        // The rate limit applies to what goes on the wire; the pipe's back-pressure
        // slows the compressors to match.
        // The deadline is by the chain's size (the VHD bytes), known before a byte is
        // sent; the gzipped stream is smaller.
        let chain_bytes = members.iter().map(|m| m.size).sum::<u64>();
        let reader = transfer.timed(reader, start, Some(chain_bytes), "upload");
        // MD5 always (compared with Glance's `checksum`); SHA-512 only for a local
        // target's summary (`Target::hashes_sha512`).
        let mut body = HashingReader::new(transfer.limited(reader), target.hashes_sha512());
        let sent = target.send(&mut body).map(|rec| (rec, body.digests()));
        let handed_over = body.at_eof().then(|| uploaded(body.digests()));
        // Let the producer see a closed pipe before waiting for it.
        drop(body);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the tar/gzip producer panicked")));
        (sent, produced, handed_over)
    });
    // The producer's own error explains a broken stream better than the store's view,
    // unless it only saw the store hang up.
    let (v1_record, stream) = match (sent, produced) {
        (Ok(s), Ok(())) => s,
        (Err(e), Err(p)) if p.kind() == io::ErrorKind::BrokenPipe => {
            return (Err(e.into()), handed_over)
        }
        (_, Err(p)) => {
            let e = TransferError::Read {
                path: exported.staging.path().to_path_buf(),
                source: p,
            };
            return (Err(e), handed_over);
        }
        (Err(e), Ok(())) => return (Err(e.into()), handed_over),
    };
    crate::log::step(&format!(
        "{} bytes sent, md5 {}; checking the store's record",
        stream.bytes, stream.md5
    ));
    let result = target
        .verify(&stream, v1_record)
        .map(|()| uploaded(stream))
        .map_err(TransferError::from);
    (result, handed_over)
}

/// The one member of a flattened image: what a download expects of a one-VHD image.
const FLAT_MEMBER: &str = "0.vhd";

/// A writer that fails once `left` bytes have passed (the upload test hook
/// [`crate::testhooks::FAIL_UPLOAD_AFTER`]).
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
