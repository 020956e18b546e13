//! `fake-vllm ADDR [LOAD_MS]`: the fake vLLM of `vitals_e2e::fake_vllm` as a process of
//! its own, so the agent finds it by its port and scenarios can stop or kill it.

use std::net::TcpListener;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: fake-vllm ADDR [LOAD_MS]");
        std::process::exit(2);
    };
    let load_for = args.next().map(|ms| ms.parse().map(Duration::from_millis));
    let load_for = match load_for.transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fake-vllm: LOAD_MS: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-vllm: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("fake-vllm listening on {addr}");
    vitals_e2e::fake_vllm::serve(listener, load_for);
}
