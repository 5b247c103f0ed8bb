//! The autoscaler: how many instances a function should have, decided from
//! its recent load the way Knative's KPA does.
//!
//! Load is the number of requests in flight or waiting, sampled every reaper
//! tick. Averaged over the stable window it gives the steady need; over the
//! short panic window it catches bursts. Each instance should carry
//! `concurrency × target utilisation` (at least one request). When the burst needs at least
//! `panic threshold ×` the instances running, the function is in panic: it
//! scales out to the burst's need and does not scale down until the stable
//! window has passed without another panic.
//!
//! [`decide`] is a pure function of a snapshot, tested against a table; the
//! reaper only samples and applies.

use std::collections::VecDeque;
use std::time::Duration;

use flick_core::Scaling;
use tokio::time::Instant;

/// Recent load samples of one pool.
#[derive(Debug, Default)]
pub struct LoadWindow {
    samples: VecDeque<(Instant, u32)>,
    /// Panic holds until this instant.
    panic_until: Option<Instant>,
}

impl LoadWindow {
    /// Adds a sample, forgetting those older than `keep`.
    pub fn record(&mut self, now: Instant, load: u32, keep: Duration) {
        self.samples.push_back((now, load));
        while self.samples.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > keep) {
            self.samples.pop_front();
        }
    }

    pub fn panic_until(&self) -> Option<Instant> {
        self.panic_until
    }

    pub fn set_panic_until(&mut self, until: Instant) {
        self.panic_until = Some(until);
    }

    /// Average load over the last `window`.
    pub fn average(&self, now: Instant, window: Duration) -> f64 {
        let (sum, n) = self
            .samples
            .iter()
            .rev()
            .take_while(|(t, _)| now.saturating_duration_since(*t) <= window)
            .fold((0u64, 0u64), |(s, n), (_, load)| (s + u64::from(*load), n + 1));
        if n == 0 { 0.0 } else { sum as f64 / n as f64 }
    }
}

/// What the autoscaler sees of one function at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub stable_load: f64,
    pub panic_load: f64,
    /// Instances running or starting.
    pub instances: u32,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub in_panic: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Instances the function should have.
    pub desired: u32,
    /// The panic condition holds now.
    pub panic: bool,
}

/// The number of instances `snap` calls for under `policy`.
pub fn decide(snap: &Snapshot, policy: &Scaling) -> Decision {
    // Headroom only applies to slots an instance shares: one request on a
    // one-slot instance needs one instance, not 1/0.7 of one.
    let per_instance = (f64::from(snap.concurrency) * f64::from(policy.target_percent) / 100.0).max(1.0);
    let need = |load: f64| (load / per_instance).ceil() as u32;
    let (stable, burst) = (need(snap.stable_load), need(snap.panic_load));
    let threshold = f64::from(snap.instances.max(1)) * f64::from(policy.panic_percent) / 100.0;
    let panic = snap.panic_load > 0.0 && f64::from(burst) >= threshold;
    let desired = if panic || snap.in_panic {
        // Never scale down in panic: the burst may not be over.
        burst.max(stable).max(snap.instances)
    } else {
        stable
    };
    Decision { desired: desired.clamp(snap.min_instances, snap.max_instances), panic }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(stable: f64, panic: f64, instances: u32, in_panic: bool) -> Snapshot {
        Snapshot {
            stable_load: stable,
            panic_load: panic,
            instances,
            concurrency: 1,
            min_instances: 0,
            max_instances: 10,
            in_panic,
        }
    }

    #[test]
    fn decisions_follow_the_kpa_rules() {
        let policy = Scaling::default();
        // (snapshot, desired, panic), concurrency 1: one request per instance.
        let cases = [
            (snap(0.0, 0.0, 0, false), 0, false),   // idle: nothing needed
            (snap(0.0, 0.0, 3, false), 0, false),   // idle for a whole window: scale to zero
            (snap(0.7, 0.7, 1, false), 1, false),   // part of one instance's worth
            (snap(1.0, 1.0, 1, false), 1, false),   // one sequential caller: no second instance
            (snap(1.4, 1.4, 2, false), 2, false),   // steady at two
            (snap(1.0, 1.0, 2, false), 1, false),   // load fell: one will do
            (snap(0.5, 4.0, 1, false), 4, true),    // burst: 4 ≥ 2 × 1 → panic
            (snap(0.5, 0.0, 4, true), 4, false),    // still in panic: hold, don't shrink
            (snap(0.5, 1.0, 4, false), 1, false),   // panic over: back to the stable need
            (snap(50.0, 50.0, 1, false), 10, true), // capped at max_instances
        ];
        for (i, (s, desired, panic)) in cases.iter().enumerate() {
            assert_eq!(decide(s, &policy), Decision { desired: *desired, panic: *panic }, "case {i}: {s:?}");
        }
    }

    #[test]
    fn min_instances_and_concurrency_shape_the_need() {
        let policy = Scaling::default();
        let mut s = snap(0.0, 0.0, 0, false);
        s.min_instances = 2;
        assert_eq!(decide(&s, &policy).desired, 2);
        let mut s = snap(7.0, 7.0, 2, false);
        s.concurrency = 10; // 7 / (10 × 0.7) = 1 instance
        assert_eq!(decide(&s, &policy).desired, 1);
        s.stable_load = 8.0; // past 70 % of one instance's slots: a second one
        s.panic_load = 8.0;
        assert_eq!(decide(&s, &policy).desired, 2);
    }

    #[test]
    fn the_window_averages_only_recent_samples() {
        let mut w = LoadWindow::default();
        let t0 = Instant::now();
        for i in 0..10 {
            w.record(t0 + Duration::from_secs(i), if i < 5 { 0 } else { 4 }, Duration::from_secs(60));
        }
        let now = t0 + Duration::from_secs(9);
        assert_eq!(w.average(now, Duration::from_secs(60)), 2.0);
        assert_eq!(w.average(now, Duration::from_secs(2)), 4.0);
        w.record(t0 + Duration::from_secs(100), 1, Duration::from_secs(60));
        assert_eq!(w.average(t0 + Duration::from_secs(100), Duration::from_secs(60)), 1.0, "old samples forgotten");
    }
}
