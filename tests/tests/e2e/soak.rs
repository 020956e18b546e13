//! The seeded fault soak, short (issue 26): 60 s of overlapping faults on two protocol
//! workers and three fake vLLMs, and agent kills and stops, judged by `vitals_e2e::soak`.
//! `SOAK_SEED` / `SOAK_S` / `SOAK_KEEP` change it as they change `make soak`.

use vitals_e2e::report::report_line;
use vitals_e2e::slots;
use vitals_e2e::soak::{soak, Env};

/// The short run's default seed: fixed, so a failure in CI is a seed to repeat.
const SEED: u64 = 26;
/// About a minute, as `make test` can afford.
const SECS: f64 = 60.0;

#[test]
fn soak_60s() {
    // Its own machine: it judges latency and timing against the starvation it measures, and
    // it is many processes at once.
    let _slot = slots::exclusive();
    let env = Env::read(SEED, SECS).unwrap_or_else(|e| panic!("{e}"));
    assert!(env.replay.is_none(), "SOAK_REPLAY is for the soak binary");
    let (report, passed) = soak(&env).unwrap_or_else(|e| panic!("{e}"));
    for line in report.lines() {
        report_line(line);
    }
    assert!(
        passed,
        "the soak found problems (above); SOAK_KEEP=dir keeps the records"
    );
}
