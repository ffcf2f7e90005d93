"""The official `openai` Python package against `icllm serve`.

Run by tools/icllm/tests/serve.rs with ICLLM_BASE_URL (the server's /v1),
ICLLM_BIN (the icllm binary, for exact token counts) and ICLLM_MODEL (the
GGUF it serves: stories260K with a chat template that turns the chat
message "Joe loves writing" into the golden prompt "Joe loves writing stories").
Every check raises on failure; the script prints one line per check.
"""

import json
import math
import os
import subprocess
import time
import urllib.request

import openai

BASE = os.environ["ICLLM_BASE_URL"]
ICLLM = os.environ["ICLLM_BIN"]
MODEL_FILE = os.environ["ICLLM_MODEL"]
GOLDEN_PROMPT = "Joe loves writing stories"
GOLDEN_TEXT = ". He liked to play with his toy"

client = openai.OpenAI(base_url=BASE, api_key="key-one", max_retries=0)
other = openai.OpenAI(base_url=BASE, api_key="key-two", max_retries=0)


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok: {name}")


def prompt_tokens(text):
    out = subprocess.run(
        [ICLLM, "tokenize", "--model", MODEL_FILE, "--text", text],
        check=True, capture_output=True, text=True,
    ).stdout
    return len(json.loads(out))


def health():
    with urllib.request.urlopen(BASE.removesuffix("/v1") + "/health") as r:
        return json.load(r)


def wait_idle():
    for _ in range(600):
        if health()["active_jobs"] == 0:
            return True
        time.sleep(0.05)
    return False


model = client.models.list().data[0].id
check("models lists the canister's model", model == "llama", model)

# Text completion, greedy: the golden continuation, `length`, exact usage.
c = client.completions.create(model=model, prompt=GOLDEN_PROMPT, max_tokens=10, temperature=0)
check("completion text", c.choices[0].text == GOLDEN_TEXT, repr(c.choices[0].text))
check("max_tokens gives length", c.choices[0].finish_reason == "length", c.choices[0].finish_reason)
n_prompt = prompt_tokens(GOLDEN_PROMPT)
check(
    "usage is exact",
    (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (n_prompt, 10, n_prompt + 10),
    c.usage,
)
check("object and id", c.object == "text_completion" and c.id.startswith("cmpl-"), c)

# Streamed: the same text in several events (one per scheduler round that
# brought new text), then [DONE]. Long enough that the rounds cannot all pass
# before the stream's first look at the job.
STREAM_TOKENS = 48
whole = client.completions.create(model=model, prompt=GOLDEN_PROMPT, max_tokens=STREAM_TOKENS, temperature=0)
check("longer greedy text goes on from the golden text", whole.choices[0].text.startswith(GOLDEN_TEXT), whole.choices[0].text)
stream = client.completions.create(
    model=model, prompt=GOLDEN_PROMPT, max_tokens=STREAM_TOKENS, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
check("streamed text", text == whole.choices[0].text, repr(text))
check("streamed in several events", sum(1 for ch in chunks if ch.choices and ch.choices[0].text) > 1, len(chunks))
finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check("stream ends with length", finals == ["length"], finals)
check("stream usage chunk", chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == STREAM_TOKENS, chunks[-1])

# Stop strings: the text ends before the first one, which is not returned.
c = client.completions.create(model=model, prompt=GOLDEN_PROMPT, max_tokens=10, temperature=0, stop=[" play", "xyz"])
check("stop string", c.choices[0].text == ". He liked to" and c.choices[0].finish_reason == "stop", c.choices[0])
stream = client.completions.create(model=model, prompt=GOLDEN_PROMPT, max_tokens=10, temperature=0, stop=" play", stream=True)
text = "".join(ch.choices[0].text for ch in stream if ch.choices)
check("streamed stop string", text == ". He liked to", repr(text))

# Seeds: the same seed gives the same sampled text.
a = client.completions.create(model=model, prompt="Once upon a time", max_tokens=30, temperature=1, seed=7)
b = client.completions.create(model=model, prompt="Once upon a time", max_tokens=30, temperature=1, seed=7)
d = client.completions.create(model=model, prompt="Once upon a time", max_tokens=30, temperature=1, seed=8)
check("same seed, same text", a.choices[0].text == b.choices[0].text, (a.choices[0].text, b.choices[0].text))
check("another seed, another text", a.choices[0].text != d.choices[0].text, d.choices[0].text)

# Chat, not streamed and streamed.
messages = [{"role": "user", "content": "Joe loves writing"}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
check("chat reply", r.choices[0].message.content == GOLDEN_TEXT and r.choices[0].message.role == "assistant", r)
check("chat finish and usage", r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10, r)
check("chat usage prompt", r.usage.prompt_tokens == n_prompt and r.usage.total_tokens == n_prompt + 10, r.usage)
stream = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=10, temperature=0, stream=True)
chunks = list(stream)
check("chat chunks", all(ch.object == "chat.completion.chunk" for ch in chunks), chunks[0])
check("chat stream starts with the role", chunks[0].choices[0].delta.role == "assistant", chunks[0])
text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
check("chat streamed text", text == GOLDEN_TEXT, repr(text))
check("chat stream ends with length", chunks[-1].choices[0].finish_reason == "length", chunks[-1])

# Log-probabilities: the log-softmax of the model's raw logits, checked
# against `icllm logits` (the engine natively, log-softmax taken here).
def token_ids(text):
    out = subprocess.run([ICLLM, "tokenize", "--model", MODEL_FILE, "--text", text],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def log_softmax_of_logits(ids):
    out = subprocess.run([ICLLM, "logits", "--model", MODEL_FILE, "--ids", ",".join(map(str, ids))],
                         check=True, capture_output=True, text=True).stdout
    logits = json.loads(out)["logits"]
    m = max(logits)
    lse = m + math.log(sum(math.exp(l - m) for l in logits))
    return [l - lse for l in logits]


def expected_greedy_logprobs(n):
    """(chosen logprob, top-5 logprobs) of n greedy tokens after the golden prompt."""
    ids, rows = token_ids(GOLDEN_PROMPT), []
    for _ in range(n):
        lp = log_softmax_of_logits(ids)
        best = max(range(len(lp)), key=lambda i: (lp[i], -i))
        rows.append((lp[best], sorted(lp, reverse=True)[:5]))
        ids.append(best)
    return rows


def check_rows(name, got, want, k):
    """got: [(chosen logprob, [alternative logprobs])] as the client parsed them."""
    check(f"{name}: one entry per token", len(got) == len(want), (len(got), len(want)))
    for (chosen, top), (w_chosen, w_top) in zip(got, want):
        check(f"{name}: {k} alternatives, sorted", len(top) == k and top == sorted(top, reverse=True), top)
        check(f"{name}: all ≤ 0", chosen <= 0 and all(t <= 0 for t in top), (chosen, top))
        check(f"{name}: greedy picks the top-1", k == 0 or chosen == top[0], (chosen, top))
        check(f"{name}: top-5 mass ≤ 1", sum(math.exp(t) for t in top) <= 1 + 1e-6, top)
        check(f"{name}: matches icllm logits", abs(chosen - w_chosen) < 1e-4
              and all(abs(a - b) < 1e-4 for a, b in zip(top, w_top)), ((chosen, top), (w_chosen, w_top)))


want = expected_greedy_logprobs(10)
r = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0,
                                   logprobs=True, top_logprobs=5)
content = r.choices[0].logprobs.content
check_rows("chat logprobs", [(t.logprob, [a.logprob for a in t.top_logprobs]) for t in content], want, 5)
check("chat logprobs: tokens spell the reply", "".join(t.token for t in content).strip() == GOLDEN_TEXT.strip()
      and all(bytes(t.bytes).decode() == t.token for t in content), [t.token for t in content])
stream = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0,
                                        logprobs=True, top_logprobs=3, stream=True)
streamed = [t for ch in stream if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
check_rows("streamed chat logprobs", [(t.logprob, [a.logprob for a in t.top_logprobs]) for t in streamed],
           [(c, top[:3]) for c, top in want], 3)
c = client.completions.create(model=model, prompt=GOLDEN_PROMPT, max_tokens=10, temperature=0, logprobs=5)
lp = c.choices[0].logprobs
check_rows("completion logprobs", [(t, sorted(m.values(), reverse=True)) for t, m in zip(lp.token_logprobs, lp.top_logprobs)],
           want, 5)
check("completion logprobs: tokens and offsets",
      "".join(lp.tokens) == c.choices[0].text and lp.text_offset == [sum(len(t.encode()) for t in lp.tokens[:i]) for i in range(10)],
      (lp.tokens, lp.text_offset))
stream = client.completions.create(model=model, prompt=GOLDEN_PROMPT, max_tokens=10, temperature=0, logprobs=2, stream=True)
streamed = [(t, sorted(m.values(), reverse=True)) for ch in stream if ch.choices and ch.choices[0].logprobs
            for t, m in zip(ch.choices[0].logprobs.token_logprobs, ch.choices[0].logprobs.top_logprobs)]
check_rows("streamed completion logprobs", streamed, [(c, top[:2]) for c, top in want], 2)
plain = client.chat.completions.create(model=model, messages=messages, max_tokens=3, temperature=0)
check("no logprobs unless asked", plain.choices[0].logprobs is None, plain.choices[0])

# A conversation that keeps its KV cache: the next turn continues the first
# reply's job (icllm's `continue_from`), and gives a cold run's reply.
first_turn = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
turn2 = messages + [{"role": "assistant", "content": first_turn.choices[0].message.content},
                    {"role": "user", "content": " He went to the park"}]
warm = client.chat.completions.create(model=model, messages=turn2, max_tokens=10, temperature=0,
                                      extra_body={"continue_from": first_turn.id})
cold = other.chat.completions.create(model=model, messages=turn2, max_tokens=10, temperature=0)
check("continued chat: cached tokens", warm.usage.prompt_tokens_details.cached_tokens > 0, warm.usage)
check("cold chat: no cached tokens", cold.usage.prompt_tokens_details.cached_tokens == 0, cold.usage)
check("continued chat: the cold reply", warm.choices[0].message.content == cold.choices[0].message.content,
      (warm.choices[0].message.content, cold.choices[0].message.content))
# A client that only resends the history (as OpenAI clients do) gets the
# rows of its API key's conversation without naming it.
turn3 = turn2 + [{"role": "assistant", "content": warm.choices[0].message.content},
                 {"role": "user", "content": " The sun was warm"}]
resent = client.chat.completions.create(model=model, messages=turn3, max_tokens=10, temperature=0)
third = openai.OpenAI(base_url=BASE, api_key="key-three", max_retries=0)
cold3 = third.chat.completions.create(model=model, messages=turn3, max_tokens=10, temperature=0)
check("a key of its own: no cached tokens", cold3.usage.prompt_tokens_details.cached_tokens == 0, cold3.usage)
check("resent history: cached tokens", resent.usage.prompt_tokens_details.cached_tokens
      > warm.usage.prompt_tokens_details.cached_tokens, (resent.usage, warm.usage))
check("resent history: the reply of a run that reused nothing",
      resent.choices[0].message.content == cold3.choices[0].message.content,
      (resent.choices[0].message.content, cold3.choices[0].message.content))

# Bad input: OpenAI-style errors with the right status.
def refused(name, status, call):
    try:
        call()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(name, e.status_code == status and "message" in body, (e.status_code, e.body))
        return
    raise AssertionError(f"{name}: accepted")

refused("unknown model", 404, lambda: client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=3))
refused("prompt past the context", 400,
        lambda: client.completions.create(model=model, prompt="Once upon a time there was a dog. " * 40, max_tokens=3))
refused("max_tokens past the limit", 400, lambda: client.completions.create(model=model, prompt="Hi", max_tokens=100000))
refused("five stop strings", 400,
        lambda: client.completions.create(model=model, prompt="Hi", max_tokens=3, stop=["a", "b", "c", "d", "e"]))
refused("continuing another caller's chat", 404,
        lambda: other.chat.completions.create(model=model, messages=turn2, max_tokens=3,
                                              extra_body={"continue_from": warm.id}))
refused("n > 1", 400, lambda: client.completions.create(model=model, prompt="Hi", max_tokens=3, n=2))
refused("tool message", 400,
        lambda: client.chat.completions.create(model=model, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]))
refused("top_logprobs > 5", 400,
        lambda: client.chat.completions.create(model=model, messages=messages, logprobs=True, top_logprobs=6))
refused("top_logprobs without logprobs", 400,
        lambda: client.chat.completions.create(model=model, messages=messages, top_logprobs=2))
refused("logprobs > 5", 400, lambda: client.completions.create(model=model, prompt="Hi", max_tokens=3, logprobs=6))
refused("unsupported parameter", 400,
        lambda: client.chat.completions.create(model=model, messages=messages, tools=[{"type": "function", "function": {"name": "f"}}]))

# Another caller's completion is not found.
mine = client.completions.create(model=model, prompt="Hi", max_tokens=3, temperature=0)
refused("another caller's completion", 404, lambda: other.get(f"/completions/{mine.id}", cast_to=object))
check("the caller's own completion", client.get(f"/completions/{mine.id}", cast_to=object)["id"] == mine.id)

# A client that goes away cancels its job.
stream = client.completions.create(model=model, prompt="Once", max_tokens=400, temperature=1, stream=True)
first = next(iter(stream))
stream.close()
check("disconnect cancels the job", wait_idle(), health())

# The per-caller quota: a fifth concurrent job is refused with 429.
streams = [client.completions.create(model=model, prompt="Once", max_tokens=400, temperature=1, stream=True) for _ in range(4)]
refused("quota", 429, lambda: client.completions.create(model=model, prompt="Once", max_tokens=3))
for s in streams:
    s.close()
check("closed streams leave no job", wait_idle(), health())
print("all checks passed")
