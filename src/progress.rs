//! Transfer progress. The engines only count: bytes go into a shared [`Progress`]
//! (atomics, through the pass-through reader [`Counting`]) and each tar member's name is
//! recorded as it starts. A [`Monitor`] thread renders it — a progress bar on a terminal
//! (indicatif), a line to syslog every so often for long transfers — and never touches
//! the data path, so a slow terminal cannot slow a transfer.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::log;

/// How often long transfers log a progress line to syslog: 30 s;
/// `GLANCE_VHD_PROGRESS_INTERVAL` (seconds) for tests.
pub fn log_interval() -> Duration {
    crate::testhooks::progress_interval()
}

/// What has been transferred so far.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    /// 0: unknown (stdin, a store that does not say).
    total: AtomicU64,
    member: Mutex<String>,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Back to nothing done (a retry starts over).
    pub fn reset(&self) {
        self.done.store(0, Ordering::Relaxed);
        self.set_member("");
    }

    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }

    /// The tar member being read or written now.
    pub fn set_member(&self, name: &str) {
        if let Ok(mut m) = self.member.lock() {
            name.clone_into(&mut m);
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    pub fn member(&self) -> String {
        self.member.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// A pass-through reader that counts into a [`Progress`], if there is one.
pub struct Counting<R> {
    inner: R,
    progress: Option<Arc<Progress>>,
}

impl<R> Counting<R> {
    pub fn new(inner: R, progress: Option<Arc<Progress>>) -> Self {
        Counting { inner, progress }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = &self.progress {
            p.add(n as u64);
        }
        Ok(n)
    }
}

/// How a [`Monitor`] shows progress.
#[derive(Debug, Clone)]
pub struct Display {
    /// A progress bar on stderr (the caller decides: a terminal, not `--quiet`).
    pub bar: bool,
    /// A progress line to syslog this often, from the first interval on.
    pub log_every: Option<Duration>,
    /// What is being transferred, e.g. `download of image 6a0a…`.
    pub label: String,
}

/// Renders a [`Progress`] on its own thread until stopped (or dropped).
pub struct Monitor {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub fn start(progress: Arc<Progress>, display: Display) -> Monitor {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = (display.bar || display.log_every.is_some()).then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || render(&progress, &display, &stop))
        });
        Monitor { stop, thread }
    }

    /// Stop and clear the bar (the summary line follows on a clean terminal line).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(t) = self.thread.take() {
            let (lock, cv) = &*self.stop;
            if let Ok(mut s) = lock.lock() {
                *s = true;
            }
            cv.notify_all();
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The bar on screen, if any: other stderr lines go around it ([`suspend`]).
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Run `f` (which writes a line to stderr) with the progress bar, if one is on screen,
/// lifted out of the way, so the line does not land in the middle of the bar.
pub fn suspend<F: FnOnce()>(f: F) {
    let bar = ACTIVE.lock().ok().and_then(|a| a.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

fn set_active(bar: Option<&ProgressBar>) {
    if let Ok(mut a) = ACTIVE.lock() {
        *a = bar.cloned();
    }
}

fn render(progress: &Progress, display: &Display, stop: &(Mutex<bool>, Condvar)) {
    let start = Instant::now();
    // The bar appears with the first byte: before that (connecting, retrying) there is
    // nothing to show but the log lines.
    let mut bar: Option<ProgressBar> = None;
    let tick = if display.bar {
        Duration::from_millis(100)
    } else {
        display.log_every.unwrap_or(Duration::from_secs(30))
    };
    let mut next_log = display.log_every.map(|e| start + e);
    // Whether a progress line went to syslog: a transfer that logged its progress also
    // logs where it ended, so the last line is the final count, not one from up to an
    // interval before.
    let mut logged = false;
    let (lock, cv) = stop;
    let Ok(mut stopped) = lock.lock() else { return };
    while !*stopped {
        stopped = match cv.wait_timeout(stopped, tick) {
            Ok((s, _)) => s,
            Err(_) => return,
        };
        if display.bar && bar.is_none() && progress.done() > 0 {
            let b = new_bar(progress.total());
            // "download", "upload": the bar has one line; the full label goes to syslog.
            let verb = display.label.split_whitespace().next().unwrap_or_default();
            b.set_prefix(verb.to_string());
            set_active(Some(&b));
            bar = Some(b);
        }
        if let Some(b) = &bar {
            if let Some(t) = progress.total() {
                if b.length() != Some(t) {
                    b.set_length(t);
                    b.set_style(bar_style(true));
                }
            }
            b.set_position(progress.done());
            b.set_message(progress.member());
        }
        if let (Some(at), Some(every)) = (next_log, display.log_every) {
            // Nothing moved yet (connecting, waiting to retry): the job's start and retry
            // lines say what is going on; "0 B, 0 B/s" would say nothing.
            if Instant::now() >= at && !*stopped && progress.done() > 0 {
                log::syslog(log::Level::Info, &line(progress, display, start.elapsed()));
                logged = true;
                next_log = Some(at + every);
            }
        }
    }
    if logged {
        log::syslog(log::Level::Info, &line(progress, display, start.elapsed()));
    }
    if let Some(b) = bar {
        set_active(None);
        b.finish_and_clear();
    }
}

/// `download of image X: 1.20 GiB of 5.00 GiB (24%), 81.00 MiB/s, member 0.vhd, 15 s`
pub fn line(progress: &Progress, display: &Display, elapsed: Duration) -> String {
    let done = progress.done();
    let secs = elapsed.as_secs_f64().max(0.001);
    let of = match progress.total() {
        Some(t) => format!(
            " of {} ({}%)",
            HumanBytes(t),
            done.saturating_mul(100) / t.max(1)
        ),
        None => String::new(),
    };
    let member = progress.member();
    let member = if member.is_empty() {
        String::new()
    } else {
        format!(", member {member}")
    };
    format!(
        "{}: {}{of}, {}/s{member}, {:.0} s",
        display.label,
        HumanBytes(done),
        HumanBytes((done as f64 / secs) as u64),
        secs
    )
}

fn new_bar(total: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(bar_style(total.is_some()));
    bar
}

fn bar_style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{prefix} {msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
    } else {
        "{spinner} {prefix} {msg} {bytes} {binary_bytes_per_sec} {elapsed}"
    };
    ProgressStyle::with_template(template)
        .expect("the templates are constant and valid")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_formats() {
        let p = Progress::new();
        let mut r = Counting::new(&[0u8; 3000][..], Some(p.clone()));
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(p.done(), 3000);
        p.set_total(6000);
        p.set_member("0.vhd");
        let d = Display {
            bar: false,
            log_every: None,
            label: "upload".into(),
        };
        let l = line(&p, &d, Duration::from_secs(2));
        assert_eq!(
            l,
            "upload: 2.93 KiB of 5.86 KiB (50%), 1.46 KiB/s, member 0.vhd, 2 s"
        );
    }
}
