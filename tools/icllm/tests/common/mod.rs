//! What several CLI test files share: the model cache and a replica process.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A real model that `tools/fetch-models` put in the cache
/// (`$ICLLM_MODEL_CACHE`, else `~/.cache/icllm/models`), if it is there.
pub fn cached_model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("ICLLM_MODEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/icllm/models")))?;
    let path = dir.join(file);
    path.exists().then_some(path)
}

/// `icllm replica --port 0`, killed on drop.
pub struct ReplicaProcess {
    child: Child,
    pub url: String,
}

impl ReplicaProcess {
    /// Starts it and waits for its `listening on` line.
    pub fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_icllm"))
            .args(["replica", "--port", "0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("icllm replica starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = lines
            .by_ref()
            .find_map(|l| l.ok()?.strip_prefix("listening on ").map(str::to_string))
            .expect("the replica says where it listens");
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// llama.cpp on gemma-3-270m (testdata/gemma3, made by
/// tools/reference/make-gemma3-reference.py).
pub fn gemma3_reference() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/gemma3/gemma3-270m-llama-cpp.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The greedy steps llama.cpp decides by a top-2 lead of at least 0.2:
/// the ones a port with other rounding must reproduce.
pub fn clear_steps(case: &serde_json::Value) -> usize {
    case["greedy_margin"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|m| m.as_f64().unwrap() >= 0.2)
        .count()
}
