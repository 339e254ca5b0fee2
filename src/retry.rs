//! Retries for the CLI (DESIGN §3): only errors of kind [`ErrorKind::Retryable`] are
//! tried again, after an exponentially growing pause with jitter; the caller moves to
//! its next endpoint on each attempt. Permanent errors, "not found", invalid input and
//! local I/O failures return at once: retrying them only delays the bad news.
//!
//! A download that breaks may resume where it broke (`store::resume`) instead of
//! starting over: a resume is an attempt like a restart, taken from the same
//! [`Budget`] with the same pauses, so `--retries` bounds both together.
//!
//! The plugin does not retry: Nova calls it again itself (`glance_num_retries`), with
//! the next Glance server. It only resumes, at most [`PLUGIN_RESUMES`] times; Nova's own
//! retry still starts over when a resume is refused.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::error::{ErrorKind, Kind};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Retries after the first attempt (`--retries`).
    pub retries: u32,
    /// The first pause (`--retry-delay`); each later one doubles.
    pub base: Duration,
    /// No pause is longer than this.
    pub cap: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retries: 3,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(120),
        }
    }
}

impl Policy {
    /// The pause before retry `n` (1-based): base·2^(n−1), capped, with "equal jitter":
    /// half of it fixed, half random, so hosts whose cron jobs failed together do not
    /// come back together, and each still backs off.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.cap);
        let half = exp / 2;
        // A v4 UUID is 122 random bits from the OS: enough entropy without another crate.
        let r = (uuid::Uuid::new_v4().as_u128() as u64) as f64 / u64::MAX as f64;
        half + half.mul_f64(r)
    }
}

/// Resumes a plugin download may make within one call (the plugin has no retries of its
/// own: Nova's `glance_num_retries` starts over). Three, as the CLI's default
/// `--retries`: with the default pauses at most 2 + 4 + 8 s of waiting, well inside
/// the minutes a 20 GB image takes, and a store that keeps breaking still fails the call
/// soon enough for Nova to try its next server.
pub const PLUGIN_RESUMES: u32 = 3;

/// The retries of one job, shared by the retry loop ([`run_with`]) and whatever retries
/// from inside an attempt (a download that resumes in place): each takes the next retry
/// with its pause from here, so the two together never exceed `policy.retries`.
#[derive(Debug)]
pub struct Budget {
    policy: Policy,
    /// Retries taken so far: the index of the attempt running now.
    used: AtomicU32,
    /// The last retry taken (and its pause waited) by a resume that was then refused:
    /// the restart that follows is that same attempt, without another pause.
    owed: AtomicBool,
}

impl Budget {
    pub fn new(policy: Policy) -> Budget {
        Budget {
            policy,
            used: AtomicU32::new(0),
            owed: AtomicBool::new(false),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The index (0-based) of the attempt running now; attempts made so far is one more.
    pub fn current(&self) -> u32 {
        self.used.load(Ordering::SeqCst)
    }

    /// Take the next retry: its number (1-based) and the pause to wait before it, or
    /// `None` when the retries are used up.
    pub fn take(&self) -> Option<(u32, Duration)> {
        let n = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u < self.policy.retries).then_some(u + 1)
            })
            .ok()?
            + 1;
        Some((n, self.policy.delay(n)))
    }

    /// The retry just taken could not be used in place (a resume the store refused): the
    /// caller's error makes the retry loop run it as a restart, at once.
    pub fn give_back(&self) {
        self.owed.store(true, Ordering::SeqCst);
    }

    fn take_owed(&self) -> bool {
        self.owed.swap(false, Ordering::SeqCst)
    }
}

/// Run `attempt(0)`, `attempt(1)`, … until one succeeds, an error is not retryable, or
/// the retries are used up. `on_retry(next_attempt, error, pause)` runs before each
/// pause (to log it). The last error is returned as it is: its kind, and so the exit
/// code, says "retryable" when the retries ran out.
pub fn run<T, E: Kind>(
    policy: &Policy,
    attempt: impl FnMut(u32) -> Result<T, E>,
    on_retry: impl FnMut(u32, &E, Duration),
) -> Result<T, E> {
    run_with(&Budget::new(*policy), attempt, on_retry)
}

/// [`run`] with a budget that an attempt may also draw from (a download resuming in
/// place): the attempt numbers it passes skip the retries taken inside; a retry taken
/// inside and given back ([`Budget::give_back`]) is the next attempt, without a second
/// pause.
pub fn run_with<T, E: Kind>(
    budget: &Budget,
    mut attempt: impl FnMut(u32) -> Result<T, E>,
    mut on_retry: impl FnMut(u32, &E, Duration),
) -> Result<T, E> {
    loop {
        match attempt(budget.current()) {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == ErrorKind::Retryable => {
                if budget.take_owed() {
                    on_retry(budget.current(), &e, Duration::ZERO);
                    continue;
                }
                let Some((n, pause)) = budget.take() else {
                    return Err(e);
                };
                on_retry(n, &e, pause);
                std::thread::sleep(pause);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(ErrorKind);
    impl Kind for E {
        fn kind(&self) -> ErrorKind {
            self.0
        }
    }

    fn quick(retries: u32) -> Policy {
        Policy {
            retries,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
        }
    }

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p = Policy {
            retries: 9,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(30),
        };
        for (n, full) in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (40, 30)] {
            let d = p.delay(n);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "retry {n}: {d:?}");
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| p.delay(3)).collect();
        assert!(spread.len() > 1, "no jitter");
    }

    #[test]
    fn retries_only_retryable_errors() {
        let mut calls = 0;
        let r: Result<(), E> = run(
            &quick(3),
            |_| {
                calls += 1;
                Err(E(ErrorKind::NotFound))
            },
            |_, _, _| {},
        );
        assert!(r.is_err());
        assert_eq!(calls, 1);

        let mut seen = Vec::new();
        let r = run(
            &quick(3),
            |n| {
                seen.push(n);
                if n < 2 {
                    Err(E(ErrorKind::Retryable))
                } else {
                    Ok(n)
                }
            },
            |_, _, _| {},
        );
        assert_eq!(r.ok(), Some(2));
        assert_eq!(seen, [0, 1, 2]);

        let mut calls = 0;
        let r: Result<(), E> = run(
            &quick(2),
            |_| {
                calls += 1;
                Err(E(ErrorKind::Retryable))
            },
            |_, _, _| {},
        );
        assert_eq!(r.err().map(|e| e.0), Some(ErrorKind::Retryable));
        assert_eq!(calls, 3);
    }

    #[test]
    fn retries_taken_inside_an_attempt_count() {
        // Attempt 0 resumes once in place (retry 1), then fails: the loop's next attempt
        // is 2, and with 2 retries that is the last.
        let b = Budget::new(quick(2));
        let mut seen = Vec::new();
        let r: Result<(), E> = run_with(
            &b,
            |n| {
                seen.push(n);
                if n == 0 {
                    assert_eq!(b.take().map(|t| t.0), Some(1));
                }
                Err(E(ErrorKind::Retryable))
            },
            |_, _, _| {},
        );
        assert!(r.is_err());
        assert_eq!(seen, [0, 2]);
        assert_eq!(b.take(), None);

        // A resume refused gives its retry back: the restart is that attempt, no pause.
        let b = Budget::new(quick(1));
        let mut seen = Vec::new();
        let mut pauses = Vec::new();
        let r = run_with(
            &b,
            |n| {
                seen.push(n);
                if n == 0 {
                    assert!(b.take().is_some());
                    b.give_back();
                    return Err(E(ErrorKind::Retryable));
                }
                Ok(n)
            },
            |_, _, p| pauses.push(p),
        );
        assert_eq!(r.ok(), Some(1));
        assert_eq!(seen, [0, 1]);
        assert_eq!(pauses, [Duration::ZERO]);
    }
}
