//! Packing a chain for upload: a tar of `./`, `./0.vhd` (leaf) … `./n-1.vhd` (base) — or
//! the Diablo names — with GNU headers, each file's mode and mtime kept, gzipped in
//! parallel into one member ([`super::pargz`]). This is the format the old plugins made
//! with `tar -zc --directory=STAGING .`, readable by GNU tar and Python `tarfile` `r|gz`.
//! [`pack_generated_with`] packs one member made as it is read instead (`upload
//! --flatten`: `./0.vhd` made from the chain), under the same rules.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::pargz::ParGzWriter;
use crate::progress::{Counting, Progress};
use crate::stream::DropBehind;

/// What to compress with.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// gzip level, 1–9 (see [`level`]).
    pub level: u32,
    /// Compression threads; the number of cores by default (the plugin's; the CLI
    /// leaves dom0 room, `cli::args::default_threads`).
    pub threads: usize,
}

/// GNU gzip's default level, and the old plugins': the plugin's level when the image
/// has no [`LEVEL_PROPERTY`] (Nova's semantics). The CLI has its own default
/// (`cli::args::DEFAULT_LEVEL`), chosen for dom0's CPUs.
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
/// [`LEVEL_PROPERTY`], else `default` (the plugin's is [`DEFAULT_LEVEL`], Nova's; the
/// CLI's its own). A property that is not 1–9 keeps `default` and comes back as a
/// warning for the caller to log, as the old plugin did.
pub fn level(
    explicit: Option<u32>,
    properties: &[(String, String)],
    default: u32,
) -> (u32, Option<String>) {
    if let Some(l) = explicit {
        return (l, None);
    }
    match properties.iter().find(|(k, _)| k == LEVEL_PROPERTY) {
        None => (default, None),
        Some((_, v)) => match v.parse::<u32>() {
            Ok(l) if (1..=9).contains(&l) => (l, None),
            _ => (
                default,
                Some(format!(
                    "{LEVEL_PROPERTY} {v:?} is not 1-9; using {default}"
                )),
            ),
        },
    }
}

/// One file to pack, already opened and checked by the caller, with what it must still
/// be when it is read: the tar header promises `size` bytes, and a VHD read while it
/// grows or while its footer is rewritten is torn (its checksums would match what was
/// sent, so the store would take it as a good image).
pub struct Member<'a> {
    /// The name in the tar, without `./`.
    pub name: &'a str,
    /// For messages.
    pub path: &'a Path,
    /// Read from its start.
    pub file: &'a File,
    /// The size the caller checked: exactly this many bytes are packed, and the file
    /// must still have this size once they are read.
    pub size: u64,
    /// The last bytes the caller checked (a VHD's primary footer): the bytes packed
    /// must end with exactly these.
    pub tail: &'a [u8],
}

/// Write the tarball of `members` (in order) into `out`. Returns `out` after the gzip
/// trailer; on error the stream is left unfinished.
pub fn pack<W: Write>(members: &[Member<'_>], out: W, opts: PackOptions) -> io::Result<W> {
    pack_with(members, out, opts, None)
}

/// [`pack`], counting the bytes read from the VHDs into `progress` (whose total is set
/// to their sum) and naming the member being read.
pub fn pack_with<W: Write>(
    members: &[Member<'_>],
    out: W,
    opts: PackOptions,
    progress: Option<Arc<Progress>>,
) -> io::Result<W> {
    // One look at the members up front: their total size (the progress total) and the
    // newest mtime. The ./ entry takes that mtime, not the clock (GNU tar would record
    // the staging directory's): the same chain then packs to the same bytes — the same
    // checksum in the store, and exact offsets for the fault suite.
    let (total, newest) = survey(members)?;
    if let Some(p) = &progress {
        p.set_total(total);
    }
    let mut tar = begin(out, opts, newest)?;
    for m in members {
        let meta = m.file.metadata()?;
        if meta.len() != m.size {
            return Err(changed(m, &format!("is {} bytes now", meta.len())));
        }
        let mut file = m.file.try_clone()?;
        // The caller's checks read with pread; the stream starts at byte 0 whatever
        // the shared offset is.
        file.seek(SeekFrom::Start(0))?;
        let h = file_header(&meta, meta.mtime().max(0) as u64, m.size, m.name)?;
        if let Some(p) = &progress {
            p.set_member(m.name);
        }
        // The size in the header is a promise: a file that changes length or footer
        // while we read it makes `append` fail rather than produce a corrupt archive,
        // and a failed producer leaves the stream without its end.
        append(
            &mut tar,
            &h,
            Exact {
                // Read straight into the gzip blocks, up to 512 KiB at a time
                // (`ParGzWriter::read_from`), behind the kernel's readahead.
                inner: Counting::new(DropBehind::new(file), progress.clone()),
                remaining: m.size,
                seen: vec![0; m.tail.len()],
                member: m,
                checked: false,
            },
        )?;
    }
    let gz = tar.into_inner()?;
    gz.finish()
}

/// One look at the members before a byte is written: their total size (the progress
/// total) and their newest mtime. `Exact` keeps the last `tail.len()` bytes of `size`:
/// a longer tail is a caller error, not something to subtract.
fn survey(members: &[Member<'_>]) -> io::Result<(u64, u64)> {
    let mut total = 0u64;
    let mut newest = 0u64;
    for m in members {
        if m.tail.len() as u64 > m.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: a tail longer than the member", m.path.display()),
            ));
        }
        total = total.saturating_add(m.size);
        newest = newest.max(m.file.metadata()?.mtime().max(0) as u64);
    }
    Ok((total, newest))
}

/// The tar over parallel gzip, begun with its `./` entry (mtime `newest`).
fn begin<W: Write>(
    out: W,
    opts: PackOptions,
    newest: u64,
) -> io::Result<tar::Builder<ParGzWriter<W>>> {
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
    Ok(tar)
}

/// `tar::Builder::append` without its copy: the header, then `data` read to its end
/// straight into the gzip blocks ([`ParGzWriter::read_from`]), then the padding to 512
/// bytes. `data` ([`Exact`], [`Made`]) yields exactly the header's size or fails.
fn append<W: Write>(
    tar: &mut tar::Builder<ParGzWriter<W>>,
    h: &tar::Header,
    mut data: impl io::Read,
) -> io::Result<()> {
    // The builder keeps no state between members but whether it finished: writing a
    // member through it by hand is what `append` does itself.
    let gz = tar.get_mut();
    gz.write_all(h.as_bytes())?;
    let len = gz.read_from(&mut data)?;
    let pad = (512 - len % 512) % 512;
    gz.write_all(&[0u8; 512][..pad as usize])
}

/// A regular member `./name` of `size` bytes with `meta`'s mode and owner.
fn file_header(
    meta: &std::fs::Metadata,
    mtime: u64,
    size: u64,
    name: &str,
) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(meta.mode() & 0o7777);
    h.set_mtime(mtime);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_size(size);
    set_name(&mut h, &format!("./{name}"))?;
    h.set_cksum();
    Ok(h)
}

/// One member made as it is read (`upload --flatten`: one VHD made from the chain's
/// files), and the files it is made from.
pub struct Generated<'a, R> {
    /// The name in the tar, without `./`.
    pub name: &'a str,
    /// Exactly this many bytes: the tar header says so before the first is read.
    pub size: u64,
    pub data: R,
    /// The files read to make it, as their caller checked them: each must still be so
    /// once the last byte is made. The first (the leaf) gives the member its mode and
    /// owner; the newest mtime of them all is the member's.
    pub sources: &'a [Member<'a>],
}

/// [`pack_with`] for one generated member: `./` and `./NAME`, the same gzip, the same
/// rule that a member which is not what was promised (a short or long stream, a source
/// that changed while it was read) fails the stream before its end. `progress` counts
/// the bytes of the member made.
pub fn pack_generated_with<W: Write, R: io::Read>(
    image: Generated<'_, R>,
    out: W,
    opts: PackOptions,
    progress: Option<Arc<Progress>>,
) -> io::Result<W> {
    let Some(leaf) = image.sources.first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: made from no file", image.name),
        ));
    };
    let (_, newest) = survey(image.sources)?;
    let meta = leaf.file.metadata()?;
    if let Some(p) = &progress {
        p.set_total(image.size);
        p.set_member(image.name);
    }
    let mut tar = begin(out, opts, newest)?;
    let h = file_header(&meta, newest, image.size, image.name)?;
    append(
        &mut tar,
        &h,
        Made {
            inner: Counting::new(image.data, progress),
            name: image.name,
            remaining: image.size,
            sources: image.sources,
            checked: false,
        },
    )?;
    let gz = tar.into_inner()?;
    gz.finish()
}

/// Exactly `remaining` bytes of a generated member; at its end, every source is
/// checked again (size, and its last bytes read anew) before tar writes anything after
/// it.
struct Made<'a, R> {
    inner: R,
    name: &'a str,
    remaining: u64,
    sources: &'a [Member<'a>],
    checked: bool,
}

impl<R: io::Read> io::Read for Made<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            if !self.checked {
                let mut more = [0u8; 1];
                if self.inner.read(&mut more)? != 0 {
                    return Err(io::Error::other(format!(
                        "{}: longer than the size its tar header promised",
                        self.name
                    )));
                }
                for m in self.sources {
                    unchanged(m)?;
                }
                // Only once they passed: a caller that retries an `Interrupted` error
                // (as `read_from` does) must not find the checks skipped.
                self.checked = true;
            }
            return Ok(0);
        }
        read_at_most(&mut self.inner, &mut self.remaining, buf, |left| {
            format!(
                "{}: {left} bytes short of the size its tar header promised",
                self.name
            )
        })
    }
}

/// One read of at most `remaining` bytes into `buf`, counted off `remaining`; the end of
/// `inner` before that is an `UnexpectedEof` error with `short(remaining)` as its message.
fn read_at_most(
    inner: &mut impl io::Read,
    remaining: &mut u64,
    buf: &mut [u8],
    short: impl FnOnce(u64) -> String,
) -> io::Result<usize> {
    let want = buf
        .len()
        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
    let n = inner.read(&mut buf[..want])?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            short(*remaining),
        ));
    }
    *remaining -= n as u64;
    Ok(n)
}

/// A member is still what its caller checked: the same size, the same last bytes.
fn unchanged(m: &Member<'_>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let now = m.file.metadata()?.len();
    if now != m.size {
        return Err(changed(m, &format!("{now} bytes at the end of reading it")));
    }
    let mut tail = vec![0u8; m.tail.len()];
    m.file
        .read_exact_at(&mut tail, m.size - m.tail.len() as u64)?;
    if tail != m.tail {
        return Err(changed(m, "its footer is not the footer checked"));
    }
    Ok(())
}

/// The error for a member that is not what its caller checked.
fn changed(m: &Member<'_>, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} changed while it was being read ({what}; {} bytes when the chain was checked): \
             the upload is abandoned rather than sent torn",
            m.path.display(),
            m.size
        ),
    )
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

/// Exactly `member.size` bytes of `inner`: more are not read, fewer are an error, and
/// at the end the file must still be that long and the last bytes read must be
/// `member.tail`.
struct Exact<'a, R> {
    inner: R,
    remaining: u64,
    member: &'a Member<'a>,
    /// The bytes read at the offsets of `member.tail`.
    seen: Vec<u8>,
    checked: bool,
}

impl<R: io::Read> io::Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            if !self.checked {
                // `append` reads to end-of-file before it pads the member: the checks
                // come before anything after this member is written, and count as done
                // only once they passed (see `Made`).
                self.check_end()?;
                self.checked = true;
            }
            return Ok(0);
        }
        let size = self.member.size;
        let pos = size - self.remaining;
        let n = read_at_most(&mut self.inner, &mut self.remaining, buf, |_| {
            format!(
                "{} shrank while it was being read",
                self.member.path.display()
            )
        })?;
        // Keep what lands on the tail's offsets: [size - tail, size).
        let tail_at = size - self.seen.len() as u64;
        let end = pos + n as u64;
        if end > tail_at {
            let from = pos.max(tail_at);
            let dst = (from - tail_at) as usize..(end - tail_at) as usize;
            let src = (from - pos) as usize..n;
            self.seen[dst].copy_from_slice(&buf[src]);
        }
        Ok(n)
    }
}

impl<R> Exact<'_, R> {
    fn check_end(&self) -> io::Result<()> {
        let now = self.member.file.metadata()?.len();
        if now != self.member.size {
            return Err(changed(
                self.member,
                &format!("{now} bytes at the end of reading it"),
            ));
        }
        if self.seen != self.member.tail {
            return Err(changed(
                self.member,
                "its footer read in the stream is not the footer checked",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_rule() {
        let props = |v: &str| vec![(LEVEL_PROPERTY.to_string(), v.to_string())];
        for default in [DEFAULT_LEVEL, 3] {
            assert_eq!(level(Some(2), &props("9"), default), (2, None));
            assert_eq!(level(None, &props("9"), default), (9, None));
            assert_eq!(level(None, &[], default), (default, None));
            for bad in ["0", "10", "fast", ""] {
                let (l, warning) = level(None, &props(bad), default);
                assert_eq!(l, default);
                let warning = warning.unwrap();
                assert!(warning.contains("is not 1-9"), "{bad}");
                assert!(warning.ends_with(&format!("using {default}")), "{warning}");
            }
        }
    }
}
