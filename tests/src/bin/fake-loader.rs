//! `fake-loader MODE [TAG]`: a model server stuck or busy loading, that never listens, for
//! the load-progress rule of SPEC §12. Each mode shows one sign of work, as real loads do:
//! - `memory`: resident memory grows (weights copied into RAM: unsloth PR #5017 reads load
//!   progress from VmRSS), 1 MiB written every 100 ms;
//! - `cpu`: CPU time burns, 20 ms every 100 ms, nothing else (a tokenizer build, a
//!   `torch.compile`, NCCL's init spinning);
//! - `read`: bytes are read (safetensors streamed from a volume), the same 1 MiB file
//!   again and again into one buffer;
//! - `nothing`: sleeps (a load wedged on a dead volume, KServe #5062): the only one that is
//!   stuck.
//!
//! `TAG` is ignored: it makes a scenario's command line its own, as a pod's container's is.

use std::io::{Read as _, Seek as _};
use std::time::{Duration, Instant};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "memory" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                // Written, so every page is resident.
                held.push(vec![1u8; 1 << 20]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        "cpu" => loop {
            let until = Instant::now() + Duration::from_millis(20);
            let mut x = 0u64;
            while Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            std::thread::sleep(Duration::from_millis(80));
        },
        "read" => {
            let path = std::env::temp_dir().join(format!("fake-loader-{}", std::process::id()));
            std::fs::write(&path, vec![7u8; 1 << 20]).expect("write the weights file");
            let mut file = std::fs::File::open(&path).expect("open the weights file");
            let mut buf = vec![0u8; 1 << 20];
            loop {
                file.rewind().expect("rewind");
                file.read_exact(&mut buf).expect("read the weights file");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        "nothing" => loop {
            std::thread::park();
        },
        other => {
            eprintln!("fake-loader: unknown mode {other:?} (memory, cpu, read, nothing)");
            std::process::exit(2);
        }
    }
}
