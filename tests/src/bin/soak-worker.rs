//! `soak-worker SOCKET NAME CONTROL HEARTBEAT_MS`: a protocol worker for the soak, in a
//! process of its own, reporting through the protocol's own `Reporter` (hello, phase
//! `ready`, heartbeats, reconnects after an agent restart). Its "inference loop" ticks every
//! 20 ms; the file CONTROL, read every tick, names its mode:
//!
//! - `run` (or no file): ticking, heartbeats going;
//! - `freeze`: the loop stops (progress frozen) while heartbeats go on (`loop_stalled`);
//! - `mute`: heartbeats stop while the connection stays open (`heartbeat_timeout`);
//! - `stuck_load`: phase `loading` with `progress.done` frozen (`load_stalled`); leaving it
//!   says `ready` again.

use std::path::PathBuf;
use std::time::Duration;

use vitals_proto::message::Progress;
use vitals_proto::{Phase, Reporter, ReporterConfig, WorkerName};

/// The loop's tick.
const TICK: Duration = Duration::from_millis(20);

fn usage(problem: &str) -> ! {
    eprintln!("soak-worker: {problem}");
    eprintln!("usage: soak-worker SOCKET NAME CONTROL HEARTBEAT_MS");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, name, control, heartbeat_ms] = args.as_slice() else {
        usage("four arguments expected")
    };
    let name = WorkerName::parse(name.as_str()).unwrap_or_else(|e| usage(&format!("NAME: {e}")));
    let heartbeat = heartbeat_ms
        .parse()
        .map(Duration::from_millis)
        .unwrap_or_else(|e| usage(&format!("HEARTBEAT_MS: {e}")));
    let control = PathBuf::from(control);
    let mut config = ReporterConfig::new(socket, name, "soak");
    config.heartbeat = heartbeat;
    let reporter = Reporter::start(config).unwrap_or_else(|e| {
        eprintln!("soak-worker: cannot start the reporter thread: {e}");
        std::process::exit(1);
    });
    reporter.set_phase(Phase::Ready, "soak", None);
    let counters = reporter.counters();
    let mut mode = String::from("run");
    loop {
        std::thread::sleep(TICK);
        // A missing or unreadable file is `run`: the soak writes it by rename, whole.
        let wanted = std::fs::read_to_string(&control)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "run".into());
        if wanted != mode {
            println!("soak-worker: mode {mode} -> {wanted}");
            reporter.pause_heartbeats(wanted == "mute");
            if wanted == "stuck_load" {
                let stuck = Progress {
                    done: 1,
                    total: Some(2),
                    unit: "shards".into(),
                };
                reporter.set_phase(Phase::Loading, "stuck", Some(stuck));
            } else if mode == "stuck_load" {
                reporter.set_phase(Phase::Ready, "soak", None);
            }
            mode = wanted;
        }
        if mode != "freeze" {
            counters.tick();
        }
    }
}
