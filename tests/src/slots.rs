//! How many scenarios run at once: each one holds a slot while its pod runs, so parallel
//! test threads do not overload a small CI machine and skew the latencies they measure.
//!
//! Light scenarios share the machine (up to `VITALS_E2E_PARALLEL`, default 2); scenarios
//! that put the worker under load take it whole. Exclusive waiters go first, so a stream of
//! light scenarios cannot starve them.

use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Debug, Default)]
struct State {
    shared: usize,
    exclusive: bool,
    exclusive_waiting: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    shared: 0,
    exclusive: false,
    exclusive_waiting: 0,
});
static CHANGED: Condvar = Condvar::new();

fn capacity() -> usize {
    std::env::var("VITALS_E2E_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1)
}

/// A held slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    exclusive: bool,
}

/// Waits for a shared slot.
pub fn shared() -> Slot {
    let cap = capacity();
    let mut s = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    while s.exclusive || s.exclusive_waiting > 0 || s.shared >= cap {
        s = CHANGED.wait(s).unwrap_or_else(PoisonError::into_inner);
    }
    s.shared += 1;
    Slot { exclusive: false }
}

/// Waits until no other scenario runs, then holds the machine alone.
pub fn exclusive() -> Slot {
    let mut s = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    s.exclusive_waiting += 1;
    while s.exclusive || s.shared > 0 {
        s = CHANGED.wait(s).unwrap_or_else(PoisonError::into_inner);
    }
    s.exclusive_waiting -= 1;
    s.exclusive = true;
    Slot { exclusive: true }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = STATE.lock().unwrap_or_else(PoisonError::into_inner);
        if self.exclusive {
            s.exclusive = false;
        } else {
            s.shared -= 1;
        }
        CHANGED.notify_all();
    }
}
