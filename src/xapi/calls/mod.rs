//! The call table (DESIGN §2): every call of every plugin generation, its arguments
//! decoded into typed structs, and its reply in the form that generation's callers
//! expect.
//!
//! | plugin | call | params | reply |
//! |---|---|---|---|
//! | glance | `download_vhd` | the original's flat dict (no `auth_token`), Diablo/Essex's (with it), or Folsom `{'args', 'kwargs'}` | the bare leaf UUID / JSON list (with the swap VDI) / pickle `{'root': {'uuid'}}` |
//! | glance | `upload_vhd` | the same three shapes | `""` / `""` / pickle `None` |
//! | glance | `download_vhd2`, `upload_vhd2` | `{'args', 'kwargs'}` with `endpoint`, `api_version` | pickles |
//! | glance | `copy_kernel_vdi`, `remove_kernel_ramdisk` | plain args | path / `"ok"` |
//! | kernel | `copy_vdi`, `create_kernel_ramdisk`, `remove_kernel_ramdisk` | plain args | path / path or `""` / `"ok"` |
//!
//! Each call is declared once, as a type: [`PluginCall`] (its name, what a 404 means for
//! it, how it runs) and one parser, [`FromArgs`] (xapi's plain string arguments) or
//! [`FromParams`] (the `params` pickle). The table's entries are built from those by
//! [`Call::plain`] and [`Call::pickled`], so running a call, checking its arguments
//! without running it (the fuzz targets) and checking a decoded pickle all go through
//! the same parser.
//!
//! * `glance`: the image calls; `kwargs`: their Python keyword arguments.
//! * `kernel`: the kernel/ramdisk calls (the work itself is in [`super::kernel`]).
//!
//! Plugin mode never retries: Nova owns retries, so every call fails fast with the
//! class its error kind gives ([`super::failure`]).

mod glance;
mod kernel;
mod kwargs;

use super::failure::CallFault;
use super::kernel::KernelError;
use super::pickle::{self, PickleError, Py, Reply};
use crate::error::{ErrorKind, Kind};
use crate::store::StoreError;
use crate::transfer::TransferError;
use crate::xenapi::xmlrpc::XValue;
use crate::xenapi::XenApiError;

use glance::{DownloadVhd, DownloadVhd2, UploadVhd, UploadVhd2};
use kernel::{CopyKernelVdi, CopyVdi, CreateKernelRamdisk, RemoveKernelRamdisk};

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The wording of `pluginlib_nova.exists`, which callers and admins know.
    #[error("Argument {0} is required.")]
    Missing(String),
    #[error("{0}")]
    Argument(String),
    #[error("params")]
    Pickle(#[source] PickleError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    XenApi(#[from] XenApiError),
    #[error("the reply")]
    Reply(#[source] PickleError),
}

impl Kind for CallError {
    fn kind(&self) -> ErrorKind {
        match self {
            CallError::Missing(_) | CallError::Argument(_) | CallError::Pickle(_) => {
                ErrorKind::InvalidInput
            }
            CallError::Transfer(e) => e.kind(),
            CallError::Store(e) => e.kind(),
            CallError::Kernel(e) => e.kind(),
            CallError::XenApi(e) => e.kind(),
            CallError::Reply(_) => ErrorKind::Permanent,
        }
    }
}

impl CallFault for CallError {
    fn is_argument(&self) -> bool {
        matches!(
            self,
            CallError::Missing(_) | CallError::Argument(_) | CallError::Pickle(_)
        )
    }

    /// Only the store's 404 is Nova's `ImageNotFound`. Here, next to the variants, so
    /// the engine's error type can change without `failure` knowing.
    fn is_from_store(&self) -> bool {
        match self {
            CallError::Store(_) => true,
            CallError::Transfer(t) => t.from_store(),
            _ => false,
        }
    }
}

type Result<T, E = CallError> = std::result::Result<T, E>;

/// The plain (string → string) arguments xapi passes: param 1 of the methodCall.
pub struct Args<'a> {
    pub session: &'a str,
    members: &'a [(String, XValue)],
}

impl<'a> Args<'a> {
    pub fn new(session: &'a str, members: &'a [(String, XValue)]) -> Args<'a> {
        Args { session, members }
    }

    fn raw(&self, key: &str) -> Option<&'a XValue> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `pluginlib_nova.exists`: present, even if empty.
    fn exists(&self, key: &str) -> Result<&'a str> {
        match self.raw(key) {
            Some(XValue::Str(s)) => Ok(s),
            Some(other) => Err(CallError::Argument(format!(
                "argument {key} must be a string, not {other:?}"
            ))),
            None => Err(CallError::Missing(key.into())),
        }
    }

    /// `pluginlib_nova.optional`: absent and empty are both "not given".
    fn optional(&self, key: &str) -> Result<Option<&'a str>> {
        match self.raw(key) {
            None => Ok(None),
            Some(_) => self.exists(key).map(|s| Some(s).filter(|s| !s.is_empty())),
        }
    }

    /// `params`: the pickle, as xapi's string (protocol 0 is ASCII) or as base64 bytes
    /// (what Python 3's `xmlrpc.client` makes of `bytes`).
    fn params(&self) -> Result<Py> {
        let bytes = match self.raw("params") {
            None => return Err(CallError::Missing("params".into())),
            Some(XValue::Base64(b)) => b.clone(),
            // A binary pickle sent as text arrives as Latin-1 characters (one per byte);
            // protocol 0 is ASCII, where both readings agree.
            Some(XValue::Str(s)) if s.starts_with('\u{80}') && s.chars().all(|c| c <= '\u{ff}') => {
                s.chars().map(|c| c as u8).collect()
            }
            Some(XValue::Str(s)) => s.as_bytes().to_vec(),
            Some(other) => {
                return Err(CallError::Argument(format!(
                    "params must be a pickle string, not {other:?}"
                )))
            }
        };
        pickle::decode(&bytes).map_err(CallError::Pickle)
    }
}

/// What a call returns in `Value`.
pub enum Value {
    /// A plain string (Diablo JSON, kernel paths, `"ok"`).
    Text(String),
    /// A protocol-0 pickle (Folsom+).
    Pickled(Reply),
}

/// Whether a store 404 means Nova's `ImageNotFound` (uploads only: a download 404 is a
/// plain permanent error, as in os-xenapi).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Download,
    Upload,
    Other,
}

/// One plugin call, declared once: a type holding its decoded arguments. It implements
/// this and exactly one parser, [`FromArgs`] or [`FromParams`].
pub trait PluginCall: Sized {
    /// The function name callers use.
    const NAME: &'static str;
    /// What a store 404 means for it.
    const OP: Op;
    /// Act on the parsed arguments (`args` for what is not an argument: the session).
    fn run(self, args: &Args) -> Result<Value>;
}

/// A call whose arguments are xapi's plain strings.
pub trait FromArgs: PluginCall {
    fn from_args(args: &Args) -> Result<Self>;
}

/// A call whose arguments are all in the `params` pickle.
pub trait FromParams: PluginCall {
    fn from_params(params: &Py) -> Result<Self>;
}

fn run_plain<C: FromArgs>(a: &Args) -> Result<Value> {
    C::from_args(a)?.run(a)
}

fn check_plain<C: FromArgs>(a: &Args) -> Result<()> {
    C::from_args(a).map(drop)
}

fn parse_pickled<C: FromParams>(a: &Args) -> Result<C> {
    C::from_params(&a.params()?)
}

fn run_pickled<C: FromParams>(a: &Args) -> Result<Value> {
    parse_pickled::<C>(a)?.run(a)
}

fn check_pickled<C: FromParams>(a: &Args) -> Result<()> {
    parse_pickled::<C>(a).map(drop)
}

fn check_decoded<C: FromParams>(params: &Py) -> Result<()> {
    C::from_params(params).map(drop)
}

/// One entry of a plugin's table: its name, what a 404 means for it, its runner and its
/// checkers, all made from the call's type.
pub struct Call {
    pub name: &'static str,
    pub op: Op,
    pub run: fn(&Args) -> Result<Value>,
    /// Decode and check the arguments exactly as `run` does before it acts, and stop
    /// there (the fuzz targets): no request to the store or XenAPI, nothing written.
    /// The SR's arguments are looked up read-only (`sr::check_sr_dir` and
    /// `sr::check_new_vdis` stat the SR and `<uuid>.vhd`), as the call does first.
    pub check: fn(&Args) -> Result<()>,
    /// For calls that take a `params` pickle: `check` from the already decoded pickle.
    pub check_params: Option<fn(&Py) -> Result<()>>,
}

impl Call {
    pub const fn plain<C: FromArgs>() -> Call {
        Call {
            name: C::NAME,
            op: C::OP,
            run: run_plain::<C>,
            check: check_plain::<C>,
            check_params: None,
        }
    }

    pub const fn pickled<C: FromParams>() -> Call {
        Call {
            name: C::NAME,
            op: C::OP,
            run: run_pickled::<C>,
            check: check_pickled::<C>,
            check_params: Some(check_decoded::<C>),
        }
    }
}

const GLANCE: &[Call] = &[
    Call::pickled::<DownloadVhd>(),
    Call::pickled::<UploadVhd>(),
    Call::pickled::<DownloadVhd2>(),
    Call::pickled::<UploadVhd2>(),
    Call::plain::<CopyKernelVdi>(),
    Call::plain::<RemoveKernelRamdisk>(),
];

const KERNEL: &[Call] = &[
    Call::plain::<CopyVdi>(),
    Call::plain::<CreateKernelRamdisk>(),
    Call::plain::<RemoveKernelRamdisk>(),
];

/// The calls of the plugin installed as `plugin` (`glance`, `glance.py`, `kernel`,
/// `kernel.py`).
pub fn table(plugin: &str) -> Option<&'static [Call]> {
    match plugin.strip_suffix(".py").unwrap_or(plugin) {
        "glance" => Some(GLANCE),
        "kernel" => Some(KERNEL),
        _ => None,
    }
}

/// The call `function` of the plugin installed as `plugin`.
pub fn lookup(plugin: &str, function: &str) -> Option<&'static Call> {
    table(plugin)?.iter().find(|c| c.name == function)
}

/// Decode and check the arguments of the glance call `function` from its already
/// decoded `params` pickle, as the call does before it acts (see [`Call::check`]).
/// `None` for calls that take no pickle.
pub fn check_params(function: &str, params: &Py) -> Option<Result<()>> {
    Some((lookup("glance", function)?.check_params?)(params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xapi::failure::Failure;

    #[test]
    fn tables() {
        for (p, f) in [
            ("glance", "download_vhd"),
            ("glance.py", "upload_vhd2"),
            ("glance", "copy_kernel_vdi"),
            ("kernel", "copy_vdi"),
            ("kernel.py", "remove_kernel_ramdisk"),
        ] {
            assert!(lookup(p, f).is_some(), "{p} {f}");
        }
        assert!(lookup("kernel", "download_vhd").is_none());
        assert!(lookup("other", "download_vhd").is_none());
    }

    #[test]
    fn arguments_are_checked_without_running() {
        let s = |v: &str| Py::Str(v.into());
        // An SR as the rule wants one: an existing directory named by a UUID.
        let dir = tempfile::tempdir().unwrap();
        let sr = dir.path().join("0f8fad5b-d9cb-469f-a165-70867728950e");
        std::fs::create_dir(&sr).unwrap();
        let sr = sr.to_str().unwrap().to_string();
        let vdi = "1f8fad5b-d9cb-469f-a165-70867728950e";
        let kwargs = |extra: Vec<(Py, Py)>| {
            let mut kw = vec![
                (s("image_id"), s("img")),
                (s("endpoint"), s("http://glance:9292")),
                (s("uuid_stack"), Py::List(vec![s(vdi)])),
                (s("sr_path"), s(&sr)),
            ];
            // An extra argument replaces the default of that name.
            kw.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
            kw.extend(extra);
            Py::Dict(vec![(s("kwargs"), Py::Dict(kw))])
        };
        assert!(matches!(
            check_params("download_vhd2", &kwargs(vec![])),
            Some(Ok(()))
        ));
        let bad = kwargs(vec![(
            s("extra_headers"),
            Py::Dict(vec![(s("X-A"), s("a\r\nInjected: 1"))]),
        )]);
        assert!(matches!(
            check_params("download_vhd2", &bad),
            Some(Err(CallError::Argument(m))) if m.contains("extra_headers")
        ));
        // Not a UUID, and an SR that is not one: refused while reading the params.
        let bad = kwargs(vec![(s("uuid_stack"), Py::List(vec![s("u-1")]))]);
        assert!(matches!(
            check_params("download_vhd2", &bad),
            Some(Err(CallError::Argument(m))) if m.contains("uuid_stack[0]")
        ));
        let bad = kwargs(vec![(s("sr_path"), s("/sr"))]);
        assert!(matches!(
            check_params("download_vhd2", &bad),
            Some(Err(CallError::Argument(m))) if m.contains("sr_path")
        ));
        assert!(matches!(
            check_params("upload_vhd2", &kwargs(vec![])),
            Some(Err(CallError::Missing(k))) if k == "vdi_uuids"
        ));
        assert!(check_params("copy_vdi", &kwargs(vec![])).is_none());
        let members = [
            ("vdi-ref".to_string(), XValue::Str("OpaqueRef:v".into())),
            ("image-size".to_string(), XValue::Str("x".into())),
        ];
        let entry = lookup("kernel", "copy_vdi").unwrap();
        assert!(matches!(
            (entry.check)(&Args::new("s", &members)),
            Err(CallError::Argument(m)) if m.contains("image-size")
        ));
    }

    #[test]
    fn the_pickle_calls_are_the_image_calls() {
        let pickled: Vec<_> = GLANCE
            .iter()
            .chain(KERNEL)
            .filter(|c| c.check_params.is_some())
            .map(|c| c.name)
            .collect();
        assert_eq!(
            pickled,
            ["download_vhd", "upload_vhd", "download_vhd2", "upload_vhd2"]
        );
    }

    // ---- the failures these errors become (xapi::failure) ----

    fn http(status: u16, upload: bool) -> CallError {
        CallError::Store(StoreError::Http {
            url: "http://g/v1/images/x".into(),
            status,
            body: String::new(),
            upload,
        })
    }

    fn failure_of(function: &str, err: &CallError, op: Op) -> Failure {
        Failure::of(function, err, op == Op::Upload)
    }

    #[test]
    fn upload_404_is_image_not_found() {
        assert_eq!(
            failure_of("upload_vhd2", &http(404, true), Op::Upload).0,
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
        let f = failure_of("download_vhd2", &http(404, false), Op::Download).0;
        assert_eq!(f[2], "PluginError");
        assert!(f[3].contains("HTTP 404"), "{f:?}");
        assert_eq!(
            failure_of("upload_vhd2", &http(503, true), Op::Upload).0[2],
            "RetryableError"
        );
        assert_eq!(
            failure_of("upload_vhd2", &http(409, true), Op::Upload).0[2],
            "PluginError"
        );
        assert_eq!(
            failure_of("f", &CallError::Missing("image_id".into()), Op::Download).0,
            [
                "XENAPI_PLUGIN_FAILURE",
                "f",
                "ArgumentError",
                "Argument image_id is required."
            ]
        );
    }
}
