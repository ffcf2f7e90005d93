#!/usr/bin/env python3
"""Re-measure README's "Native speed beside llama.cpp" table.

    python3 tools/native-speed.py ICLLM_BINARY MODEL.gguf [MODEL.gguf ...]

needs `pip install llama-cpp-python` (CMAKE_ARGS="-DGGML_NATIVE=ON") and cc.
The README's table:

    cargo build --release -p icllm
    C=target/icllm-synth-cache   # or: icllm synth --shape NAME --quant TYPE -o OUT
    python3 tools/native-speed.py target/release/icllm models/stories260Ktok512.gguf \
        $C/v1-stories15M-f32-all.gguf $C/v1-smollm2-135m-q8_0-all.gguf

Single thread (both pinned to one CPU with taskset), thread CPU time, median of
3 runs, a 32-token prompt and 64 greedy tokens. Both programs get the same 32
prompt token ids (the shortest prefix of TEXT that `icllm tokenize` turns
into exactly 32 ids; llama.cpp is fed those ids, not the text).

icllm: `icllm generate`'s own timings, with clock_gettime(CLOCK_MONOTONIC)
redirected to CLOCK_THREAD_CPUTIME_ID by a small LD_PRELOAD shim, so its
Instant readings are the main thread's CPU time (generate is single threaded);
the shim keeps them in ns, checked against the 0.1 ms figures it prints. Prompt = prompt ids / time to the first token; generation = the
63 tokens after the first / the time after it.

llama.cpp (llama-cpp-python's low-level API, n_threads = n_threads_batch = 1):
time.thread_time_ns() around one llama_decode of the 32 ids plus the argmax,
then around 63 single-token llama_decode + argmax steps. Fresh context per run,
model loaded once and one discarded warm-up run (llama.cpp mmaps the weights;
icllm reads them during its untimed load).
"""
import ctypes
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

N_PROMPT, N_GEN, RUNS, CTX, CPU = 32, 64, 3, 256, "1"
TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play "
        "outside in the park with her friends. One day, she saw a big red ball.")

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* Instant::now() reads CLOCK_MONOTONIC; answer with this thread's CPU time
   instead, and keep every such reading (ns) to print at exit. */
static long long seen[64];
static int n_seen;
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    if (id != CLOCK_MONOTONIC) return real(id, ts);
    int r = real(CLOCK_THREAD_CPUTIME_ID, ts);
    if (n_seen < 64) seen[n_seen++] = ts->tv_sec * 1000000000LL + ts->tv_nsec;
    return r;
}
__attribute__((destructor)) static void dump(void) {
    const char *path = getenv("CPUTIME_LOG");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f) return;
    for (int i = 0; i < n_seen; i++) fprintf(f, "%lld\n", seen[i]);
    fclose(f);
}
"""


def build_shim(dir_):
    src, so = os.path.join(dir_, "cputime.c"), os.path.join(dir_, "cputime.so")
    with open(src, "w") as f:
        f.write(SHIM)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", so, src, "-ldl"], check=True)
    return so


def llama_loadable(model, tmp):
    """The synthetic GGUFs store their empty merges list as arr[u8, 0], which
    llama.cpp rejects ("invalid gguf type for tokenizer.ggml.merges"). Retype
    that empty array as arr[string, 0] in a copy (same size, same bytes
    otherwise); both programs then read the copy."""
    key = b"tokenizer.ggml.merges"
    with open(model, "rb") as f:
        head = f.read(8 << 20)
    i = head.find(struct.pack("<Q", len(key)) + key)
    if i < 0:
        return model
    at = i + 8 + len(key)
    vtype, etype, n = struct.unpack_from("<IIQ", head, at)
    if vtype != 9 or etype == 8 or n != 0:
        return model
    out = os.path.join(tmp, os.path.basename(model))
    shutil.copyfile(model, out)
    with open(out, "r+b") as f:
        f.seek(at + 4)
        f.write(struct.pack("<I", 8))
    return out


def prompt_for(icllm, model):
    def tokenize(text):
        return json.loads(subprocess.run([icllm, "tokenize", "-m", model, "--text", text],
                                         check=True, capture_output=True, text=True).stdout)
    # Longest word prefix with 32 ids; byte-level vocabularies (the synthetic
    # GGUFs) rarely hit 32 at a word boundary, so then cut by characters.
    words, cut = TEXT.split(" "), 0
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        ids = tokenize(text)
        if len(ids) == N_PROMPT:
            return text, ids
        if len(ids) > N_PROMPT:
            break
        cut = len(text)
    for n in range(cut + 1, len(TEXT) + 1):
        ids = tokenize(TEXT[:n])
        if len(ids) == N_PROMPT:
            return TEXT[:n], ids
        if len(ids) > N_PROMPT:
            break
    raise SystemExit(f"no prefix of TEXT gives {N_PROMPT} tokens for {model}")


def run_icllm(icllm, shim, model, text, tmp):
    log = os.path.join(tmp, "clock.log")
    env = dict(os.environ, LD_PRELOAD=shim, CPUTIME_LOG=log)
    cmd = ["taskset", "-c", CPU, icllm, "generate", "-m", model, "-p", text,
           "-n", str(N_GEN), "--temperature", "0", "-c", str(CTX), "--print-ids"]
    r = subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    err = r.stderr
    n_p, pre_ms = re.search(r"prompt:\s+(\d+) tokens, ([\d.]+) ms", err).groups()
    n_g, tot_ms = re.search(r"generated:\s+(\d+) tokens, ([\d.]+) ms", err).groups()
    ids = json.loads(re.search(r"generated_ids: (\[.*\])", err).group(1))
    assert int(n_p) == N_PROMPT and int(n_g) == N_GEN, err
    # generate.rs reads Instant::now() five times: load start/end, generation
    # start, first token, end. Use those (ns) rather than the printed 0.1 ms.
    with open(log) as f:
        t = [int(x) for x in f.read().split()]
    assert len(t) == 5, t
    pre, tot = (t[3] - t[2]) / 1e9, (t[4] - t[2]) / 1e9
    assert abs(pre * 1e3 - float(pre_ms)) < 0.1 and abs(tot * 1e3 - float(tot_ms)) < 0.1, (t, err)
    return N_PROMPT / pre, (N_GEN - 1) / (tot - pre), ids


def llama_setup():
    import llama_cpp as L
    L.llama_backend_init()
    cb = L.llama_log_callback(lambda level, text, user: None)
    L.llama_log_set(cb, ctypes.c_void_p(0))
    return L, cb


def run_llama(L, model_ptr, prompt_ids):
    import numpy as np
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = CTX, CTX, CTX
    cp.n_threads, cp.n_threads_batch = 1, 1
    ctx = L.llama_init_from_model(model_ptr, cp)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model_ptr))

    def step(ids):
        arr = (L.llama_token * len(ids))(*ids)
        if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    out = []
    p0 = time.process_time_ns()
    t0 = time.thread_time_ns()
    out.append(step(prompt_ids))
    t1 = time.thread_time_ns()
    for _ in range(N_GEN - 1):
        out.append(step([out[-1]]))
    t2 = time.thread_time_ns()
    p2 = time.process_time_ns()
    # n_threads = 1 keeps ggml's work on this thread: no other thread spends CPU.
    assert (p2 - p0) < 1.05 * (t2 - t0), (p2 - p0, t2 - t0)
    L.llama_free(ctx)
    return N_PROMPT / ((t1 - t0) / 1e9), (N_GEN - 1) / ((t2 - t1) / 1e9), out


def first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main():
    icllm, models = sys.argv[1], sys.argv[2:]
    os.sched_setaffinity(0, {int(CPU)})
    L, _cb = llama_setup()
    print(L.__version__, L.llama_print_system_info().decode().strip(), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        shim = build_shim(tmp)
        rows = []
        for model in models:
            model = llama_loadable(model, tmp)
            text, ids = prompt_for(icllm, model)
            mp = L.llama_model_default_params()
            m = L.llama_model_load_from_file(model.encode(), mp)
            if not m:
                raise SystemExit(f"llama.cpp cannot load {model}")
            run_llama(L, m, ids)  # warm-up, discarded: faults in the mmap'd weights
            ll = [run_llama(L, m, ids) for _ in range(RUNS)]
            L.llama_model_free(m)
            ic = [run_icllm(icllm, shim, model, text, tmp) for _ in range(RUNS)]
            name = os.path.basename(model)
            for prog, runs in (("llama.cpp", ll), ("icllm generate", ic)):
                p = statistics.median(r[0] for r in runs)
                g = statistics.median(r[1] for r in runs)
                print(f"{name}\t{prog}\tprompt {p:.1f} tok/s\tgeneration {g:.1f} tok/s"
                      f"\truns {[(round(r[0], 1), round(r[1], 1)) for r in runs]}")
                rows.append((name, prog, p, g))
            same = all(r[2] == ll[0][2] for r in ll) and all(r[2] == ic[0][2] for r in ic)
            d = first_diff(ll[0][2], ic[0][2])
            print(f"{name}\tprompt {text!r} ids {ids}")
            print(f"{name}\tgreedy ids: " + ("identical" if d is None else f"part at token {d}")
                  + ("" if same else " (runs of one program disagree!)"))
            print(f"{name}\tllama.cpp ids {ll[0][2]}\n{name}\ticllm ids     {ic[0][2]}")


if __name__ == "__main__":
    main()
