//! Two locks.
//!
//! * [`SrLock`], the storage manager's SR lock: `SR.scan` takes an fcntl write lock on
//!   `/var/lock/sm/<sr-uuid>/sr` (sm `lock.py`), so holding it while we move a chain in
//!   means no scan ever sees half a chain. Held for the move only.
//! * [`JobLock`], ours: one CLI run per SR at a time (`--lock-file`), so a nightly cron
//!   job that overruns is not joined by the next night's. Held for the whole run.
//!
//! Both live where other local users may write (`/var/lock` is `/run/lock`, mode 1777),
//! and root opens, creates and (the job lock) rewrites them, so nothing on the way is
//! followed blindly (DESIGN §10), as ssh's `StrictModes` does for `authorized_keys`:
//! * each directory above a lock directory is owned by root (or us) and not writable by
//!   group or others unless sticky — nobody else can rename a lock directory away and
//!   put their own in its place;
//! * a lock directory is opened with `O_NOFOLLOW|O_DIRECTORY` (a symlink is refused, not
//!   followed), then checked on the descriptor we hold: a directory, owned by our euid,
//!   not writable by group or others; a missing one is made with `mkdir` (one level, no
//!   `create_dir_all` through links);
//! * a lock file is opened relative to that descriptor with `O_NOFOLLOW|O_CLOEXEC` and
//!   without `O_TRUNC`, then checked with `fstat`: a regular file of ours with one link.
//!   Only then is the job lock's text rewritten, through `ftruncate` on that descriptor.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, openat, FcntlArg, Flock, FlockArg, OFlag};
use nix::libc;
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

use super::{io_err, Result, SrError};

/// The storage manager's lock directory on dom0.
pub const SM_LOCK_DIR: &str = "/var/lock/sm";

/// [`SM_LOCK_DIR`], unless a test points it elsewhere ([`crate::testhooks::LOCK_DIR`]).
/// The CLI's `--lock-dir` default and the plugin both come from here.
pub fn sm_lock_dir() -> PathBuf {
    crate::testhooks::path_or(crate::testhooks::LOCK_DIR, SM_LOCK_DIR)
}

/// The mode of the lock directories we create: sm's own (`/var/lock/sm/<sr-uuid>` is
/// made 0755 by `lock.py` under xapi's umask), and ours alike — the job lock holds
/// nothing secret (a pid and what the run does), and other admins' tools may read who
/// holds it. Never writable by anyone else: that is what the checks below demand.
const DIR_MODE: u32 = 0o755;
/// The lock files: readable by all, for the same reason.
const FILE_MODE: u32 = 0o644;

/// Held until dropped (closing the file releases the fcntl lock).
#[derive(Debug)]
pub struct SrLock {
    _file: File,
    pub path: PathBuf,
}

impl SrLock {
    /// Block until the lock for the SR at `sr_path` is ours. The SR UUID is the last
    /// component of the SR path (`/var/run/sr-mount/<sr-uuid>`).
    pub fn acquire(lock_dir: &Path, sr_path: &Path) -> Result<SrLock> {
        let uuid = super::check::sr_uuid(sr_path)?;
        let top = lock_directory(lock_dir)?;
        let dir_path = lock_dir.join(&uuid);
        let dir = sub_directory(&top, &dir_path, &uuid)?;
        let path = dir_path.join("sr");
        let file = lock_file(&dir, &path, "sr")?;
        // The whole file, for writing: what sm's WriteLock takes.
        let fl = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        loop {
            match fcntl(&file, FcntlArg::F_SETLKW(&fl)) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(SrError::Io {
                        path,
                        op: "lock the SR",
                        source: e.into(),
                    })
                }
            }
        }
        Ok(SrLock { _file: file, path })
    }
}

/// Where the job locks live by default (tmpfs on dom0: a reboot clears them, and a
/// `flock` dies with its process anyway).
pub const JOB_LOCK_DIR: &str = "/var/lock/glance-vhd";

/// One run per SR: an exclusive `flock` on a small file that says who holds it.
#[derive(Debug)]
pub struct JobLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

impl JobLock {
    /// `/var/lock/glance-vhd/<sr-uuid>.lock`.
    pub fn default_path(sr_path: &Path) -> Result<PathBuf> {
        Ok(Path::new(JOB_LOCK_DIR).join(format!("{}.lock", super::check::sr_uuid(sr_path)?)))
    }

    /// Take the lock at `path`, waiting up to `wait` for another run to finish;
    /// [`SrError::Locked`] (exit code 6) if it does not. `what` is written into the file
    /// for the next run's error message (`pid 1234: upload of …`).
    pub fn acquire(path: &Path, wait: Duration, what: &str) -> Result<JobLock> {
        let name = path
            .file_name()
            .ok_or_else(|| SrError::Args(format!("{} names no lock file", path.display())))?;
        let dir_path = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = lock_directory(dir_path)?;
        let deadline = Instant::now() + wait;
        let mut file = lock_file(&dir, path, name)?;
        let mut lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err((mut f, Errno::EWOULDBLOCK)) => {
                    let mut holder = String::new();
                    // At most a line's worth: the file is ours (checked), but a reader
                    // that trusts no length is cheap.
                    let _ = (&mut f).take(4096).read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(SrError::Locked {
                        path: path.to_path_buf(),
                        holder: if holder.is_empty() {
                            "a run that has not said who it is yet".into()
                        } else {
                            holder.to_string()
                        },
                    });
                }
                Err((_, e)) => {
                    return Err(SrError::Io {
                        path: path.to_path_buf(),
                        op: "lock",
                        source: e.into(),
                    })
                }
            }
        };
        // Best effort: the lock is the flock, the text only explains it. `set_len` is
        // ftruncate on the descriptor checked above, never a truncation by name.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(
            lock,
            "pid {}: {what}, since unix time {since}",
            std::process::id()
        );
        Ok(JobLock {
            _lock: lock,
            path: path.to_path_buf(),
        })
    }
}

fn refuse(path: &Path, rule: String) -> SrError {
    SrError::Unsafe {
        path: path.to_path_buf(),
        rule,
    }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The top lock directory (`--lock-dir`, the job lock's directory), created if missing,
/// opened and checked (see the module docs).
fn lock_directory(path: &Path) -> Result<OwnedFd> {
    // Created and opened through the parent's resolved path, the one whose ancestors
    // were checked: a symlink on the way, which someone else may own, cannot be
    // re-pointed between the check and the use. Messages keep the path as given.
    let parent = check_ancestors(path)?;
    let real = match path.file_name() {
        Some(name) => parent.join(name),
        None => path.to_path_buf(),
    };
    match nix::unistd::mkdir(&real, Mode::from_bits_truncate(DIR_MODE)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(io_err(path, "create the lock directory")(e.into())),
    }
    let fd = open(&real, DIR_FLAGS, Mode::empty()).map_err(|e| dir_open_err(path, e))?;
    check_directory(&fd, path)?;
    Ok(fd)
}

/// A lock directory inside `parent` (sm's `<lock_dir>/<sr-uuid>`), created if missing,
/// opened and checked.
fn sub_directory(parent: &OwnedFd, path: &Path, name: &str) -> Result<OwnedFd> {
    match mkdirat(parent, name, Mode::from_bits_truncate(DIR_MODE)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(io_err(path, "create the lock directory")(e.into())),
    }
    let fd = openat(parent, name, DIR_FLAGS, Mode::empty()).map_err(|e| dir_open_err(path, e))?;
    check_directory(&fd, path)?;
    Ok(fd)
}

fn dir_open_err(path: &Path, e: Errno) -> SrError {
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match e {
        Errno::ELOOP | Errno::ENOTDIR if link => {
            refuse(path, "is a symbolic link, not a lock directory".into())
        }
        Errno::ENOTDIR => refuse(path, "is not a directory".into()),
        e => io_err(path, "open the lock directory")(e.into()),
    }
}

/// A lock directory, checked on the descriptor we hold: a directory, ours, not
/// writable by group or others.
fn check_directory(fd: &OwnedFd, path: &Path) -> Result<()> {
    let st = fstat(fd).map_err(|e| io_err(path, "stat the lock directory")(e.into()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Err(refuse(path, "is not a directory".into()));
    }
    if st.st_uid != euid {
        return Err(refuse(
            path,
            format!(
                "is owned by uid {}, not by us (uid {euid}): another user could replace the lock in it",
                st.st_uid
            ),
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refuse(
            path,
            format!(
                "is writable by group or others (mode {:o}): another user could replace the lock in it",
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Every directory above a lock directory: owned by root or us, and not writable by
/// group or others unless sticky (`/run/lock`, `/tmp`: there nobody can rename what we
/// own). Otherwise someone could swap the lock directory between our check and our use.
/// Returns the resolved parent of `dir`, which is what was checked.
fn check_ancestors(dir: &Path) -> Result<PathBuf> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let real = std::fs::canonicalize(parent).map_err(io_err(parent, "resolve the directory"))?;
    let euid = nix::unistd::geteuid().as_raw();
    for a in real.ancestors() {
        let m = std::fs::symlink_metadata(a).map_err(io_err(a, "stat"))?;
        if m.uid() != 0 && m.uid() != euid {
            return Err(refuse(
                a,
                format!(
                    "is owned by uid {}: it holds the lock directory {}, which that user could replace",
                    m.uid(),
                    dir.display()
                ),
            ));
        }
        if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            return Err(refuse(
                a,
                format!(
                    "is writable by group or others and not sticky (mode {:o}): it holds the lock directory {}, which anyone could replace",
                    m.mode() & 0o7777,
                    dir.display()
                ),
            ));
        }
    }
    Ok(real)
}

/// A lock file in the checked directory `dir`, created if missing: never through a
/// link, never truncated on open, and only a regular file of ours with one name.
fn lock_file(dir: &OwnedFd, path: &Path, name: impl AsRef<std::ffi::OsStr>) -> Result<File> {
    let flags = OFlag::O_RDWR
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        // A FIFO or device planted under the name must not block the open.
        | OFlag::O_NONBLOCK;
    let fd = openat(
        dir,
        name.as_ref(),
        flags,
        Mode::from_bits_truncate(FILE_MODE),
    )
    .map_err(|e| match e {
        Errno::ELOOP => refuse(path, "is a symbolic link, not a lock file".into()),
        e => io_err(path, "open the lock file")(e.into()),
    })?;
    let st = fstat(&fd).map_err(|e| io_err(path, "stat the lock file")(e.into()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(refuse(path, "is not a regular file".into()));
    }
    if st.st_uid != euid {
        return Err(refuse(
            path,
            format!("is owned by uid {}, not by us (uid {euid})", st.st_uid),
        ));
    }
    if st.st_nlink != 1 {
        return Err(refuse(
            path,
            format!(
                "has {} hard links: another name of it may be someone else's file",
                st.st_nlink
            ),
        ));
    }
    // Back to blocking reads and writes (the lock waits are flock/fcntl's own).
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(|e| io_err(path, "open the lock file")(e.into()))?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_symlink_as_the_job_lock_is_refused_and_its_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("victim");
        std::fs::write(&target, "precious").unwrap();
        let lock = d.path().join("x.lock");
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let e = JobLock::acquire(&lock, Duration::ZERO, "test").unwrap_err();
        assert!(matches!(e, SrError::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[test]
    fn lock_directories_must_be_real_private_and_ours() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        mode(&real, 0o755);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = JobLock::acquire(&link.join("x.lock"), Duration::ZERO, "t").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!real.join("x.lock").exists());
        mode(&real, 0o775);
        let e = JobLock::acquire(&real.join("x.lock"), Duration::ZERO, "t").unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        mode(&real, 0o755);
        let ok = JobLock::acquire(&real.join("x.lock"), Duration::ZERO, "t").unwrap();
        assert!(std::fs::read_to_string(&ok.path)
            .unwrap()
            .contains(": t, since"));
        // A missing one is made, 0755 at most.
        let made = d.path().join("made");
        drop(JobLock::acquire(&made.join("x.lock"), Duration::ZERO, "t").unwrap());
        let m = std::fs::symlink_metadata(&made).unwrap();
        assert!(m.is_dir() && m.mode() & 0o022 == 0, "{:o}", m.mode());
    }
}
