//! `fake-vllm ADDR [LOAD_MS] [--llamacpp [--api-key KEY] [--counter-base N]] [--triton]`:
//! the fake vLLM (or, with `--llamacpp`, the fake llama.cpp of `vitals_e2e::fake_vllm`;
//! with `--triton`, the fake Triton of `vitals_e2e::fake_triton`) as a process of its own,
//! so the agent finds it by its port and scenarios can stop or kill it.

use std::net::TcpListener;
use std::time::Duration;

use vitals_e2e::fake_vllm::LlamaOptions;

fn usage(problem: &str) -> ! {
    eprintln!("fake-vllm: {problem}");
    eprintln!("usage: fake-vllm ADDR [LOAD_MS] [--llamacpp [--api-key KEY] [--counter-base N]] [--triton]");
    std::process::exit(2);
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
    let (mut load_for, mut llama, mut triton) = (None, None::<LlamaOptions>, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamacpp" => llama = Some(LlamaOptions::default()),
            "--triton" => triton = true,
            "--api-key" => {
                let key = args.next().unwrap_or_else(|| usage("--api-key KEY"));
                llama.get_or_insert_with(LlamaOptions::default).api_key = Some(key);
            }
            "--counter-base" => {
                let n = args.next().and_then(|n| n.parse().ok());
                llama.get_or_insert_with(LlamaOptions::default).counter_base =
                    n.unwrap_or_else(|| usage("--counter-base N"));
            }
            ms => match ms.parse() {
                Ok(ms) => load_for = Some(Duration::from_millis(ms)),
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
                load_for,
                ..options
            },
        ),
        None => vitals_e2e::fake_vllm::serve(listener, load_for),
    }
}
