#!/usr/bin/env python3
"""Reference outputs of llama.cpp for the engine tests' tiny gemma3 files
(stories260K rewritten as gemma3: q/k norms, post-attention and post-FFN
norms, a sliding window of 8 on layers 0, 1, 3 and 4, layer 2 global with
its own RoPE base, tied output; see src/engine/tests/common/gemma3_tiny.rs),
F32 and Q8_0: for each file, its SHA-256 (the test checks it made the same
bytes), the prompt's ids (40, five times the window), the argmax at every
prompt position with its top-2 lead, the last position's logits (all
512), 16 greedy ids with each step's top-2 lead, and the logits after the
16th greedy id (position 55: decoding well past the window). Into
testdata/gemma3/.

    cargo run --release -p icllm-engine --example write-gemma3-tiny -- /tmp/gemma3
    PYTHONPATH=tools/reference v/bin/python tools/reference/make-gemma3-tiny-reference.py \\
        /tmp/gemma3 testdata/gemma3/gemma3-tiny-llama-cpp.json

with the venv of make-gemma3-reference.py (llama-cpp-python 0.3.36).
Greedy steps evaluate one token at a time and take the argmax of the
logits (no sampler). Nothing built, and no model file, is committed.
"""
import hashlib, json, os, sys

import numpy as np

import llama_reference

DIR, OUT = sys.argv[1:3]
FILES = ["gemma3-tiny-f32", "gemma3-tiny-q8_0"]
PROMPT = [1] + [1 + (i * 37 + 11) % 500 for i in range(39)]
N_CTX = 128
GREEDY = 16


def run(path):
    llm = llama_reference.load(path, n_ctx=N_CTX, n_threads=1)
    scores, gen, leads, row = llama_reference.prompt_and_greedy(llm, PROMPT, GREEDY)
    last = scores[-1]
    return {"sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(), "n_ctx": N_CTX,
            "ids": PROMPT, "argmax": [int(i) for i in scores.argmax(axis=1)],
            "argmax_lead": [round(float(r[-1] - r[-2]), 5) for r in np.sort(scores, axis=1)],
            "logits": [float(x) for x in last], "greedy": gen, "greedy_margin": leads,
            "logits_after_greedy": [float(x) for x in row]}


cases = []
for name in FILES:
    case = {"name": name, **run(os.path.join(DIR, name + ".gguf"))}
    cases.append(case)
    print(name, case["argmax"][-4:], case["greedy"], min(case["greedy_margin"]), file=sys.stderr)
json.dump({"source": "llama-cpp-python 0.3.36 (its vendored llama.cpp), CPU, no weight repacking, f32 KV cache, n_threads 1",
           "model": "the tiny gemma3 files of src/engine/tests/common/gemma3_tiny.rs (examples/write-gemma3-tiny.rs)",
           "cases": cases}, open(OUT, "w"), indent=1)
