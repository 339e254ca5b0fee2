//! Plugin logs: stderr (xapi keeps it in its own log when a call fails) and syslog, as
//! the Python plugins logged through `SysLogHandler('/dev/log')`. Never stdout: it
//! carries only the response. A missing or full syslog is ignored; a log line never
//! fails a call.

use std::os::unix::net::UnixDatagram;

const IDENT: &str = "glance-vhd";
/// Facility `user`, as Python's `SysLogHandler` defaults to.
const FACILITY_USER: u8 = 1;

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Info = 6,
}

pub fn log(level: Level, msg: &str) {
    let pid = std::process::id();
    eprintln!("{IDENT}[{pid}]: {msg}");
    let pri = FACILITY_USER * 8 + level as u8;
    // RFC 3164 without a timestamp: the syslog daemon adds its own.
    let line = format!("<{pri}>{IDENT}[{pid}]: {msg}");
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(line.as_bytes(), "/dev/log");
    }
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
