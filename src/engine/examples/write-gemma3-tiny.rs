//! Writes the tiny gemma3 test files (stories260K rewritten as gemma3, see
//! tests/common/gemma3_tiny.rs) into the directory given, as
//! `gemma3-tiny-f32.gguf` and `gemma3-tiny-q8_0.gguf`, for
//! tools/reference/make-gemma3-tiny-reference.py.
//!
//!     cargo run --release -p icllm-engine --example write-gemma3-tiny -- DIR

#[path = "../tests/common/gemma3_tiny.rs"]
mod gemma3_tiny;

use gemma3_tiny::Gemma3File;
use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write-gemma3-tiny DIR");
        std::process::exit(2);
    };
    for file in Gemma3File::ALL {
        let path = dir.join(format!("{}.gguf", file.name()));
        std::fs::write(&path, file.bytes()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("{}", path.display());
    }
}
