//! `download`, `upload` and `sweep`: the transfer engines ([`crate::transfer`]) with what
//! a nightly job needs around them — endpoints tried in turn with retries
//! ([`crate::retry`]), a lock per SR, a rate limit, low priority, a progress bar on a
//! terminal and progress lines in syslog, and a one-line summary.
//!
//! What a cron job leaves in syslog ([`crate::log::syslog`], whatever `--quiet` says):
//! the start (what, SR, endpoints), every retry with its cause, progress lines for long
//! transfers, the summary — or the failure with its exit code, from
//! [`output::report`].

use std::error::Error as StdError;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::{DownloadArgs, JobArgs, Store, SweepArgs, UploadArgs};
use super::output::{self, say, verbosity, CliError};
use crate::bundle::pack::{self, PackOptions};
use crate::error::{chain, Kind};
use crate::log::{self, Level};
use crate::progress::{Display, Monitor, Progress};
use crate::sr::{ChainSpec, JobLock};
use crate::store::{Digests, Expected, Location, Source, Target};
use crate::transfer::{self, ImportOptions, Transfer, Uploader};

/// `upload`'s gzip level when neither `--compression-level` nor the image property
/// says, chosen from `make bench` (README "Compression defaults"). No level reaches
/// both dom0 bounds (3 CPU-s per GB of VHD, +10 % size against gzip -6): ISA-L level 2
/// is the cheapest, 3.7 CPU-s/GB at +11.0 %; level 3 is +9.4 % but costs 40 % more CPU
/// to send 1.4 % fewer bytes, and level 1 saves no CPU we could measure for +1.2 %.
/// The plugin keeps Nova's semantics ([`crate::bundle::pack::DEFAULT_LEVEL`], 6).
pub(super) const DEFAULT_LEVEL: u32 = 2;

/// Most compressor threads `upload` starts without `--threads`.
const MAX_DEFAULT_THREADS: usize = 4;

/// `upload`'s compressor threads without `--threads`: half the cores, at least 1, at
/// most [`MAX_DEFAULT_THREADS`]. dom0's few vCPUs run every guest's blkback/tapdisk and
/// netback: an upload on all of them is felt by every VM on the host, while the half
/// left over keeps them served. The CPU-seconds an upload costs do not depend on the
/// thread count, only how fast it is spent; a nightly job has hours, and four threads
/// at level 2 already move a few hundred MB/s of VHD (more than a nightly upload
/// needs, and more CPU than a dom0 of 8–16 vCPUs should lend one job).
fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, MAX_DEFAULT_THREADS)
}

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
    /// `None` (JSON null) where it was not computed: a download from a Glance whose
    /// record declares no SHA-512 ([`crate::store::Source::hashes_sha512`]), and any
    /// upload to Glance ([`crate::store::Target::hashes_sha512`]).
    sha512: Option<String>,
}

impl Summary {
    /// `attempts` were made on `store`'s endpoints in turn; the last one succeeded.
    fn new(
        image_id: Option<&str>,
        store: &Store,
        attempts: u32,
        stream: &Digests,
        took: Duration,
    ) -> Summary {
        let seconds = took.as_secs_f64();
        Summary {
            image_id: image_id.map(str::to_string),
            endpoint: store.endpoint(attempts.saturating_sub(1)),
            attempts,
            bytes: stream.bytes,
            seconds: (seconds * 1000.0).round() / 1000.0,
            bytes_per_second: (stream.bytes as f64 / seconds.max(0.001)) as u64,
            md5: stream.md5.clone(),
            sha512: stream.sha512.clone(),
        }
    }

    /// The summary line on stderr (not with `--quiet`) and in syslog.
    fn say(&self, what: &str) {
        let line = self.line(what);
        say(0, &line);
        log::syslog(Level::Info, &line);
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
    _lock: Option<JobLock>,
    progress: Arc<Progress>,
    monitor: Monitor,
    policy: crate::retry::Policy,
    started: Instant,
}

impl Job {
    /// Lower the priority, take the lock, start the display: in that order, so a run
    /// that waits for the lock shows no bar and one that is refused changed nothing.
    fn start(
        args: &JobArgs,
        store: &Store,
        sr_path: &Path,
        label: String,
    ) -> Result<Job, CliError> {
        for w in &store.warnings {
            say(0, &format!("warning: {w}"));
            log::syslog(Level::Warning, &format!("{label}: {w}"));
        }
        if !store.origin.is_empty() {
            say(1, &format!("signing in with {}", store.origin));
        }
        // Standard input cannot be read twice, nor standard output written twice.
        let retries = if !store.is_glance() && store.local() == "-" {
            0
        } else {
            args.retries
        };
        // First, before a lock wait or a request: a run that hangs or fails has started
        // on record.
        log::syslog(
            Level::Info,
            &format!(
                "{label}: started (SR {}, endpoint {}, up to {} attempts)",
                sr_path.display(),
                store.describe_all(),
                u64::from(retries) + 1
            ),
        );
        if store.insecure {
            // Always on record: in syslog even with --quiet, for whoever audits the host.
            let w = "TLS certificate verification is disabled (--insecure)";
            say(0, &format!("warning: {w}"));
            log::syslog(Level::Warning, &format!("{label}: {w}"));
        }
        if args.nice {
            lower_priority();
        }
        let lock = if args.no_lock {
            None
        } else {
            let path = match &args.lock_file {
                Some(p) => p.clone(),
                None => JobLock::default_path(sr_path)?,
            };
            say(1, &format!("taking the lock {}", path.display()));
            Some(JobLock::acquire(
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
                bar: std::io::stderr().is_terminal() && verbosity() >= 0,
                log_every: Some(crate::progress::log_interval()),
                label,
            },
        );
        Ok(Job {
            _lock: lock,
            progress,
            monitor,
            policy: crate::retry::Policy {
                retries,
                base: Duration::from_secs_f64(args.retry_delay),
                ..Default::default()
            },
            started: Instant::now(),
        })
    }

    fn transfer(&self, args: &JobArgs) -> Transfer {
        Transfer {
            rate_limit: args.rate_limit,
            progress: Some(self.progress.clone()),
            // --deadline is the HTTP client's (GlanceConfig::deadline).
            deadline: None,
        }
    }

    /// Run `attempt(endpoint_index)` with the retry policy, logging each retry.
    fn retry<T, E: StdError + Kind>(
        &self,
        store: &Store,
        what: &str,
        attempt: impl FnMut(u32) -> Result<T, E>,
    ) -> Result<(T, u32), E> {
        self.retry_in(&self.budget(), store, what, attempt)
    }

    /// A fresh budget of this job's retries.
    fn budget(&self) -> Arc<crate::retry::Budget> {
        Arc::new(crate::retry::Budget::new(self.policy))
    }

    /// [`Job::retry`] with a budget the attempts may also spend inside (a download that
    /// resumes in place): the attempts made count those too.
    fn retry_in<T, E: StdError + Kind>(
        &self,
        budget: &crate::retry::Budget,
        store: &Store,
        what: &str,
        mut attempt: impl FnMut(u32) -> Result<T, E>,
    ) -> Result<(T, u32), E> {
        let r = crate::retry::run_with(
            budget,
            |n| {
                // A restart counts from zero; a resume (inside the attempt) does not.
                self.progress.reset();
                say(
                    1,
                    &format!("{what}: attempt {} via {}", n + 1, store.describe(n)),
                );
                attempt(n)
            },
            |n, e, pause| {
                let line = format!(
                    "{what}: attempt {n} of {} failed: {}; retrying in {:.1} s via {}",
                    self.policy.retries + 1,
                    chain(e),
                    pause.as_secs_f64(),
                    store.describe(n)
                );
                say(0, &line);
                log::syslog(Level::Warning, &line);
            },
        );
        r.map(|v| (v, budget.current() + 1))
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
    stream: &'a Digests,
    summary: &'a Summary,
    /// What xapi was told (README "Downloads in xapi").
    xapi: &'a super::scan::Outcome,
}

#[derive(serde::Serialize)]
struct Root<'a> {
    uuid: &'a str,
}

pub fn download(a: &DownloadArgs) -> Result<ExitCode, CliError> {
    let store = a.store.resolve().map_err(CliError::usage)?;
    let http = store.is_glance();
    if http && a.image_id.is_none() {
        return Err(CliError::usage(
            "--image-id is required with an http(s) endpoint",
        ));
    }
    // The SR and the UUIDs before the lock and the first request (exit 3).
    let sr_uuid = crate::sr::check_sr_dir(a.sr.path())?;
    // The plugin's uuid_stack is popped from the end: leaf-first flags, reversed.
    let uuid_stack: Option<Vec<String>> =
        (!a.uuids.is_empty()).then(|| a.uuids.iter().rev().cloned().collect());
    if let Some(stack) = &uuid_stack {
        crate::sr::check_new_vdis(a.sr.path(), "--uuid", stack)?;
    }
    let what = match &a.image_id {
        Some(id) if http => format!("download of image {id}"),
        _ => format!("download of {}", store.describe(0)),
    };
    let job = Job::start(&a.job, &store, a.sr.path(), what.clone())?;
    let budget = job.budget();
    let opts = ImportOptions {
        sr_path: a.sr.path().to_path_buf(),
        uuid_stack,
        lock_dir: a.lock_dir.clone(),
        transfer: job.transfer(&a.job),
        resume: Some(budget.clone()),
        keep_swap: false,
    };
    let result = job.retry_in(&budget, &store, &what, |n| {
        let source = match &a.image_id {
            Some(id) if http => Source::Glance(store.glance(n)?, id.clone()),
            _ => Source::Local(Location::parse(store.local())?),
        };
        transfer::download(&source, &opts)
    });
    let took = job.finish();
    let (d, attempts) = result?;
    let imp = &d.imported;
    let summary = Summary::new(
        a.image_id.as_deref().filter(|_| http),
        &store,
        attempts,
        &d.stream,
        took,
    );
    summary.say(&format!(
        "{what}: {} into {} (leaf {})",
        vhds(imp.uuids.len()),
        a.sr.path().display(),
        imp.root_uuid()
    ));
    let (label, description) = xapi_label(a, http, &d.expected, &summary);
    let xapi = super::scan::tell_xapi(a.no_scan, &sr_uuid, imp.root_uuid(), label, description);
    if a.json {
        output::json(&DownloadReport {
            root: Root {
                uuid: imp.root_uuid(),
            },
            chain: &imp.uuids,
            files: &imp.files,
            vhd_bytes: imp.bytes,
            stream: &d.stream,
            summary: &summary,
            xapi: &xapi,
        });
    } else {
        for u in &imp.uuids {
            output::line(u);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The leaf VDI's name label in xapi — `--name-label`, else the image's name as the
/// store gives it (made printable), else the Glance image id; none for standard input
/// — and its description: where the image came from and when (an endpoint has no
/// password, [`crate::store::check_endpoint`]; never a token or a header).
fn xapi_label(
    a: &DownloadArgs,
    http: bool,
    expected: &Expected,
    summary: &Summary,
) -> (Option<String>, String) {
    let image_id = a.image_id.as_deref().filter(|_| http);
    let label = a.name_label.clone().or_else(|| {
        let name = expected.name.as_deref().filter(|n| !n.trim().is_empty());
        name.map(super::scan::printable)
            .or_else(|| image_id.map(str::to_string))
    });
    let endpoint = crate::store::redact(&summary.endpoint);
    let from = match image_id {
        Some(id) => format!("Glance image {id} at {endpoint}"),
        None if endpoint == "-" => "standard input".to_string(),
        None => super::scan::printable(&endpoint),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let when = crate::vhd::info::rfc3339(now);
    (
        label,
        format!("Downloaded by glance-vhd from {from} on {when}"),
    )
}

pub fn upload(a: &UploadArgs) -> Result<ExitCode, CliError> {
    let store = a.store.resolve().map_err(CliError::usage)?;
    let http = store.is_glance();
    if !http && store.local() == "-" && a.json {
        return Err(CliError::usage(
            "--json with --endpoint -: stdout carries the image",
        ));
    }
    if !http && a.create {
        return Err(CliError::usage("--create needs an http(s) Glance endpoint"));
    }
    if http && a.image_id.is_none() && !a.create {
        return Err(CliError::usage(
            "--image-id (a queued image) or --create --name is required with an http(s) endpoint",
        ));
    }
    let (level, warning) = pack::level(a.compression_level, &a.properties, DEFAULT_LEVEL);
    if let Some(w) = warning {
        say(0, &format!("warning: {w}"));
    }
    let pack = PackOptions {
        level,
        threads: a.threads.map_or_else(default_threads, |t| t as usize),
    };
    let spec = match &a.leaf {
        Some(l) => ChainSpec::Leaf(l.to_string()),
        None => ChainSpec::Vdis(a.vdi.iter().map(|u| u.to_string()).collect()),
    };
    // A list that is not a chain is refused before --create makes an image for it
    // (each attempt checks again before it sends).
    crate::sr::check_chain(a.sr.path(), &spec)?;
    let what = match (&a.image_id, &a.name) {
        (Some(id), _) if http => format!("upload to image {id}"),
        (None, Some(name)) => format!("upload to a new image {name:?}"),
        _ => format!("upload to {}", store.describe(0)),
    };
    crate::sr::check_sr_dir(a.sr.path())?;
    let job = Job::start(&a.job, &store, a.sr.path(), what.clone())?;
    // The image: given, or created once (retried like the upload, on the next endpoint).
    let image_id = match (&a.image_id, &a.name) {
        _ if !http => None,
        (Some(id), _) => Some(id.clone()),
        (None, Some(name)) => {
            let (id, _) = job.retry(&store, "create the image", |n| {
                store.glance(n)?.create(name, &a.properties)
            })?;
            let line = format!("created image {id}");
            say(0, &line);
            log::syslog(Level::Info, &format!("{what}: {line}"));
            Some(id)
        }
        (None, None) => unreachable!("checked above: --image-id or --create --name"),
    };
    let mut uploader =
        Uploader::new(a.sr.path(), &spec, pack, job.transfer(&a.job)).flatten(a.flatten);
    let result = job.retry(&store, &what, |n| {
        let target = match &image_id {
            Some(id) => {
                if n > 0 {
                    // A broken upload leaves the image queued in Glance; anything else
                    // (active, killed) is checked before a byte is sent again.
                    say(1, &format!("checking that image {id} is still queued"));
                }
                Target::Glance {
                    glance: store.glance(n)?,
                    image_id: id.clone(),
                    properties: a.properties.clone(),
                }
            }
            None => Target::Local(Location::parse(store.local())?),
        };
        uploader.attempt(&target)
    });
    let took = job.finish();
    let (up, attempts) = result?;
    if up.completed_earlier {
        let line = format!(
            "{what}: the previous attempt completed after all: the image is active with our checksum"
        );
        say(0, &line);
        log::syslog(Level::Info, &line);
    }
    let summary = Summary::new(image_id.as_deref(), &store, attempts, &up.stream, took);
    summary.say(&format!(
        "{what}: {}{} (leaf {})",
        vhds(up.uuids.len()),
        if a.flatten { " flattened into one" } else { "" },
        up.uuids.first().map_or("-", String::as_str)
    ));
    if a.json {
        output::json(&serde_json::json!({
            "image_id": image_id,
            "vdis": up.uuids,
            "members": up.members,
            "flattened": a.flatten,
            "compression": {"level": pack.level, "threads": pack.threads},
            "stream": up.stream,
            "summary": summary,
        }));
    } else if let Some(id) = &image_id {
        // Local "-" carries the image on stdout: nothing else may go there.
        output::line(id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Remove staging directories left by killed processes.
pub fn sweep(a: &SweepArgs) -> Result<ExitCode, CliError> {
    crate::sr::check_sr_dir(a.sr.path())?;
    let swept = crate::sr::sweep(a.sr.path(), Duration::from_secs(a.older_than), &a.lock_dir)?;
    // Only when there was something: a sweep every half hour per SR stays out of the log
    // until a killed run left staging behind.
    if !swept.is_empty() {
        let removed = swept.iter().filter(|s| s.removed).count();
        log::syslog(
            Level::Info,
            &format!(
                "sweep of {}: {removed} staging director{} removed, {} kept",
                a.sr.path().display(),
                if removed == 1 { "y" } else { "ies" },
                swept.len() - removed
            ),
        );
    }
    if a.json {
        output::json(&serde_json::json!({ "swept": swept }));
    } else if verbosity() >= 0 {
        for s in &swept {
            let what = if s.removed { "removed" } else { "kept" };
            output::line(&format!("{what} {} ({})", s.path.display(), s.reason));
            for f in &s.rolled_back {
                output::line(&format!("  removed {} (half-moved chain)", f.display()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
