//! Vitals end-to-end test harness.
