//! `Config::defaults()` and the environment: the built-in defaults of `run`, whatever
//! `VITALS_*` variables the embedding process has, bad ones included. The only test of
//! this binary: it sets the process environment, which tests running as threads of one
//! process could not share.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use vitals_agent::config::Config;
use vitals_proto::env;

#[test]
fn defaults_ignore_the_environment_even_a_bad_value() {
    std::env::set_var(env::STALL_TIMEOUT, "soon");
    std::env::set_var(env::LISTEN, "127.0.0.1:1");
    let c = Config::defaults().expect("the built-in defaults, whatever the environment");
    assert_eq!(c.listen, "[::]:9180".parse().unwrap());
    assert_eq!(c.thresholds.stall, Duration::from_secs(30));
}
