//! `icllm convert`: a Hugging Face checkpoint directory (config.json,
//! *.safetensors, tokenizer.json, tokenizer_config.json, maybe
//! chat_template.jinja) written as one GGUF file, the format the canister
//! loads. Tensor types are kept (BF16 stays BF16) unless `--quant` asks for
//! another type for the 2-D weights (norms and biases stay F32). The
//! engine's `format::convert` does the work; see it for what is written.
//!
//! The file is written next to the output under a temporary name and
//! renamed when complete, so a failed conversion leaves no partial file.

use anyhow::{bail, Context};
use icllm_engine::format::convert::{convert_dir, ConvertOptions};
use icllm_engine::synth::QuantMix;
use std::io::BufWriter;
use std::path::PathBuf;

use crate::model_files::{describe_conversion, threads, ModelPath};

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Hugging Face checkpoint directory.
    pub dir: PathBuf,
    /// The GGUF file to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Quantize the 2-D weights: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0,
    /// q5_1, iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k, or llama.cpp's
    /// mixes q3_k_m, q4_k_m and q5_k_m (with its fallbacks for rows that are not whole K-quant
    /// blocks). Default: the checkpoint's types.
    #[arg(long)]
    pub quant: Option<String>,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let ModelPath::HfDir(dir) = ModelPath::new(&args.dir)? else {
        bail!(
            "{} is not a directory: convert takes a Hugging Face checkpoint directory (a GGUF file needs no conversion)",
            args.dir.display()
        );
    };
    let quant = match &args.quant {
        None => None,
        Some(name) => Some(
            QuantMix::parse(name).with_context(|| format!("unknown --quant {name:?} (known: {})", QuantMix::NAMES))?,
        ),
    };
    let opts = ConvertOptions {
        quant,
        threads: threads(),
    };
    let file_name = args
        .output
        .file_name()
        .with_context(|| format!("{} is not a file name", args.output.display()))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".partial");
    let tmp = args.output.with_file_name(tmp_name);
    let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let result = convert_dir(&dir, &opts, &mut out);
    drop(out);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot convert {}", dir.display()));
        }
    };
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), args.output.display()))?;
    eprintln!(
        "wrote {}: {}",
        args.output.display(),
        describe_conversion(&summary.plan, summary.bytes)
    );
    Ok(())
}
