//! `fake-vllm ADDR [LOAD_MS] [--engines N] [--sleep-idle-ttl S] [--llamacpp [--api-key
//! KEY] [--counter-base N] [--sleep-idle-seconds S] [--metrics-snapshot]] [--triton]`: the
//! fake vLLM (or, with `--llamacpp`, the fake llama.cpp) of `vitals_e2e::fake_vllm`, or
//! with `--triton` the fake Triton of `vitals_e2e::fake_triton`, as a process of its own,
//! so the agent finds it by its port and scenarios can stop or kill it.

use std::net::TcpListener;
use std::time::Duration;

use vitals_e2e::fake_vllm::{LlamaOptions, VllmOptions};

fn usage(problem: &str) -> ! {
    eprintln!("fake-vllm: {problem}");
    eprintln!(
        "usage: fake-vllm ADDR [LOAD_MS] [--engines N] [--sleep-idle-ttl S] [--llamacpp [--api-key KEY] [--counter-base N] [--sleep-idle-seconds S] [--metrics-snapshot]] [--triton]"
    );
    std::process::exit(2);
}

/// The number after `flag`.
fn number<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, flag: &str) -> T {
    args.next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(vitals_e2e::fake_triton::STUB_ARG) {
        // The fake Triton's Python-backend stub: lives until killed.
        loop {
            std::thread::park();
        }
    }
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        usage("ADDR missing")
    };
    let (mut vllm, mut llama, mut triton) = (VllmOptions::default(), None::<LlamaOptions>, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamacpp" => llama = Some(LlamaOptions::default()),
            "--triton" => triton = true,
            "--api-key" => {
                let key = args.next().unwrap_or_else(|| usage("--api-key KEY"));
                llama.get_or_insert_with(LlamaOptions::default).api_key = Some(key);
            }
            "--counter-base" => {
                llama.get_or_insert_with(LlamaOptions::default).counter_base =
                    number(&mut args, "--counter-base");
            }
            "--sleep-idle-seconds" => {
                let s: f64 = number(&mut args, "--sleep-idle-seconds");
                llama.get_or_insert_with(LlamaOptions::default).sleep_idle =
                    (s >= 0.0).then(|| Duration::from_secs_f64(s));
            }
            "--metrics-snapshot" => {
                llama
                    .get_or_insert_with(LlamaOptions::default)
                    .metrics_snapshot = true;
            }
            "--engines" => vllm.engines = number(&mut args, "--engines"),
            "--sleep-idle-ttl" => {
                let s: f64 = number(&mut args, "--sleep-idle-ttl");
                vllm.sleep_idle_ttl = Some(Duration::from_secs_f64(s));
            }
            ms => match ms.parse() {
                Ok(ms) => vllm.load_for = Some(Duration::from_millis(ms)),
                Err(e) => usage(&format!("LOAD_MS: {e}")),
            },
        }
    }
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-vllm: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("fake-vllm listening on {addr}");
    if triton {
        return vitals_e2e::fake_triton::serve_triton(listener);
    }
    match llama {
        Some(options) => vitals_e2e::fake_vllm::serve_llamacpp(
            listener,
            LlamaOptions {
                load_for: vllm.load_for,
                ..options
            },
        ),
        None => vitals_e2e::fake_vllm::serve(listener, vllm),
    }
}
