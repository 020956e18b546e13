//! `soak`: the seeded fault soak (`make soak`). `SOAK_SEED` (default: from the clock,
//! printed), `SOAK_S` (default 180), `SOAK_KEEP=dir` keeps the records and logs,
//! `SOAK_REPLAY=dir` judges kept records without running anything. Prints a table per fault
//! kind and a summary line; exits 1 on any problem, 2 on bad input.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use vitals_e2e::soak::{soak, Env};

/// `make soak`'s default length: a few minutes.
const DEFAULT_SECS: f64 = 180.0;

fn main() -> ExitCode {
    let clock_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let env = match Env::read(clock_seed, DEFAULT_SECS) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    if env.replay.is_none() {
        eprintln!(
            "soak: seed {} for {} s (SOAK_SEED={} SOAK_S={} repeats it){}",
            env.seed,
            env.secs,
            env.seed,
            env.secs,
            env.keep.as_ref().map_or(String::new(), |d| format!(
                ", keeping the records in {}",
                d.display()
            ))
        );
    }
    match soak(&env) {
        Ok((report, passed)) => {
            print!("{report}");
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}
