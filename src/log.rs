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
//! A missing or full syslog is ignored: a log line never fails a call.

use std::os::unix::net::UnixDatagram;

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

/// The syslog socket; `GLANCE_VHD_SYSLOG_SOCKET` points it elsewhere (tests bind their
/// own datagram socket to read what an admin would see in `/var/log/messages`).
fn syslog_socket() -> std::path::PathBuf {
    crate::testhooks::path_or(crate::testhooks::SYSLOG_SOCKET, "/dev/log")
}

/// One line to syslog only (RFC 3164 without a timestamp: the daemon adds its own).
pub fn syslog(level: Level, msg: &str) {
    let msg = crate::error::cap(msg);
    let pri = FACILITY_USER * 8 + level as u8;
    let line = format!("<{pri}>{IDENT}[{}]: {msg}", std::process::id());
    if let Ok(sock) = UnixDatagram::unbound() {
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

/// Where request lines go (`-vv`): set once by the front end; off by default.
static TRACE: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Route [`trace`] lines to `sink` (the CLI's stderr at `-vv`). The first call wins.
pub fn set_trace(sink: fn(&str)) {
    let _ = TRACE.set(sink);
}

/// One line per request (method, redacted URL, status): never a header or a body.
pub fn trace(msg: &str) {
    if let Some(sink) = TRACE.get() {
        sink(&crate::error::cap(msg));
    }
}
