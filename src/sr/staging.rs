//! Staging directories: `<sr>/.glance-vhd-staging-<uuid>`, mode 0700, on the SR's own
//! file system. The process that owns one holds an exclusive `flock` on it for its whole
//! life, so `sweep` can tell a live import from one left by a killed process.
//!
//! The move into the SR is the one step that touches the SR, and a `kill -9` can land in
//! the middle of it. Two rules make that safe:
//! * **base first**: each file is linked into the SR only after its parent, so at every
//!   instant each VHD in the SR has its parent there too — a crash can leave an orphan
//!   base (a valid, complete chain of its own), never a child without its parent;
//! * **a journal**: before the first link, `publish.journal` in the staging directory
//!   lists the names about to appear in the SR; it goes once every link is made. A
//!   staging directory that `sweep` finds with a journal was killed mid-move: sweep
//!   removes, under the SR lock, each listed SR file that is the *same inode* as the
//!   staging file (a hard link we made — never anyone else's file), so the half-moved
//!   chain disappears as if the import had never run. The caller was never told of
//!   those VDIs, so rolling back (not forward) is right.
//!
//! SIGTERM and SIGINT ([`crate::signals`]) are handled as an error: every live staging
//! directory registers a clean-up that removes it, after rolling back a move in
//! progress exactly as `sweep` would. Each link into the SR is one
//! [`crate::signals::critical`] step with the journal already on disk, so the roll-back
//! sees whole links only. Rolled back, not let finish: the caller is never told of a
//! chain whose run was killed, so finishing would leave VDIs nobody knows of. The SM
//! lock is ours for the whole move (fcntl locks belong to the process, so the signal
//! thread holds it too; it must not open and close the lock file itself, which would
//! drop the process's lock). Once the journal is gone the move is complete and stays.

use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, Result, SrError};

/// Every staging directory starts with this; nothing else is ever swept.
pub const STAGING_PREFIX: &str = ".glance-vhd-staging-";

/// In a staging directory: the SR names a move in progress is creating, one per line.
const JOURNAL: &str = "publish.journal";

/// A staging directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    _lock: Flock<File>,
    /// Dropped after [`Drop::drop`] removed the directory (fields drop after it).
    _on_signal: crate::signals::OnSignal,
}

impl Staging {
    /// A new staging directory in `sr`. `mkdir` of a fresh random name: it fails rather
    /// than follow anything already there, and the SR directory is root's (so are the
    /// names in it: only root could have planted one).
    pub fn create(sr: &Path) -> Result<Staging> {
        let path = sr.join(format!("{STAGING_PREFIX}{}", uuid::Uuid::new_v4()));
        // Registered before the directory exists: a signal between the two finds
        // nothing to remove, never a directory nobody will.
        let on_signal = {
            let (path, sr) = (path.clone(), sr.to_path_buf());
            crate::signals::on_signal(move || abandon(&path, &sr))
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err(&path, "create the staging directory"))?;
        let dir = open_dir(&path).map_err(io_err(&path, "open the staging directory"));
        let lock = dir.and_then(|d| {
            Flock::lock(d, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| SrError::Io {
                path: path.clone(),
                op: "lock the staging directory",
                source: e.into(),
            })
        });
        match lock {
            Ok(l) => Ok(Staging {
                path,
                _lock: l,
                _on_signal: on_signal,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Move `files` (in staging, leaf first) into `sr` under the same names, never
    /// replacing an existing file: each is hard-linked into the SR (link(2) fails rather
    /// than overwrite, on NFS too), **base first**, after the journal is on disk; if any
    /// link fails, the links already made are removed again. The staging names go with
    /// the directory on drop. The caller holds the SR lock.
    pub fn publish(&self, files: &[PathBuf], sr: &Path) -> Result<Vec<PathBuf>> {
        let names: Vec<&std::ffi::OsStr> = files
            .iter()
            .map(|f| f.file_name().expect("staging files have names"))
            .collect();
        // VHDs in an SR are 0644, as vhd-util creates them; staging kept them private.
        // All before the first link, so that once links exist only a link can fail.
        for f in files {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
                .map_err(io_err(f, "set the mode"))?;
        }
        self.write_journal(&names)?;
        let undo = |done: &[PathBuf]| {
            for p in done {
                let _ = std::fs::remove_file(p);
            }
        };
        let mut done: Vec<PathBuf> = Vec::new();
        for (f, name) in files.iter().zip(&names).rev() {
            let to = sr.join(name);
            crate::testhooks::pause("move", done.len());
            let linked = crate::signals::critical(|| {
                std::fs::hard_link(f, &to).inspect_err(|_| undo(&done))
            });
            if let Err(e) = linked {
                return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    SrError::Exists { path: to }
                } else {
                    SrError::Io {
                        path: to,
                        op: "move into the SR",
                        source: e,
                    }
                });
            }
            done.push(to);
        }
        if let Ok(d) = File::open(sr) {
            let _ = d.sync_all();
        }
        // Every link is durable: the move is complete and must not be rolled back.
        let journal = self.path.join(JOURNAL);
        // If the journal cannot go, the caller hears of a failure: the links go too, or
        // the SR would hold VDIs nobody was told of once staging (and the journal that
        // `sweep` would have rolled back from) is removed on drop.
        crate::signals::critical(|| std::fs::remove_file(&journal).inspect_err(|_| undo(&done)))
            .map_err(io_err(&journal, "remove"))?;
        done.reverse();
        Ok(done)
    }

    /// The journal, durable before the first link.
    fn write_journal(&self, names: &[&std::ffi::OsStr]) -> Result<()> {
        let path = self.path.join(JOURNAL);
        let mut text = Vec::new();
        for n in names {
            text.extend_from_slice(n.as_encoded_bytes());
            text.push(b'\n');
        }
        let write = || -> std::io::Result<()> {
            let mut f = File::create_new(&path)?;
            f.write_all(&text)?;
            f.sync_all()?;
            File::open(&self.path)?.sync_all()
        };
        write().map_err(io_err(&path, "write the move journal"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A directory opened as the directory it must be, never through a symlink put in its
/// place (`O_DIRECTORY|O_NOFOLLOW`): for its `flock`.
fn open_dir(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(path)
}

/// A signal's clean-up of the staging directory `staging` in `sr` (see the module
/// docs): roll back a move in progress, then remove the directory. The import may still
/// be writing into it until the process exits, so a removal that raced with a new file
/// is tried again.
fn abandon(staging: &Path, sr: &Path) {
    if staging.join(JOURNAL).exists() {
        let _ = roll_back(staging, sr);
    }
    for _ in 0..10 {
        match std::fs::remove_dir_all(staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => continue,
            _ => break,
        }
    }
}

/// What `sweep` did with one staging directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swept {
    pub path: PathBuf,
    pub removed: bool,
    pub reason: &'static str,
    /// SR files of an interrupted move that were removed again (rolled back).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<PathBuf>,
}

/// Remove staging directories under `sr` that no live process holds and that are older
/// than `older_than`. Only directories named with [`STAGING_PREFIX`] are considered;
/// symlinks never are. A directory with a move journal was killed mid-move: its links
/// into the SR are removed first, holding the SM SR lock in `lock_dir`.
pub fn sweep(sr: &Path, older_than: Duration, lock_dir: &Path) -> Result<Vec<Swept>> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for entry in std::fs::read_dir(sr).map_err(io_err(sr, "list the SR"))? {
        let entry = entry.map_err(io_err(sr, "list the SR"))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(STAGING_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
            out.push(Swept {
                path,
                removed: false,
                reason: "not a directory we own",
                rolled_back: Vec::new(),
            });
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age < older_than {
            out.push(Swept {
                path,
                removed: false,
                reason: "too recent",
                rolled_back: Vec::new(),
            });
            continue;
        }
        // Checked above with lstat; opened without following a link all the same.
        let Ok(dir) = open_dir(&path) else { continue };
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(_held) => {
                let rolled_back = if path.join(JOURNAL).exists() {
                    let _lock = super::SrLock::acquire(lock_dir, sr)?;
                    roll_back(&path, sr)?
                } else {
                    Vec::new()
                };
                std::fs::remove_dir_all(&path).map_err(io_err(&path, "remove"))?;
                out.push(Swept {
                    path,
                    removed: true,
                    reason: if rolled_back.is_empty() {
                        "stale"
                    } else {
                        "stale, interrupted while moving into the SR: rolled back"
                    },
                    rolled_back,
                });
            }
            Err(_) => out.push(Swept {
                path,
                removed: false,
                reason: "in use by a live process",
                rolled_back: Vec::new(),
            }),
        }
    }
    Ok(out)
}

/// Undo an interrupted move: remove each SR file the journal names that is the same
/// inode as its staging copy. Names that are not plain file names are ignored (the
/// journal is ours, but a sweep running as root trusts no file blindly).
fn roll_back(staging: &Path, sr: &Path) -> Result<Vec<PathBuf>> {
    let journal = staging.join(JOURNAL);
    let text = std::fs::read(&journal).map_err(io_err(&journal, "read"))?;
    let mut removed = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let name = std::ffi::OsStr::from_bytes(line);
        if name.is_empty() || Path::new(name).file_name() != Some(name) {
            continue;
        }
        let (ours, theirs) = (staging.join(name), sr.join(name));
        let (Ok(a), Ok(b)) = (
            std::fs::symlink_metadata(&ours),
            std::fs::symlink_metadata(&theirs),
        ) else {
            continue;
        };
        if a.is_file() && a.dev() == b.dev() && a.ino() == b.ino() {
            std::fs::remove_file(&theirs).map_err(io_err(&theirs, "roll back"))?;
            removed.push(theirs);
        }
    }
    if let Ok(d) = File::open(sr) {
        let _ = d.sync_all();
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct SrDir(PathBuf);

    impl SrDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    /// A killed move leaves a journal; sweep removes exactly our links, never a file of
    /// the same name that is not ours, and nothing the journal does not name.
    #[test]
    fn roll_back_removes_only_our_links() {
        let dir = tempfile::tempdir().unwrap();
        let sr = dir.path().join("0f8fad5b-d9cb-469f-a165-70867728950e");
        std::fs::create_dir(&sr).unwrap();
        // The SM lock is found by the SR's UUID: the SR is named by one.
        let sr = SrDir(sr);
        let lock_dir = tempfile::tempdir().unwrap();
        let staging = sr.path().join(format!("{STAGING_PREFIX}dead"));
        std::fs::create_dir(&staging).unwrap();
        for n in ["a.vhd", "b.vhd", "c.vhd", "d.vhd"] {
            std::fs::write(staging.join(n), n).unwrap();
        }
        // a: linked by us. b: someone else's file of that name. c: never linked.
        // d: linked by us but not in the journal. Plus a hostile journal line.
        std::fs::hard_link(staging.join("a.vhd"), sr.path().join("a.vhd")).unwrap();
        std::fs::write(sr.path().join("b.vhd"), "theirs").unwrap();
        std::fs::hard_link(staging.join("d.vhd"), sr.path().join("d.vhd")).unwrap();
        std::fs::write(staging.join(JOURNAL), "a.vhd\nb.vhd\nc.vhd\n../x.vhd\n\n").unwrap();
        let swept = sweep(sr.path(), Duration::ZERO, lock_dir.path()).unwrap();
        assert_eq!(swept.len(), 1);
        assert!(swept[0].removed);
        assert_eq!(swept[0].rolled_back, [sr.path().join("a.vhd")]);
        assert!(!sr.path().join("a.vhd").exists());
        assert_eq!(std::fs::read(sr.path().join("b.vhd")).unwrap(), b"theirs");
        assert!(sr.path().join("d.vhd").exists());
        assert!(!staging.exists());
    }
}
