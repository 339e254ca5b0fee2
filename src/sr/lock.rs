//! Two locks.
//!
//! * [`SrLock`], the storage manager's SR lock: `SR.scan` takes an fcntl write lock on
//!   `/var/lock/sm/<sr-uuid>/sr` (sm `lock.py`), so holding it while we move a chain in
//!   means no scan ever sees half a chain. Held for the move only.
//! * [`JobLock`], ours: one CLI run per SR at a time (`--lock-file`), so a nightly cron
//!   job that overruns is not joined by the next night's. Held for the whole run.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg};
use nix::libc;

use super::{io_err, Result, SrError};

/// The storage manager's lock directory on dom0.
pub const SM_LOCK_DIR: &str = "/var/lock/sm";

/// [`SM_LOCK_DIR`], unless a test points it elsewhere ([`crate::testhooks::LOCK_DIR`]).
/// The CLI's `--lock-dir` default and the plugin both come from here.
pub fn sm_lock_dir() -> PathBuf {
    crate::testhooks::path_or(crate::testhooks::LOCK_DIR, SM_LOCK_DIR)
}

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
        let dir = lock_dir.join(sr_uuid(sr_path)?);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create the lock directory"))?;
        let path = dir.join("sr");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path, "open the SR lock"))?;
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
                Err(nix::errno::Errno::EINTR) => continue,
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

/// The SR UUID: the last component of the resolved SR path
/// (`/var/run/sr-mount/<sr-uuid>`).
fn sr_uuid(sr_path: &Path) -> Result<String> {
    std::fs::canonicalize(sr_path)
        .map_err(io_err(sr_path, "resolve the SR path"))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| SrError::Args(format!("{} has no SR uuid", sr_path.display())))
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
        Ok(Path::new(JOB_LOCK_DIR).join(format!("{}.lock", sr_uuid(sr_path)?)))
    }

    /// Take the lock at `path`, waiting up to `wait` for another run to finish;
    /// [`SrError::Locked`] (exit code 6) if it does not. `what` is written into the file
    /// for the next run's error message (`pid 1234: upload of …`).
    pub fn acquire(path: &Path, wait: Duration, what: &str) -> Result<JobLock> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir, "create the lock directory"))?;
        }
        let deadline = Instant::now() + wait;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path, "open the lock file"))?;
        let mut lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                    let mut holder = String::new();
                    let _ = f.read_to_string(&mut holder);
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
        // Best effort: the lock is the flock, the text only explains it.
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
