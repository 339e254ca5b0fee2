//! The admin command line, for a dom0 admin at a terminal and a cron job at 02:00.
//! Each command is a thin call into the library; errors are printed as
//! `glance-vhd: <what failed>: <why>` with the cause chain (and as `{"error": …}` with
//! `--json`), and the exit code comes from the error kind. `download` and `upload` add
//! what a nightly job needs around the engines: endpoints tried in turn with retries
//! ([`crate::retry`]), a lock per SR, a rate limit, low priority, a progress bar on a
//! terminal and progress lines in syslog, and a one-line summary. The `vhd query`/
//! `vhd check` commands keep `vhd-util`'s output and errno exit codes so admin scripts
//! can switch over.

use std::error::Error as StdError;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::error::{exit, Kind};
use crate::log::say;
use crate::progress::{Display, Monitor, Progress};
use crate::vhd::{self, check::CheckOptions, create::Stamp, OpenMode, Vhd, VhdError};

/// The exit-code table, also in the README.
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
`vhd query` and `vhd check` exit with vhd-util's errno codes instead (2 ENOENT, 22 EINVAL, ...)."
    };
}

const TOP_HELP: &str = concat!(
    "Examples:
  glance-vhd download --image-id $IMAGE --sr-path /var/run/sr-mount/$SR
  glance-vhd upload --leaf $VDI --sr-path /var/run/sr-mount/$SR \\
      --create --name nightly-web
  glance-vhd vhd check --parents /var/run/sr-mount/$SR/$VDI.vhd

Environment:
  OS_IMAGE_URL   default --endpoint (the Glance endpoint, e.g. https://glance:9292)
  OS_AUTH_TOKEN  default --token (sent as X-Auth-Token)
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
  export OS_IMAGE_URL=https://glance.example:9292
  export OS_AUTH_TOKEN=$(openstack token issue -f value -c id)
  glance-vhd download --image-id $IMAGE --sr-path /var/run/sr-mount/$SR
  glance-vhd download --endpoint http://glance1:9292 --endpoint http://glance2:9292 \\
      --retries 5 --image-id $IMAGE --sr-path /var/run/sr-mount/$SR \\
      --rate-limit 50M --nice --json
  curl -s $URL | glance-vhd download --endpoint - --sr-path /var/run/sr-mount/$SR

Prints the new VDI UUIDs (leaf first) on stdout, or one JSON object with --json.

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

Prints the image id on stdout, or one JSON object with --json.

",
        exit_codes!()
    ))]
    Upload(UploadArgs),
    /// Answer one xapi plugin call (what plugin-wrapper/glance and kernel exec)
    #[command(hide = true)]
    XapiPlugin {
        /// The plugin name xapi ran (glance, glance.py, kernel, kernel.py)
        #[arg(long)]
        name: String,
        /// The XML-RPC methodCall, as xapi passes it
        #[arg(allow_hyphen_values = true, num_args = 0..)]
        xml: Vec<String>,
    },
    /// Remove staging directories left in an SR by a killed process
    #[command(
        after_help = "Example (cron, hourly):\n  glance-vhd sweep --sr-path /var/run/sr-mount/$SR --older-than 3600 -q\n\nOnly .glance-vhd-staging-* directories that this user owns, that are older than\n--older-than and that no live process holds (flock) are removed."
    )]
    Sweep {
        #[arg(long)]
        sr_path: PathBuf,
        /// Only directories older than this many seconds
        #[arg(long, default_value_t = 3600)]
        older_than: u64,
        /// Directory of the storage manager's lock files (its SR lock is held while an
        /// interrupted move is rolled back)
        #[arg(long, default_value = "/var/lock/sm")]
        lock_dir: PathBuf,
        /// Print {"swept": [{"path", "removed", "reason", "rolled_back"}, …]}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The image to download (http(s) endpoints)
    #[arg(long)]
    pub image_id: Option<String>,
    /// The SR directory (/var/run/sr-mount/<sr-uuid>)
    #[arg(long)]
    pub sr_path: PathBuf,
    /// VDI UUIDs for 0.vhd, 1.vhd, … in this order (leaf first); generated if absent
    #[arg(long = "uuid")]
    pub uuids: Vec<uuid::Uuid>,
    /// Directory of the storage manager's lock files (its SR lock is held while the
    /// chain moves into the SR)
    #[arg(long, default_value = "/var/lock/sm")]
    pub lock_dir: PathBuf,
    #[command(flatten)]
    pub job: JobArgs,
    /// Print the result as one JSON object (README "JSON output")
    #[arg(long)]
    pub json: bool,
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
    /// Repeat for several Glance servers: each retry moves to the next
    #[arg(
        long = "endpoint",
        env = "OS_IMAGE_URL",
        required = true,
        value_name = "URL"
    )]
    pub endpoints: Vec<String>,
    /// Keystone token, sent as X-Auth-Token
    #[arg(long, env = "OS_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Glance API version
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub api_version: u8,
    /// Extra request header, e.g. 'X-Auth-Token: …' (repeatable)
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// A CA certificate (PEM) to trust besides the system bundle
    #[arg(long, env = "OS_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Do not verify TLS certificates (logged)
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to wait for a connection
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// Seconds without a byte before the transfer is abandoned
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Seconds the whole transfer may take (default: no limit)
    #[arg(long)]
    pub deadline: Option<u64>,
}

fn is_http(endpoint: &str) -> bool {
    endpoint.starts_with("http://") || endpoint.starts_with("https://")
}

impl StoreArgs {
    /// All endpoints are Glance servers, or there is one local endpoint.
    fn check(&self) -> Result<bool, String> {
        let http = self.endpoints.iter().filter(|e| is_http(e)).count();
        match (http, self.endpoints.len()) {
            (h, n) if h == n => Ok(true),
            (0, 1) => Ok(false),
            _ => Err(format!(
                "--endpoint {}: several endpoints must all be http(s) Glance servers",
                self.endpoints.join(" --endpoint ")
            )),
        }
    }

    /// The endpoint for attempt `n` (0-based): round robin.
    fn endpoint(&self, n: u32) -> &str {
        &self.endpoints[n as usize % self.endpoints.len()]
    }

    fn glance(
        &self,
        endpoint: &str,
    ) -> Result<crate::store::glance::Glance, crate::store::StoreError> {
        use crate::store::glance::{Api, Glance, GlanceConfig};
        let api = if self.api_version == 1 {
            Api::V1
        } else {
            Api::V2
        };
        let mut cfg = GlanceConfig::new(endpoint, api);
        cfg.headers = self.headers.clone();
        if let Some(t) = &self.token {
            if !cfg
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-auth-token"))
            {
                cfg.headers.push(("X-Auth-Token".into(), t.clone()));
            }
        }
        cfg.cacert = self.cacert.clone();
        cfg.insecure = self.insecure;
        if self.insecure {
            say(
                0,
                "warning: TLS certificate verification is disabled (--insecure)",
            );
        }
        cfg.connect_timeout = std::time::Duration::from_secs(self.connect_timeout);
        cfg.idle_timeout = std::time::Duration::from_secs(self.idle_timeout);
        cfg.deadline = self.deadline.map(std::time::Duration::from_secs);
        Glance::new(cfg)
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("chain").required(true).args(["vdi", "leaf"])))]
#[command(group(clap::ArgGroup::new("image").args(["image_id", "create"])))]
pub struct UploadArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The SR directory (/var/run/sr-mount/<sr-uuid>)
    #[arg(long)]
    pub sr_path: PathBuf,
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
    /// gzip level 1-9 (default: the property xenapi_image_compression_level, else 6)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: Option<u32>,
    /// Compression threads (default: all cores)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
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
        after_help = "Example (what XenServer's SM runs):\n  glance-vhd vhd query -vsafp -n /var/run/sr-mount/SR/1234.vhd"
    )]
    Query(QueryArgs),
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
    /// vhd-util modify -p: make PARENT the parent of CHILD (byte-identical to blktap)
    #[command(after_help = "Example:\n  glance-vhd vhd set-parent /sr/leaf.vhd /sr/base.vhd")]
    SetParent {
        child: PathBuf,
        parent: PathBuf,
        /// The parent is a raw file, not a VHD (vhd-util -m)
        #[arg(long)]
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
    #[command(after_help = "Example:\n  glance-vhd vhd snapshot /sr/base.vhd /sr/leaf.vhd")]
    Snapshot {
        parent: PathBuf,
        child: PathBuf,
        /// Link to PARENT even if it is an empty differencing disk (vhd-util -e)
        #[arg(short = 'e', long)]
        keep_empty_parents: bool,
        #[command(flatten)]
        stamp: StampArgs,
        #[arg(long)]
        json: bool,
    },
    /// vhd-util create: a new empty dynamic disk of SIZE (bytes, or K/M/G/T), rounded up to 2 MiB
    #[command(after_help = "Example:\n  glance-vhd vhd create /sr/new.vhd 20G")]
    Create {
        file: PathBuf,
        #[arg(value_parser = parse_size)]
        size: u64,
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

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The file
    #[arg(short = 'n', required = true)]
    pub name: PathBuf,
    /// Virtual size in MiB
    #[arg(short = 'v')]
    pub virt: bool,
    /// Physical size in bytes
    #[arg(short = 's')]
    pub phys: bool,
    /// Parent path
    #[arg(short = 'p')]
    pub parent: bool,
    /// With -p: the locator text instead of the resolved path
    #[arg(short = 'u')]
    pub unresolved: bool,
    /// Hidden flag
    #[arg(short = 'f')]
    pub hidden: bool,
    /// Marker flag
    #[arg(short = 'm')]
    pub marker: bool,
    /// Chain depth
    #[arg(short = 'd')]
    pub depth: bool,
    /// Allocated block count
    #[arg(short = 'a')]
    pub allocated: bool,
    /// Maximum virtual size in MiB (BAT entries x 2)
    #[arg(short = 'S')]
    pub max_size: bool,
    /// Accepted for compatibility (vhd-util logs to syslog with it)
    #[arg(long)]
    pub debug: bool,
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
    fn stamp(&self) -> Stamp {
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

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    crate::log::set_verbosity(if cli.quiet {
        -1
    } else {
        cli.verbose.min(2) as i8
    });
    match cli.command {
        Command::Vhd(cmd) => run_vhd(cmd),
        Command::Download(args) => download(&args),
        Command::Upload(args) => upload(&args),
        Command::XapiPlugin { name, xml } => crate::xapi::main(&name, &xml),
        Command::Sweep {
            sr_path,
            older_than,
            lock_dir,
            json,
        } => match crate::sr::sweep(&sr_path, Duration::from_secs(older_than), &lock_dir) {
            Ok(swept) => {
                if json {
                    print_json(&serde_json::json!({ "swept": swept }));
                } else if crate::log::verbosity() >= 0 {
                    for s in &swept {
                        let what = if s.removed { "removed" } else { "kept" };
                        println!("{what} {} ({})", s.path.display(), s.reason);
                        for f in &s.rolled_back {
                            println!("  removed {} (half-moved chain)", f.display());
                        }
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail_as(e, json),
        },
    }
}

/// `<error>: <cause>: <cause>`.
fn chain(err: &dyn StdError) -> String {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Print `glance-vhd: <error>: <cause>: <cause>` on stderr.
pub fn report(err: &dyn StdError) {
    eprintln!("glance-vhd: {}", chain(err));
}

fn fail<E: StdError + Kind>(e: E) -> ExitCode {
    fail_as(e, false)
}

/// Report `e`; with `--json`, also as `{"error": {"message", "kind", "exit_code"}}` on
/// stdout, so a script reading the JSON always gets one object.
fn fail_as<E: StdError + Kind>(e: E, json: bool) -> ExitCode {
    report(&e);
    let kind = e.kind();
    if json {
        print_json(&serde_json::json!({"error": {
            "message": chain(&e),
            "kind": kind.name(),
            "exit_code": kind.code(),
        }}));
    }
    kind.exit_code()
}

/// A usage error found after parsing (flags that clap cannot relate): exit 2.
fn usage(msg: &str, json: bool) -> ExitCode {
    eprintln!("glance-vhd: {msg}");
    if json {
        print_json(&serde_json::json!({"error": {
            "message": msg, "kind": "usage", "exit_code": exit::USAGE,
        }}));
    }
    ExitCode::from(exit::USAGE)
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("plain data serialises")
    );
}

fn run_vhd(cmd: VhdCommand) -> ExitCode {
    match cmd {
        VhdCommand::Info { file, json } => match vhd::info::info(&file) {
            Ok(i) if json => {
                print_json(&i);
                ExitCode::SUCCESS
            }
            Ok(i) => {
                print!("{}", vhd::info::render(&i));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VhdCommand::Query(q) => query(&q),
        VhdCommand::Check {
            file,
            name,
            parents,
            ignore_timestamps,
            json,
        } => {
            let path = file.or(name).expect("clap requires one");
            let opts = CheckOptions {
                parents,
                ignore_timestamps,
            };
            match vhd::check::check(&path, opts) {
                Ok(problem) if json => {
                    print_json(&serde_json::json!({
                        "file": path, "valid": problem.is_none(), "problem": problem,
                    }));
                    let code = if problem.is_none() {
                        0
                    } else {
                        vhd::error::EINVAL
                    };
                    ExitCode::from(code as u8)
                }
                Ok(None) => {
                    println!("{} is valid", path.display());
                    ExitCode::SUCCESS
                }
                Ok(Some(problem)) => {
                    println!("{} is invalid: {problem}", path.display());
                    ExitCode::from(vhd::error::EINVAL as u8)
                }
                Err(e) => {
                    report(&e);
                    if json {
                        print_json(&serde_json::json!({"error": {
                            "message": chain(&e), "kind": e.kind().name(), "exit_code": e.errno(),
                        }}));
                    }
                    ExitCode::from(e.errno() as u8)
                }
            }
        }
        VhdCommand::SetParent {
            child,
            parent,
            raw,
            json,
        } => match vhd::relink::set_parent(&child, &parent, raw) {
            Ok(r) => {
                if json {
                    print_json(&r);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VhdCommand::SetHidden { file, value } => match vhd::relink::set_hidden(&file, value) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        VhdCommand::Snapshot {
            parent,
            child,
            keep_empty_parents,
            stamp,
            json,
        } => match vhd::create::snapshot(&parent, &child, keep_empty_parents, &stamp.stamp()) {
            Ok(s) => {
                if json {
                    print_json(&s);
                } else {
                    println!("{}", s.uuid);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VhdCommand::Create {
            file,
            size,
            stamp,
            json,
        } => match vhd::create::create_dynamic(&file, size, &stamp.stamp()) {
            Ok(_) if json => {
                // The size as created: rounded up to whole 2 MiB blocks.
                let virtual_size = vhd::info::info(&file).map(|i| i.virtual_size).ok();
                print_json(&serde_json::json!({"file": file, "virtual_size": virtual_size}));
                ExitCode::SUCCESS
            }
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail_as(e, json),
        },
        VhdCommand::Read { file, out } => match read(&file, &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
    }
}

/// The summary of a transfer: the one line on stderr, and `"summary"` in `--json`.
#[derive(Debug, serde::Serialize)]
struct Summary {
    /// The Glance image, when the store is Glance.
    image_id: Option<String>,
    /// The endpoint of the attempt that succeeded.
    endpoint: String,
    attempts: u32,
    /// Bytes on the wire (the gzipped tarball).
    bytes: u64,
    seconds: f64,
    bytes_per_second: u64,
    md5: String,
    sha512: String,
}

impl Summary {
    fn new(
        image_id: Option<&str>,
        endpoint: &str,
        attempts: u32,
        stream: &crate::store::Digests,
        took: Duration,
    ) -> Summary {
        let seconds = took.as_secs_f64();
        Summary {
            image_id: image_id.map(str::to_string),
            endpoint: endpoint.to_string(),
            attempts,
            bytes: stream.bytes,
            seconds: (seconds * 1000.0).round() / 1000.0,
            bytes_per_second: (stream.bytes as f64 / seconds.max(0.001)) as u64,
            md5: stream.md5.clone(),
            sha512: stream.sha512.clone(),
        }
    }

    /// The summary line on stderr (not with `--quiet`).
    fn say(&self, what: &str) {
        say(0, &self.line(what));
    }

    /// `<what>: 1.20 GiB in 14.2 s (86.40 MiB/s), md5 …, 2 attempts`
    fn line(&self, what: &str) -> String {
        use indicatif::HumanBytes;
        let attempts = match self.attempts {
            1 => String::new(),
            n => format!(", {n} attempts"),
        };
        format!(
            "{what}: {} in {:.1} s ({}/s), md5 {}{attempts}",
            HumanBytes(self.bytes),
            self.seconds,
            HumanBytes(self.bytes_per_second),
            self.md5,
        )
    }
}

/// `1 VHD`, `3 VHDs`.
fn vhds(n: usize) -> String {
    format!("{n} VHD{}", if n == 1 { "" } else { "s" })
}

/// What a download or upload holds while it runs: the SR's job lock, and the progress
/// display.
struct Job {
    _lock: Option<crate::sr::JobLock>,
    progress: Arc<Progress>,
    monitor: Monitor,
    policy: crate::retry::Policy,
    started: Instant,
}

impl Job {
    /// Lower the priority, take the lock, start the display: in that order, so a run
    /// that waits for the lock shows no bar and one that is refused changed nothing.
    fn start(args: &JobArgs, sr_path: &Path, label: String) -> Result<Job, crate::sr::SrError> {
        if args.nice {
            lower_priority();
        }
        let lock = if args.no_lock {
            None
        } else {
            let path = match &args.lock_file {
                Some(p) => p.clone(),
                None => crate::sr::JobLock::default_path(sr_path)?,
            };
            say(1, &format!("taking the lock {}", path.display()));
            Some(crate::sr::JobLock::acquire(
                &path,
                Duration::from_secs(args.lock_wait),
                &label,
            )?)
        };
        let progress = Progress::new();
        let monitor = Monitor::start(
            progress.clone(),
            Display {
                // On a terminal only: cron mail and log files get the summary line.
                bar: std::io::stderr().is_terminal() && crate::log::verbosity() >= 0,
                log_every: Some(crate::progress::log_interval()),
                label,
            },
        );
        Ok(Job {
            _lock: lock,
            progress,
            monitor,
            policy: crate::retry::Policy {
                retries: args.retries,
                base: Duration::from_secs_f64(args.retry_delay),
                ..Default::default()
            },
            started: Instant::now(),
        })
    }

    fn transfer(&self, args: &JobArgs) -> crate::sr::Transfer {
        crate::sr::Transfer {
            rate_limit: args.rate_limit,
            progress: Some(self.progress.clone()),
            ..Default::default()
        }
    }

    /// Run `attempt(endpoint_index)` with the retry policy, logging each retry.
    fn retry<T>(
        &self,
        store: &StoreArgs,
        what: &str,
        mut attempt: impl FnMut(u32) -> Result<T, crate::sr::SrError>,
    ) -> Result<(T, u32), crate::sr::SrError> {
        let mut used = 0;
        let r = crate::retry::run(
            &self.policy,
            |n| {
                used = n + 1;
                self.progress.reset();
                say(
                    1,
                    &format!("{what}: attempt {} via {}", n + 1, store.endpoint(n)),
                );
                attempt(n)
            },
            |n, e, pause| {
                say(
                    0,
                    &format!(
                        "{what}: attempt {n} of {} failed: {}; retrying in {:.1} s via {}",
                        self.policy.retries + 1,
                        chain(e),
                        pause.as_secs_f64(),
                        store.endpoint(n)
                    ),
                )
            },
        );
        r.map(|v| (v, used))
    }

    /// Stop the display (the summary follows on a clean line) and say how long it took.
    fn finish(self) -> Duration {
        self.monitor.stop();
        self.started.elapsed()
    }
}

/// `--nice`: CPU nice 10 and the idle I/O scheduling class, for this thread and every
/// thread started after it (the compressors, the prefetcher). Best effort.
fn lower_priority() {
    use nix::libc;
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: two syscalls on the calling thread that take no pointers.
    let (nice, ioprio) = unsafe {
        (
            libc::setpriority(libc::PRIO_PROCESS as _, 0, 10),
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0 as libc::c_long,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            ),
        )
    };
    if nice != 0 || ioprio != 0 {
        say(
            0,
            &format!(
                "warning: --nice: cannot lower the priority: {}",
                std::io::Error::last_os_error()
            ),
        );
    }
}

/// The `--json` shape of a download: the plugin's `{'root': {'uuid': …}}` plus the chain.
#[derive(serde::Serialize)]
struct DownloadReport<'a> {
    root: Root<'a>,
    /// VDI UUIDs, leaf first.
    chain: &'a [String],
    files: &'a [PathBuf],
    vhd_bytes: u64,
    stream: &'a crate::store::Digests,
    summary: &'a Summary,
}

#[derive(serde::Serialize)]
struct Root<'a> {
    uuid: &'a str,
}

fn download(a: &DownloadArgs) -> ExitCode {
    use crate::store::{Location, Source};
    let http = match a.store.check() {
        Ok(h) => h,
        Err(msg) => return usage(&msg, a.json),
    };
    if http && a.image_id.is_none() {
        return usage("--image-id is required with an http(s) endpoint", a.json);
    }
    let what = match &a.image_id {
        Some(id) if http => format!("download of image {id}"),
        _ => format!("download of {}", a.store.endpoints[0]),
    };
    let mut job = match Job::start(&a.job, &a.sr_path, what.clone()) {
        Ok(j) => j,
        Err(e) => return fail_as(e, a.json),
    };
    if a.store.endpoints[0] == "-" {
        // Standard input cannot be read twice.
        job.policy.retries = 0;
    }
    let opts = crate::sr::ImportOptions {
        sr_path: a.sr_path.clone(),
        // The plugin's uuid_stack is popped from the end: leaf-first flags, reversed.
        uuid_stack: (!a.uuids.is_empty())
            .then(|| a.uuids.iter().rev().map(|u| u.to_string()).collect()),
        lock_dir: a.lock_dir.clone(),
        transfer: job.transfer(&a.job),
    };
    let result = job.retry(&a.store, &what, |n| {
        let endpoint = a.store.endpoint(n);
        let source = match &a.image_id {
            Some(id) if http => Source::Glance(a.store.glance(endpoint)?, id.clone()),
            _ => Source::Local(Location::parse(endpoint)?),
        };
        crate::sr::download(&source, &opts)
    });
    let took = job.finish();
    let (d, attempts) = match result {
        Ok(v) => v,
        Err(e) => return fail_as(e, a.json),
    };
    let imp = &d.imported;
    let summary = Summary::new(
        a.image_id.as_deref().filter(|_| http),
        a.store.endpoint(attempts.saturating_sub(1)),
        attempts,
        &d.stream,
        took,
    );
    summary.say(&format!(
        "{what}: {} into {} (leaf {})",
        vhds(imp.uuids.len()),
        a.sr_path.display(),
        imp.root_uuid()
    ));
    if a.json {
        print_json(&DownloadReport {
            root: Root {
                uuid: imp.root_uuid(),
            },
            chain: &imp.uuids,
            files: &imp.files,
            vhd_bytes: imp.bytes,
            stream: &d.stream,
            summary: &summary,
        });
    } else {
        for u in &imp.uuids {
            println!("{u}");
        }
    }
    ExitCode::SUCCESS
}

fn upload(a: &UploadArgs) -> ExitCode {
    use crate::bundle::pack::PackOptions;
    use crate::sr::ChainSpec;
    use crate::store::{Location, Target};
    let http = match a.store.check() {
        Ok(h) => h,
        Err(msg) => return usage(&msg, a.json),
    };
    if !http && a.store.endpoints[0] == "-" && a.json {
        return usage("--json with --endpoint -: stdout carries the image", a.json);
    }
    if !http && a.create {
        return usage("--create needs an http(s) Glance endpoint", a.json);
    }
    if http && a.image_id.is_none() && !a.create {
        return usage(
            "--image-id (a queued image) or --create --name is required with an http(s) endpoint",
            a.json,
        );
    }
    // The compression level: the flag, else the image property Nova passes, else 6.
    let prop_level = a
        .properties
        .iter()
        .find(|(k, _)| k == "xenapi_image_compression_level")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .filter(|l| (1..=9).contains(l));
    let default = PackOptions::default();
    let pack = PackOptions {
        level: a.compression_level.or(prop_level).unwrap_or(6),
        threads: a.threads.map_or(default.threads, |t| t as usize),
    };
    let spec = match &a.leaf {
        Some(l) => ChainSpec::Leaf(l.to_string()),
        None => ChainSpec::Vdis(a.vdi.iter().map(|u| u.to_string()).collect()),
    };
    let what = match (&a.image_id, &a.name) {
        (Some(id), _) if http => format!("upload to image {id}"),
        (None, Some(name)) => format!("upload to a new image {name:?}"),
        _ => format!("upload to {}", a.store.endpoints[0]),
    };
    let job = match Job::start(&a.job, &a.sr_path, what.clone()) {
        Ok(j) => j,
        Err(e) => return fail_as(e, a.json),
    };
    // The image: given, or created once (retried like the upload, on the next endpoint).
    let image_id = match (&a.image_id, &a.name) {
        _ if !http => None,
        (Some(id), _) => Some(id.clone()),
        (None, Some(name)) => {
            let created = job.retry(&a.store, "create the image", |n| {
                let glance = a.store.glance(a.store.endpoint(n))?;
                Ok(glance.create(name, &a.properties)?)
            });
            match created {
                Ok((id, _)) => {
                    say(0, &format!("created image {id}"));
                    Some(id)
                }
                Err(e) => {
                    job.finish();
                    return fail_as(e, a.json);
                }
            }
        }
        (None, None) => unreachable!("checked above: --image-id or --create --name"),
    };
    let transfer = job.transfer(&a.job);
    let result = job.retry(&a.store, &what, |n| {
        let endpoint = a.store.endpoint(n);
        let target = match &image_id {
            Some(id) => {
                if n > 0 {
                    // A broken upload leaves the image queued in Glance; anything else
                    // (active, killed) is checked before a byte is sent again.
                    say(1, &format!("checking that image {id} is still queued"));
                }
                Target::Glance {
                    glance: a.store.glance(endpoint)?,
                    image_id: id.clone(),
                    properties: a.properties.clone(),
                }
            }
            None => Target::Local(Location::parse(endpoint)?),
        };
        let previous = transfer.sent.lock().ok().and_then(|mut s| s.take());
        match crate::sr::upload(&a.sr_path, &spec, &target, pack, &transfer) {
            // The last attempt handed over the whole tarball and only the answer was
            // lost: the image is active with exactly our bytes. Done, not "not queued".
            Err(crate::sr::SrError::Store(crate::store::StoreError::NotQueued { .. }))
                if previous
                    .as_ref()
                    .is_some_and(|p| target.completed_by(&p.stream)) =>
            {
                say(
                    0,
                    &format!(
                        "{what}: the previous attempt completed after all: the image is active with our checksum"
                    ),
                );
                Ok(previous.expect("checked"))
            }
            r => r,
        }
    });
    let took = job.finish();
    let (up, attempts) = match result {
        Ok(v) => v,
        Err(e) => return fail_as(e, a.json),
    };
    let summary = Summary::new(
        image_id.as_deref(),
        a.store.endpoint(attempts.saturating_sub(1)),
        attempts,
        &up.stream,
        took,
    );
    summary.say(&format!(
        "{what}: {} (leaf {})",
        vhds(up.uuids.len()),
        up.uuids.first().map_or("-", String::as_str)
    ));
    if a.json {
        print_json(&serde_json::json!({
            "image_id": image_id,
            "vdis": up.uuids,
            "members": up.members,
            "stream": up.stream,
            "summary": summary,
        }));
    } else if let Some(id) = &image_id {
        // Local "-" carries the image on stdout: nothing else may go there.
        println!("{id}");
    }
    ExitCode::SUCCESS
}

/// `key=value` → (key, value); keys become header names on Glance v1.
fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not a property (use key=value)"))?;
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' || b == b':')
    {
        return Err(format!("{k:?} is not a property name"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `K: V` → (K, V).
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a header (use 'Name: value')"))?;
    let k = k.trim();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{k:?} is not a header name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

fn read(file: &Path, out: &Path) -> Result<(), VhdError> {
    let chain = vhd::chain::Chain::open(file)?;
    if out == Path::new("-") {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        chain.write_to(&mut lock)?;
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| VhdError::io(out, "create", e))?;
    let sparse = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    chain.copy_to(&mut f, sparse)?;
    f.sync_all().map_err(|e| VhdError::io(out, "fsync", e))?;
    Ok(())
}

/// `vhd-util query`, line for line (vhd-format.md §8).
fn query(q: &QueryArgs) -> ExitCode {
    let name = q.name.display().to_string();
    let open = Vhd::open(
        &q.name,
        OpenMode {
            write: false,
            ignore_disabled: true,
        },
    );
    let v = match open {
        Ok(v) => v,
        Err(e) => {
            let errno = e.errno();
            println!("error opening {name}: -{errno}");
            report(&e);
            return ExitCode::from(errno as u8);
        }
    };
    let mut status = 0i32;
    let out = std::io::stdout();
    let mut o = out.lock();
    if q.virt {
        let _ = writeln!(o, "{}", v.footer.curr_size >> 20);
    }
    if q.phys {
        let _ = writeln!(o, "{}", v.end_of_data() + 512);
    }
    if q.parent {
        if !v.is_differencing() {
            let _ = writeln!(o, "{name} has no parent");
        } else if q.unresolved {
            match vhd::locator::first_decoded(&v) {
                Ok(Some(text)) => {
                    let _ = writeln!(o, "{text}");
                }
                _ => {
                    let _ = writeln!(o, "query failed");
                    status = vhd::error::EINVAL;
                }
            }
        } else {
            match vhd::locator::find_parent(&v) {
                Ok((p, _)) => {
                    let _ = writeln!(o, "{}", p.display());
                }
                Err(e) => {
                    let _ = writeln!(o, "query failed");
                    status = e.errno();
                }
            }
        }
    }
    if q.hidden {
        // blktap prints the flag as a signed char (200 prints -56).
        let _ = writeln!(o, "hidden: {}", hidden_as_blktap_reads_it(&v) as i8);
    }
    if q.marker {
        let _ = writeln!(
            o,
            "marker: {}",
            v.batmap.as_ref().map_or(0, |b| b.marker) as i8
        );
    }
    if q.depth {
        match vhd::check::chain_depth(&q.name) {
            Ok(d) => {
                let _ = writeln!(o, "chain depth: {d}");
            }
            Err(e) => {
                let _ = writeln!(o, "error checking chain depth: -{}", e.errno());
                status = e.errno();
            }
        }
    }
    if q.allocated {
        let _ = writeln!(o, "{}", v.allocated_blocks());
    }
    if q.max_size {
        let max_bat = v.header().map_or(0, |h| h.max_bat as u64);
        let _ = writeln!(o, "{}", max_bat * 2);
    }
    ExitCode::from(status as u8)
}

/// blktap `vhd_hidden`: the footer in use, except that for old tap files (0.1, 1.1) the
/// flag lives in the copy at offset 0.
fn hidden_as_blktap_reads_it(v: &Vhd) -> u8 {
    if v.footer.is_old_tap() && v.footer.is_dynamic_or_diff() {
        let mut b = [0u8; vhd::FOOTER_SIZE];
        if v.read_at(&mut b, 0, "read the footer copy").is_ok() {
            return vhd::Footer::decode(&b).hidden;
        }
    }
    v.footer.hidden
}
