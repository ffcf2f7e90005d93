//! Writes the F32 synthetic llama of the quantization tests (every matrix
//! dimension a multiple of 256) to the path given, for
//! tools/reference/make-llama-quantize-references.py.
//!
//!     cargo run --release -p icllm-engine --example write-synth-256 -- OUT.gguf

#[path = "../tests/common/quant_models.rs"]
mod quant_models;

use icllm_engine::synth::QuantMix;
use icllm_engine::tensor::GgmlType;

fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: write-synth-256 OUT.gguf");
        std::process::exit(2);
    };
    let bytes = quant_models::synth_256_bytes(QuantMix::Uniform(GgmlType::F32));
    std::fs::write(&out, bytes).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
}
