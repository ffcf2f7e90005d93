#!/usr/bin/env python3
"""Reference outputs of llama.cpp for the phi3 test files (stories260K
rewritten as llama.cpp's converter writes Phi-3: fused attn_qkv and ffn_up,
see src/engine/tests/common/phi3_models.rs): for each file, its SHA-256, the
prompt's token ids, the last position's logits (all 512), the argmax at
every prompt position, and a greedy continuation of 16 tokens with each
step's top-2 lead. For the LongRoPE file, also the last logits with a
context above its original length (llama.cpp then rotates with the long
factors). Into testdata/phi3/.

    python3 -m venv v && v/bin/pip install llama-cpp-python==0.3.36 numpy
    cargo run --release -p icllm-engine --example write-phi3-tests -- /tmp/phi3
    PYTHONPATH=tools/reference v/bin/python tools/reference/make-phi3-reference.py \
        /tmp/phi3 testdata/phi3/phi3-llama-cpp.json

pip builds llama.cpp from the llama-cpp-python source package (about 25
minutes on 2 cores). Nothing built, and no model file, is committed.
"""
import hashlib, json, os, sys

import numpy as np

import llama_reference

DIR, OUT = sys.argv[1:3]
FILES = ["phi3-f32", "phi3-longrope-f32", "phi3-q8_0"]
TEXT = "Once upon a time, there was a little girl named Lily. She loved to play"
# At most the LongRoPE file's original context (256): llama.cpp uses the
# short factors.
N_CTX = 256
GREEDY = 16


def last_logits(llm, toks):
    llm.reset()
    llm.eval(toks)
    return np.array(llm.scores[len(toks) - 1]), [int(np.argmax(llm.scores[i])) for i in range(len(toks))]


cases = []
for name in FILES:
    path = os.path.join(DIR, name + ".gguf")
    llm = llama_reference.load(path, n_ctx=N_CTX, n_threads=2)
    toks = llm.tokenize(TEXT.encode(), add_bos=True, special=False)
    lg, argmaxes = last_logits(llm, toks)
    gen, margins = [], []
    for t in llm.generate(toks, top_k=1, temp=0.0, reset=True):
        # The logits this token was picked from, and their top-2 lead.
        row = np.array(llm.scores[llm.n_tokens - 1])
        assert int(np.argmax(row)) == t
        margins.append(round(float(np.diff(np.sort(row)[-2:])[0]), 5))
        gen.append(int(t))
        if len(gen) == GREEDY:
            break
    case = {"name": name, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(), "n_ctx": N_CTX,
            "ids": [int(t) for t in toks], "argmax": argmaxes,
            "logits": [round(float(x), 5) for x in lg], "greedy": gen, "greedy_margin": margins}
    del llm
    if "longrope" in name:
        llm = llama_reference.load(path, n_ctx=2 * N_CTX, n_threads=2)
        long_lg, _ = last_logits(llm, toks)
        case["logits_long_factors"] = [round(float(x), 5) for x in long_lg]
        del llm
    cases.append(case)
    print(name, len(toks), gen[:8], file=sys.stderr)
json.dump({"source": "llama-cpp-python 0.3.36 (its vendored llama.cpp), CPU, no weight repacking, f32 KV cache, n_threads 2",
           "text": TEXT, "cases": cases}, open(OUT, "w"), indent=1)
