//! What the CLI prints, and where: results on stdout (UUIDs, an image id, `--json`, the
//! image itself), everything else on stderr, around the progress bar, filtered by
//! `--quiet`/`-v`. Errors are reported here and only here ([`report`]), as text and,
//! with `--json`, as one JSON object, so a script reading stdout always gets one.

use std::error::Error as StdError;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI8, Ordering};

use crate::error::{self, exit, ErrorKind, Kind};

/// Verbosity: -1 `--quiet` (errors only), 0 default (warnings and the summary), 1 `-v`
/// (each step), 2 `-vv` (each request).
static VERBOSITY: AtomicI8 = AtomicI8::new(0);

pub fn set_verbosity(v: i8) {
    VERBOSITY.store(v, Ordering::Relaxed);
}

pub fn verbosity() -> i8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// A message on stderr if the verbosity is at least `min`, lifted around the progress
/// bar if one is on screen.
pub fn say(min: i8, msg: &str) {
    if verbosity() >= min {
        crate::progress::suspend(|| eprintln!("glance-vhd: {msg}"));
    }
}

/// One result line on stdout. A reader that went away (`| head`) is not an error: the
/// work is done and there is no one left to tell.
pub fn line(text: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// One JSON document on one line: cron jobs append `--json` to a log file, one run a
/// line, and `jq`/`json.loads` per line must read it.
pub fn json<T: serde::Serialize>(v: &T) {
    line(&serde_json::to_string(v).expect("plain data serialises"));
}

/// Where the engines' steps (`-v`) and the stores' requests (`-vv`) go: stderr, around
/// the bar, filtered by the verbosity ([`crate::log::set_detail_sink`]).
pub fn show_detail() {
    crate::log::set_detail_sink(|detail, msg| say(detail as i8, msg));
}

/// Why a command failed; reported once, by [`report`].
#[derive(Debug)]
pub enum CliError {
    /// Flags that clap cannot relate (`--json` with `--endpoint -`): exit 2.
    Usage(String),
    /// A library error: the exit code comes from its kind.
    Failed { message: String, kind: ErrorKind },
    /// `vhd check`: vhd-util's errno is the exit code (22 EINVAL, 2 ENOENT, …).
    Errno {
        message: String,
        kind: ErrorKind,
        errno: i32,
    },
}

impl<E: StdError + Kind> From<E> for CliError {
    fn from(e: E) -> CliError {
        CliError::Failed {
            message: error::chain(&e),
            kind: e.kind(),
        }
    }
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> CliError {
        CliError::Usage(msg.into())
    }

    /// An error reported with vhd-util's errno as the exit code.
    pub fn errno(e: &crate::vhd::VhdError) -> CliError {
        CliError::Errno {
            message: error::chain(e),
            kind: e.kind(),
            errno: e.errno(),
        }
    }

    fn parts(&self) -> (&str, &'static str, u8) {
        match self {
            CliError::Usage(m) => (m, "usage", exit::USAGE),
            CliError::Failed { message, kind } => (message, kind.name(), kind.code()),
            CliError::Errno {
                message,
                kind,
                errno,
            } => (
                message,
                kind.name(),
                u8::try_from(*errno).unwrap_or(exit::FAILURE),
            ),
        }
    }
}

/// `glance-vhd: <what failed>: <why>: <cause>…` on stderr; with `--json`, also
/// `{"error": {"message", "kind", "exit_code"}}` on stdout; for a job (`job`:
/// `download`, `upload`, `sweep`), also `<job> failed (exit N, kind): <message>` in
/// syslog at `err`, so a cron run that failed says what and how in the system log —
/// whatever `--quiet` says. Returns the exit code.
pub fn report(e: &CliError, json_too: bool, job: Option<&str>) -> ExitCode {
    let (message, kind, code) = e.parts();
    crate::progress::suspend(|| eprintln!("glance-vhd: {message}"));
    if let Some(job) = job {
        crate::log::syslog(
            crate::log::Level::Error,
            &format!("{job} failed (exit {code}, {kind}): {message}"),
        );
    }
    if json_too {
        json(&serde_json::json!({"error": {
            "message": message, "kind": kind, "exit_code": code,
        }}));
    }
    ExitCode::from(code)
}
