//! SIGTERM and SIGINT end a run as an error does: what the run made in the SR (its
//! staging directories, a half-done move) is removed, then the process exits with
//! 128 + the signal's number (143, 130), as a shell reports a process the signal killed.
//!
//! How: [`install`], first thing in `main`, blocks both signals in the main thread, so
//! every thread started after it has them blocked too, and starts one thread that waits
//! for them with `sigwait(2)`. No async-signal-safety concerns: the clean-up runs on
//! that ordinary thread, which takes the registry's mutex, runs every registered
//! clean-up ([`on_signal`]: `sr::Staging` registers itself), logs, and exits. A step
//! that must not be cut in half by the clean-up (a hard link into the SR and its
//! record) runs inside [`critical`], under the same mutex: the clean-up sees it done or
//! not started, never half done.
//!
//! Without [`install`] (the library in tests, the fuzz targets) the signals keep their
//! default action and the registry is only a list.

use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::{SigSet, Signal};

type Cleanup = Box<dyn Fn() + Send>;

struct Registry {
    next: u64,
    live: Vec<(u64, Cleanup)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    live: Vec::new(),
});

/// A clean-up that panicked elsewhere does not make the list unusable: it is plain data.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered clean-up; dropping it unregisters it.
#[derive(Debug)]
pub struct OnSignal(u64);

impl Drop for OnSignal {
    fn drop(&mut self) {
        registry().live.retain(|(id, _)| *id != self.0);
    }
}

/// Run `cleanup` if SIGTERM or SIGINT arrives before the returned guard is dropped.
/// It runs on the signal thread while the rest of the process carries on (until the
/// exit): it must tolerate work in progress, and it must not call [`on_signal`] or
/// [`critical`].
pub fn on_signal(cleanup: impl Fn() + Send + 'static) -> OnSignal {
    let mut r = registry();
    let id = r.next;
    r.next += 1;
    r.live.push((id, Box::new(cleanup)));
    OnSignal(id)
}

/// Run `step` with the clean-ups held off: a signal's clean-up runs before it starts or
/// after it ends. Keep `step` short, and free of [`on_signal`] and guard drops.
pub fn critical<T>(step: impl FnOnce() -> T) -> T {
    let _held = registry();
    step()
}

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Take SIGTERM and SIGINT over (see the module docs). Call before any thread starts:
/// a thread started earlier would keep the default action and die with the process
/// before any clean-up. If the signal thread cannot start, the defaults stay.
pub fn install() {
    let set = handled();
    if set.thread_block().is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                terminate(sig);
            }
        });
    if spawned.is_err() {
        let _ = handled().thread_unblock();
    }
}

fn terminate(sig: Signal) -> ! {
    // Held to the exit: no critical step starts after the clean-up.
    let r = registry();
    for (_, cleanup) in &r.live {
        cleanup();
    }
    crate::log::syslog(
        crate::log::Level::Warning,
        &format!(
            "terminated by {}: {} clean-up(s) run (staging removed, a half-done move rolled back)",
            sig.as_str(),
            r.live.len()
        ),
    );
    std::process::exit(128 + sig as i32)
}
