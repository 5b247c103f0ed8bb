//! One uid per function: the kernel's per-user limits (inotify instances,
//! pending signals, message queues, pipe buffers) and permission checks
//! between processes then separate functions instead of pooling them all
//! under one shared uid.
//!
//! A function's uid is derived from the sandbox scope (the data dir) and
//! its name, so it is the same across restarts and differs between two
//! flicks on one host; a collision within one flick moves the later
//! function to the next free uid of the range. The group is the same
//! number. Files on the host are never owned by these uids (code is
//! read-only, `/tmp` is per instance), so a uid that moves is harmless.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Mutex;

/// Assigns uids from a range, once per function name.
#[derive(Debug)]
pub struct Uids {
    scope: String,
    range: RangeInclusive<u32>,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    by_name: HashMap<String, u32>,
    by_uid: HashMap<u32, String>,
}

impl Uids {
    pub fn new(scope: &str, range: RangeInclusive<u32>) -> Self {
        Self { scope: scope.to_string(), range, taken: Mutex::default() }
    }

    pub fn range(&self) -> &RangeInclusive<u32> {
        &self.range
    }

    /// The uid of `function`; `None` once every uid of the range is taken.
    pub fn uid_for(&self, function: &str) -> Option<u32> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(uid) = taken.by_name.get(function) {
            return Some(*uid);
        }
        let (first, last) = (*self.range.start(), *self.range.end());
        let size = u64::from(last.checked_sub(first)?) + 1;
        let start = fnv1a(self.scope.as_bytes(), function.as_bytes()) % size;
        let uid = (0..size.min(1 << 20))
            .map(|i| first + ((start + i) % size) as u32)
            .find(|uid| !taken.by_uid.contains_key(uid))?;
        taken.by_name.insert(function.to_string(), uid);
        taken.by_uid.insert(uid, function.to_string());
        Some(uid)
    }
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0u8].iter()).chain(b) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_name_and_scope() {
        let a = Uids::new("scope-a", 200_000..=265_535);
        let again = Uids::new("scope-a", 200_000..=265_535);
        let other = Uids::new("scope-b", 200_000..=265_535);
        let uid = a.uid_for("hello").unwrap();
        assert!(a.range().contains(&uid));
        assert_eq!(a.uid_for("hello"), Some(uid));
        assert_eq!(again.uid_for("hello"), Some(uid), "same scope and name, same uid after a restart");
        assert_ne!(other.uid_for("hello"), Some(uid), "another data dir gets another uid");
    }

    #[test]
    fn collisions_move_to_a_free_uid_and_the_range_is_never_left() {
        // Four uids for six names: the first four are distinct, then none.
        let uids = Uids::new("s", 300..=303);
        let got: Vec<_> = ["a", "b", "c", "d"].iter().map(|n| uids.uid_for(n).unwrap()).collect();
        let mut distinct = got.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct, vec![300, 301, 302, 303]);
        assert_eq!(uids.uid_for("e"), None);
        assert_eq!(uids.uid_for("c"), Some(got[2]), "a known name keeps its uid");
    }
}
