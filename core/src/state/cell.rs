//! The one copy-on-write cell of the agent's shared state (the registry, a leader's group):
//! writers apply in-memory updates under a lock held for that work only; readers get the
//! current value as an immutable `Arc` for the cost of a reference count, so a probe never
//! waits for rendering, metrics or another probe. An update while readers still hold the old
//! value copies it first, which keeps every reader's snapshot consistent.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A value read as `Arc` snapshots and written copy-on-write.
#[derive(Debug, Default)]
pub struct CowCell<T> {
    current: Mutex<Arc<T>>,
}

impl<T: Clone> CowCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            current: Mutex::new(Arc::new(value)),
        }
    }

    /// The value as of now; later updates do not change it.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.lock())
    }

    /// Applies `change`, which must be plain in-memory work: no I/O, no await, no rendering.
    pub fn update<R>(&self, change: impl FnOnce(&mut T) -> R) -> R {
        change(Arc::make_mut(&mut self.lock()))
    }

    fn lock(&self) -> MutexGuard<'_, Arc<T>> {
        // Updates are in-memory assignments; a panic mid-update (a bug) would at worst leave
        // one entry half-new, which the next update fixes: the value stays usable.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_its_snapshot_while_writers_move_on() {
        let cell = CowCell::new(vec![1]);
        let before = cell.current();
        cell.update(|v| v.push(2));
        assert_eq!(*before, [1]);
        assert_eq!(*cell.current(), [1, 2]);
    }
}
