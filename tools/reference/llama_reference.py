"""How the reference scripts run llama.cpp (through llama-cpp-python 0.3.36):
on the plain ggml CPU kernels, without repacking weights into CPU-specific
buffers (on CPUs with AMX, evaluating a repacked quantized model crashes),
and with an F32 KV cache, as icllm's default (llama.cpp's own is F16).
"""
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as llama_low

_default_model_params = llama_low.llama_model_default_params


def _model_params_without_repacking():
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


llama_low.llama_model_default_params = _model_params_without_repacking


def load(path, n_ctx, n_threads, **kwargs):
    """A llama.cpp model with logits at every position."""
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=n_threads,
                           type_k=0, type_v=0, flash_attn=False, **kwargs)


def prompt_and_greedy(llm, prompt, n):
    """Evaluates `prompt` in one batch, then `n` greedy tokens one at a time:
    the prompt's logits (one row per position), the greedy ids, each step's
    top-2 lead, and the logits after the last greedy id."""
    llm.reset()
    llm.eval(prompt)
    scores = np.array(llm.scores[:len(prompt)])
    gen, leads = [], []
    row = scores[-1].copy()
    for _ in range(n):
        top2 = np.sort(row)[-2:]
        t = int(np.argmax(row))
        gen.append(t)
        leads.append(round(float(top2[1] - top2[0]), 5))
        llm.eval([t])
        row = np.array(llm.scores[llm.n_tokens - 1])
    return scores, gen, leads, row
