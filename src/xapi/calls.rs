//! The call table (DESIGN §2): every call of every plugin generation, its arguments
//! decoded into typed structs, and its reply in the form that generation's callers
//! expect.
//!
//! | plugin | call | params | reply |
//! |---|---|---|---|
//! | glance | `download_vhd` | Diablo flat dict, or Folsom `{'args', 'kwargs'}` | JSON list / pickle `{'root': {'uuid'}}` |
//! | glance | `upload_vhd` | the same two shapes | `""` / pickle `None` |
//! | glance | `download_vhd2`, `upload_vhd2` | `{'args', 'kwargs'}` with `endpoint`, `api_version` | pickles |
//! | glance | `copy_kernel_vdi`, `remove_kernel_ramdisk` | plain args | path / `"ok"` |
//! | kernel | `copy_vdi`, `create_kernel_ramdisk`, `remove_kernel_ramdisk` | plain args | path / path or `""` / `"ok"` |
//!
//! Plugin mode never retries: Nova owns retries, so every call fails fast with the
//! class its error kind gives ([`super::failure`]).

use std::path::PathBuf;

use super::failure::Op;
use super::kernel::{self, KernelError};
use super::pickle::{self, PickleError, Py, Reply};
use super::xenapi::{XenApi, XenApiError};
use super::xmlrpc::XValue;
use crate::bundle::pack::PackOptions;
use crate::error::{ErrorKind, Kind};
use crate::progress::{Display, Monitor, Progress};
use crate::sr::{ChainSpec, SrError};
use crate::store::glance::{Api, Glance, GlanceConfig};
use crate::store::{Source, StoreError, Target};
use crate::transfer::{self, ImportOptions, TransferError};

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
    Sr(#[from] SrError),
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
            CallError::Sr(e) => e.kind(),
            CallError::Transfer(e) => e.kind(),
            CallError::Store(e) => e.kind(),
            CallError::Kernel(e) => e.kind(),
            CallError::XenApi(e) => e.kind(),
            CallError::Reply(_) => ErrorKind::Permanent,
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

type Handler = fn(&Args) -> Result<Value>;
type Checker = fn(&Args) -> Result<()>;

/// One call: its name, what a 404 means for it, its handler.
pub struct Call {
    pub name: &'static str,
    pub op: Op,
    pub run: Handler,
    /// Decode and check the arguments exactly as `run` does before it acts, and stop
    /// there: no store, SR, XenAPI or file system is touched (the fuzz targets).
    pub check: Checker,
}

const GLANCE: &[Call] = &[
    Call {
        name: "download_vhd",
        op: Op::Download,
        run: download_vhd,
        check: check_download_vhd,
    },
    Call {
        name: "upload_vhd",
        op: Op::Upload,
        run: upload_vhd,
        check: check_upload_vhd,
    },
    Call {
        name: "download_vhd2",
        op: Op::Download,
        run: download_vhd2,
        check: check_download_vhd2,
    },
    Call {
        name: "upload_vhd2",
        op: Op::Upload,
        run: upload_vhd2,
        check: check_upload_vhd2,
    },
    Call {
        name: "copy_kernel_vdi",
        op: Op::Other,
        run: copy_kernel_vdi,
        check: check_copy_kernel_vdi,
    },
    Call {
        name: "remove_kernel_ramdisk",
        op: Op::Other,
        run: remove_kernel_ramdisk,
        check: check_remove_kernel_ramdisk,
    },
];

const KERNEL: &[Call] = &[
    Call {
        name: "copy_vdi",
        op: Op::Other,
        run: copy_vdi,
        check: check_copy_vdi,
    },
    Call {
        name: "create_kernel_ramdisk",
        op: Op::Other,
        run: create_kernel_ramdisk,
        check: check_create_kernel_ramdisk,
    },
    Call {
        name: "remove_kernel_ramdisk",
        op: Op::Other,
        run: remove_kernel_ramdisk,
        check: check_remove_kernel_ramdisk,
    },
];

/// The call `function` of the plugin installed as `plugin` (`glance`, `glance.py`,
/// `kernel`, `kernel.py`).
pub fn lookup(plugin: &str, function: &str) -> Option<&'static Call> {
    let table = match plugin.strip_suffix(".py").unwrap_or(plugin) {
        "glance" => GLANCE,
        "kernel" => KERNEL,
        _ => return None,
    };
    table.iter().find(|c| c.name == function)
}

// ---- Folsom+ keyword arguments ----

/// `fn(session, *args, **kwargs)`: positional args bound to the Python signature's
/// parameter names, then the keywords.
struct Kwargs(Vec<(String, Py)>);

impl Kwargs {
    fn bind(params: &Py, signature: &[&str]) -> Result<Kwargs> {
        let shape =
            || CallError::Argument("params must be a pickled {'args': (…), 'kwargs': {…}}".into());
        if !matches!(params, Py::Dict(_)) {
            return Err(shape());
        }
        let mut out = Vec::new();
        match params.get("args") {
            None => {}
            Some(Py::List(items)) => {
                if items.len() > signature.len() {
                    return Err(CallError::Argument(format!(
                        "{} positional arguments; at most {}",
                        items.len(),
                        signature.len()
                    )));
                }
                out.extend(
                    signature
                        .iter()
                        .map(|s| s.to_string())
                        .zip(items.iter().cloned()),
                );
            }
            Some(_) => return Err(shape()),
        }
        match params.get("kwargs") {
            None => {}
            Some(Py::Dict(items)) => {
                for (k, v) in items {
                    let Py::Str(k) = k else { return Err(shape()) };
                    if out.iter().any(|(n, _)| n == k) {
                        return Err(CallError::Argument(format!(
                            "argument {k} given by position and by keyword"
                        )));
                    }
                    out.push((k.clone(), v.clone()));
                }
            }
            Some(_) => return Err(shape()),
        }
        Ok(Kwargs(out))
    }

    /// Diablo's flat dict.
    fn flat(params: &Py) -> Result<Kwargs> {
        match params {
            Py::Dict(items) => Ok(Kwargs(
                items
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Py::Str(k) => Some((k.clone(), v.clone())),
                        _ => None,
                    })
                    .collect(),
            )),
            other => Err(CallError::Argument(format!(
                "params must be a pickled dict, not {}",
                other.type_name()
            ))),
        }
    }

    /// Present and not None.
    fn get(&self, key: &str) -> Option<&Py> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| **v != Py::None)
    }

    fn req(&self, key: &str) -> Result<&Py> {
        self.get(key).ok_or_else(|| CallError::Missing(key.into()))
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.req(key)? {
            Py::Str(s) => Ok(s.clone()),
            other => Err(wrong(key, "a string", other)),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.req(key)? {
            Py::List(items) => items
                .iter()
                .map(|i| match i {
                    Py::Str(s) => Ok(s.clone()),
                    other => Err(wrong(key, "a list of strings", other)),
                })
                .collect(),
            other => Err(wrong(key, "a list of strings", other)),
        }
    }

    /// A dict of scalars, values as Python's `str()` writes them.
    fn pairs(&self, key: &str) -> Result<Vec<(String, String)>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Py::Dict(items)) => items
                .iter()
                .map(|(k, v)| match (k, v.to_python_str()) {
                    (Py::Str(k), Some(v)) => Ok((k.clone(), v)),
                    _ => Err(wrong(key, "a dict of strings", v)),
                })
                .collect(),
            Some(other) => Err(wrong(key, "a dict", other)),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Py::Int(i)) => Ok(Some(*i)),
            Some(Py::Str(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| wrong(key, "an integer", &Py::Str(s.clone()))),
            Some(other) => Err(wrong(key, "an integer", other)),
        }
    }

    fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Py::Bool(b)) => Ok(*b),
            Some(Py::Int(i)) => Ok(*i != 0),
            Some(Py::Str(s)) => Ok(matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "1" | "yes"
            )),
            Some(other) => Err(wrong(key, "a boolean", other)),
        }
    }
}

fn wrong(key: &str, what: &str, got: &Py) -> CallError {
    CallError::Argument(format!(
        "argument {key} must be {what}, not {}",
        got.type_name()
    ))
}

/// Decode and check the arguments of the glance call `function` from its already
/// decoded `params` pickle, as the call does before it acts (see [`Call::check`]).
/// `None` for calls that take no pickle.
pub fn check_params(function: &str, params: &Py) -> Option<Result<()>> {
    Some(match function {
        "download_vhd" => download_vhd_args(params).map(drop),
        "download_vhd2" => download_vhd2_args(params).map(drop),
        "upload_vhd" => upload_vhd_args(params).map(drop),
        "upload_vhd2" => upload_vhd2_args(params).map(drop),
        _ => return None,
    })
}

/// The Folsom-era generation of `download_vhd`/`upload_vhd` is told from Diablo's by
/// the params' shape.
fn is_folsom(params: &Py) -> bool {
    params.get("kwargs").is_some() || params.get("args").is_some()
}

// ---- the store ----

/// Where the image is and how to talk to it.
struct StoreArgs {
    endpoint: String,
    api: Api,
    headers: Vec<(String, String)>,
    image_id: String,
}

impl StoreArgs {
    /// `glance_host`, `glance_port`, `glance_use_ssl` → `http(s)://host:port`.
    fn host_port(kw: &Kwargs) -> Result<String> {
        let host = kw.string("glance_host")?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
        if !host_ok {
            return Err(CallError::Argument(format!(
                "glance_host {host:?} is not a host name"
            )));
        }
        let port = kw
            .int("glance_port")?
            .ok_or_else(|| CallError::Missing("glance_port".into()))?;
        if !(1..=65535).contains(&port) {
            return Err(CallError::Argument(format!(
                "glance_port {port} is not a port"
            )));
        }
        let scheme = if kw.flag("glance_use_ssl")? {
            "https"
        } else {
            "http"
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(format!("{scheme}://{host}:{port}"))
    }

    fn api_version(kw: &Kwargs, default: i64) -> Result<Api> {
        match kw.int("api_version")?.unwrap_or(default) {
            1 => Ok(Api::V1),
            2 => Ok(Api::V2),
            v => Err(CallError::Argument(format!(
                "api_version {v}: 1 or 2 are possible"
            ))),
        }
    }

    /// `extra_headers` (Havana+) or `auth_token` (Diablo–Grizzly), by the store's
    /// header rule ([`crate::store::check_header`]).
    fn headers(kw: &Kwargs) -> Result<Vec<(String, String)>> {
        let mut h = kw.pairs("extra_headers")?;
        let token = match kw.get("auth_token") {
            Some(Py::Str(t)) => Some(t.as_str()),
            _ => None,
        };
        crate::store::merge_token(&mut h, token);
        for (k, v) in &h {
            crate::store::check_header(k, v)
                .map_err(|rule| CallError::Argument(format!("extra_headers: {rule}")))?;
        }
        Ok(h)
    }

    fn new(kw: &Kwargs, endpoint: String, api: Api) -> Result<StoreArgs> {
        Ok(StoreArgs {
            endpoint,
            api,
            headers: StoreArgs::headers(kw)?,
            image_id: kw.string("image_id")?,
        })
    }

    fn glance(&self) -> Result<Glance> {
        let mut cfg = GlanceConfig::new(&self.endpoint, self.api);
        cfg.headers = self.headers.clone();
        Ok(Glance::new(cfg)?)
    }
}

fn sr_path(kw: &Kwargs) -> Result<PathBuf> {
    let p = PathBuf::from(kw.string("sr_path")?);
    if !p.is_absolute() {
        return Err(CallError::Argument(format!(
            "sr_path {} is not absolute",
            p.display()
        )));
    }
    Ok(p)
}

// ---- download ----

/// A download, whatever the generation.
struct DownloadArgs {
    store: StoreArgs,
    sr_path: PathBuf,
    /// Popped from the end, one per VHD, leaf first (as the Python plugin did).
    uuid_stack: Vec<String>,
}

impl DownloadArgs {
    fn diablo(kw: &Kwargs) -> Result<DownloadArgs> {
        let endpoint = StoreArgs::host_port(kw)?;
        DownloadArgs::with(kw, endpoint, Api::V1Diablo)
    }

    fn folsom(kw: &Kwargs) -> Result<DownloadArgs> {
        let api = StoreArgs::api_version(kw, 1)?;
        DownloadArgs::with(kw, StoreArgs::host_port(kw)?, api)
    }

    fn v2(kw: &Kwargs) -> Result<DownloadArgs> {
        let api = StoreArgs::api_version(kw, 1)?;
        DownloadArgs::with(kw, kw.string("endpoint")?, api)
    }

    fn with(kw: &Kwargs, endpoint: String, api: Api) -> Result<DownloadArgs> {
        Ok(DownloadArgs {
            store: StoreArgs::new(kw, endpoint, api)?,
            sr_path: sr_path(kw)?,
            uuid_stack: kw.strings("uuid_stack")?,
        })
    }

    /// The leaf's VDI UUID.
    fn run(&self) -> Result<String> {
        let source = Source::Glance(self.store.glance()?, self.store.image_id.clone());
        let (transfer, monitor) =
            syslog_progress(format!("download of image {}", self.store.image_id));
        let opts = ImportOptions {
            sr_path: self.sr_path.clone(),
            uuid_stack: Some(self.uuid_stack.clone()),
            lock_dir: crate::sr::sm_lock_dir(),
            transfer,
        };
        let d = transfer::download(&source, &opts);
        monitor.stop();
        let d = d?;
        super::log::info(&format!(
            "image {} imported into {} as {:?}",
            self.store.image_id,
            self.sr_path.display(),
            d.imported.uuids
        ));
        Ok(d.imported.root_uuid().to_string())
    }
}

/// Long transfers log their progress to syslog every 30 s (never to stdout).
fn syslog_progress(label: String) -> (transfer::Transfer, Monitor) {
    let progress = Progress::new();
    let monitor = Monitor::start(
        progress.clone(),
        Display {
            bar: false,
            log_every: Some(crate::progress::log_interval()),
            label,
        },
    );
    let transfer = transfer::Transfer {
        progress: Some(progress),
        ..Default::default()
    };
    (transfer, monitor)
}

fn root_reply(leaf: String) -> Value {
    Value::Pickled(Reply::Dict(vec![(
        "root".into(),
        Reply::Dict(vec![("uuid".into(), Reply::Str(leaf))]),
    )]))
}

const DOWNLOAD_VHD: &[&str] = &[
    "image_id",
    "glance_host",
    "glance_port",
    "glance_use_ssl",
    "uuid_stack",
    "sr_path",
    "extra_headers",
];
const DOWNLOAD_VHD2: &[&str] = &[
    "image_id",
    "endpoint",
    "uuid_stack",
    "sr_path",
    "extra_headers",
    "api_version",
];

/// `download_vhd`'s arguments, and whether the caller is Diablo (a JSON reply).
fn download_vhd_args(params: &Py) -> Result<(DownloadArgs, bool)> {
    if is_folsom(params) {
        Ok((
            DownloadArgs::folsom(&Kwargs::bind(params, DOWNLOAD_VHD)?)?,
            false,
        ))
    } else {
        Ok((DownloadArgs::diablo(&Kwargs::flat(params)?)?, true))
    }
}

fn download_vhd(a: &Args) -> Result<Value> {
    let (args, diablo) = download_vhd_args(&a.params()?)?;
    let leaf = args.run()?;
    if !diablo {
        return Ok(root_reply(leaf));
    }
    // Diablo's `json.dumps(_import_vhds(…))`: the OS disk is the leaf (no swap here).
    let json = serde_json::json!([{"vdi_type": "os", "vdi_uuid": leaf}]);
    Ok(Value::Text(python_json(&json)))
}

fn check_download_vhd(a: &Args) -> Result<()> {
    download_vhd_args(&a.params()?).map(drop)
}

fn download_vhd2_args(params: &Py) -> Result<DownloadArgs> {
    DownloadArgs::v2(&Kwargs::bind(params, DOWNLOAD_VHD2)?)
}

fn download_vhd2(a: &Args) -> Result<Value> {
    let leaf = download_vhd2_args(&a.params()?)?.run()?;
    Ok(root_reply(leaf))
}

fn check_download_vhd2(a: &Args) -> Result<()> {
    download_vhd2_args(&a.params()?).map(drop)
}

/// `json.dumps` with Python's default separators (`", "`, `": "`); keys in insertion
/// order as the Diablo plugin built them.
fn python_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_json).collect();
            format!("[{}]", inner.join(", "))
        }
        serde_json::Value::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        serde_json::Value::from(k.as_str()),
                        python_json(v)
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

// ---- upload ----

struct UploadArgs {
    store: StoreArgs,
    sr_path: PathBuf,
    chain: ChainSpec,
    properties: Vec<(String, String)>,
    level: u32,
}

impl UploadArgs {
    fn diablo(kw: &Kwargs) -> Result<UploadArgs> {
        let endpoint = StoreArgs::host_port(kw)?;
        // Diablo names the files: {'image': base-or-only, 'snap': leaf, 'base': …}.
        let named = match kw.req("vdi_uuids")? {
            Py::Dict(items) => {
                let mut named = Vec::new();
                for role in ["snap", "image", "base"] {
                    let uuid = items
                        .iter()
                        .find(|(k, _)| matches!(k, Py::Str(s) if s == role))
                        .map(|(_, v)| v);
                    match uuid {
                        None | Some(Py::None) => {}
                        Some(Py::Str(u)) if u.is_empty() => {}
                        Some(Py::Str(u)) => named.push((role.to_string(), u.clone())),
                        Some(other) => return Err(wrong("vdi_uuids", "a dict of strings", other)),
                    }
                }
                if let Some((k, _)) = items
                    .iter()
                    .find(|(k, _)| !matches!(k, Py::Str(s) if ["snap", "image", "base"].contains(&s.as_str())))
                {
                    return Err(CallError::Argument(format!(
                        "vdi_uuids: {k:?} is not image, snap or base"
                    )));
                }
                ChainSpec::Named(named)
            }
            // Some Diablo callers already sent a list, leaf first.
            Py::List(_) => ChainSpec::Vdis(kw.strings("vdi_uuids")?),
            other => return Err(wrong("vdi_uuids", "a dict or a list", other)),
        };
        let mut properties = kw.pairs("properties")?;
        if let Some(Py::Str(os)) = kw.get("os_type") {
            if !properties.iter().any(|(k, _)| k == "os_type") {
                properties.push(("os_type".into(), os.clone()));
            }
        }
        UploadArgs::with(kw, endpoint, Api::V1Diablo, named, properties)
    }

    fn folsom(kw: &Kwargs) -> Result<UploadArgs> {
        let api = StoreArgs::api_version(kw, 1)?;
        let endpoint = StoreArgs::host_port(kw)?;
        let chain = ChainSpec::Vdis(kw.strings("vdi_uuids")?);
        UploadArgs::with(kw, endpoint, api, chain, kw.pairs("properties")?)
    }

    fn v2(kw: &Kwargs) -> Result<UploadArgs> {
        let api = StoreArgs::api_version(kw, 1)?;
        let endpoint = kw.string("endpoint")?;
        let chain = ChainSpec::Vdis(kw.strings("vdi_uuids")?);
        UploadArgs::with(kw, endpoint, api, chain, kw.pairs("properties")?)
    }

    fn with(
        kw: &Kwargs,
        endpoint: String,
        api: Api,
        chain: ChainSpec,
        properties: Vec<(String, String)>,
    ) -> Result<UploadArgs> {
        for (k, _) in &properties {
            crate::store::check_property_name(k)
                .map_err(|rule| CallError::Argument(format!("properties: {rule}")))?;
        }
        // Nova's `xenapi_image_compression_level`; anything but 1–9 keeps GNU gzip's 6.
        let (level, warning) = crate::bundle::pack::level(None, &properties);
        if let Some(w) = warning {
            super::log::warn(&w);
        }
        Ok(UploadArgs {
            store: StoreArgs::new(kw, endpoint, api)?,
            sr_path: sr_path(kw)?,
            chain,
            properties,
            level,
        })
    }

    fn run(&self) -> Result<()> {
        let target = Target::Glance {
            glance: self.store.glance()?,
            image_id: self.store.image_id.clone(),
            properties: self.properties.clone(),
        };
        let pack = PackOptions {
            level: self.level,
            ..PackOptions::default()
        };
        let (transfer, monitor) =
            syslog_progress(format!("upload to image {}", self.store.image_id));
        let up = transfer::upload(&self.sr_path, &self.chain, &target, pack, transfer);
        monitor.stop();
        let up = up?;
        super::log::info(&format!(
            "uploaded {:?} to image {} ({} bytes)",
            up.uuids, self.store.image_id, up.stream.bytes
        ));
        Ok(())
    }
}

const UPLOAD_VHD: &[&str] = &[
    "vdi_uuids",
    "image_id",
    "glance_host",
    "glance_port",
    "glance_use_ssl",
    "sr_path",
    "extra_headers",
    "properties",
];
const UPLOAD_VHD2: &[&str] = &[
    "vdi_uuids",
    "image_id",
    "endpoint",
    "sr_path",
    "extra_headers",
    "properties",
    "api_version",
];

/// `upload_vhd`'s arguments, and whether the caller is Diablo (an empty-string reply).
fn upload_vhd_args(params: &Py) -> Result<(UploadArgs, bool)> {
    if is_folsom(params) {
        Ok((
            UploadArgs::folsom(&Kwargs::bind(params, UPLOAD_VHD)?)?,
            false,
        ))
    } else {
        Ok((UploadArgs::diablo(&Kwargs::flat(params)?)?, true))
    }
}

fn upload_vhd(a: &Args) -> Result<Value> {
    let (args, diablo) = upload_vhd_args(&a.params()?)?;
    args.run()?;
    if diablo {
        // Diablo: "Nothing useful to return on an upload".
        return Ok(Value::Text(String::new()));
    }
    Ok(Value::Pickled(Reply::None))
}

fn check_upload_vhd(a: &Args) -> Result<()> {
    upload_vhd_args(&a.params()?).map(drop)
}

fn upload_vhd2_args(params: &Py) -> Result<UploadArgs> {
    UploadArgs::v2(&Kwargs::bind(params, UPLOAD_VHD2)?)
}

fn upload_vhd2(a: &Args) -> Result<Value> {
    upload_vhd2_args(&a.params()?)?.run()?;
    Ok(Value::Pickled(Reply::None))
}

fn check_upload_vhd2(a: &Args) -> Result<()> {
    upload_vhd2_args(&a.params()?).map(drop)
}

// ---- kernel ----

/// `vdi-ref`, `image-size`, optional `cached-image`.
struct CopyArgs<'a> {
    vdi: &'a str,
    size: u64,
    cached: Option<&'a str>,
}

impl<'a> CopyArgs<'a> {
    fn parse(a: &Args<'a>, with_cache: bool) -> Result<CopyArgs<'a>> {
        let vdi = a.exists("vdi-ref")?;
        let size = a.exists("image-size")?;
        let size = size.trim().parse().map_err(|_| {
            CallError::Argument(format!("image-size {size:?} is not a number of bytes"))
        })?;
        let cached = if with_cache {
            a.optional("cached-image")?
        } else {
            None
        };
        Ok(CopyArgs { vdi, size, cached })
    }

    fn run(&self, a: &Args) -> Result<Value> {
        let api = XenApi::local(a.session)?;
        let path = kernel::copy_vdi(&api, self.vdi, self.size, self.cached)?;
        Ok(Value::Text(path.display().to_string()))
    }
}

fn copy_vdi(a: &Args) -> Result<Value> {
    CopyArgs::parse(a, true)?.run(a)
}

fn check_copy_vdi(a: &Args) -> Result<()> {
    CopyArgs::parse(a, true).map(drop)
}

fn copy_kernel_vdi(a: &Args) -> Result<Value> {
    CopyArgs::parse(a, false)?.run(a)
}

fn check_copy_kernel_vdi(a: &Args) -> Result<()> {
    CopyArgs::parse(a, false).map(drop)
}

/// `cached-image`, `new-image-uuid`.
fn create_kernel_ramdisk_args<'a>(a: &Args<'a>) -> Result<(&'a str, &'a str)> {
    Ok((a.exists("cached-image")?, a.exists("new-image-uuid")?))
}

fn create_kernel_ramdisk(a: &Args) -> Result<Value> {
    let (cached, new) = create_kernel_ramdisk_args(a)?;
    let made = kernel::create_kernel_ramdisk(cached, new)?;
    Ok(Value::Text(
        made.map(|p| p.display().to_string()).unwrap_or_default(),
    ))
}

fn check_create_kernel_ramdisk(a: &Args) -> Result<()> {
    create_kernel_ramdisk_args(a).map(drop)
}

/// `kernel-file`, `ramdisk-file`: the ones given.
fn remove_kernel_ramdisk_args<'a>(a: &Args<'a>) -> Result<Vec<&'a str>> {
    Ok([a.optional("kernel-file")?, a.optional("ramdisk-file")?]
        .into_iter()
        .flatten()
        .collect())
}

fn remove_kernel_ramdisk(a: &Args) -> Result<Value> {
    kernel::remove_kernel_ramdisk(&remove_kernel_ramdisk_args(a)?)?;
    Ok(Value::Text("ok".into()))
}

fn check_remove_kernel_ramdisk(a: &Args) -> Result<()> {
    remove_kernel_ramdisk_args(a).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn diablo_json_is_pythons() {
        let v = serde_json::json!([{"vdi_type": "os", "vdi_uuid": "u"}]);
        assert_eq!(python_json(&v), r#"[{"vdi_type": "os", "vdi_uuid": "u"}]"#);
    }

    #[test]
    fn positional_and_keyword_arguments() {
        let params = Py::Dict(vec![
            (
                Py::Str("args".into()),
                Py::List(vec![Py::Str("img".into())]),
            ),
            (
                Py::Str("kwargs".into()),
                Py::Dict(vec![(Py::Str("sr_path".into()), Py::Str("/sr".into()))]),
            ),
        ]);
        let kw = Kwargs::bind(&params, DOWNLOAD_VHD2).unwrap();
        assert_eq!(kw.string("image_id").unwrap(), "img");
        assert_eq!(kw.string("sr_path").unwrap(), "/sr");
        assert!(matches!(kw.string("endpoint"), Err(CallError::Missing(k)) if k == "endpoint"));
    }

    #[test]
    fn arguments_are_checked_without_running() {
        let s = |v: &str| Py::Str(v.into());
        let kwargs = |extra: Vec<(Py, Py)>| {
            let mut kw = vec![
                (s("image_id"), s("img")),
                (s("endpoint"), s("http://glance:9292")),
                (s("uuid_stack"), Py::List(vec![s("u-1")])),
                (s("sr_path"), s("/sr")),
            ];
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
}
