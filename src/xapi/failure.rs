//! The `ErrorDescription` shapes unmodified Nova / os-xenapi understand (DESIGN §1).
//!
//! * `['XENAPI_PLUGIN_FAILURE', fn, class, message]`: what Python's `XenAPIPlugin.dispatch`
//!   makes of an exception (`e.__class__.__name__`, `str(e)`). Nova retries when
//!   `details[2] == 'RetryableError'` and maps an upload's `details[3] == 'ImageNotFound'`
//!   to its own `ImageNotFound`.
//! * `['UNKNOWN_XENAPI_PLUGIN_FUNCTION', fn]`: the function is not in the plugin's table.
//!
//! The class comes from the error's [`ErrorKind`] (and from whether the error is about
//! the arguments), in the one `match` of [`Failure::of`]; never from message text.

use super::calls::CallError;
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

/// Whether a store 404 means Nova's `ImageNotFound` (uploads only: a download 404 is a
/// plain permanent error, as in os-xenapi).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Download,
    Upload,
    Other,
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
    /// chain.
    pub fn of(function: &str, err: &CallError, op: Op) -> Failure {
        let class = match err {
            CallError::Missing(_) | CallError::Argument(_) | CallError::Pickle(_) => {
                Class::Argument
            }
            other => match (other.kind(), op) {
                // Exactly what Nova compares details[3] with: the store has no such
                // image. (A VDI missing from the SR is not found too, but it is not
                // Nova's ImageNotFound.)
                (ErrorKind::NotFound, Op::Upload) if from_store(other) => {
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
            },
        };
        Failure::plugin(function, class, &chain(err))
    }
}

/// Whether the error is the image store's answer (not the SR's or the VHD engine's).
fn from_store(err: &CallError) -> bool {
    match err {
        CallError::Store(_) => true,
        CallError::Transfer(t) => t.from_store(),
        _ => false,
    }
}

/// `error: cause: cause`, as the CLI prints it (one printer for both).
pub use crate::error::chain;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn http(status: u16, upload: bool) -> CallError {
        CallError::Store(StoreError::Http {
            url: "http://g/v1/images/x".into(),
            status,
            body: String::new(),
            upload,
        })
    }

    #[test]
    fn upload_404_is_image_not_found() {
        assert_eq!(
            Failure::of("upload_vhd2", &http(404, true), Op::Upload).0,
            [
                "XENAPI_PLUGIN_FAILURE",
                "upload_vhd2",
                "PluginError",
                "ImageNotFound"
            ]
        );
    }

    #[test]
    fn classes_follow_the_kind() {
        let f = Failure::of("download_vhd2", &http(404, false), Op::Download).0;
        assert_eq!(f[2], "PluginError");
        assert!(f[3].contains("HTTP 404"), "{f:?}");
        assert_eq!(
            Failure::of("upload_vhd2", &http(503, true), Op::Upload).0[2],
            "RetryableError"
        );
        assert_eq!(
            Failure::of("upload_vhd2", &http(409, true), Op::Upload).0[2],
            "PluginError"
        );
        assert_eq!(
            Failure::of("f", &CallError::Missing("image_id".into()), Op::Download).0,
            [
                "XENAPI_PLUGIN_FAILURE",
                "f",
                "ArgumentError",
                "Argument image_id is required."
            ]
        );
    }
}
