//! The host-wide budget: how many instances, and how much memory, all pools
//! together may hold. A pool reserves before it starts an instance and
//! releases when the instance stops, so one busy function cannot take the
//! whole machine.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Clone, Copy, Debug)]
pub struct BudgetLimits {
    pub max_instances: u32,
    /// Bytes of instance memory (the sum of manifests' `memory`).
    pub max_memory: u64,
}

#[derive(Debug)]
pub struct Budget {
    limits: BudgetLimits,
    used: Mutex<(u32, u64)>,
    /// Woken when something is released.
    pub freed: Notify,
    /// Set when a reservation failed: the reaper then evicts idle instances.
    pressure: AtomicBool,
}

impl Budget {
    pub fn new(limits: BudgetLimits) -> Self {
        Self { limits, used: Mutex::new((0, 0)), freed: Notify::new(), pressure: AtomicBool::new(false) }
    }

    /// Reserves room for one instance of `memory` bytes, if there is any.
    pub fn try_reserve(&self, memory: u64) -> bool {
        let mut used = self.used.lock();
        if used.0 < self.limits.max_instances && used.1 + memory <= self.limits.max_memory {
            used.0 += 1;
            used.1 += memory;
            true
        } else {
            self.pressure.store(true, Ordering::Relaxed);
            false
        }
    }

    pub fn release(&self, memory: u64) {
        {
            let mut used = self.used.lock();
            used.0 = used.0.saturating_sub(1);
            used.1 = used.1.saturating_sub(memory);
        }
        self.freed.notify_waiters();
    }

    /// Was a reservation refused since the last call?
    pub fn take_pressure(&self) -> bool {
        self.pressure.swap(false, Ordering::Relaxed)
    }

    pub fn used(&self) -> (u32, u64) {
        *self.used.lock()
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_within_both_limits_and_reports_pressure() {
        let b = Budget::new(BudgetLimits { max_instances: 2, max_memory: 300 });
        assert!(b.try_reserve(100));
        assert!(b.try_reserve(100));
        assert!(!b.try_reserve(100), "instance count is the bound");
        assert!(b.take_pressure());
        assert!(!b.take_pressure());
        b.release(100);
        assert!(!b.try_reserve(250), "memory is the bound");
        assert!(b.try_reserve(200));
        assert_eq!(b.used(), (2, 300));
    }
}
