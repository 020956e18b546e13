//! The `vitals-worker` binary's command line: a bad value from a `VITALS_*` variable is
//! refused with exit code 2 and a message naming the variable (the flag was never typed),
//! whether clap refuses it or the worker's own checks do.

use std::process::Command;

use vitals_proto::env;

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    // Not a number (clap refuses it), then zero (the worker's own check refuses it).
    for value in ["many", "0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vitals-worker"))
            .env(env::MAX_BATCH_SIZE, value)
            .output()
            .expect("the worker binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains("--max-batch-size"), "{value}: {stderr}");
        assert!(stderr.contains(env::MAX_BATCH_SIZE), "{value}: {stderr}");
    }
}
