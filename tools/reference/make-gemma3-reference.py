#!/usr/bin/env python3
"""Reference outputs of llama.cpp for a GGUF file (written for gemma-3-270m
Q4_K_M): each prompt's token ids, the 64 highest last-position logits and a
greedy continuation of 24 tokens with each step's top-2 margin, into
testdata/gemma3/.

    python3 -m venv v && v/bin/pip install llama-cpp-python==0.3.36 numpy
    v/bin/python tools/reference/make-gemma3-reference.py MODEL.gguf OUT.json

pip builds llama.cpp from the llama-cpp-python source package (cmake and a
C compiler; about 25 minutes on 2 cores). Nothing built is committed.
"""
import numpy as np, json, sys

import llama_reference

llm = llama_reference.load(sys.argv[1], n_ctx=2048, n_threads=2)
long_text = " ".join(f"Item {i}: the {['red','green','blue','yellow'][i%4]} box holds {i*7%13} stones." for i in range(60)) + " Question: what does item 3 hold? Answer:"
cases = []
for name, text in [("france", "The capital of France is"), ("story", "Once upon a time, in a small village,"), ("long", long_text)]:
    llm.reset()
    toks = llm.tokenize(text.encode(), add_bos=True, special=False)
    llm.eval(toks)
    lg = np.array(llm.scores[len(toks)-1])
    top = np.argsort(-lg)[:64]
    # greedy continuation
    llm.reset()
    gen, margins = [], []
    for t in llm.generate(toks, top_k=1, temp=0.0, reset=True):
        # The logits this token was picked from (the last evaluated row),
        # and their top logit's lead over the second.
        row = np.array(llm.scores[llm.n_tokens - 1])
        assert int(np.argmax(row)) == t
        margins.append(round(float(np.diff(np.sort(row)[-2:])[0]), 5))
        gen.append(int(t))
        if len(gen) == 24: break
    cases.append({"name": name, "text": text, "ids": [int(t) for t in toks],
                  "top_ids": [int(i) for i in top], "top_logits": [round(float(lg[i]), 5) for i in top],
                  "greedy": gen, "greedy_margin": margins})
    print(name, len(toks), gen[:8], file=sys.stderr)
json.dump({"source": "llama-cpp-python 0.3.36 (its vendored llama.cpp), CPU, no weight repacking, f32 KV cache, n_threads 2",
           "model": "gemma-3-270m-q4_k_m.gguf sha256 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
           "cases": cases}, open(sys.argv[2], "w"), indent=1)
