//! vitals-worker
fn main() {}
