//! Logging for both modes. Never stdout: in plugin mode it carries only the response,
//! in the CLI it carries the result (UUIDs, an image id, `--json`, or the image itself).
//!
//! * Plugin mode: every line goes to stderr (xapi keeps it in its own log when a call
//!   fails) and to syslog, as the Python plugins logged through
//!   `SysLogHandler('/dev/log')`.
//! * CLI: its messages go to stderr through `cli::output` (verbosity, the progress
//!   bar); long transfers also send progress lines to syslog only ([`syslog`]) so an
//!   admin can follow a 02:00 cron job with `tail -f`.
//!
//! * Detail below the default output — each step of a transfer ([`step`]) and each
//!   request to a store ([`trace`]) — goes nowhere unless a front end installs a sink
//!   ([`set_detail_sink`]): the CLI sends it to stderr at `-v`/`-vv`; the plugin
//!   installs none (Nova's calls stay as quiet in syslog as the Python plugins were).
//!   Lower layers (`store`, `transfer`) report through here because they cannot reach
//!   `cli::output`.
//!
//! Syslog identity: ident `glance-vhd`, facility `user`, the pid in brackets; the README
//! ("What lands in syslog") lists the lines and their levels.
//!
//! A missing or full syslog is ignored: a log line never fails a call.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

const IDENT: &str = "glance-vhd";
/// Facility `user`, as Python's `SysLogHandler` defaults to.
const FACILITY_USER: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// How detailed a [`step`] or [`trace`] message is: the `-v` count that shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// A step of a transfer (staged, verified, linked…): `-v`.
    Step = 1,
    /// One request to a store: `-vv`.
    Request = 2,
}

/// Where [`step`] and [`trace`] go; unset (the plugin, the unit tests): nowhere.
static DETAIL_SINK: OnceLock<fn(Detail, &str)> = OnceLock::new();

/// Install the sink for [`step`] and [`trace`] (once per process; later calls are
/// ignored). The sink filters by [`Detail`] itself.
pub fn set_detail_sink(sink: fn(Detail, &str)) {
    let _ = DETAIL_SINK.set(sink);
}

/// One step of a transfer, for `-v`. The message must hold no secret.
pub fn step(msg: &str) {
    if let Some(sink) = DETAIL_SINK.get() {
        sink(Detail::Step, &crate::error::cap(msg));
    }
}

/// One request to a store, for `-vv`: `METHOD <url> -> <status>` (or the transport
/// error). The URL as [`crate::store::redact`] would show it — never a header, a token
/// or a request body. Cheap when no sink is installed: call it from every request path
/// (`store::glance`, the Keystone client).
pub fn trace(msg: &str) {
    if let Some(sink) = DETAIL_SINK.get() {
        sink(Detail::Request, &crate::error::cap(msg));
    }
}

/// The syslog socket; `GLANCE_VHD_SYSLOG_SOCKET` points it elsewhere (tests bind their
/// own datagram socket to read what an admin would see in `/var/log/messages`).
fn syslog_socket() -> std::path::PathBuf {
    crate::testhooks::path_or(crate::testhooks::SYSLOG_SOCKET, "/dev/log")
}

/// How long a line may wait for room in the syslog socket's queue.
const SYSLOG_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One line to syslog only (RFC 3164 without a timestamp: the daemon adds its own).
pub fn syslog(level: Level, msg: &str) {
    let msg = crate::error::cap(msg);
    let pri = FACILITY_USER * 8 + level as u8;
    let line = format!("<{pri}>{IDENT}[{}]: {msg}", std::process::id());
    if let Ok(sock) = UnixDatagram::unbound() {
        // The queue of /dev/log is short (net.unix.max_dgram_qlen, 10) and dom0's xapi
        // logs through it too: a line waits for room, as glibc's syslog(3) does, but
        // for a second at most — a syslog daemon that stopped reading costs a line, not
        // a stalled transfer.
        let _ = sock.set_write_timeout(Some(SYSLOG_WAIT));
        let _ = sock.send_to(line.as_bytes(), syslog_socket());
    }
}

/// Plugin mode: stderr and syslog.
pub fn log(level: Level, msg: &str) {
    let msg = crate::error::cap(msg);
    eprintln!("{IDENT}[{}]: {msg}", std::process::id());
    syslog(level, &msg);
}

pub fn info(msg: &str) {
    log(Level::Info, msg)
}

pub fn warn(msg: &str) {
    log(Level::Warning, msg)
}

pub fn error(msg: &str) {
    log(Level::Error, msg)
}
