//! The command line's shape: every command, flag, default and help text (clap derive),
//! and the parsers for flag values. Nothing here runs a job; a flag value that breaks a
//! rule is refused here, as a usage error (exit 2), by the same rule the library and the
//! plugin apply ([`crate::store::check_header`], [`crate::store::check_property_name`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::store::glance::{self, Api, Glance, GlanceConfig};
use crate::store::{clouds, Remote, StoreError};
use crate::vhd::{self, create::Stamp};

macro_rules! exit_codes {
    () => {
        "Exit codes:
  0  success
  1  permanent failure (I/O, refused by the store, image not queued)
  2  usage error (a bad flag or value)
  3  invalid input (a broken or hostile VHD, tarball or argument)
  4  not found (the image, a VDI, a parent)
  5  retryable failure (network, server busy, checksum) after all retries
  6  locked (another run holds the SR's lock file)
`vhd query`, `vhd check` (and `vhd repair` where vhd-util fails too) exit with vhd-util's
errno codes instead (2 ENOENT, 22 EINVAL, ...)."
    };
}

const TOP_HELP: &str = concat!(
    "Examples:
  glance-vhd download --image-id $IMAGE --sr-path /var/run/sr-mount/$SR
  glance-vhd upload --leaf $VDI --sr-path /var/run/sr-mount/$SR \\
      --create --name nightly-web
  glance-vhd vhd check --parents /var/run/sr-mount/$SR/$VDI.vhd

Environment (the README, section Signing in):
  OS_CLOUD       a cloud of clouds.yaml to sign in with (default --os-cloud)
  OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, OS_*_DOMAIN_NAME,
  OS_APPLICATION_CREDENTIAL_ID/_SECRET, OS_REGION_NAME, OS_INTERFACE
                 a Keystone v3 sign-in; the image endpoint comes from the catalog
  OS_IMAGE_URL   default --endpoint (overrides the catalog)
  OS_AUTH_TOKEN  default --token (a fixed token, sent as X-Auth-Token)
  OS_CACERT      default --cacert

",
    exit_codes!()
);

#[derive(Parser, Debug)]
#[command(
    name = "glance-vhd",
    version,
    about = "Move VHD chains between a XenServer file SR and OpenStack Glance; native VHD tools",
    after_help = TOP_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Only errors on stderr: no progress bar, no summary line, no warnings
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More on stderr: each attempt and step (-v), each request (-vv)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Native VHD tools (vhd-util compatible where it matters)
    #[command(
        subcommand,
        after_help = "Example:\n  glance-vhd vhd info /var/run/sr-mount/$SR/$VDI.vhd"
    )]
    Vhd(VhdCommand),
    /// Import an image (a gzipped tarball of VHDs) into a file SR
    #[command(after_help = concat!(
        "Examples:
  export OS_CLOUD=nightly        # ~/.config/openstack/clouds.yaml (README: Signing in)
  glance-vhd download --image-id $IMAGE --sr $SR
  glance-vhd download --endpoint http://glance1:9292 --endpoint http://glance2:9292 \\
      --retries 5 --image-id $IMAGE --sr-path /var/run/sr-mount/$SR \\
      --rate-limit 50M --nice --json
  curl -s $URL | glance-vhd download --endpoint - --sr-path /var/run/sr-mount/$SR

Prints the new VDI UUIDs (leaf first) on stdout, or one JSON object with --json.

Then, when xapi's socket is there (dom0), xapi is told: SR.scan, and the new leaf
VDI gets a name label (--name-label, default the image's name) and a description
(image id, when), so `xe vdi-list` shows it at once:
  glance-vhd download --image-id $IMAGE --sr $SR --name-label web-base
--no-scan skips this. If telling xapi fails, the download still succeeded: exit 0,
the UUIDs on stdout, a warning on stderr and in syslog; `xe sr-scan uuid=$SR`
finishes the job.

",
        exit_codes!()
    ))]
    Download(DownloadArgs),
    /// Upload a VDI chain from a file SR as a gzipped tarball of VHDs
    #[command(after_help = concat!(
        "Examples:
  glance-vhd upload --endpoint https://glance.example:9292 --token $TOKEN \\
      --sr-path /var/run/sr-mount/$SR --leaf $VDI --create --name nightly-$(date +%F)
  glance-vhd upload --image-id $QUEUED_IMAGE --sr-path /var/run/sr-mount/$SR \\
      --vdi $LEAF --vdi $BASE
  glance-vhd upload --endpoint file:///srv/images/web.tgz \\
      --sr-path /var/run/sr-mount/$SR --leaf $VDI
  glance-vhd upload --endpoint file:///srv/images/web.tgz \\
      --sr-path /var/run/sr-mount/$SR --leaf $VDI --flatten

Prints the image id on stdout, or one JSON object with --json.

",
        exit_codes!()
    ))]
    Upload(UploadArgs),
    /// Remove staging directories left in an SR by a killed process
    #[command(
        after_help = "Example (cron, hourly):\n  glance-vhd sweep --sr-path /var/run/sr-mount/$SR --older-than 3600 -q\n\nOnly .glance-vhd-staging-* directories that this user owns, that are older than\n--older-than and that no live process holds (flock) are removed."
    )]
    Sweep(SweepArgs),
}

impl Command {
    /// Whether the command was asked for `--json`: its errors are then JSON too.
    pub fn json(&self) -> bool {
        match self {
            Command::Download(a) => a.json,
            Command::Upload(a) => a.json,
            Command::Sweep(a) => a.json,
            Command::Vhd(v) => v.json(),
        }
    }
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub sr: SrArgs,
    /// Only directories older than this many seconds
    #[arg(long, default_value_t = 3600)]
    pub older_than: u64,
    /// Directory of the storage manager's lock files (its SR lock is held while an
    /// interrupted move is rolled back)
    #[arg(long, default_value_os_t = crate::sr::sm_lock_dir())]
    pub lock_dir: PathBuf,
    /// Print {"swept": [{"path", "removed", "reason", "rolled_back"}, …]}
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The image to download (http(s) endpoints)
    #[arg(long)]
    pub image_id: Option<String>,
    #[command(flatten)]
    pub sr: SrArgs,
    /// VDI UUIDs for 0.vhd, 1.vhd, … in this order (leaf first), lowercase and hyphenated
    /// as XenServer writes them, none already in the SR; generated if absent
    #[arg(long = "uuid", value_name = "UUID", value_parser = parse_vdi_uuid)]
    pub uuids: Vec<String>,
    /// Directory of the storage manager's lock files (its SR lock is held while the
    /// chain moves into the SR)
    #[arg(long, default_value_os_t = crate::sr::sm_lock_dir())]
    pub lock_dir: PathBuf,
    /// The new leaf VDI's name label in xapi [default: the image's name in Glance, or
    /// the file's name; the image id if it has none]
    #[arg(long, value_name = "TEXT", value_parser = parse_name_label)]
    pub name_label: Option<String>,
    /// Do not tell xapi: no SR.scan, no name label or description (the VDIs appear at
    /// the SR's next scan)
    #[arg(long, conflicts_with = "name_label")]
    pub no_scan: bool,
    #[command(flatten)]
    pub job: JobArgs,
    /// Print the result as one JSON object (README "JSON output")
    #[arg(long)]
    pub json: bool,
}

/// Which SR: its directory, or its UUID (download, upload and sweep alike).
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct SrArgs {
    /// The SR directory (/var/run/sr-mount/<sr-uuid>)
    #[arg(long, value_name = "PATH")]
    pub sr_path: Option<PathBuf>,
    /// The SR by its UUID: short for --sr-path /var/run/sr-mount/<SR_UUID>
    #[arg(long, value_name = "SR_UUID", value_parser = parse_sr_uuid)]
    pub sr: Option<PathBuf>,
}

impl SrArgs {
    /// The SR directory, however it was given.
    pub fn path(&self) -> &std::path::Path {
        match (&self.sr_path, &self.sr) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => unreachable!("clap requires --sr-path or --sr"),
        }
    }
}

/// What keeps a nightly job well-behaved (download and upload alike).
#[derive(Args, Debug)]
pub struct JobArgs {
    /// One run per SR at a time: the lock file [default: /var/lock/glance-vhd/<sr-uuid>.lock]
    #[arg(long, value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
    /// Seconds to wait for another run to release the lock; after that, exit 6
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub lock_wait: u64,
    /// Take no lock (concurrent runs on one SR are safe; the lock only keeps cron
    /// runs from piling up)
    #[arg(long, conflicts_with_all = ["lock_file", "lock_wait"])]
    pub no_lock: bool,
    /// At most this many bytes a second on the wire (e.g. 50M, 512K)
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate_limit: Option<u64>,
    /// Run at low priority: CPU nice 10 and the idle I/O class
    #[arg(long)]
    pub nice: bool,
    /// Retries after a retryable failure (network, 5xx, checksum), each with the next
    /// --endpoint, after a growing pause with jitter
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// The first pause between attempts, in seconds (doubling, at most 120)
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = parse_seconds)]
    pub retry_delay: f64,
}

/// How to reach the image store (download and upload alike).
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// The image store: http(s)://glance:9292[/prefix], file:///path/image.tgz, or -.
    /// Repeat for several Glance servers: each retry moves to the next. Default: the
    /// image endpoint in the Keystone catalog (with OS_AUTH_URL or --os-cloud)
    #[arg(
        long = "endpoint",
        env = "OS_IMAGE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub endpoints: Vec<String>,
    /// Sign in with this cloud of clouds.yaml (README "Signing in")
    #[arg(long, env = "OS_CLOUD", value_name = "NAME")]
    pub os_cloud: Option<String>,
    /// Keystone token, sent as X-Auth-Token (a fixed token expires: prefer a sign-in)
    #[arg(long, env = "OS_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Glance API version [default: 2]
    #[arg(long, env = "OS_IMAGE_API_VERSION", value_parser = parse_api_version)]
    pub api_version: Option<u8>,
    /// Extra request header, e.g. 'X-Auth-Token: …' (repeatable)
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// A CA certificate (PEM) to trust besides the system bundle (Glance and Keystone)
    #[arg(long, env = "OS_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Do not verify TLS certificates (logged)
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to wait for a connection
    #[arg(long, default_value_t = glance::CONNECT_TIMEOUT.as_secs())]
    pub connect_timeout: u64,
    /// Seconds without a byte before the transfer is abandoned
    #[arg(long, default_value_t = glance::IDLE_TIMEOUT.as_secs())]
    pub idle_timeout: u64,
    /// Seconds the whole transfer may take (default: no limit)
    #[arg(long)]
    pub deadline: Option<u64>,
}

fn is_http(endpoint: &str) -> bool {
    endpoint.starts_with("http://") || endpoint.starts_with("https://")
}

/// The store a job talks to, resolved from the flags, `OS_*` and clouds.yaml.
pub struct Store {
    /// Glance (given endpoints or the catalog's); `None`: the one local endpoint.
    pub remote: Option<Remote>,
    local: String,
    /// TLS verification is off (`--insecure`, or the cloud's `verify: false`).
    pub insecure: bool,
    /// What the admin should fix (said once at the start of the job).
    pub warnings: Vec<String>,
    /// Where the sign-in came from, for `-v`.
    pub origin: String,
}

impl Store {
    pub fn is_glance(&self) -> bool {
        self.remote.is_some()
    }

    /// The local endpoint (`file:///…` or `-`).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The endpoint of attempt `n` for a message, without a request.
    pub fn describe(&self, n: u32) -> String {
        match &self.remote {
            Some(r) => r.describe(n),
            None => crate::store::redact(&self.local),
        }
    }

    /// Every endpoint, for the job's first syslog line.
    pub fn describe_all(&self) -> String {
        match &self.remote {
            Some(r) => r.describe_all(),
            None => crate::store::redact(&self.local),
        }
    }

    /// The endpoint attempt `n` used (after it ran: the catalog is known by then).
    pub fn endpoint(&self, n: u32) -> String {
        match &self.remote {
            Some(r) => r
                .endpoint(n)
                .map(|e| crate::store::redact(&e))
                .unwrap_or_else(|_| r.describe(n)),
            None => crate::store::redact(&self.local),
        }
    }

    pub fn glance(&self, n: u32) -> Result<Glance, StoreError> {
        match &self.remote {
            Some(r) => r.glance(n),
            None => Err(StoreError::Unsupported(self.describe(n))),
        }
    }
}

impl StoreArgs {
    /// The usage rules clap cannot express, and the sign-in: all endpoints are Glance
    /// servers (or none, for the catalog's), or there is one local endpoint; the headers
    /// and the token follow the store's header rule; clouds.yaml and the `OS_*`
    /// variables make a complete sign-in. Flag *values* are checked here, not by clap,
    /// so that a token or a header value never appears in an error message (clap quotes
    /// the value it refuses).
    pub fn resolve(&self) -> Result<Store, String> {
        let headers = self.headers()?;
        if let Some(t) = &self.token {
            crate::store::check_header("X-Auth-Token", t)
                .map_err(|rule| format!("--token (or OS_AUTH_TOKEN): {rule}"))?;
        }
        for e in &self.endpoints {
            crate::store::check_endpoint(e)?;
        }
        let http = self.endpoints.iter().filter(|e| is_http(e)).count();
        match (http, self.endpoints.len()) {
            (h, n) if h == n => {}
            (0, 1) => {
                return Ok(Store {
                    remote: None,
                    local: self.endpoints[0].clone(),
                    insecure: false,
                    warnings: Vec::new(),
                    origin: String::new(),
                })
            }
            _ => {
                return Err(format!(
                    "--endpoint {}: several endpoints must all be http(s) Glance servers",
                    self.endpoints.join(" --endpoint ")
                ))
            }
        }
        let access = clouds::resolve(
            &clouds::Given {
                cloud: self.os_cloud.as_deref(),
                token: self.token.as_deref(),
                cacert: self.cacert.as_deref(),
                insecure: self.insecure,
                endpoint_given: !self.endpoints.is_empty(),
            },
            &|k| std::env::var(k).ok(),
        )?;
        let endpoints = if self.endpoints.is_empty() {
            access.image_endpoint.iter().cloned().collect()
        } else {
            self.endpoints.clone()
        };
        let api_version = match (self.api_version, &access.image_api_version) {
            (Some(v), _) => v,
            (None, Some(v)) => parse_api_version(v)
                .map_err(|e| format!("{}: image_api_version: {e}", access.origin))?,
            (None, None) => 2,
        };
        let api = if api_version == 1 { Api::V1 } else { Api::V2 };
        let mut cfg = GlanceConfig::new("", api);
        cfg.headers = headers;
        crate::store::merge_token(&mut cfg.headers, access.token.as_ref().map(|t| t.expose()));
        // The CA file is read now, not at the first connection: a wrong path or file is
        // a configuration error naming the flag, not a failed download.
        if let (false, Some(ca)) = (access.insecure, &access.cacert) {
            glance::load_cacert(ca)?;
        }
        cfg.cacert = access.cacert.clone();
        cfg.insecure = access.insecure;
        cfg.connect_timeout = Duration::from_secs(self.connect_timeout);
        cfg.idle_timeout = Duration::from_secs(self.idle_timeout);
        cfg.deadline = self.deadline.map(Duration::from_secs);
        let remote = Remote::new(cfg, &endpoints, access.sign_in).map_err(|e| e.to_string())?;
        Ok(Store {
            remote: Some(remote),
            local: String::new(),
            insecure: access.insecure,
            warnings: access.warnings,
            origin: access.origin,
        })
    }

    /// `--header 'K: V'` → (K, V), by the store's header rule.
    pub fn headers(&self) -> Result<Vec<(String, String)>, String> {
        self.headers
            .iter()
            .map(|h| {
                let (k, v) = h
                    .split_once(':')
                    .ok_or("a --header without ':' (use 'Name: value')")?;
                let (k, v) = (k.trim(), v.trim());
                crate::store::check_header(k, v).map_err(|rule| format!("--header: {rule}"))?;
                Ok((k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// `2`, `2.0`, `2.1`, `1`: the major version (`OS_IMAGE_API_VERSION` is often `2.0`).
fn parse_api_version(s: &str) -> Result<u8, String> {
    match s.split('.').next() {
        Some("1") => Ok(1),
        Some("2") => Ok(2),
        _ => Err(format!("{s:?}: the Glance API version is 1 or 2")),
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("chain").required(true).args(["vdi", "leaf"])))]
#[command(group(clap::ArgGroup::new("image").args(["image_id", "create"])))]
pub struct UploadArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub sr: SrArgs,
    /// VDI UUIDs of the chain, leaf first (repeatable)
    #[arg(long)]
    pub vdi: Vec<uuid::Uuid>,
    /// Only the leaf VDI: the chain is found through its parent locators
    #[arg(long)]
    pub leaf: Option<uuid::Uuid>,
    /// The queued image to upload into
    #[arg(long)]
    pub image_id: Option<String>,
    /// Create the image record first (Glance v2), named --name
    #[arg(long, requires = "name")]
    pub create: bool,
    /// The new image's name (with --create)
    #[arg(long)]
    pub name: Option<String>,
    /// Image property key=value (repeatable)
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    // The defaults: `jobs::DEFAULT_LEVEL`, `jobs::default_threads`.
    /// gzip level 1-9 (default: the property xenapi_image_compression_level if it is
    /// 1-9, else 2 — cheaper on dom0's CPUs than gzip's 6 for a slightly larger image;
    /// README "Performance". The xapi plugin keeps Nova's 6)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: Option<u32>,
    /// Compression threads (default: half the cores, at least 1, at most 4 — the rest
    /// stay with the guests' disk and network backends)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// Send one dynamic VHD (./0.vhd) holding the leaf's whole content instead of the
    /// chain: blocks a child overwrote are sent once, blocks absent from the whole
    /// chain stay unallocated, and the image downloads as a single VDI
    #[arg(long)]
    pub flatten: bool,
    #[command(flatten)]
    pub job: JobArgs,
    /// Print the result as one JSON object (README "JSON output")
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum VhdCommand {
    /// Show every field of a VHD, its parent and its chain
    #[command(after_help = "Example:\n  glance-vhd vhd info /var/run/sr-mount/SR/1234.vhd --json")]
    Info {
        file: PathBuf,
        /// Print JSON (the `vhd::info::Info` schema)
        #[arg(long)]
        json: bool,
    },
    /// vhd-util query: same lines, same order, same exit codes
    #[command(
        disable_help_flag = true,
        after_help = "Example (what XenServer's SM runs):\n  glance-vhd vhd query -vsafp -n /var/run/sr-mount/SR/1234.vhd\n\nThe flags: glance-vhd vhd query --help"
    )]
    Query {
        /// vhd-util's flags, parsed on their own (`cli::vhd::QueryArgs`): there `-v`
        /// is the virtual size, which the global `-v` (verbose) would otherwise take.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// vhd-util check: "<FILE> is valid" or the first rule broken
    #[command(
        after_help = "Example:\n  glance-vhd vhd check --parents /var/run/sr-mount/SR/1234.vhd"
    )]
    Check {
        #[arg(required_unless_present = "name")]
        file: Option<PathBuf>,
        /// The file, as vhd-util takes it
        #[arg(short = 'n', conflicts_with = "file")]
        name: Option<PathBuf>,
        /// Check every ancestor too, and the chain (loops, UUIDs, sizes)
        #[arg(short = 'p', long)]
        parents: bool,
        /// Do not reject timestamps in the future
        #[arg(short = 't', long)]
        ignore_timestamps: bool,
        /// Print {"file", "valid", "problem"}
        #[arg(long)]
        json: bool,
    },
    /// vhd-util repair: put back the footer at the end from the copy at offset 0
    #[command(
        after_help = "Examples:\n  glance-vhd vhd repair --dry-run /sr/1234.vhd\n  glance-vhd vhd repair -n /sr/1234.vhd\n\n\
Writes 512 bytes at most: the copy at offset 0 where the footer belongs (the end of the\n\
data: the last 512 bytes of an overwritten footer, or appended after a cut-off one), or\n\
the footer from the end into a damaged copy. Refuses, writing nothing, when both are\n\
invalid or valid but different, and when more than the footer is missing or extra."
    )]
    Repair {
        #[arg(required_unless_present = "name")]
        file: Option<PathBuf>,
        /// The file, as vhd-util takes it
        #[arg(short = 'n', conflicts_with = "file")]
        name: Option<PathBuf>,
        /// Say what would be written, write nothing
        #[arg(long)]
        dry_run: bool,
        /// Print {"file", "action", "problem", "offset", "size_before", "size_after", "dry_run", "written"}
        #[arg(long)]
        json: bool,
    },
    /// vhd-util modify -p: make PARENT the parent of CHILD (byte-identical to blktap)
    #[command(
        after_help = "Examples:\n  glance-vhd vhd set-parent /sr/leaf.vhd /sr/base.vhd\n  glance-vhd vhd set-parent -n /sr/leaf.vhd -p /sr/base.vhd   (vhd-util's form)"
    )]
    SetParent {
        child: Option<PathBuf>,
        parent: Option<PathBuf>,
        /// The child, as vhd-util takes it (with -p)
        #[arg(short = 'n', value_name = "CHILD", conflicts_with = "child")]
        name: Option<PathBuf>,
        /// The new parent, as vhd-util takes it (with -n)
        #[arg(short = 'p', value_name = "PARENT", conflicts_with = "parent")]
        parent_name: Option<PathBuf>,
        /// The parent is a raw file, not a VHD (vhd-util -m)
        #[arg(short = 'm', long)]
        raw: bool,
        #[arg(long)]
        json: bool,
    },
    /// vhd-util set -f hidden: set or clear the hidden flag
    #[command(after_help = "Example:\n  glance-vhd vhd set-hidden /sr/base.vhd 1")]
    SetHidden {
        file: PathBuf,
        #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
        value: u8,
    },
    /// vhd-util snapshot: a new empty differencing disk on top of PARENT
    #[command(
        after_help = "Examples:\n  glance-vhd vhd snapshot /sr/base.vhd /sr/leaf.vhd\n  glance-vhd vhd snapshot -n /sr/leaf.vhd -p /sr/base.vhd   (vhd-util's form)"
    )]
    Snapshot {
        parent: Option<PathBuf>,
        child: Option<PathBuf>,
        /// The new child, as vhd-util takes it (with -p)
        #[arg(short = 'n', value_name = "CHILD", conflicts_with = "parent")]
        name: Option<PathBuf>,
        /// Its parent, as vhd-util takes it (with -n)
        #[arg(short = 'p', value_name = "PARENT", conflicts_with = "child")]
        parent_name: Option<PathBuf>,
        /// Link to PARENT even if it is an empty differencing disk (vhd-util -e)
        #[arg(short = 'e', long)]
        keep_empty_parents: bool,
        #[command(flatten)]
        stamp: StampArgs,
        #[arg(long)]
        json: bool,
    },
    /// vhd-util create: a new empty dynamic disk, rounded up to whole 2 MiB blocks
    #[command(
        after_help = "Examples:\n  glance-vhd vhd create /sr/new.vhd 20G\n  glance-vhd vhd create -n /sr/new.vhd -s 20480   (vhd-util's form: -s counts MB)\n\n\
SIZE needs a unit (K, M, G, T: binary): a bare number is refused, as it would mean\n\
bytes to us and MB to vhd-util. -s takes MB as vhd-util does (a unit is taken as written)."
    )]
    Create {
        file: Option<PathBuf>,
        /// With a unit: 20G, 20480M, 512K (binary units)
        #[arg(value_parser = parse_size_with_unit)]
        size: Option<u64>,
        /// The new file, as vhd-util takes it (with -s)
        #[arg(short = 'n', value_name = "FILE", conflicts_with = "file")]
        name: Option<PathBuf>,
        /// The size in MB (MiB), as vhd-util takes it (with -n)
        #[arg(short = 's', value_name = "MB", value_parser = parse_size_mb, conflicts_with = "size")]
        size_mb: Option<u64>,
        #[command(flatten)]
        stamp: StampArgs,
        /// Print {"file", "virtual_size"}
        #[arg(long)]
        json: bool,
    },
    /// Read the whole virtual disk through its parent chain to a raw file or `-`
    #[command(
        after_help = "Example:\n  glance-vhd vhd read /sr/leaf.vhd /tmp/disk.raw\n  glance-vhd vhd read /sr/leaf.vhd - | sha256sum"
    )]
    Read { file: PathBuf, out: PathBuf },
}

impl VhdCommand {
    fn json(&self) -> bool {
        match self {
            VhdCommand::Info { json, .. }
            | VhdCommand::Check { json, .. }
            | VhdCommand::Repair { json, .. }
            | VhdCommand::SetParent { json, .. }
            | VhdCommand::Snapshot { json, .. }
            | VhdCommand::Create { json, .. } => *json,
            VhdCommand::Query { .. } | VhdCommand::SetHidden { .. } | VhdCommand::Read { .. } => {
                false
            }
        }
    }
}

/// Pin the UUID and creation time (reproducible files, tests).
#[derive(Args, Debug, Default)]
pub struct StampArgs {
    /// UUID of the new disk (default: random)
    #[arg(long)]
    pub uuid: Option<uuid::Uuid>,
    /// Creation time, Unix seconds (default: now)
    #[arg(long)]
    pub unix_time: Option<i64>,
}

impl StampArgs {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            uuid: self.uuid.map(|u| *u.as_bytes()),
            timestamp: self.unix_time.map(|t| (t - vhd::footer::VHD_EPOCH) as u32),
        }
    }
}

/// `123`, `512K`, `8M`, `20G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 8M, 20G)"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `vhd create`'s positional SIZE: a size with a unit. A bare number is refused: it
/// meant bytes here and means MB to vhd-util (`vhd create F 20480` made a 2 MiB disk).
pub fn parse_size_with_unit(s: &str) -> Result<u64, String> {
    if is_bare_number(s) {
        return Err(format!(
            "{s:?} has no unit: say MB with vhd-util's form (-n FILE -s {n}) or give a unit ({n}M, or e.g. 20G)",
            n = s.trim()
        ));
    }
    parse_size(s)
}

/// `vhd create -s`: MB (MiB) as vhd-util counts them (`size << 20`); a size written
/// with a unit (`20G`) is taken as written.
pub fn parse_size_mb(s: &str) -> Result<u64, String> {
    if !is_bare_number(s) {
        return parse_size(s);
    }
    let mb: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MB"))?;
    mb.checked_mul(1 << 20)
        .ok_or_else(|| format!("{s:?} MB is too large"))
}

fn is_bare_number(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

/// A VDI UUID by the rule the plugin applies too ([`crate::sr::parse_vdi_uuid`]).
fn parse_vdi_uuid(s: &str) -> Result<String, String> {
    crate::sr::parse_vdi_uuid(s).map_err(|e| e.to_string())
}

/// `--name-label`: any text without control characters (the admin's own words; `xe`
/// prints a label raw to a terminal).
fn parse_name_label(s: &str) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        return Err("a control character (newline, escape, …) is not accepted in a label".into());
    }
    Ok(s.to_string())
}

/// `--sr`: an SR UUID by the VDI UUID rule, as the directory it names
/// ([`crate::sr::sr_path_of`]).
fn parse_sr_uuid(s: &str) -> Result<PathBuf, String> {
    crate::sr::sr_path_of(s).map_err(|e| e.to_string())
}

/// A rate in bytes a second: a size (`50M`), not zero.
fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("a rate limit of 0 would never finish".into()),
        n => Ok(n),
    }
}

/// Seconds, fractions allowed, 0 to a day.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if (0.0..=86400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?}: between 0 and 86400 seconds"))
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not a property (use key=value)"))?;
    crate::store::check_property_name(k)?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks (debug builds run them on every parse and panic):
    /// `vhd query -v` once collided with the global `-v`.
    #[test]
    fn the_command_line_passes_clap_s_checks() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_positional_size_needs_a_unit_and_s_counts_mb() {
        assert!(parse_size_with_unit("20480")
            .unwrap_err()
            .contains("-s 20480"));
        assert_eq!(parse_size_with_unit("20M"), Ok(20 << 20));
        assert_eq!(parse_size_mb("20"), Ok(20 << 20));
        assert_eq!(parse_size_mb("1G"), Ok(1 << 30));
        assert!(parse_size_mb("99999999999999999").is_err());
    }
}
