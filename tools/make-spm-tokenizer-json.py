#!/usr/bin/env python3
"""Regenerates testdata/tokenizers/{llama-spm,phi-3}/ (tokenizer.json and
tokenizer_config.json) the way Hugging Face made the Llama 2 and Phi-3 files:
a SentencePiece BPE ModelProto converted by transformers' LlamaConverter.

The SentencePiece model is rebuilt from llama.cpp's vocabulary-only GGUF files
in testdata/vocab (tokens, scores and token types of the original
tokenizer.model, written there by llama.cpp's converter), with the settings of
Llama 2's tokenizer.model: BPE, byte_fallback, add_dummy_prefix, no
whitespace cleanup, identity normalization.

Then it checks the result against llama.cpp's vectors with the Hugging Face
`tokenizers` library and prints how many cases match (writing the library's
ids as hf.out where any differ), and writes hf-cases.json: the library's ids
for framed prompts (BOS added, special tokens matched). Not run by the tests.

Usage: python3 tools/make-spm-tokenizer-json.py
(installs transformers, tokenizers, sentencepiece, protobuf and gguf into a
temporary venv and re-runs itself there unless they import already).
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(ROOT, "testdata")
# transformers 4.46.3: its LlamaConverter reads a slow tokenizer and orders
# merges by SentencePiece score, as the Llama 2 files were made (5.x orders
# them by token id and no longer takes a slow tokenizer).
PACKAGES = ["transformers==4.46.3", "tokenizers==0.20.3", "sentencepiece", "protobuf", "gguf", "numpy"]


def ensure_packages():
    try:
        import gguf, tokenizers, transformers, sentencepiece, google.protobuf  # noqa: F401

        if transformers.__version__ == "4.46.3":
            return
    except ImportError:
        pass
    venv = tempfile.mkdtemp(prefix="spm-json-venv-")
    subprocess.check_call([sys.executable, "-m", "venv", venv])
    py = os.path.join(venv, "bin", "python")
    subprocess.check_call([py, "-m", "pip", "install", "-q", *PACKAGES])
    os.execv(py, [py, *sys.argv])


def read_vocab(name):
    """Tokens, scores, types and special ids of a vocabulary GGUF."""
    import gguf

    r = gguf.GGUFReader(os.path.join(TESTDATA, "vocab", name))

    def arr(key):
        f = r.fields[key]
        return [f.parts[i] for i in f.data]

    def scalar(key):
        f = r.fields.get(key)
        return None if f is None else f.parts[f.data[0]][0].item()

    tokens = [bytes(p).decode("utf-8") for p in arr("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in arr("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in arr("tokenizer.ggml.token_type")]
    tmpl = r.fields.get("tokenizer.chat_template")
    return {
        "tokens": tokens,
        "scores": scores,
        "types": types,
        "bos": scalar("tokenizer.ggml.bos_token_id"),
        "eos": scalar("tokenizer.ggml.eos_token_id"),
        "unk": scalar("tokenizer.ggml.unknown_token_id"),
        "add_bos": scalar("tokenizer.ggml.add_bos_token"),
        "add_eos": scalar("tokenizer.ggml.add_eos_token"),
        "chat_template": None if tmpl is None else bytes(tmpl.parts[tmpl.data[0]]).decode("utf-8"),
    }


def model_proto(v, n_pieces):
    """A SentencePiece BPE model of the first n_pieces tokens, with Llama 2's settings."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = n_pieces
    t.byte_fallback = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    t.unk_piece, t.bos_piece, t.eos_piece = v["tokens"][0], v["tokens"][1], v["tokens"][2]
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    # GGUF token types are SentencePiece's piece types (1 normal … 6 byte);
    # the specials are typed as SentencePiece has them.
    for i in range(n_pieces):
        p = m.pieces.add()
        p.piece = v["tokens"][i]
        p.score = v["scores"][i]
        p.type = {0: 2, 1: 3, 2: 3}.get(i, v["types"][i])
    return m


class SlowStub:
    """What LlamaConverter reads from a slow LlamaTokenizer."""

    def __init__(self, vocab_file, tokens):
        self.vocab_file = vocab_file
        self.legacy = True
        self.add_prefix_space = True
        self._tokens = tokens
        self.all_special_tokens = tokens[:3]

    def convert_ids_to_tokens(self, i):
        return self._tokens[i]


def build(v, n_pieces, added, config):
    """tokenizer.json text for the first n_pieces tokens plus `added` (AddedTokens)."""
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import LlamaConverter

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tokenizer.model")
        proto = model_proto(v, n_pieces)
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        tok = LlamaConverter(SlowStub(path, v["tokens"])).converted()
    # The specials as LlamaTokenizerFast registers them: <unk>, <s>, </s>
    # (the converter adds only the control pieces), then the model's own.
    tok.add_special_tokens([AddedToken(v["tokens"][0], normalized=False, special=True)])
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    # LlamaTokenizerFast's post-processor: "<s> $A" when add_bos_token.
    bos = v["tokens"][v["bos"]]
    single = (f"{bos}:0 " if config["add_bos_token"] else "") + "$A:0"
    pair = single + (f" {bos}:1" if config["add_bos_token"] else "") + " $B:1"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(bos, v["bos"])] if config["add_bos_token"] else []
    )
    return tok


def vectors(name):
    """llama.cpp's cases: texts separated by a marker line, one line of ids each."""
    with open(os.path.join(TESTDATA, "vocab", name + ".inp"), encoding="utf-8", newline="") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    assert texts.pop() == "", "the .inp file ends with the marker"
    with open(os.path.join(TESTDATA, "vocab", name + ".out"), encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    assert lines.pop() == "" and len(lines) == len(texts)
    return texts, [[int(x) for x in line.split()] for line in lines]


# Texts with special-token markers, encoded with BOS by the library.
EXTRA_TEXTS = [
    "Hello world",
    " Hello<s> world </s> again",
    "<|user|>\nHi there<|end|>\n<|assistant|>\n",
    "<|system|>\n  Be brief.<|end|>\n<|user|>  \n\tWhat is 2+2?<|end|>\n<|assistant|>",
    "x<|endoftext|>  y</s>\n z",
    "Cửa Việt 🦙 naïve 你好   ",
]


def main():
    ensure_packages()
    from tokenizers import AddedToken, Tokenizer

    made = {}
    # Llama 2 (and TinyLlama, which ships the same tokenizer).
    v = read_vocab("ggml-vocab-llama-spm.gguf")
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizer",
    }
    made["llama-spm"] = (build(v, len(v["tokens"]), [], config), config, "ggml-vocab-llama-spm.gguf")

    # Phi-3: the same 32,000 pieces, "</s>" a plain added token, and eleven
    # chat markers after them; every added token but <unk>, <s> and
    # <|endoftext|> strips the whitespace after it.
    v = read_vocab("ggml-vocab-phi-3.gguf")
    added = [AddedToken("</s>", rstrip=True, normalized=False, special=False)]
    for i in range(32000, 32011):
        t = v["tokens"][i]
        added.append(AddedToken(t, rstrip=(t != "<|endoftext|>"), normalized=False, special=True))
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": v["tokens"][v["eos"]],
        "unk_token": "<unk>",
        "pad_token": v["tokens"][v["eos"]],
        "chat_template": v["chat_template"],
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizer",
    }
    made["phi-3"] = (build(v, 32000, added, config), config, "ggml-vocab-phi-3.gguf")

    for name, (tok, config, vocab_name) in made.items():
        out = os.path.join(TESTDATA, "tokenizers", name)
        os.makedirs(out, exist_ok=True)
        tok.save(os.path.join(out, "tokenizer.json"))
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")
        # Check with the library, read back from the file.
        tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        texts, outs = vectors(vocab_name)
        golden = []
        differ = []
        for i, (text, want) in enumerate(zip(texts, outs)):
            got = tok.encode(text, add_special_tokens=False).ids
            golden.append(" ".join(str(x) for x in got))
            if got != want:
                differ.append((i, text, got, want))
        print(f"{name}: Hugging Face tokenizers {__import__('tokenizers').__version__} matches "
              f"{len(texts) - len(differ)} of {len(texts)} {vocab_name} vectors")
        for i, text, got, want in differ:
            print(f"  case {i} {text!r}: HF {got}, llama.cpp {want}")
        if differ:
            with open(os.path.join(out, "hf.out"), "w", encoding="utf-8") as f:
                f.write("\n".join(golden) + "\n")
        # Framed prompts: BOS added, added tokens matched (as the library
        # always does), the vector texts after a chat marker.
        cases = []
        for text in EXTRA_TEXTS + [f"<s>{t}</s>" for t in texts[:12]]:
            cases.append({"text": text, "ids": tok.encode(text).ids})
        with open(os.path.join(out, "hf-cases.json"), "w", encoding="utf-8") as f:
            json.dump(cases, f, indent=1, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
