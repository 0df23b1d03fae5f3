//! When a slot sends: the schedules of the prefill, the measured run (closed loop, or open
//! loop at a fixed rate) and the --verify-keys read-back.
//!
//! Open loop, request j of the whole run is due at `start + j / rate`, and the connections
//! take turns: slot s of n sends j = s, s + n, s + 2n, ... . Its latency is then measured
//! from that intended time, not from when it went out. A request not sent by the end of the
//! run is counted as unsent. Closed loop, a request is due whenever the pipeline has room, until
//! the run's end or until the slot's share of `--requests` is sent.

use std::time::{Duration, Instant};

use crate::cli::{Plan, Stop};
use crate::stats::Phase;

/// When a slot sends its requests.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Set keys `next`, `next + step`, ... below `end`, as fast as replies come.
    Prefill { next: u64, step: u64, end: u64 },
    /// Get `keys[next..]`, as fast as replies come (--verify-keys).
    Verify { keys: Vec<u64>, next: usize },
    /// As fast as replies come, until `end` or until `quota` measured requests were sent.
    Closed {
        measure_start: Instant,
        end: Option<Instant>,
        quota: Option<u64>,
    },
    /// Request j of the whole run is due at `start + j / rate`; this slot sends j = slot,
    /// slot + slots, ... below `j_end`, and stops at `stop_at` whatever is left (counted as
    /// unsent).
    Open {
        start: Instant,
        measure_start: Instant,
        rate: u64,
        slot: u64,
        slots: u64,
        k: u64,
        j_end: u64,
        stop_at: Option<Instant>,
    },
}

/// A request the schedule says to send now.
pub struct Due {
    pub intended: Instant,
    pub phase: Phase,
    pub key: Option<u64>,
}

impl Schedule {
    /// The measuring schedule of slot `slot` of `slots`, for a run whose clock started at
    /// `start`.
    pub fn for_run(plan: &Plan, slot: usize, start: Instant) -> Schedule {
        let measure_start = start + plan.warmup;
        let slots = plan.connections as u64;
        match plan.rate {
            None => {
                let (end, quota) = match plan.stop {
                    Stop::After(d) => (Some(measure_start + d), None),
                    Stop::Requests(n) => {
                        let share = n / slots + u64::from((slot as u64) < n % slots);
                        (None, Some(share))
                    }
                };
                Schedule::Closed {
                    measure_start,
                    end,
                    quota,
                }
            }
            Some(rate) => {
                // The first request due at or after measure start, and the end of the run.
                let index_at = |d: Duration| {
                    let scaled = d.as_nanos() * u128::from(rate);
                    u64::try_from(scaled.div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
                };
                let (j_end, stop_at) = match plan.stop {
                    Stop::After(d) => (index_at(plan.warmup + d), Some(measure_start + d)),
                    Stop::Requests(n) => (index_at(plan.warmup).saturating_add(n), None),
                };
                Schedule::Open {
                    start,
                    measure_start,
                    rate,
                    slot: slot as u64,
                    slots,
                    k: 0,
                    j_end,
                    stop_at,
                }
            }
        }
    }

    fn open_time(start: Instant, rate: u64, j: u64) -> Instant {
        let ns = u128::from(j) * 1_000_000_000 / u128::from(rate);
        start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The next request if it is due at `now`.
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        if self.exhausted(now) {
            return None;
        }
        match self {
            Schedule::Prefill { next, step, .. } => {
                let key = *next;
                *next += *step;
                Some(Due {
                    intended: now,
                    phase: Phase::Prefill,
                    key: Some(key),
                })
            }
            Schedule::Verify { keys, next } => {
                let key = keys[*next];
                *next += 1;
                Some(Due {
                    intended: now,
                    phase: Phase::Verify,
                    key: Some(key),
                })
            }
            Schedule::Closed {
                measure_start,
                quota,
                ..
            } => {
                let phase = if now < *measure_start {
                    Phase::Warmup
                } else {
                    if let Some(q) = quota {
                        *q -= 1;
                    }
                    Phase::Measured
                };
                Some(Due {
                    intended: now,
                    phase,
                    key: None,
                })
            }
            Schedule::Open {
                start,
                measure_start,
                rate,
                slot,
                slots,
                k,
                ..
            } => {
                let j = *slot + *k * *slots;
                let intended = Self::open_time(*start, *rate, j);
                if intended > now {
                    return None;
                }
                *k += 1;
                let phase = if intended < *measure_start {
                    Phase::Warmup
                } else {
                    Phase::Measured
                };
                Some(Due {
                    intended,
                    phase,
                    key: None,
                })
            }
        }
    }

    /// Up to `wanted` more of the schedule's requests, to go out with the one just due as the
    /// extra keys of a multi-key get. Closed loop: out of the quota (warmup has none). Open
    /// loop: this slot's next requests, sent early, so their latency is counted from the
    /// first one's intended time. Prefill and verify send one key per request.
    pub fn take_more(&mut self, wanted: u64, phase: Phase) -> u64 {
        match self {
            Schedule::Closed {
                quota: Some(left), ..
            } if phase == Phase::Measured => {
                let n = wanted.min(*left);
                *left -= n;
                n
            }
            Schedule::Closed { .. } => wanted,
            Schedule::Open { .. } => {
                let n = wanted.min(self.unsent());
                if let Schedule::Open { k, .. } = self {
                    *k += n;
                }
                n
            }
            Schedule::Prefill { .. } | Schedule::Verify { .. } => 0,
        }
    }

    /// When the next request falls due, for schedules with a clock.
    pub fn next_at(&self) -> Option<Instant> {
        match self {
            Schedule::Open {
                start,
                rate,
                slot,
                slots,
                k,
                j_end,
                ..
            } => {
                let j = *slot + *k * *slots;
                (j < *j_end).then(|| Self::open_time(*start, *rate, j))
            }
            _ => None,
        }
    }

    /// When sending stops by the clock.
    pub fn stop_at(&self) -> Option<Instant> {
        match self {
            Schedule::Closed { end, .. } => *end,
            Schedule::Open { stop_at, .. } => *stop_at,
            Schedule::Prefill { .. } | Schedule::Verify { .. } => None,
        }
    }

    /// Whether nothing more will be sent.
    pub fn exhausted(&self, now: Instant) -> bool {
        if self.stop_at().is_some_and(|stop| now >= stop) {
            return true;
        }
        match self {
            Schedule::Prefill { next, end, .. } => next >= end,
            Schedule::Verify { keys, next } => *next >= keys.len(),
            Schedule::Closed { quota, .. } => *quota == Some(0),
            Schedule::Open {
                slot,
                slots,
                k,
                j_end,
                ..
            } => slot + k * slots >= *j_end,
        }
    }

    /// Requests the open-loop schedule asked of this slot and it did not send.
    pub fn unsent(&self) -> u64 {
        match self {
            Schedule::Open {
                slot,
                slots,
                k,
                j_end,
                ..
            } => {
                let j = slot + k * slots;
                if j >= *j_end {
                    0
                } else {
                    (j_end - j).div_ceil(*slots)
                }
            }
            _ => 0,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Schedule::Open { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(rate: u64, slot: u64, slots: u64, start: Instant, j_end: u64) -> Schedule {
        Schedule::Open {
            start,
            measure_start: start,
            rate,
            slot,
            slots,
            k: 0,
            j_end,
            stop_at: None,
        }
    }

    #[test]
    fn open_schedule_interleaves_connections() {
        let start = Instant::now();
        // 4 ops/s over 2 connections: slot 1 sends at 0.25 s, 0.75 s, ...
        let mut s = open(4, 1, 2, start, 4);
        assert_eq!(s.next_at(), Some(start + Duration::from_millis(250)));
        assert!(s.due(start).is_none());
        let d = s.due(start + Duration::from_secs(5)).unwrap();
        assert_eq!(d.intended, start + Duration::from_millis(250));
        assert_eq!(s.next_at(), Some(start + Duration::from_millis(750)));
        assert_eq!(s.unsent(), 1);
        assert!(s.due(start + Duration::from_secs(5)).is_some());
        assert!(s.exhausted(start));
        assert_eq!(s.unsent(), 0);
    }

    #[test]
    fn low_rates_leave_some_connections_idle() {
        // 1 op/s over 16 connections for 2 s: only slots 0 and 1 ever send.
        let start = Instant::now();
        for slot in 0..16 {
            let s = open(1, slot, 16, start, 2);
            assert_eq!(s.exhausted(start), slot >= 2, "slot {slot}");
        }
    }

    #[test]
    fn run_schedules_split_the_work() {
        let args =
            crate::cli::Args::try_parse_from_for_tests(&["--connections", "3", "--requests", "10"]);
        let plan = Plan::from_args(args).unwrap();
        let start = Instant::now();
        let quotas: Vec<_> = (0..3)
            .map(|slot| match Schedule::for_run(&plan, slot, start) {
                Schedule::Closed { quota, .. } => quota.unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(quotas, [4, 3, 3]);
        let args = crate::cli::Args::try_parse_from_for_tests(&[
            "--rate",
            "1000",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ]);
        let plan = Plan::from_args(args).unwrap();
        match Schedule::for_run(&plan, 0, start) {
            Schedule::Open { j_end, stop_at, .. } => {
                assert_eq!(j_end, 2500);
                assert_eq!(stop_at, Some(start + Duration::from_millis(2500)));
            }
            other => panic!("{other:?}"),
        }
    }
}
