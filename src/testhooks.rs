//! Every `GLANCE_VHD_*` environment variable the tests use, in one place (README
//! "Testing hooks"). Two sorts:
//!
//! * **Redirections** of dom0 paths and sockets that a test machine does not have
//!   (xapi's socket, `/boot/guest`, `/dev`, `/var/lock/sm`, `/dev/log`,
//!   `/var/run/sr-mount`) and the syslog
//!   progress interval. Production runs never set them; they only point elsewhere.
//! * **Fault injection** (`GLANCE_VHD_TEST_*`): stop or fail at an exact step, so the
//!   crash and fault tests can hit the windows that matter. Each is read where the step
//!   happens, costs one `getenv`, and does nothing when unset.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// xapi's Unix socket (default `/var/lib/xcp/xapi`, then `/var/xapi/xapi`).
pub const XAPI_SOCKET: &str = "GLANCE_VHD_XAPI_SOCKET";
/// The kernel calls' root (default `/boot/guest`).
pub const BOOT_GUEST: &str = "GLANCE_VHD_BOOT_GUEST";
/// Where plugged VBD devices appear (default `/dev`).
pub const DEV_DIR: &str = "GLANCE_VHD_DEV_DIR";
/// The SM lock directory in plugin mode (default `/var/lock/sm`).
pub const LOCK_DIR: &str = "GLANCE_VHD_LOCK_DIR";
/// Where SRs are mounted, for `--sr SR_UUID` (default `/var/run/sr-mount`).
pub const SR_MOUNT: &str = "GLANCE_VHD_SR_MOUNT";
/// The syslog socket (default `/dev/log`).
pub const SYSLOG_SOCKET: &str = "GLANCE_VHD_SYSLOG_SOCKET";
/// Seconds between syslog progress lines (default 30).
pub const PROGRESS_INTERVAL: &str = "GLANCE_VHD_PROGRESS_INTERVAL";
/// `relink:N` / `move:N`: stop before relinking file N / linking file N into the SR.
pub const PAUSE: &str = "GLANCE_VHD_TEST_PAUSE";
/// A file created when the process reaches the [`PAUSE`] step.
pub const PAUSE_MARK: &str = "GLANCE_VHD_TEST_PAUSE_MARK";
/// `relink:N`: relinking file N fails with EIO (a disk error during the import).
pub const FAIL: &str = "GLANCE_VHD_TEST_FAIL";
/// An upload's tar/gzip stream fails after this many bytes.
pub const FAIL_UPLOAD_AFTER: &str = "GLANCE_VHD_TEST_FAIL_UPLOAD_AFTER";
/// `IDLE,FLOOR,RATE`: the plugin's time limits shortened (seconds, seconds, bytes per
/// second), so a test sees them fire without waiting 90 s.
pub const PLUGIN_LIMITS: &str = "GLANCE_VHD_TEST_PLUGIN_LIMITS";

/// A redirected path, if the test set one.
pub fn path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from)
}

/// A redirected path, or the production default.
pub fn path_or(var: &str, default: &str) -> PathBuf {
    path(var).unwrap_or_else(|| PathBuf::from(default))
}

/// A redirected value, as the OS gave it.
pub fn var_os(var: &str) -> Option<OsString> {
    std::env::var_os(var)
}

/// How often long transfers log a progress line to syslog: 30 s unless
/// [`PROGRESS_INTERVAL`] says otherwise (0 < s < a day).
pub fn progress_interval() -> Duration {
    let secs = std::env::var(PROGRESS_INTERVAL)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && *s < 86400.0)
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

/// [`PAUSE`]: with `GLANCE_VHD_TEST_PAUSE=<phase>:<n>` the process stops at step `n` of
/// `phase` — `relink` before relinking file n, `move` before linking file n into the
/// SR (0: the base) — after creating the file named by [`PAUSE_MARK`], so a crash test
/// can `kill -9` it exactly there.
pub fn pause(phase: &str, n: usize) {
    let Ok(want) = std::env::var(PAUSE) else {
        return;
    };
    if want != format!("{phase}:{n}") {
        return;
    }
    if let Some(mark) = std::env::var_os(PAUSE_MARK) {
        let _ = std::fs::write(mark, &want);
    }
    std::thread::sleep(Duration::from_secs(600));
}

/// [`FAIL`]: an injected EIO at step `n` of `phase`, as a failing disk would give.
pub fn fail(phase: &str, n: usize) -> io::Result<()> {
    match std::env::var(FAIL) {
        Ok(want) if want == format!("{phase}:{n}") => {
            Err(io::Error::from_raw_os_error(nix::libc::EIO))
        }
        _ => Ok(()),
    }
}

/// [`FAIL_UPLOAD_AFTER`]: the byte count after which an upload's stream breaks.
pub fn fail_upload_after() -> Option<u64> {
    std::env::var(FAIL_UPLOAD_AFTER)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
}

/// [`PLUGIN_LIMITS`]: the plugin's idle limit, deadline floor and minimum rate, if a
/// test set all three (seconds > 0 and < a day, a rate ≥ 1).
pub fn plugin_limits() -> Option<(Duration, Duration, u64)> {
    let v = std::env::var(PLUGIN_LIMITS).ok()?;
    let mut it = v.split(',');
    let secs = |s: Option<&str>| {
        s?.trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && *s < 86400.0)
            .map(Duration::from_secs_f64)
    };
    let idle = secs(it.next())?;
    let floor = secs(it.next())?;
    let rate = it.next()?.trim().parse::<u64>().ok().filter(|r| *r >= 1)?;
    Some((idle, floor, rate))
}
