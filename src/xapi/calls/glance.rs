//! The glance calls (DESIGN §2): `download_vhd`, `upload_vhd` (Diablo's flat dict or
//! Folsom's `{'args', 'kwargs'}`, told apart by the params' shape) and `download_vhd2`,
//! `upload_vhd2` (Mitaka → os-xenapi: `endpoint`, `api_version`). Each decodes its
//! params pickle into typed arguments ([`FromParams`]), then runs the SR engine and
//! answers in the form its generation's callers expect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::kwargs::{wrong, Kwargs};
use super::{Args, CallError, FromParams, Op, PluginCall, Result, Value};
use crate::bundle::pack::PackOptions;
use crate::log;
use crate::progress::{Display, Monitor, Progress};
use crate::retry::{Budget, Policy, PLUGIN_RESUMES};
use crate::sr::ChainSpec;
use crate::store::glance::{Api, Glance, GlanceConfig};
use crate::store::{Source, Target};
use crate::transfer::{self, ImportOptions, SizedDeadline};
use crate::xapi::pickle::{Py, Reply};

// ---- the time limits ----

/// How long a plugin transfer may go without a byte before it gives up: the last
/// upstream plugin's 90 s (the CLI's `--idle-timeout` defaults to 300 s). xapi puts no
/// limit on a plugin call, and Nova waits for its answer: a stalled store must end the
/// call, and Nova (which owns retries) decides what next.
pub const PLUGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The whole transfer's limit in plugin mode: 10 minutes plus 1 s per MiB of the image
/// (the tarball on download, as the store declares it; the chain's VHD bytes on upload).
///
/// * 1 MiB/s is the slowest average that still counts as working: ten times below a
///   100 Mbit/s link (≈ 11 MiB/s), a hundred below the 1 GbE a dom0 management network
///   has at least, and below what one dom0 core gzips at level 9 — an honest transfer
///   never comes near it, while a store feeding a byte every 89 s (which the idle
///   limit never stops) is cut off.
/// * 10 minutes covers what does not grow with the image: connections, a slow Glance
///   or Keystone, the SR lock `SR.scan` holds, the fsyncs of the import.
///
/// A 1 GiB image gets 34 min, a 20 GiB one 5 h 51 min. Without a declared size only
/// the idle limit applies.
pub const PLUGIN_DEADLINE: SizedDeadline = SizedDeadline {
    floor: Duration::from_secs(600),
    min_rate: 1 << 20,
};

/// The limits in force: the constants, or the test hook's shortened ones
/// ([`crate::testhooks::PLUGIN_LIMITS`]).
fn plugin_limits() -> (Duration, SizedDeadline) {
    match crate::testhooks::plugin_limits() {
        Some((idle, floor, min_rate)) => (idle, SizedDeadline { floor, min_rate }),
        None => (PLUGIN_IDLE_TIMEOUT, PLUGIN_DEADLINE),
    }
}

// ---- the calls ----

/// `download_vhd`, in the form of the generation that called it ([`Era`]): the bare
/// leaf UUID, the JSON list (with the swap VDI), or the pickle.
pub struct DownloadVhd {
    args: DownloadArgs,
    era: Era,
}

/// The three generations of `download_vhd`/`upload_vhd` callers, told apart by their
/// params alone (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Era {
    /// The original (the first Nova with this plugin): a flat dict without an
    /// `auth_token` key. Its caller used the reply as the VDI UUID itself
    /// (`VDI.get_by_uuid(reply)`), and its upload sent its own headers.
    Seed,
    /// Diablo/Essex: the same flat dict with an `auth_token` key — present even when its
    /// value is `None` (`getattr(context, 'auth_token', None)` without Keystone), so the
    /// key, not its value, tells the two apart. The reply is `json.loads`ed.
    Diablo,
    /// Folsom–Mitaka: `{'args': (…), 'kwargs': {…}}`, pickled replies.
    Folsom,
}

impl Era {
    fn of(params: &Py) -> Result<(Era, Kwargs)> {
        if is_folsom(params) {
            return Ok((Era::Folsom, Kwargs::bind(params, DOWNLOAD_VHD)?));
        }
        let kw = Kwargs::flat(params)?;
        let era = if kw.has("auth_token") {
            Era::Diablo
        } else {
            Era::Seed
        };
        Ok((era, kw))
    }
}

impl FromParams for DownloadVhd {
    fn from_params(params: &Py) -> Result<DownloadVhd> {
        let (era, kw) = Era::of(params)?;
        let mut args = match era {
            Era::Folsom => DownloadArgs::folsom(&kw)?,
            Era::Seed | Era::Diablo => DownloadArgs::diablo(&kw)?,
        };
        // Only Diablo/Essex imported swap.vhd (`_import_vhds` → `vdi_type` "swap"); the
        // original knew image.vhd and snap.vhd only, Folsom on skipped it.
        args.keep_swap = era == Era::Diablo;
        Ok(DownloadVhd { args, era })
    }
}

impl PluginCall for DownloadVhd {
    const NAME: &'static str = "download_vhd";
    const OP: Op = Op::Download;

    fn run(self, _: &Args) -> Result<Value> {
        let (leaf, swap) = self.args.run()?;
        Ok(match self.era {
            Era::Folsom => root_reply(leaf),
            // The original returned `vdi_uuid`: the string is the UUID.
            Era::Seed => Value::Text(leaf),
            Era::Diablo => {
                // `json.dumps(_import_vhds(…))`: the OS disk (the leaf) first, then swap.
                let mut list = vec![serde_json::json!({"vdi_type": "os", "vdi_uuid": leaf})];
                if let Some(swap) = swap {
                    list.push(serde_json::json!({"vdi_type": "swap", "vdi_uuid": swap}));
                }
                Value::Text(python_json(&serde_json::Value::Array(list)))
            }
        })
    }
}

/// `download_vhd2`.
pub struct DownloadVhd2(DownloadArgs);

impl FromParams for DownloadVhd2 {
    fn from_params(params: &Py) -> Result<DownloadVhd2> {
        DownloadArgs::v2(&Kwargs::bind(params, DOWNLOAD_VHD2)?).map(DownloadVhd2)
    }
}

impl PluginCall for DownloadVhd2 {
    const NAME: &'static str = "download_vhd2";
    const OP: Op = Op::Download;

    fn run(self, _: &Args) -> Result<Value> {
        Ok(root_reply(self.0.run()?.0))
    }
}

/// `upload_vhd`: the flat forms answer `""`, the Folsom form a pickled `None`. The
/// original's (no `auth_token` key) sends what it sent ([`Api::V1Seed`]).
pub struct UploadVhd {
    args: UploadArgs,
    diablo: bool,
}

impl FromParams for UploadVhd {
    fn from_params(params: &Py) -> Result<UploadVhd> {
        Ok(if is_folsom(params) {
            UploadVhd {
                args: UploadArgs::folsom(&Kwargs::bind(params, UPLOAD_VHD)?)?,
                diablo: false,
            }
        } else {
            UploadVhd {
                args: UploadArgs::diablo(&Kwargs::flat(params)?)?,
                diablo: true,
            }
        })
    }
}

impl PluginCall for UploadVhd {
    const NAME: &'static str = "upload_vhd";
    const OP: Op = Op::Upload;

    fn run(self, _: &Args) -> Result<Value> {
        self.args.run()?;
        if self.diablo {
            // Diablo: "Nothing useful to return on an upload".
            return Ok(Value::Text(String::new()));
        }
        Ok(Value::Pickled(Reply::None))
    }
}

/// `upload_vhd2`.
pub struct UploadVhd2(UploadArgs);

impl FromParams for UploadVhd2 {
    fn from_params(params: &Py) -> Result<UploadVhd2> {
        UploadArgs::v2(&Kwargs::bind(params, UPLOAD_VHD2)?).map(UploadVhd2)
    }
}

impl PluginCall for UploadVhd2 {
    const NAME: &'static str = "upload_vhd2";
    const OP: Op = Op::Upload;

    fn run(self, _: &Args) -> Result<Value> {
        self.0.run()?;
        Ok(Value::Pickled(Reply::None))
    }
}

/// The Python signatures the positional `args` bind to.
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
    /// header rule ([`crate::store::check_header`]), as the CLI's `--header`/`--token`.
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
        crate::store::check_endpoint(&endpoint).map_err(CallError::Argument)?;
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
        cfg.idle_timeout = plugin_limits().0;
        Ok(Glance::new(cfg)?)
    }
}

/// `sr_path`, by the SR rule both front ends share ([`crate::sr::check_sr_dir`]: an
/// absolute path to an existing directory named by the SR's UUID), checked when the
/// params are read — before any request.
fn sr_path(kw: &Kwargs) -> Result<PathBuf> {
    let p = PathBuf::from(kw.string("sr_path")?);
    crate::sr::check_sr_dir(&p).map_err(|e| CallError::Argument(format!("sr_path: {e}")))?;
    Ok(p)
}

// ---- download ----

/// A download, whatever the generation.
struct DownloadArgs {
    store: StoreArgs,
    sr_path: PathBuf,
    /// Popped from the end, one per VHD, leaf first (as the Python plugin did).
    uuid_stack: Vec<String>,
    /// Import `swap.vhd` as a VDI of its own (Diablo/Essex `download_vhd`).
    keep_swap: bool,
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
        let store = StoreArgs::new(kw, endpoint, api)?;
        let uuid_stack = kw.strings("uuid_stack")?;
        let sr_path = sr_path(kw)?;
        // Form, duplicates, VDIs already in the SR: before any request. Too few for the
        // image is known once its members are: the unpacker refuses the member beyond
        // the stack before writing it.
        crate::sr::check_new_vdis(&sr_path, "uuid_stack", &uuid_stack)
            .map_err(|e| CallError::Argument(e.to_string()))?;
        Ok(DownloadArgs {
            store,
            sr_path,
            uuid_stack,
            keep_swap: false,
        })
    }

    /// The leaf's VDI UUID, and the swap VDI's if one was imported.
    fn run(&self) -> Result<(String, Option<String>)> {
        let source = Source::Glance(self.store.glance()?, self.store.image_id.clone());
        let (transfer, monitor) =
            syslog_progress(format!("download of image {}", self.store.image_id));
        let opts = ImportOptions {
            sr_path: self.sr_path.clone(),
            uuid_stack: Some(self.uuid_stack.clone()),
            lock_dir: crate::sr::sm_lock_dir(),
            transfer,
            // No restarts here (Nova's own retry starts over), but a body that breaks
            // resumes in place: the bytes already received are not fetched again.
            resume: Some(Arc::new(Budget::new(Policy {
                retries: PLUGIN_RESUMES,
                ..Policy::default()
            }))),
            keep_swap: self.keep_swap,
        };
        let d = transfer::download(&source, &opts);
        monitor.stop();
        let d = d?;
        log::info(&format!(
            "image {} imported into {} as {:?}",
            self.store.image_id,
            self.sr_path.display(),
            d.imported.uuids
        ));
        if let Some(swap) = &d.imported.swap {
            log::info(&format!(
                "image {}: swap.vhd imported into {} as {swap}",
                self.store.image_id,
                self.sr_path.display()
            ));
        }
        Ok((d.imported.root_uuid().to_string(), d.imported.swap.clone()))
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
        deadline: Some(plugin_limits().1),
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
        // The original (no `auth_token` key, see [`Era::Seed`]) sent its own headers.
        let api = if kw.has("auth_token") {
            Api::V1Diablo
        } else {
            Api::V1Seed
        };
        UploadArgs::with(kw, endpoint, api, named, properties)
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
        let (level, warning) =
            crate::bundle::pack::level(None, &properties, crate::bundle::pack::DEFAULT_LEVEL);
        if let Some(w) = warning {
            log::warn(&w);
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
        log::info(&format!(
            "uploaded {:?} to image {} ({} bytes)",
            up.uuids, self.store.image_id, up.stream.bytes
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diablo_json_is_pythons() {
        let v = serde_json::json!([{"vdi_type": "os", "vdi_uuid": "u"}]);
        assert_eq!(python_json(&v), r#"[{"vdi_type": "os", "vdi_uuid": "u"}]"#);
    }

    #[test]
    fn the_era_is_told_by_the_params_shape_and_the_auth_token_key() {
        let s = |v: &str| Py::Str(v.into());
        let flat = |extra: Vec<(Py, Py)>| {
            let mut d = vec![(s("image_id"), s("img"))];
            d.extend(extra);
            Py::Dict(d)
        };
        assert_eq!(Era::of(&flat(vec![])).unwrap().0, Era::Seed);
        // Diablo without Keystone sent `auth_token: None`: still Diablo's JSON form.
        assert_eq!(
            Era::of(&flat(vec![(s("auth_token"), Py::None)])).unwrap().0,
            Era::Diablo
        );
        assert_eq!(
            Era::of(&flat(vec![(s("auth_token"), s("t"))])).unwrap().0,
            Era::Diablo
        );
        let folsom = Py::Dict(vec![(s("kwargs"), Py::Dict(vec![(s("image_id"), s("i"))]))]);
        assert_eq!(Era::of(&folsom).unwrap().0, Era::Folsom);
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
}
