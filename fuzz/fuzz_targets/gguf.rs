//! A GGUF file as a canister receives it: header, metadata and tensor table
//! parsed, then the model, tokenizer and chat template read from them, and
//! every tensor the model needs loaded from the file's bytes. Any input must
//! give a value or an error, never a panic, and allocate only what the file
//! could back.
#![no_main]

use icllm_engine::chat::ChatTemplate;
use icllm_engine::format::gguf::Gguf;
use icllm_engine::model::ModelLoader;
use icllm_engine::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(gguf) = Gguf::parse(bytes) else { return };
    if let Ok(tokenizer) = Tokenizer::from_gguf(&gguf) {
        let ids = tokenizer.encode("Joe loves writing stories 🦙", true);
        let _ = tokenizer.decode(&ids);
    }
    let _ = ChatTemplate::from_gguf(&gguf);
    let Ok(mut loader) = ModelLoader::new(&gguf) else { return };
    while let Some(info) = loader.next_needed() {
        let (name, range) = (info.name.clone(), info.byte_range());
        let Some(data) = bytes.get(range) else { return };
        if loader.add_tensor(&name, data).is_err() {
            return;
        }
    }
    let _ = loader.finish();
});
