#!/usr/bin/env python3
"""Reference outputs of llama.cpp for the engine tests' tiny lfm2 model
(stories260K rewritten as LFM2: conv, conv, attention, conv, attention),
F32 and Q8_0, into testdata/lfm2/: each file's SHA-256 (the test checks it
made the same bytes), the prompt, the last position's logits (all 512), the
argmax at every prompt position and 16 greedy ids with each step's top-2 lead.

    cargo run --release -p icllm-engine --example write-lfm2-tiny -- /tmp/lfm2-f32.gguf
    cargo run --release -p icllm-engine --example write-lfm2-tiny -- /tmp/lfm2-q8_0.gguf q8_0
    PYTHONPATH=tools/reference v/bin/python tools/reference/make-lfm2-reference.py \\
        /tmp/lfm2-f32.gguf /tmp/lfm2-q8_0.gguf testdata/lfm2/lfm2-tiny-llama-cpp.json

with the venv of make-gemma3-reference.py (llama-cpp-python 0.3.36).
Greedy steps evaluate one token at a time on the model's own state (no
sampler): llama.cpp keeps the conv layers' state between evaluations.
"""
import hashlib, json, sys

import numpy as np

import llama_reference

PROMPT = [1] + [1 + (i * 37 + 11) % 500 for i in range(39)]
GREEDY = 16


def run(path):
    llm = llama_reference.load(path, n_ctx=128, n_threads=1)
    scores, gen, leads, row = llama_reference.prompt_and_greedy(llm, PROMPT, GREEDY)
    last = scores[-1]
    return {"sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
            "argmax": [int(i) for i in scores.argmax(axis=1)],
            "last_logits": [float(x) for x in last],
            "greedy": gen, "greedy_lead": leads}


out = {"source": "llama-cpp-python 0.3.36 (its vendored llama.cpp), CPU, no weight repacking, f32 KV cache, n_threads 1",
       "model": "the lfm2 test model of src/engine/tests/common/lfm2_tiny.rs (examples/write-lfm2-tiny.rs)",
       "prompt": PROMPT, "f32": run(sys.argv[1]), "q8_0": run(sys.argv[2])}
for k in ("f32", "q8_0"):
    print(k, out[k]["argmax"][-4:], out[k]["greedy"], file=sys.stderr)
json.dump(out, open(sys.argv[3], "w"), indent=1)
