//! vitals-agent
fn main() {}
