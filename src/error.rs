//! The small, stable error kind that every module's error maps to. Exit codes and the
//! plugin's failure classes come from this kind, never from message text.

use std::error::Error as StdError;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input (a file, an argument, a stream) breaks a rule: retrying cannot help.
    InvalidInput,
    /// The thing asked for does not exist.
    NotFound,
    /// A local I/O failure (disk, permissions).
    Io,
    /// A failure that may go away when retried (network, 5xx).
    Retryable,
    /// A failure that will not go away (4xx, refused by the store).
    Permanent,
    /// Another process holds the lock.
    Locked,
}

/// Implemented by every module error.
pub trait Kind {
    fn kind(&self) -> ErrorKind;
}

/// Documented exit codes of the CLI (README "Exit codes").
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const INVALID_INPUT: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const RETRYABLE: u8 = 5;
    pub const LOCKED: u8 = 6;
}

impl ErrorKind {
    /// The name in `--json` error objects (README "JSON output").
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Io => "io",
            ErrorKind::Retryable => "retryable",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Locked => "locked",
        }
    }

    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(self.code())
    }

    pub fn code(self) -> u8 {
        match self {
            ErrorKind::InvalidInput => exit::INVALID_INPUT,
            ErrorKind::NotFound => exit::NOT_FOUND,
            ErrorKind::Retryable => exit::RETRYABLE,
            ErrorKind::Locked => exit::LOCKED,
            ErrorKind::Io | ErrorKind::Permanent => exit::FAILURE,
        }
    }
}

/// `error: cause: cause`: the one way an error is printed, by the CLI (stderr, `--json`)
/// and the plugin (`ErrorDescription`, syslog). A cause whose message the text already
/// ends with is left out: a wrapper that repeats its source's message (ureq's
/// `Io(e)`, a `{0}` variant) would otherwise print it twice.
pub fn chain(err: &dyn StdError) -> String {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.ends_with(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        src = s.source();
    }
    cap(&msg)
}

/// The longest message we print, log or send to Nova. A hostile input can make an error
/// quote anything (a 900 KB member name): past this, the text is cut at a character
/// boundary and ends with `…`.
pub const MAX_MESSAGE: usize = 4096;

/// `text`, at most [`MAX_MESSAGE`] bytes (with the ellipsis).
pub fn cap(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let ellipsis = "…";
    let mut end = MAX_MESSAGE - ellipsis.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open /x")]
    struct Outer(#[source] Repeats);

    #[test]
    fn messages_are_capped_at_a_char_boundary() {
        let long = "é".repeat(5000);
        let c = cap(&long);
        assert!(c.len() <= MAX_MESSAGE && c.ends_with('…'), "{}", c.len());
        assert_eq!(cap("short"), "short");
        let e = Outer(Repeats(std::io::Error::other("x".repeat(10_000))));
        assert!(chain(&e).len() <= MAX_MESSAGE);
    }

    #[test]
    fn chain_names_each_cause_once() {
        let e = Outer(Repeats(std::io::Error::other("disk on fire")));
        assert_eq!(chain(&e), "cannot open /x: disk on fire");
    }
}
