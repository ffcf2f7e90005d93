//! Writes the phi3 test files (stories260K rewritten as phi3, see
//! tests/common/phi3_models.rs) into the directory given, as
//! `phi3-f32.gguf`, `phi3-longrope-f32.gguf` and `phi3-q8_0.gguf`, for
//! tools/reference/make-phi3-reference.py.
//!
//!     cargo run --release -p icllm-engine --example write-phi3-tests -- DIR

#[path = "../tests/common/phi3_models.rs"]
mod phi3_models;

use phi3_models::Phi3File;
use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write-phi3-tests DIR");
        std::process::exit(2);
    };
    for file in Phi3File::ALL {
        let path = dir.join(format!("{}.gguf", file.name()));
        std::fs::write(&path, file.bytes()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("{}", path.display());
    }
}
