//! The zombie children of an upstream's process (SPEC §12), over time: each child seen in
//! state `Z`, since when, for the verdict's `child_zombie` after a grace period (a server
//! that reaps its children late is never failed). A scan that failed is no evidence either
//! way; another watched process starts the record over.

use std::time::Instant;

use crate::proc::Zombie;

/// One zombie child and when it was first seen so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenZombie {
    /// The child.
    pub child: Zombie,
    /// The first scan that saw it in state `Z`.
    pub since: Instant,
}

/// The zombie children of one upstream's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zombies {
    /// Whose children: the watched pid.
    parent: Option<u32>,
    /// Every child in state `Z` in the latest scan, oldest first.
    pub seen: Vec<SeenZombie>,
    /// Why the latest scan failed, when it did.
    pub error: Option<String>,
}

impl Zombies {
    /// Takes a scan at `at` of `parent`'s children into account.
    pub fn observe(&mut self, parent: u32, at: Instant, scan: Result<Vec<Zombie>, String>) {
        if self.parent != Some(parent) {
            *self = Self {
                parent: Some(parent),
                ..Self::default()
            };
        }
        let children = match scan {
            Ok(c) => c,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        self.error = None;
        let before = std::mem::take(&mut self.seen);
        self.seen = children
            .into_iter()
            .map(|child| {
                let since = before
                    .iter()
                    .find(|s| s.child.pid == child.pid && s.child.start_time == child.start_time)
                    .map_or(at, |s| s.since);
                SeenZombie { child, since }
            })
            .collect();
        self.seen.sort_by_key(|s| (s.since, s.child.pid));
    }

    /// The child longest in state `Z`, if any.
    pub fn oldest(&self) -> Option<&SeenZombie> {
        self.seen.first()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn z(pid: u32, start_time: u64) -> Zombie {
        Zombie {
            pid,
            start_time,
            comm: "triton_python_b".into(),
        }
    }

    #[test]
    fn a_zombie_is_timed_from_the_first_scan_that_saw_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut zs = Zombies::default();
        zs.observe(7, at(0), Ok(vec![]));
        assert_eq!(zs.oldest(), None);
        zs.observe(7, at(1), Ok(vec![z(9, 5)]));
        zs.observe(7, at(2), Ok(vec![z(9, 5), z(10, 6)]));
        assert_eq!(
            zs.oldest().map(|s| (s.child.pid, s.since)),
            Some((9, at(1)))
        );
        zs.observe(7, at(3), Err("EIO".into()));
        assert_eq!(zs.oldest().map(|s| s.since), Some(at(1)), "no evidence");
        zs.observe(7, at(4), Ok(vec![z(10, 6), z(9, 8)]));
        assert_eq!(
            zs.seen
                .iter()
                .map(|s| (s.child.pid, s.since))
                .collect::<Vec<_>>(),
            [(10, at(2)), (9, at(4))],
            "pid 9 reaped and reused by another zombie"
        );
        zs.observe(7, at(5), Ok(vec![]));
        assert_eq!(zs.oldest(), None, "reaped");
        zs.observe(7, at(6), Ok(vec![z(9, 5)]));
        zs.observe(8, at(7), Ok(vec![z(9, 5)]));
        assert_eq!(zs.oldest().map(|s| s.since), Some(at(7)), "another process");
    }
}
