//! Image tarballs (DESIGN §4): a gzip-compressed tar of VHD files.
//!
//! [`unpack`] streams body → gunzip (concatenated members accepted, as GNU gzip does) →
//! tar → files in a staging directory, applying the member policy: only regular files
//! named `N.vhd` (N < 16, contiguous from 0), `image.vhd`/`snap.vhd`/`base.vhd`, or one
//! `*.vhd` of any name; `swap.vhd` is skipped — or, for the callers that imported it
//! ([`Limits::keep_swap`]), written beside the chain under the same VHD rules but never
//! part of it; `./` prefixes and `.`/`./` directory entries are allowed. Everything else is **rejected** with the member's name: a
//! skipped member could be an attack or a sign of an image we would import wrongly.
//!
//! A member's declared size must fit the SR's free space, and, for a dynamic or
//! differencing VHD, the size its first KiBs allow (`vhd::size_bound`): a bomb behind
//! honest metadata is refused before it is written. Zero runs are written as holes
//! (`stream::Writeback`). What neither stops: metadata that itself points far out (a
//! BAT entry or locator near the top of the range) allows that much, and non-zero
//! filler up to it is limited only by the free space.

pub mod codec;
pub mod pack;
pub mod pargz;

use std::cell::Cell;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use crate::error::{ErrorKind, Kind};
use crate::progress::Progress;
use crate::stream::Writeback;
use crate::vhd::{self, SizeBound};

/// At most this many VHDs in one image: the chain limit, checked here before unpacking
/// more.
pub const MAX_FILES: usize = crate::vhd::MAX_IMAGE_CHAIN;

/// Tar metadata accepted before a member's data: its header and what describes it (GNU
/// long names, pax records). The tar reader holds long names and pax records in memory
/// whole, so without a bound one declared gigabytes long (a few KB of gzip) would
/// exhaust dom0's memory. Real ones are a few hundred bytes.
pub const MAX_META: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("image stream: {what}")]
    Stream {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("tar member {name:?}: {rule}")]
    Member { name: String, rule: String },
    #[error("image layout: {0}")]
    Layout(String),
    #[error("{}: cannot {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("image needs {needed} bytes but the SR has {free} bytes free")]
    NoSpace { needed: u64, free: u64 },
}

impl Kind for BundleError {
    fn kind(&self) -> ErrorKind {
        match self {
            // A stream cut by the network surfaces here as an I/O error of the reader.
            BundleError::Stream { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                ErrorKind::Retryable
            }
            BundleError::Stream { .. } | BundleError::Member { .. } | BundleError::Layout(_) => {
                ErrorKind::InvalidInput
            }
            BundleError::Io { .. } | BundleError::NoSpace { .. } => ErrorKind::Io,
        }
    }
}

type Result<T, E = BundleError> = std::result::Result<T, E>;

fn stream_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let what = what.into();
    move |source| BundleError::Stream { what, source }
}

/// How the files of an image are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `0.vhd` (leaf) … `n-1.vhd` (base): Folsom and later.
    Numbered(usize),
    /// Diablo: `image.vhd`, with optional `snap.vhd` (child of image) and `base.vhd`
    /// (parent of image).
    Legacy { snap: bool, base: bool },
    /// One VHD of any other name.
    Single(String),
}

impl Layout {
    /// Member names in chain order, leaf first.
    pub fn chain(&self) -> Vec<String> {
        match self {
            Layout::Numbered(n) => (0..*n).map(|i| format!("{i}.vhd")).collect(),
            Layout::Legacy { snap, base } => {
                let mut v = Vec::new();
                if *snap {
                    v.push("snap.vhd".to_string());
                }
                v.push("image.vhd".to_string());
                if *base {
                    v.push("base.vhd".to_string());
                }
                v
            }
            Layout::Single(name) => vec![name.clone()],
        }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug)]
pub struct Unpacked {
    pub layout: Layout,
    /// Files in `dest`, leaf first.
    pub files: Vec<PathBuf>,
    /// `swap.vhd`, written only with [`Limits::keep_swap`]: a VHD of its own, not part
    /// of the chain.
    pub swap: Option<PathBuf>,
    /// Bytes of VHD data written.
    pub bytes: u64,
}

/// Limits applied while unpacking.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the destination file system has free; a member whose declared size does
    /// not fit is refused before a byte of it is written.
    pub free_space: u64,
    /// The largest member accepted (VHD's 2040 GiB plus metadata by default).
    pub max_member: u64,
    /// The most VHDs the caller can take ([`MAX_FILES`] at most): a download given
    /// `uuid_stack` has one VDI UUID per VHD, so the member beyond them is refused
    /// before a byte of it is written, not after the whole image is unpacked.
    pub max_vhds: usize,
    /// Write `swap.vhd` (Diablo/Essex's `download_vhd` imported it as a VDI of its
    /// own) instead of skipping it. It counts against `max_vhds` (it takes a UUID too)
    /// and the free space, and passes the same VHD checks as every member.
    pub keep_swap: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            free_space: u64::MAX,
            max_member: (2040 << 30) + (64 << 20),
            max_vhds: MAX_FILES,
            keep_swap: false,
        }
    }
}

/// A member name after the policy: `None` for the directory entries `.`/`./`.
fn member_name(raw: &[u8], is_dir: bool) -> Result<Option<String>> {
    let name = String::from_utf8(raw.to_vec()).map_err(|_| BundleError::Member {
        name: String::from_utf8_lossy(raw).into_owned(),
        rule: "name is not UTF-8".into(),
    })?;
    let bad = |rule: &str| BundleError::Member {
        name: name.clone(),
        rule: rule.into(),
    };
    let trimmed = name.strip_prefix("./").unwrap_or(&name);
    if is_dir {
        return match trimmed.trim_end_matches('/') {
            "" | "." => Ok(None),
            _ => Err(bad("directories are not allowed in an image")),
        };
    }
    if trimmed.is_empty() || trimmed.starts_with('/') {
        return Err(bad("absolute or empty path"));
    }
    if trimmed.contains('/') {
        return Err(bad("paths with directories are not allowed in an image"));
    }
    if trimmed == "." || trimmed == ".." {
        return Err(bad("'.' and '..' are not files"));
    }
    if !trimmed.ends_with(".vhd") || trimmed == ".vhd" {
        return Err(bad("only *.vhd files are allowed in an image"));
    }
    Ok(Some(trimmed.to_string()))
}

/// Decide the layout from the member names (swap.vhd already removed).
pub fn layout(names: &[String]) -> Result<Layout> {
    if names.is_empty() {
        return Err(BundleError::Layout("the image holds no VHD".into()));
    }
    let numbered: Vec<Option<usize>> = names
        .iter()
        .map(|n| {
            let stem = n.strip_suffix(".vhd")?;
            // "0" … "15", no leading zeros or signs: exactly what the plugins wrote.
            let ok = !stem.is_empty()
                && stem.bytes().all(|b| b.is_ascii_digit())
                && (stem == "0" || !stem.starts_with('0'));
            ok.then(|| stem.parse().ok()).flatten()
        })
        .collect();
    if numbered.iter().all(Option::is_some) {
        let mut nums: Vec<usize> = numbered.into_iter().flatten().collect();
        nums.sort_unstable();
        if nums.len() > MAX_FILES {
            return Err(BundleError::Layout(format!(
                "{} VHDs; at most {MAX_FILES} are allowed",
                nums.len()
            )));
        }
        for (i, n) in nums.iter().enumerate() {
            if *n != i {
                return Err(BundleError::Layout(format!(
                    "{n}.vhd without {i}.vhd: the sequence must run 0.vhd, 1.vhd, … without gaps"
                )));
            }
        }
        return Ok(Layout::Numbered(nums.len()));
    }
    let legacy = ["image.vhd", "snap.vhd", "base.vhd"];
    if names.iter().any(|n| legacy.contains(&n.as_str())) {
        if let Some(other) = names.iter().find(|n| !legacy.contains(&n.as_str())) {
            return Err(BundleError::Layout(format!(
                "{other} mixed with image.vhd/snap.vhd/base.vhd"
            )));
        }
        if !names.iter().any(|n| n == "image.vhd") {
            return Err(BundleError::Layout(
                "snap.vhd or base.vhd without image.vhd".into(),
            ));
        }
        return Ok(Layout::Legacy {
            snap: names.iter().any(|n| n == "snap.vhd"),
            base: names.iter().any(|n| n == "base.vhd"),
        });
    }
    match names {
        [one] => Ok(Layout::Single(one.clone())),
        _ => Err(BundleError::Layout(format!(
            "{} VHDs with free names ({}); only one such file, or 0.vhd…n-1.vhd, is allowed",
            names.len(),
            names.join(", ")
        ))),
    }
}

/// Stream a gzipped tarball into `dest` (an existing, empty, private directory).
/// On error, files already written stay in `dest`: the caller owns and removes it.
pub fn unpack<R: Read>(body: R, dest: &Path, limits: Limits) -> Result<Unpacked> {
    unpack_with(body, dest, limits, None)
}

/// [`unpack`], naming each member in `progress` as it starts.
pub fn unpack_with<R: Read>(
    body: R,
    dest: &Path,
    limits: Limits,
    progress: Option<&Progress>,
) -> Result<Unpacked> {
    let mut buffered = io::BufReader::with_capacity(256 << 10, body);
    let first = io::BufRead::fill_buf(&mut buffered).map_err(stream_err("reading the image"))?;
    if first.is_empty() {
        return Err(BundleError::Layout(
            "the image body is empty: no VHD in it".into(),
        ));
    }
    let gz = flate2::read::MultiGzDecoder::new(buffered);
    let fence = Rc::new(Cell::new(MAX_META));
    let mut archive = tar::Archive::new(Fence {
        inner: gz,
        pos: 0,
        end: Rc::clone(&fence),
    });
    let mut names: Vec<String> = Vec::new();
    let mut bytes = 0u64;
    let mut free = limits.free_space;
    {
        let entries = archive
            .entries()
            .map_err(stream_err("reading the tar stream"))?;
        let mut meta_from = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| meta_err(e, meta_from))?;
            // What the reader will read: a pax `size` record overrides the header's
            // (a pax image over 8 GiB has its size only there).
            let size = entry.size();
            // This member's data and padding, then the next member's metadata.
            let data_end = entry
                .raw_file_position()
                .saturating_add(size.div_ceil(512).saturating_mul(512));
            fence.set(data_end.saturating_add(MAX_META));
            meta_from = data_end;
            let kind = entry.header().entry_type();
            let raw_name = entry.path_bytes().into_owned();
            let display = String::from_utf8_lossy(&raw_name).into_owned();
            let is_dir = kind.is_dir();
            if !(kind.is_file() || is_dir) {
                return Err(BundleError::Member {
                    name: display,
                    rule: format!(
                        "{} entries are not allowed in an image (regular files only)",
                        entry_kind(kind)
                    ),
                });
            }
            let Some(name) = member_name(&raw_name, is_dir)? else {
                continue;
            };
            if names.contains(&name)
                || (name == "swap.vhd" && names.iter().any(|n| n == "swap.vhd"))
            {
                return Err(BundleError::Member {
                    name: display,
                    rule: "duplicate member".into(),
                });
            }
            names.push(name.clone());
            if let Some(p) = progress {
                p.set_member(&name);
            }
            if name == "swap.vhd" && !limits.keep_swap {
                // Folsom and later ignore it on import (the old plugins shipped swap
                // separately).
                io::copy(&mut entry, &mut io::sink())
                    .map_err(stream_err(format!("reading member {display}")))?;
                continue;
            }
            // Every VHD written takes a UUID, a kept swap.vhd included.
            let written = names
                .iter()
                .filter(|n| limits.keep_swap || *n != "swap.vhd")
                .count();
            let vhds = names.iter().filter(|n| *n != "swap.vhd").count();
            if vhds > MAX_FILES {
                return Err(BundleError::Layout(format!(
                    "more than {MAX_FILES} VHDs in the image"
                )));
            }
            if written > limits.max_vhds {
                return Err(BundleError::Layout(format!(
                    "member {display} is VHD number {written} of the image, but only {} VDI UUIDs were given",
                    limits.max_vhds
                )));
            }
            if size > limits.max_member {
                return Err(BundleError::Member {
                    name: display,
                    rule: format!("{size} bytes is larger than any VHD can be"),
                });
            }
            if size > free {
                return Err(BundleError::NoSpace {
                    needed: bytes.saturating_add(size),
                    free: limits.free_space,
                });
            }
            // Restored as tar does: it becomes the parent timestamp on relink. One
            // beyond what a time can hold is refused, as Python's tarfile refused it.
            let mtime = entry
                .header()
                .mtime()
                .map_err(stream_err(format!("reading the mtime of member {display}")))?;
            let Some(mtime) = UNIX_EPOCH.checked_add(Duration::from_secs(mtime)) else {
                return Err(BundleError::Member {
                    name: display,
                    rule: format!("mtime {mtime} is beyond any time a file can have"),
                });
            };
            // A dynamic or differencing VHD says in its first KiBs how large it can be:
            // a declared size beyond that is refused before a byte is written.
            let prefix = vhd_prefix(&mut entry, size, &display)?;
            let prefix_len = prefix.len() as u64;
            free -= size;
            let path = dest.join(&name);
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| BundleError::Io {
                    path: path.clone(),
                    op: "create",
                    source: e,
                })?;
            let mut out = Writeback::new(out);
            out.write_all(&prefix).map_err(|e| BundleError::Io {
                path: path.clone(),
                op: "write",
                source: e,
            })?;
            drop(prefix);
            let n = copy_member(&mut entry, &mut out, &path, &display)?.saturating_add(prefix_len);
            if n != size {
                return Err(BundleError::Member {
                    name: display,
                    rule: format!("declared {size} bytes, stream held {n}"),
                });
            }
            let out = out.finish().map_err(|e| BundleError::Io {
                path: path.clone(),
                op: "fsync",
                source: e,
            })?;
            let _ = out.set_modified(mtime);
            bytes = bytes.saturating_add(n);
        }
    }
    // The tar end marker was read. What follows must be zero padding: anything else
    // is garbage we would silently drop (and a corrupt gzip member shows up here too).
    fence.set(u64::MAX);
    let mut rest = archive.into_inner();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(stream_err("reading past the tar end marker"))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(BundleError::Stream {
                what: "trailing data after the tar end marker".into(),
                source: io::Error::new(io::ErrorKind::InvalidData, "not zero padding"),
            });
        }
    }
    let swap =
        (limits.keep_swap && names.iter().any(|n| n == "swap.vhd")).then(|| dest.join("swap.vhd"));
    names.retain(|n| n != "swap.vhd");
    let layout = layout(&names)?;
    let files = layout.chain().iter().map(|n| dest.join(n)).collect();
    Ok(Unpacked {
        layout,
        files,
        swap,
        bytes,
    })
}

/// The decompressed stream as the tar reader sees it, cut at `end`: the end of the
/// current member's data plus [`MAX_META`] (moved on as members are read).
struct Fence<R> {
    inner: R,
    pos: u64,
    end: Rc<Cell<u64>>,
}

#[derive(Debug)]
struct FenceHit;

impl std::fmt::Display for FenceHit {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "more than {MAX_META} bytes of tar metadata before a member"
        )
    }
}

impl std::error::Error for FenceHit {}

impl<R: Read> Read for Fence<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.end.get().saturating_sub(self.pos);
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, FenceHit));
        }
        let take = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..take])?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

/// An error of the tar reader between members: the metadata bound, or a bad header.
fn meta_err(e: io::Error, from: u64) -> BundleError {
    let hit = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<FenceHit>().is_some());
    if hit {
        return BundleError::Member {
            name: format!("(the member after byte {from} of the tar stream)"),
            rule: format!("its header, long name and pax records take more than {MAX_META} bytes"),
        };
    }
    BundleError::Stream {
        what: "reading a tar header".into(),
        source: e,
    }
}

/// The first bytes of a member, as many as [`vhd::size_bound`] asks for (a few KiB for
/// the files tools write, never more than [`vhd::bound::MAX_PREFIX`] nor than the
/// member), read before anything is written. Refuses the member when those bytes break
/// a rule of the VHD format, or when its declared `size` is more than they allow: a
/// gzip bomb (a valid-looking header, then gigabytes of one byte) is refused before it
/// takes any room in the SR. The bound is only as tight as the offsets the header and
/// BAT declare (see [`vhd::bound`]). A member these bytes cannot bound (a fixed disk,
/// whose only footer is at its end) is written and checked whole afterwards.
fn vhd_prefix(entry: &mut impl Read, size: u64, name: &str) -> Result<Vec<u8>> {
    let mut prefix = Vec::new();
    let mut need = vhd::FOOTER_SIZE;
    loop {
        // `need` is at most MAX_PREFIX, and no more than the member is read.
        let want = usize::try_from(size).map_or(need, |s| s.min(need));
        let from = prefix.len();
        prefix.resize(want.max(from), 0);
        let mut filled = from;
        while filled < prefix.len() {
            match entry.read(&mut prefix[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_err(format!("reading member {name}"))(e)),
            }
        }
        prefix.truncate(filled);
        if prefix.len() < need {
            // A member shorter than its metadata (or a cut stream, which the copy
            // reports): it is that short anyway, and the VHD check after it decides.
            return Ok(prefix);
        }
        let refuse = |rule: String| BundleError::Member {
            name: name.to_string(),
            rule,
        };
        match vhd::size_bound(Path::new(name), &prefix) {
            Ok(SizeBound::Need(n)) if n > prefix.len() => need = n,
            Ok(SizeBound::AtMost(max)) if size > max => {
                return Err(refuse(format!(
                    "declared {size} bytes, but this VHD's footer copy, header and BAT allow \
                     at most {max} (the end of its last block or metadata area, {} bytes of \
                     slack and the footer): refused before writing it",
                    vhd::bound::MAX_SLACK
                )))
            }
            Ok(_) => return Ok(prefix),
            Err(vhd::VhdError::Invalid {
                field, value, rule, ..
            }) => {
                return Err(refuse(format!(
                    "not a valid VHD: {field} = {value}: {rule}"
                )))
            }
            Err(e) => return Err(refuse(format!("not a valid VHD: {e}"))),
        }
    }
}

fn copy_member(
    entry: &mut impl Read,
    out: &mut impl Write,
    path: &Path,
    name: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(stream_err(format!("reading member {name}")))?;
        if n == 0 {
            return Ok(total);
        }
        out.write_all(&buf[..n]).map_err(|e| BundleError::Io {
            path: path.to_path_buf(),
            op: "write",
            source: e,
        })?;
        total += n as u64;
    }
}

fn entry_kind(k: tar::EntryType) -> &'static str {
    use tar::EntryType as E;
    match k {
        E::Symlink => "symlink",
        E::Link => "hard link",
        E::Char => "character device",
        E::Block => "block device",
        E::Fifo => "fifo",
        E::GNUSparse => "sparse file",
        _ => "special",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn layouts() {
        assert_eq!(
            layout(&names(&["1.vhd", "0.vhd"])).unwrap(),
            Layout::Numbered(2)
        );
        assert!(layout(&names(&["0.vhd", "2.vhd"])).is_err());
        assert!(layout(&names(&["00.vhd"])).is_ok()); // a free name: one file
        assert!(layout(&names(&["0.vhd", "01.vhd"])).is_err());
        assert_eq!(
            layout(&names(&["image.vhd", "snap.vhd"])).unwrap().chain(),
            ["snap.vhd", "image.vhd"]
        );
        assert!(layout(&names(&["snap.vhd"])).is_err());
        assert_eq!(
            layout(&names(&["disk.vhd"])).unwrap(),
            Layout::Single("disk.vhd".into())
        );
        assert!(layout(&names(&["a.vhd", "b.vhd"])).is_err());
        assert!(layout(&[]).is_err());
        let many: Vec<String> = (0..17).map(|i| format!("{i}.vhd")).collect();
        assert!(layout(&many).is_err());
    }

    #[test]
    fn member_names() {
        assert_eq!(member_name(b"./0.vhd", false).unwrap().unwrap(), "0.vhd");
        assert_eq!(member_name(b"./", true).unwrap(), None);
        assert_eq!(member_name(b".", true).unwrap(), None);
        for bad in [
            &b"../x.vhd"[..],
            b"/abs.vhd",
            b"a/b.vhd",
            b"x.txt",
            b"..",
            b".vhd",
        ] {
            assert!(member_name(bad, false).is_err(), "{bad:?}");
        }
        assert!(member_name(b"0.vhd", true).is_err());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// The limits of the tar_unpack fuzz target, whose inputs these are.
    const SMALL: Limits = Limits {
        free_space: 64 << 10,
        max_member: 32 << 10,
        max_vhds: MAX_FILES,
        keep_swap: false,
    };

    fn unpack_in(body: &[u8]) -> (Result<Unpacked>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (unpack(body, dir.path(), SMALL), dir)
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fuzz");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/tar_unpack-{name}.bin")).unwrap()
    }

    #[test]
    fn an_mtime_beyond_any_time_is_refused() {
        // GNU base-256 mtime 2^63: `UNIX_EPOCH + secs` panicked.
        let (r, _d) = unpack_in(&gzip(&fixture("mtime-overflow")));
        match r {
            Err(BundleError::Member { name, rule }) => {
                assert_eq!(name, "0.vhd");
                assert!(rule.contains("mtime 9223372036854775808"), "{rule}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pax_size_is_the_size_the_limits_see() {
        // Header size 0, pax size 80 000: the limits saw 0 and 80 000 bytes were written.
        let (r, d) = unpack_in(&gzip(&fixture("pax-size-over-limit")));
        match r {
            Err(BundleError::Member { name, rule }) => {
                assert_eq!(name, "0.vhd");
                assert!(rule.contains("80000 bytes is larger"), "{rule}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // A pax size that fits is what the member holds (an image over 8 GiB in pax
        // format has its size only there): accepted, not "declared 0 bytes".
        let mut tar = Vec::new();
        let mut pax = tar::Header::new_ustar();
        let record = b"12 size=512\n";
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_path("PaxHeaders/0.vhd").unwrap();
        pax.set_size(record.len() as u64);
        pax.set_cksum();
        tar.extend_from_slice(pax.as_bytes());
        tar.extend_from_slice(record);
        tar.resize(1024, 0);
        let mut h = tar::Header::new_ustar();
        h.set_path("0.vhd").unwrap();
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(&[7u8; 512]);
        tar.resize(tar.len() + 1024, 0);
        let (r, d) = unpack_in(&gzip(&tar));
        let u = r.unwrap();
        assert_eq!(u.bytes, 512);
        assert_eq!(std::fs::read(d.path().join("0.vhd")).unwrap(), [7u8; 512]);
    }

    #[test]
    fn a_long_name_is_not_read_into_memory_without_bound() {
        // A GNU long name declaring 80 MiB (80 KB of gzip): the tar reader held it whole.
        let (r, _d) = unpack_in(&fixture("longname-bomb"));
        match r {
            Err(BundleError::Member { name, rule }) => {
                assert!(name.contains("after byte 0"), "{name}");
                assert!(
                    rule.contains(&format!("more than {MAX_META} bytes")),
                    "{rule}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        gzip(&b.into_inner().unwrap())
    }

    #[test]
    fn a_member_larger_than_its_vhd_metadata_allows_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let vhd = crate::vhd::test_samples::unpack_as(dir.path(), "child.vhd", "c.vhd");
        let sample = std::fs::read(vhd).unwrap();
        let slack = crate::vhd::bound::MAX_SLACK as usize;
        // Up to the bound (the sample, then the slack a writer may leave): written.
        let mut at_bound = sample.clone();
        at_bound.resize(sample.len() + slack, 0);
        let d = tempfile::tempdir().unwrap();
        let u = unpack(&tar_of("0.vhd", &at_bound)[..], d.path(), Limits::default()).unwrap();
        assert_eq!(u.bytes, at_bound.len() as u64);
        // One sector more: refused, nothing written.
        at_bound.resize(sample.len() + slack + 512, 0);
        let d = tempfile::tempdir().unwrap();
        match unpack(&tar_of("0.vhd", &at_bound)[..], d.path(), Limits::default()) {
            Err(BundleError::Member { name, rule }) => {
                assert_eq!(name, "0.vhd");
                let max = sample.len() + slack;
                assert!(rule.contains(&format!("at most {max}")), "{rule}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // A footer copy that promises a dynamic header, and garbage where it should be.
        let mut broken = sample.clone();
        broken[512..1536].fill(0x5a);
        let d = tempfile::tempdir().unwrap();
        match unpack(&tar_of("0.vhd", &broken)[..], d.path(), Limits::default()) {
            Err(BundleError::Member { rule, .. }) => {
                assert!(rule.contains("not a valid VHD: header cookie"), "{rule}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
