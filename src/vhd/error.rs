use std::io;
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, Kind};

/// Everything that can go wrong with a VHD file. Every variant names the file; hostile
/// or broken files give `Invalid` with the field, its value and the rule broken.
#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    #[error("{}: cannot {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: {field} = {value}: {rule}", path.display())]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
        rule: String,
    },
    #[error("{}: {what}", path.display())]
    Refused {
        path: PathBuf,
        what: String,
        /// The errno `vhd-util` exits with for the same refusal.
        errno: i32,
    },
    #[error("{}: parent not found: {detail}", path.display())]
    ParentNotFound { path: PathBuf, detail: String },
}

pub type Result<T, E = VhdError> = std::result::Result<T, E>;

pub const EINVAL: i32 = 22;
pub const ENOENT: i32 = 2;
pub const EIO: i32 = 5;
pub const ENAMETOOLONG: i32 = 36;
pub const EILSEQ: i32 = 84;
pub const ELOOP: i32 = 40;
pub const EEXIST: i32 = 17;

impl VhdError {
    pub fn io(path: &Path, op: &'static str, source: io::Error) -> VhdError {
        VhdError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub fn invalid(
        path: &Path,
        field: &'static str,
        value: impl ToString,
        rule: impl Into<String>,
    ) -> VhdError {
        VhdError::Invalid {
            path: path.to_path_buf(),
            field,
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    pub fn refused(path: &Path, what: impl Into<String>, errno: i32) -> VhdError {
        VhdError::Refused {
            path: path.to_path_buf(),
            what: what.into(),
            errno,
        }
    }

    /// The errno `vhd-util` would exit with; used for the `query`/`check` exit codes.
    pub fn errno(&self) -> i32 {
        match self {
            VhdError::Io { source, .. } => source.raw_os_error().unwrap_or(EIO),
            VhdError::Invalid { .. } => EINVAL,
            VhdError::Refused { errno, .. } => *errno,
            VhdError::ParentNotFound { .. } => ENOENT,
        }
    }
}

impl Kind for VhdError {
    fn kind(&self) -> ErrorKind {
        match self {
            VhdError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            VhdError::Io { .. } => ErrorKind::Io,
            VhdError::Invalid { .. } | VhdError::Refused { .. } => ErrorKind::InvalidInput,
            VhdError::ParentNotFound { .. } => ErrorKind::NotFound,
        }
    }
}
