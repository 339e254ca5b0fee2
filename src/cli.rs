//! The admin command line. Each command is a thin call into the library; errors are
//! printed as `glance-vhd: <what failed>: <why>` with the cause chain, and the exit code
//! comes from the error kind. The `vhd query`/`vhd check` commands keep `vhd-util`'s
//! output and errno exit codes so admin scripts can switch over.

use std::error::Error as StdError;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::{exit, Kind};
use crate::vhd::{self, check::CheckOptions, create::Stamp, OpenMode, Vhd, VhdError};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (I/O, refused by the store)
  2  usage error
  3  invalid input (a broken or hostile VHD, tarball or argument)
  4  not found
  5  retryable failure (network, server busy) after all retries
  6  locked (another run holds the lock)
`vhd query` and `vhd check` exit with vhd-util's errno codes instead (2 ENOENT, 22 EINVAL, ...).";

#[derive(Parser, Debug)]
#[command(
    name = "glance-vhd",
    version,
    about = "Move VHD chains between a XenServer file SR and OpenStack Glance; native VHD tools",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Native VHD tools (vhd-util compatible where it matters)
    #[command(subcommand)]
    Vhd(VhdCommand),
    /// Import an image (a gzipped tarball of VHDs) into a file SR
    #[command(
        after_help = "Examples:\n  glance-vhd download --endpoint file:///srv/images/web.tgz --sr-path /var/run/sr-mount/$SR\n  curl -s $URL | glance-vhd download --endpoint - --sr-path /var/run/sr-mount/$SR --json"
    )]
    Download(DownloadArgs),
    /// Upload a VDI chain from a file SR as a gzipped tarball of VHDs
    #[command(
        after_help = "Examples:\n  glance-vhd upload --endpoint http://glance:9292 --header \"X-Auth-Token: $TOKEN\" \\\n      --sr-path /var/run/sr-mount/$SR --leaf $VDI --create --name nightly-$(date +%F)\n  glance-vhd upload --endpoint file:///srv/images/web.tgz --sr-path /var/run/sr-mount/$SR --vdi $LEAF --vdi $BASE --image-id local"
    )]
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
        after_help = "Example (cron):\n  glance-vhd sweep --sr-path /var/run/sr-mount/$SR --older-than 3600"
    )]
    Sweep {
        #[arg(long)]
        sr_path: PathBuf,
        /// Only directories older than this many seconds
        #[arg(long, default_value_t = 3600)]
        older_than: u64,
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
    /// Directory of the storage manager's lock files
    #[arg(long, default_value = "/var/lock/sm")]
    pub lock_dir: PathBuf,
    /// Print the result as JSON: {"root": {"uuid": …}, "chain": [...], ...}
    #[arg(long)]
    pub json: bool,
}

/// How to reach the image store (download and upload alike).
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// The image store: http(s)://glance:9292[/prefix], file:///path/image.tgz, or -
    #[arg(long, env = "OS_IMAGE_URL")]
    pub endpoint: String,
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

impl StoreArgs {
    fn is_http(&self) -> bool {
        self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")
    }

    fn glance(&self) -> Result<crate::store::glance::Glance, crate::store::StoreError> {
        use crate::store::glance::{Api, Glance, GlanceConfig};
        let api = if self.api_version == 1 {
            Api::V1
        } else {
            Api::V2
        };
        let mut cfg = GlanceConfig::new(&self.endpoint, api);
        cfg.headers = self.headers.clone();
        cfg.cacert = self.cacert.clone();
        cfg.insecure = self.insecure;
        if self.insecure {
            eprintln!("glance-vhd: warning: TLS certificate verification is disabled (--insecure)");
        }
        cfg.connect_timeout = std::time::Duration::from_secs(self.connect_timeout);
        cfg.idle_timeout = std::time::Duration::from_secs(self.idle_timeout);
        cfg.deadline = self.deadline.map(std::time::Duration::from_secs);
        Glance::new(cfg)
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("chain").required(true).args(["vdi", "leaf"])))]
#[command(group(clap::ArgGroup::new("image").required(true).args(["image_id", "create"])))]
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
    /// Print the result as JSON
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
    match cli.command {
        Command::Vhd(cmd) => run_vhd(cmd),
        Command::Download(args) => download(&args),
        Command::Upload(args) => upload(&args),
        Command::XapiPlugin { name, xml } => crate::xapi::main(&name, &xml),
        Command::Sweep {
            sr_path,
            older_than,
            json,
        } => match crate::sr::sweep(&sr_path, std::time::Duration::from_secs(older_than)) {
            Ok(swept) => {
                if json {
                    print_json(&swept);
                } else {
                    for s in &swept {
                        let what = if s.removed { "removed" } else { "kept" };
                        println!("{what} {} ({})", s.path.display(), s.reason);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

/// Print `glance-vhd: <error>: <cause>: <cause>` on stderr.
pub fn report(err: &dyn StdError) {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    eprintln!("glance-vhd: {msg}");
}

fn fail<E: StdError + Kind>(e: E) -> ExitCode {
    report(&e);
    e.kind().exit_code()
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
        } => {
            let path = file.or(name).expect("clap requires one");
            let opts = CheckOptions {
                parents,
                ignore_timestamps,
            };
            match vhd::check::check(&path, opts) {
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
        VhdCommand::Create { file, size, stamp } => {
            match vhd::create::create_dynamic(&file, size, &stamp.stamp()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        VhdCommand::Read { file, out } => match read(&file, &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
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
}

#[derive(serde::Serialize)]
struct Root<'a> {
    uuid: &'a str,
}

fn download(a: &DownloadArgs) -> ExitCode {
    use crate::store::{Location, Source};
    let source = if a.store.is_http() {
        let Some(id) = &a.image_id else {
            eprintln!("glance-vhd: --image-id is required with an http(s) endpoint");
            return ExitCode::from(exit::USAGE);
        };
        match a.store.glance() {
            Ok(g) => Source::Glance(g, id.clone()),
            Err(e) => return fail(e),
        }
    } else {
        match Location::parse(&a.store.endpoint) {
            Ok(l) => Source::Local(l),
            Err(e) => return fail(e),
        }
    };
    let opts = crate::sr::ImportOptions {
        sr_path: a.sr_path.clone(),
        // The plugin's uuid_stack is popped from the end: leaf-first flags, reversed.
        uuid_stack: (!a.uuids.is_empty())
            .then(|| a.uuids.iter().rev().map(|u| u.to_string()).collect()),
        lock_dir: a.lock_dir.clone(),
    };
    match crate::sr::download(&source, &opts) {
        Ok(d) => {
            let imp = &d.imported;
            if a.json {
                print_json(&DownloadReport {
                    root: Root {
                        uuid: imp.root_uuid(),
                    },
                    chain: &imp.uuids,
                    files: &imp.files,
                    vhd_bytes: imp.bytes,
                    stream: &d.stream,
                });
            } else {
                for u in &imp.uuids {
                    println!("{u}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn upload(a: &UploadArgs) -> ExitCode {
    use crate::bundle::pack::PackOptions;
    use crate::sr::ChainSpec;
    use crate::store::{Location, Target};
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
    let target = if a.store.is_http() {
        let glance = match a.store.glance() {
            Ok(g) => g,
            Err(e) => return fail(e),
        };
        let image_id = match (&a.image_id, &a.name) {
            (Some(id), _) => id.clone(),
            (None, Some(name)) => match glance.create(name, &a.properties) {
                Ok(id) => {
                    eprintln!("glance-vhd: created image {id}");
                    id
                }
                Err(e) => return fail(e),
            },
            (None, None) => unreachable!("clap requires --image-id or --create --name"),
        };
        Target::Glance {
            glance,
            image_id,
            properties: a.properties.clone(),
        }
    } else {
        match Location::parse(&a.store.endpoint) {
            Ok(l) => Target::Local(l),
            Err(e) => return fail(e),
        }
    };
    let spec = match &a.leaf {
        Some(l) => ChainSpec::Leaf(l.to_string()),
        None => ChainSpec::Vdis(a.vdi.iter().map(|u| u.to_string()).collect()),
    };
    match crate::sr::upload(&a.sr_path, &spec, &target, pack) {
        Ok(up) => {
            let image_id = match &target {
                Target::Glance { image_id, .. } => Some(image_id.as_str()),
                Target::Local(_) => None,
            };
            if a.json {
                print_json(&serde_json::json!({
                    "image_id": image_id,
                    "vdis": up.uuids,
                    "members": up.members,
                    "stream": up.stream,
                }));
            } else if let Some(id) = image_id {
                // Local "-" carries the image on stdout: nothing else may go there.
                println!("{id}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
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
