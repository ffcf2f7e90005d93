//! Writes the lfm2 test model (F32, and quantized with `--quant MIX`) to the
//! path given, for tools/reference/make-lfm2-reference.py.
//!
//!     cargo run --release -p icllm-engine --example write-lfm2-tiny -- OUT.gguf [q8_0]

#[path = "../tests/common/lfm2_tiny.rs"]
mod lfm2_tiny;

use icllm_engine::synth::QuantMix;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: write-lfm2-tiny OUT.gguf [MIX]");
        std::process::exit(2);
    };
    let mix = args
        .get(1)
        .map(|m| QuantMix::parse(m).unwrap_or_else(|| panic!("unknown mix {m}")));
    std::fs::write(out, lfm2_tiny::lfm2_tiny_bytes(mix)).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
}
