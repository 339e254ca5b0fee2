//! Retries for the CLI (DESIGN §3): only errors of kind [`ErrorKind::Retryable`] are
//! tried again, after an exponentially growing pause with jitter; the caller moves to
//! its next endpoint on each attempt. Permanent errors, "not found", invalid input and
//! local I/O failures return at once: retrying them only delays the bad news.
//!
//! The plugin does not retry: Nova calls it again itself (`glance_num_retries`), with
//! the next Glance server.

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

/// Run `attempt(0)`, `attempt(1)`, … until one succeeds, an error is not retryable, or
/// the retries are used up. `on_retry(next_attempt, error, pause)` runs before each
/// pause (to log it). The last error is returned as it is: its kind, and so the exit
/// code, says "retryable" when the retries ran out.
pub fn run<T, E: Kind>(
    policy: &Policy,
    mut attempt: impl FnMut(u32) -> Result<T, E>,
    mut on_retry: impl FnMut(u32, &E, Duration),
) -> Result<T, E> {
    let mut n = 0u32;
    loop {
        match attempt(n) {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == ErrorKind::Retryable && n < policy.retries => {
                n += 1;
                let pause = policy.delay(n);
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
}
