//! `vhd-util repair` (blktap `vhd-util-repair.c` on libvhd's `vhd_write_footer`): put
//! back the footer at the end of a dynamic or differencing disk from the copy every such
//! disk keeps at offset 0 — what a crash or a copy cut short leaves behind.
//!
//! What blktap does: open the file read-write, which picks the footer at the end (or a
//! 511-byte short one) and falls back to the copy at offset 0 when that is invalid;
//! write the footer in use, checksum recomputed, at `vhd_end_of_data` (the end of the
//! last block or metadata area; end − 512 on a block device) and again at offset 0;
//! fsync on close. It never truncates, and it never refuses a file it can open.
//!
//! What we write, and where:
//!
//! * footer at the end invalid, copy valid (dynamic or differencing): the copy's 512
//!   bytes, exactly as read, at the end of data — the offset blktap writes — and nothing
//!   else. Over an *overwritten* footer (file = end of data + 512) that is the last 512
//!   bytes, the size unchanged; after a *truncated* one (the file ends at the end of
//!   data, or inside the footer) the write extends the file to end of data + 512. Either
//!   way the file is byte for byte what it was before the damage, when only the footer
//!   was damaged (blktap's own writer puts the footer at the end of data).
//! * footer at the end valid, copy at offset 0 invalid: the footer's bytes at offset 0
//!   (blktap rewrites the copy the same way).
//! * both valid and equal, or a fixed disk with a valid footer: nothing to do.
//!
//! Refused, writing nothing — blktap would write, but not a repair:
//!
//! * both valid but different: which is right is not ours to guess (blktap would
//!   overwrite the copy with the footer at the end);
//! * the file ends before its end of data: blocks or metadata are gone, not just the
//!   footer (blktap would leave a hole that reads as zeros);
//! * more than 512 bytes after the end of data: bytes no BAT entry or metadata area
//!   covers (an allocation cut short) — blktap would write at the end of data and leave
//!   them after it, so the end of the file would still be no footer;
//! * an end of data that is not sector-aligned (blktap would overwrite the last sector
//!   of a metadata area);
//! * a symlink, FIFO, socket, directory or device: only a regular file, opened
//!   `O_NOFOLLOW` (root in dom0 writes where the name points, not where a link does).
//!
//! Refused as blktap's open refuses them (vhd-util's errno): both copies invalid, a
//! disabled (poisoned) or tapdisk 0.1 file, a header or BAT that does not hold.
//!
//! Deliberate differences: the copy is written as read, not with its checksum
//! recomputed (the two differ only for early-tapdisk files whose hidden flag was set
//! without a checksum update; written as read, both copies stay identical), and a null
//! UUID is left null (XCP-ng's repair makes one up; a repair restores, it does not
//! rename).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{EINVAL, ELOOP};
use super::footer::{self, Footer, FooterProblem};
use super::{read_exact_at, OpenMode, Vhd, VhdError, FOOTER_SIZE};
use crate::error::{ErrorKind, Kind};

/// What `repair` did, or with `dry_run` would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repair {
    pub file: String,
    pub action: Action,
    /// What was wrong, in words; `None` when nothing was.
    pub problem: Option<String>,
    /// Where the 512 bytes go.
    pub offset: Option<u64>,
    pub size_before: u64,
    pub size_after: u64,
    pub dry_run: bool,
    /// Whether anything was written (never with `dry_run` or `Action::None`).
    pub written: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing to repair.
    None,
    /// The footer at the end of data, from the copy at offset 0.
    Footer,
    /// The copy at offset 0, from the footer at the end.
    Copy,
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// What `vhd-util repair` fails on too (it cannot open the file, a read or write
    /// fails): vhd-util's errno is the exit code.
    #[error(transparent)]
    Vhd(#[from] VhdError),
    /// What vhd-util would write through and we refuse, with the reason.
    #[error("{}: {what}", path.display())]
    Refused { path: PathBuf, what: String },
}

impl Kind for RepairError {
    fn kind(&self) -> ErrorKind {
        match self {
            RepairError::Vhd(e) => e.kind(),
            RepairError::Refused { .. } => ErrorKind::InvalidInput,
        }
    }
}

type Result<T> = std::result::Result<T, RepairError>;

fn refused(path: &Path, what: impl Into<String>) -> RepairError {
    RepairError::Refused {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Repair `path` as described in the module docs; with `dry_run` the file is opened
/// read-only and only the plan is returned.
pub fn repair(path: &Path, dry_run: bool) -> Result<Repair> {
    let file = open(path)?;
    let size = file
        .metadata()
        .map_err(|e| VhdError::io(path, "stat", e))?
        .len();
    let primary_at = super::primary_footer_at(size);
    let mut primary = [0u8; FOOTER_SIZE];
    let len = (size - primary_at) as usize;
    read_exact_at(
        &file,
        path,
        &mut primary[..len],
        primary_at,
        "read the footer",
    )?;
    let mut copy = [0u8; FOOTER_SIZE];
    let copy_read = size >= FOOTER_SIZE as u64;
    if copy_read {
        read_exact_at(&file, path, &mut copy, 0, "read the footer copy")?;
    }
    let plan = Plan {
        path,
        file: &file,
        size,
        primary_at,
        primary: &primary,
        copy: copy_read.then_some(&copy),
    };
    let (action, problem, offset, bytes) = plan.decide()?;
    let mut r = Repair {
        file: path.display().to_string(),
        action,
        problem,
        offset,
        size_before: size,
        size_after: size,
        dry_run,
        written: false,
    };
    if let (Some(at), Some(bytes)) = (offset, bytes) {
        r.size_after = size.max(at + FOOTER_SIZE as u64);
        if !dry_run {
            let w = reopen_for_writing(&file, path)?;
            w.write_all_at(&bytes, at)
                .map_err(|e| VhdError::io(path, "write the footer", e))?;
            w.sync_all().map_err(|e| VhdError::io(path, "fsync", e))?;
            r.written = true;
        }
    }
    Ok(r)
}

impl Repair {
    /// One line for a terminal.
    pub fn summary(&self) -> String {
        let file = &self.file;
        let Some(at) = self.offset else {
            return format!(
                "{file}: nothing to repair ({})",
                self.problem.as_deref().unwrap_or("the footers are valid")
            );
        };
        let problem = self.problem.as_deref().unwrap_or("");
        let what = match self.action {
            Action::Copy => format!("the footer from the end at offset {at}"),
            _ => format!(
                "the footer copy from offset 0 at offset {at} (the end of the data); the file is {} bytes",
                self.size_after
            ),
        };
        if self.written {
            format!("{file}: {problem}; wrote {what}")
        } else {
            format!("{file}: {problem}; would write {what} (--dry-run: nothing written)")
        }
    }
}

/// `path` for reading: a regular file, never through a symlink, never waiting on a FIFO,
/// never becoming our controlling terminal. Read-only: nothing but a regular file is
/// ever opened for writing (opening some devices for writing has effects of its own).
fn open(path: &Path) -> Result<File> {
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NOCTTY;
    let file = crate::fsutil::open_nonblocking(path, false, flags).map_err(|e| {
        match e.raw_os_error() {
            Some(ELOOP) => refused(
                path,
                "is a symbolic link: repair writes only into the file it is given (name the file itself)",
            ),
            _ => RepairError::from(VhdError::io(path, "open", e)),
        }
    })?;
    let meta = file.metadata().map_err(|e| VhdError::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(refused(
            path,
            "is not a regular file (a directory, block device, FIFO, socket or character device): \
             repair writes only regular files",
        ));
    }
    Ok(file)
}

/// The very file `file` is open on, for writing: through `/proc/self/fd`, so that a
/// name swapped since (for a symlink, a device) is never what gets written.
fn reopen_for_writing(file: &File, path: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(std::fs::OpenOptions::new()
        .write(true)
        .open(fd_path)
        .map_err(|e| VhdError::io(path, "open for writing", e))?)
}

struct Plan<'a> {
    path: &'a Path,
    file: &'a File,
    size: u64,
    primary_at: u64,
    primary: &'a [u8; FOOTER_SIZE],
    /// `None` when the file is shorter than one footer.
    copy: Option<&'a [u8; FOOTER_SIZE]>,
}

/// (action, what was wrong, where to write, what to write)
type Decision = (
    Action,
    Option<String>,
    Option<u64>,
    Option<[u8; FOOTER_SIZE]>,
);

impl Plan<'_> {
    fn decide(&self) -> Result<Decision> {
        let primary = Footer::decode(self.primary);
        let copy = self.copy.map(Footer::decode);
        let copy_problem = match &copy {
            None => Some(format!(
                "the file is {} bytes, shorter than a footer",
                self.size
            )),
            Some(c) => c.problem().map(|p| describe(c, p)),
        };
        match primary.problem() {
            None => self.primary_valid(&primary, copy.as_ref(), copy_problem),
            Some(p) => self.primary_invalid(&primary, p, copy.as_ref(), copy_problem),
        }
    }

    fn primary_valid(
        &self,
        primary: &Footer,
        copy: Option<&Footer>,
        copy_problem: Option<String>,
    ) -> Result<Decision> {
        if !primary.is_dynamic_or_diff() {
            // A fixed disk keeps no copy: its first sector is the guest's.
            return Ok((
                Action::None,
                Some("a fixed disk with a valid footer".into()),
                None,
                None,
            ));
        }
        match (copy, copy_problem) {
            (Some(c), None) if footer::copies_agree(self.primary, &c.encode_raw()) => Ok((
                Action::None,
                Some("the footer at the end and its copy at offset 0 are valid and agree".into()),
                None,
                None,
            )),
            (Some(c), None) => Err(refused(
                self.path,
                format!(
                    "the footer at the end (offset {}) and the copy at offset 0 are both valid but differ ({}): \
                     which one is right is not for repair to guess (vhd-util repair would overwrite the copy with the footer at the end)",
                    self.primary_at,
                    differing_fields(primary, c).join(", ")
                ),
            )),
            (_, Some(problem)) => {
                // The disk must open through the footer we keep, and its header must
                // not start in the sector we are about to write.
                let file = self.dup()?;
                let v = Vhd::from_file(self.path, file, self.size, OpenMode::WRITE)?;
                if v.footer.data_offset < FOOTER_SIZE as u64 {
                    return Err(refused(
                        self.path,
                        format!(
                            "the footer's data offset {} puts the dynamic header where the copy belongs",
                            v.footer.data_offset
                        ),
                    ));
                }
                Ok((
                    Action::Copy,
                    Some(format!("the footer copy at offset 0 is invalid: {problem}")),
                    Some(0),
                    Some(*self.primary),
                ))
            }
            (None, None) => unreachable!("no copy read means a copy problem"),
        }
    }

    fn primary_invalid(
        &self,
        primary: &Footer,
        problem: FooterProblem,
        copy: Option<&Footer>,
        copy_problem: Option<String>,
    ) -> Result<Decision> {
        let primary_words = describe(primary, problem);
        let copy = match (copy, copy_problem) {
            (Some(c), None) if super::usable_copy(c) => c,
            (_, copy_problem) => {
                let copy_words = copy_problem
                    .unwrap_or_else(|| "a fixed disk's footer (fixed disks keep no copy)".into());
                // vhd-util fails here too: its open finds no footer (EINVAL).
                return Err(VhdError::refused(
                    self.path,
                    format!(
                        "no valid footer to repair from: the footer at the end (offset {}): {primary_words}; \
                         the copy at offset 0: {copy_words}",
                        self.primary_at
                    ),
                    EINVAL,
                )
                .into());
            }
        };
        // Read the disk through the copy, as if the footer were cut off: every header,
        // BAT and batmap must lie inside the file as it is.
        let v = Vhd::with_footer(
            self.path,
            self.dup()?,
            self.size,
            self.size,
            copy.encode_raw(),
            true,
            OpenMode::WRITE,
        )?;
        let end = v.end_of_data();
        if end % 512 != 0 {
            return Err(refused(
                self.path,
                format!(
                    "the end of the data ({end}) is not on a sector boundary: a metadata area ends mid-sector, \
                     and the footer written there would overwrite it"
                ),
            ));
        }
        if end > self.size {
            return Err(refused(
                self.path,
                format!(
                    "the file ends at byte {}, before the end of its data at byte {end}: more than the footer is missing \
                     (blocks or metadata were cut off; a footer written at {end} would leave a hole that reads as zeros)",
                    self.size
                ),
            ));
        }
        let tail = self.size - end;
        if tail > FOOTER_SIZE as u64 {
            return Err(refused(
                self.path,
                format!(
                    "{} bytes lie between the end of the data (byte {end}) and the last 512 bytes, covered by no BAT \
                     entry or metadata area (an allocation cut short?): the footer belongs at byte {end}, and written \
                     there (as vhd-util repair would) it would not be at the end of the file",
                    tail - FOOTER_SIZE as u64
                ),
            ));
        }
        let what = if tail == 0 {
            format!("the footer is missing (the file ends where its data ends, at byte {end})")
        } else if tail < FOOTER_SIZE as u64 {
            format!("the footer is cut short ({tail} of its 512 bytes are left, invalid: {primary_words})")
        } else {
            format!("the footer at the end (offset {end}) is invalid: {primary_words}")
        };
        Ok((
            Action::Footer,
            Some(what),
            Some(end),
            Some(copy.encode_raw()),
        ))
    }

    /// A second descriptor of the open file (not a second open: the name may change).
    fn dup(&self) -> Result<File> {
        Ok(self
            .file
            .try_clone()
            .map_err(|e| VhdError::io(self.path, "duplicate the descriptor", e))?)
    }
}

fn describe(f: &Footer, p: FooterProblem) -> String {
    match p {
        // The bytes are not quoted: whatever overwrote the footer is not ours to print.
        FooterProblem::Cookie => "no \"conectix\" cookie".into(),
        FooterProblem::Checksum { computed } => {
            format!("checksum {:#010x}, computed {computed:#010x}", f.checksum)
        }
    }
}

/// The fields two valid footers disagree on, by name.
fn differing_fields(a: &Footer, b: &Footer) -> Vec<&'static str> {
    let pairs: [(&'static str, bool); 11] = [
        ("cookie", a.cookie != b.cookie),
        ("features", a.features != b.features),
        ("data offset", a.data_offset != b.data_offset),
        ("timestamp", a.timestamp != b.timestamp),
        (
            "creator",
            a.creator_app != b.creator_app || a.creator_version != b.creator_version,
        ),
        (
            "size",
            a.orig_size != b.orig_size || a.curr_size != b.curr_size,
        ),
        ("geometry", a.geometry != b.geometry),
        ("disk type", a.disk_type_raw != b.disk_type_raw),
        ("uuid", a.uuid != b.uuid),
        ("hidden", a.hidden != b.hidden),
        ("saved state", a.saved != b.saved),
    ];
    let mut out: Vec<_> = pairs.iter().filter(|p| p.1).map(|p| p.0).collect();
    if out.is_empty() {
        out.push("reserved bytes");
    }
    out
}
