//! The `ErrorDescription` shapes unmodified Nova / os-xenapi understand (DESIGN §1).
//!
//! * `['XENAPI_PLUGIN_FAILURE', fn, class, message]`: what Python's `XenAPIPlugin.dispatch`
//!   makes of an exception (`e.__class__.__name__`, `str(e)`). Nova retries when
//!   `details[2] == 'RetryableError'` and maps an upload's `details[3] == 'ImageNotFound'`
//!   to its own `ImageNotFound`.
//! * `['UNKNOWN_XENAPI_PLUGIN_FUNCTION', fn]`: the function is not in the plugin's table.
//!
//! The class comes from the error's [`ErrorKind`] (and from whether the error is about
//! the arguments), in the one `match` of [`Failure::of`]; never from message text. The
//! call table's error type tells what else it needs through [`CallFault`], so this
//! module names no call and imports nothing from the table.

use std::error::Error as StdError;

use crate::error::{ErrorKind, Kind};

/// The exception class names the old plugins raised (`pluginlib_nova`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Nova retries, possibly against another Glance.
    Retryable,
    /// Permanent.
    Plugin,
    /// The call's arguments are missing or malformed (a subclass of PluginError in
    /// Python: callers treat it as permanent).
    Argument,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Retryable => "RetryableError",
            Class::Plugin => "PluginError",
            Class::Argument => "ArgumentError",
        }
    }
}

/// What [`Failure::of`] needs to know about a call's error besides its kind and its
/// message.
pub trait CallFault: StdError + Kind {
    /// The call's arguments are missing or malformed.
    fn is_argument(&self) -> bool;
    /// The image store's own answer (not the SR's or the VHD engine's).
    fn is_from_store(&self) -> bool;
}

/// One `ErrorDescription`: an array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub Vec<String>);

impl Failure {
    pub fn unknown_function(function: &str) -> Failure {
        Failure(vec![
            "UNKNOWN_XENAPI_PLUGIN_FUNCTION".into(),
            function.into(),
        ])
    }

    pub fn plugin(function: &str, class: Class, message: &str) -> Failure {
        Failure(vec![
            "XENAPI_PLUGIN_FAILURE".into(),
            function.into(),
            class.name().into(),
            message.into(),
        ])
    }

    /// The failure for a call's error: its class from its kind, the message its cause
    /// chain. `upload`: the call is an upload, where a store 404 is Nova's
    /// `ImageNotFound` (a download 404 is a plain permanent error, as in os-xenapi).
    pub fn of<E: CallFault>(function: &str, err: &E, upload: bool) -> Failure {
        let class = if err.is_argument() {
            Class::Argument
        } else {
            match (err.kind(), upload) {
                // Exactly what Nova compares details[3] with: the store has no such
                // image. (A VDI missing from the SR is not found too, but it is not
                // Nova's ImageNotFound.)
                (ErrorKind::NotFound, true) if err.is_from_store() => {
                    return Failure::plugin(function, Class::Plugin, "ImageNotFound")
                }
                // Another process holds the SR lock, or the network or store is busy:
                // the same call can succeed later.
                (ErrorKind::Retryable | ErrorKind::Locked, _) => Class::Retryable,
                (
                    ErrorKind::NotFound
                    | ErrorKind::Permanent
                    | ErrorKind::InvalidInput
                    | ErrorKind::Io,
                    _,
                ) => Class::Plugin,
            }
        };
        Failure::plugin(function, class, &chain(err))
    }
}

/// `error: cause: cause`: the CLI's printer, so a message reads the same in both modes.
pub use crate::error::chain;
