//! A Hugging Face checkpoint as `icllm convert` reads it: `config.json` and
//! one `model.safetensors`, given as the config's text, a NUL byte, then the
//! safetensors file. The config is resolved, the shard header parsed and
//! every tensor the loader asks for loaded.
#![no_main]

use icllm_engine::format::hf::{HfConfig, HfLoader, ShardHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let split = input.iter().position(|&b| b == 0).unwrap_or(input.len());
    let (config, shard) = (&input[..split], input.get(split + 1..).unwrap_or_default());
    let Ok(config) = std::str::from_utf8(config) else { return };
    if let Ok(hf) = HfConfig::from_json(config) {
        let _ = hf.resolve();
    }
    let Ok(header) = ShardHeader::parse("model.safetensors", shard, shard.len() as u64) else { return };
    let Ok(mut loader) = HfLoader::new(config, &[header]) else { return };
    while let Some(source) = loader.next_needed() {
        let (name, range) = (source.hf_name.clone(), source.range.clone());
        let Some(data) = shard.get(range.start as usize..range.end as usize) else { return };
        if loader.add_tensor(&name, data).is_err() {
            return;
        }
    }
    let _ = loader.finish();
});
