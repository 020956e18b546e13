//! vitals-worker: a BERT sentence-embedding server (candle) that reports its lifecycle to
//! the Vitals agent. The binary in `main.rs` only parses the command line and calls
//! [`run`]; tests call the same `run` with a bound port and a temp-dir socket.

pub mod model;
