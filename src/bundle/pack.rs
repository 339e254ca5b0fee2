//! Packing a chain for upload: a tar of `./`, `./0.vhd` (leaf) … `./n-1.vhd` (base) — or
//! the Diablo names — with GNU headers, each file's mode and mtime kept, gzipped in
//! parallel into one member ([`super::pargz`]). This is the format the old plugins made
//! with `tar -zc --directory=STAGING .`, readable by GNU tar and Python `tarfile` `r|gz`.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::pargz::ParGzWriter;
use crate::progress::{Counting, Progress};
use crate::stream::DropBehind;

/// What to compress with.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// gzip level, 1–9 (see [`level`]).
    pub level: u32,
    /// Compression threads; the number of cores by default.
    pub threads: usize,
}

/// GNU gzip's default level, and the old plugins'.
pub const DEFAULT_LEVEL: u32 = 6;

/// The image property Nova sets from `xenapi_image_compression_level`.
pub const LEVEL_PROPERTY: &str = "xenapi_image_compression_level";

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            level: DEFAULT_LEVEL,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// The gzip level for an upload, the same rule for the CLI and the plugin: an explicit
/// level (`--compression-level`, already 1–9), else the image property
/// [`LEVEL_PROPERTY`], else [`DEFAULT_LEVEL`]. A property that is not 1–9 keeps the
/// default and comes back as a warning for the caller to log, as the old plugin did.
pub fn level(explicit: Option<u32>, properties: &[(String, String)]) -> (u32, Option<String>) {
    if let Some(l) = explicit {
        return (l, None);
    }
    match properties.iter().find(|(k, _)| k == LEVEL_PROPERTY) {
        None => (DEFAULT_LEVEL, None),
        Some((_, v)) => match v.parse::<u32>() {
            Ok(l) if (1..=9).contains(&l) => (l, None),
            _ => (
                DEFAULT_LEVEL,
                Some(format!(
                    "{LEVEL_PROPERTY} {v:?} is not 1-9; using {DEFAULT_LEVEL}"
                )),
            ),
        },
    }
}

/// Write the tarball of `members` (`(name in the tar, file)`, in order) into `out`.
/// Returns `out` after the gzip trailer; on error the stream is left unfinished.
pub fn pack<W: Write>(members: &[(String, PathBuf)], out: W, opts: PackOptions) -> io::Result<W> {
    pack_with(members, out, opts, None)
}

/// [`pack`], counting the bytes read from the VHDs into `progress` (whose total is set
/// to their sum) and naming the member being read.
pub fn pack_with<W: Write>(
    members: &[(String, PathBuf)],
    out: W,
    opts: PackOptions,
    progress: Option<Arc<Progress>>,
) -> io::Result<W> {
    // One look at the members up front: their total size (the progress total) and the
    // newest mtime. The ./ entry takes that mtime, not the clock (GNU tar would record
    // the staging directory's): the same chain then packs to the same bytes — the same
    // checksum in the store, and exact offsets for the fault suite.
    let (total, newest) = members
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok())
        .fold((0u64, 0u64), |(t, n), m| {
            (t.saturating_add(m.len()), n.max(m.mtime().max(0) as u64))
        });
    if let Some(p) = &progress {
        p.set_total(total);
    }
    let gz = ParGzWriter::new(out, opts.level, opts.threads)?;
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Complete);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(newest);
    dir.set_size(0);
    set_name(&mut dir, "./")?;
    dir.set_cksum();
    tar.append(&dir, io::empty())?;
    for (name, path) in members {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let meta = file.metadata()?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(meta.mode() & 0o7777);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_size(meta.len());
        set_name(&mut h, &format!("./{name}"))?;
        h.set_cksum();
        if let Some(p) = &progress {
            p.set_member(name);
        }
        // The size in the header is a promise: a file that changes length while we read
        // it makes `append` fail rather than produce a corrupt archive.
        tar.append(
            &h,
            Exact {
                // Large reads: tar copies in 8 KiB pieces, the disk likes megabytes.
                inner: Counting::new(
                    io::BufReader::with_capacity(1 << 20, DropBehind::new(file)),
                    progress.clone(),
                ),
                remaining: meta.len(),
                path: path.clone(),
            },
        )?;
    }
    let gz = tar.into_inner()?;
    gz.finish()
}

/// Member names are short (`./12.vhd`, `./image.vhd`): they go into the header's name
/// field as they are, `./` included, as GNU tar writes them.
fn set_name(h: &mut tar::Header, name: &str) -> io::Result<()> {
    let field = &mut h.as_old_mut().name;
    if name.len() >= field.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("member name {name:?} too long"),
        ));
    }
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

/// Exactly `remaining` bytes of `inner`: more are not read, fewer are an error.
struct Exact<R> {
    inner: R,
    remaining: u64,
    path: PathBuf,
}

impl<R: io::Read> io::Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being read", self.path.display()),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_rule() {
        let props = |v: &str| vec![(LEVEL_PROPERTY.to_string(), v.to_string())];
        assert_eq!(level(Some(2), &props("9")), (2, None));
        assert_eq!(level(None, &props("9")), (9, None));
        assert_eq!(level(None, &[]), (DEFAULT_LEVEL, None));
        for bad in ["0", "10", "fast", ""] {
            let (l, warning) = level(None, &props(bad));
            assert_eq!(l, DEFAULT_LEVEL);
            assert!(warning.unwrap().contains("is not 1-9"), "{bad}");
        }
    }
}
