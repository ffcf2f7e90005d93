"""The official `openai` Python package against `icllm serve`.

Run by tools/icllm/tests/serve.rs with ICLLM_BASE_URL (the server's /v1),
ICLLM_BIN (the icllm binary, for exact token counts) and ICLLM_MODEL (the
GGUF it serves: stories260K with a chat template that turns the chat
message "Joe loves writing" into the golden prompt "Joe loves writing stories").
Every check raises on failure; the script prints one line per check.
"""

import json
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

# Streamed: the same text in several events (one per canister message), then [DONE].
stream = client.completions.create(
    model=model, prompt=GOLDEN_PROMPT, max_tokens=10, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
check("streamed text", text == GOLDEN_TEXT, repr(text))
check("streamed in several events", sum(1 for ch in chunks if ch.choices and ch.choices[0].text) > 1, len(chunks))
finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check("stream ends with length", finals == ["length"], finals)
check("stream usage chunk", chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10, chunks[-1])

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

# A conversation that keeps its KV cache: the next turn continues the first
# reply's job (icllm's `continue_from`), and gives a cold run's reply.
turn2 = messages + [{"role": "assistant", "content": r.choices[0].message.content},
                    {"role": "user", "content": " He went to the park"}]
warm = client.chat.completions.create(model=model, messages=turn2, max_tokens=10, temperature=0,
                                      extra_body={"continue_from": r.id})
cold = other.chat.completions.create(model=model, messages=turn2, max_tokens=10, temperature=0)
check("continued chat: cached tokens", warm.usage.prompt_tokens_details.cached_tokens > 0, warm.usage)
check("cold chat: no cached tokens", cold.usage.prompt_tokens_details.cached_tokens == 0, cold.usage)
check("continued chat: the cold reply", warm.choices[0].message.content == cold.choices[0].message.content,
      (warm.choices[0].message.content, cold.choices[0].message.content))

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
refused("logprobs", 400, lambda: client.chat.completions.create(model=model, messages=messages, logprobs=True))
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
