#!/usr/bin/env python3
"""llama.cpp's own quantizer and inference as references for icllm's tensor
types: each base model (F32) is quantized by `llama_model_quantize` (the
function behind `llama-quantize`, no importance matrix) to each file type,
and llama.cpp reports, for the file it wrote, every tensor's type and the
SHA-256 of its bytes, the argmax at every prompt position, the last
position's logits and a greedy continuation (with each argmax's lead over
the second logit, so that the test can tell a near tie). Written to
testdata/llama-quantize/references.json; the engine test
`llama_quantize_references` quantizes the same bases to the same tensor
types, checks the bytes equal llama.cpp's, and compares its logits.

    python3 -m venv v && v/bin/pip install llama-cpp-python==0.3.36 gguf numpy
    cargo run --release -p icllm-engine --example write-synth-256 -- /tmp/synth-256-f32.gguf
    v/bin/python tools/reference/make-llama-quantize-references.py \
        models/stories260Ktok512.gguf /tmp/synth-256-f32.gguf testdata/llama-quantize/references.json

pip builds llama.cpp from the llama-cpp-python source package (about 25
minutes on 2 cores). Nothing built, and no quantized file, is committed.
"""
import ctypes, hashlib, json, os, sys, tempfile

import gguf
import llama_cpp
import numpy as np

import llama_reference

STORIES, SYNTH, OUT = sys.argv[1:4]
# BOS + "Joe loves writing stories" in the stories260K vocabulary (both bases use it).
PROMPT = [1, 410, 454, 414, 411, 401, 360, 419, 263, 420, 275, 299, 349, 304, 417, 406]
GREEDY = 10
# llama_ftype values (llama.h).
FTYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12,
          "q4_k_m": 15, "q5_k_m": 17, "iq4_nl": 25, "iq4_xs": 30}
CASES = [("stories260K", STORIES, t) for t in ["q4_1", "q5_0", "q5_1", "iq4_nl", "q4_k_m", "q3_k_m", "q2_k"]] + \
        [("synth-256", SYNTH, t) for t in ["q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "q2_k", "q3_k_s", "q3_k_m",
                                            "q4_k_m", "q5_k_m"]]


def sha256_file(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def quantize(src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize({src}, {ftype}) failed: {rc}")


def tensors_of(path):
    r = gguf.GGUFReader(path)
    return [{"name": t.name, "type": t.tensor_type.name.lower(), "type_id": int(t.tensor_type),
             "sha256": hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()} for t in r.tensors]


def margin(row):
    """The lead of the top logit over the second."""
    top2 = np.sort(row)[-2:]
    return round(float(top2[1] - top2[0]), 5)


def run(path):
    llm = llama_reference.load(path, n_ctx=128, n_threads=1, n_batch=128)
    greedy = []
    for t in llm.generate(PROMPT, top_k=1, temp=0.0, reset=True):
        greedy.append(int(t))
        if len(greedy) == GREEDY:
            break
    # One pass over the prompt and the continuation: the argmax and its
    # margin at every prompt position and greedy step.
    llm.reset()
    llm.eval(PROMPT + greedy[:-1])
    scores = np.array(llm.scores[:len(PROMPT) + GREEDY - 1])
    prompt_rows, greedy_rows = scores[:len(PROMPT)], scores[len(PROMPT) - 1:]
    assert [int(np.argmax(r)) for r in greedy_rows] == greedy, "greedy ids are the argmax of one pass"
    return {"argmax": [int(np.argmax(r)) for r in prompt_rows], "argmax_margin": [margin(r) for r in prompt_rows],
            "last_logits": [round(float(x), 5) for x in prompt_rows[-1]], "greedy": greedy,
            "greedy_margin": [margin(r) for r in greedy_rows]}


cases = []
with tempfile.TemporaryDirectory() as tmp:
    for base, src, name in CASES:
        dst = os.path.join(tmp, f"{base}-{name}.gguf")
        quantize(src, dst, FTYPES[name])
        case = {"base": base, "base_sha256": sha256_file(src), "ftype": name, "ftype_id": FTYPES[name],
                "tensors": tensors_of(dst), **run(dst)}
        types = sorted({t["type"] for t in case["tensors"]})
        print(f"{base} {name}: {types} greedy {case['greedy']}", file=sys.stderr)
        cases.append(case)
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump({"llama_cpp_python": llama_cpp.__version__, "prompt": PROMPT, "cases": cases}, f, indent=1)
    f.write("\n")
