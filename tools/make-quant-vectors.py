#!/usr/bin/env python3
"""Writes testdata/quants/ggml-vectors.json: reference quantizations and
dequantizations of ggml's 32-element block types, made by llama.cpp's own
Python package `gguf` (gguf-py, its `quants` module follows ggml's reference
`quantize_row_*_ref` and `dequantize_row_*`), so the engine's block codecs
are tested against llama.cpp rather than against themselves.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf==0.19.0 numpy
    ggml=$(tools/reference/build-ggml-quantize.sh)
    /tmp/v/bin/python tools/make-quant-vectors.py testdata/quants/ggml-vectors.json "$ggml"

With ggml's own quantizer (tools/reference/ggml-quantize.c, built from the
llama-cpp-python source package), every row gguf-py quantizes is checked to
give ggml's bytes, and the types gguf-py cannot quantize (IQ4_NL, the K-quants) get their
`quantize` cases from ggml.

For each type: `quantize` cases (f32 rows in, the file bytes gguf-py writes,
hex) where gguf-py can quantize the type, and `dequantize` cases (random
block bytes with finite f16 scales in, the f32 values gguf-py reads, as
their bit patterns).
"""
import importlib.metadata
import struct
import subprocess
import json
import sys

import numpy as np
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q3_K", "Q2_K", "IQ4_XS"]
# Scale fields (f16, byte offsets) to make finite in random blocks.
SCALES = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0], "Q3_K": [108],
          "Q2_K": [80, 82], "IQ4_XS": [0]}


def rows(rng, block=32):
    """Rows of 32·k floats: Gaussian, with the edge cases the quantizers branch
    on; for 256-element types each row is tiled to whole blocks."""
    if block != 32:
        return [np.resize(r, block * -(-len(r) // block)) for r in rows(rng)]
    out = [rng.standard_normal(32 * 8).astype(np.float32)]
    out.append((rng.standard_normal(64) * 1e-3).astype(np.float32))
    out.append(np.zeros(32, np.float32))  # an all-zero block
    tie = np.linspace(-1, 1, 32, dtype=np.float32)
    tie[3] = -1.0  # two values of the largest magnitude, opposite signs
    out.append(tie)
    spike = rng.standard_normal(32).astype(np.float32)
    spike[17] = 1000.0
    out.append(spike)
    out.append(np.full(32, -0.375, np.float32))  # constant block: d = 0 for the affine types
    out.append(((rng.integers(-8, 8, 64)) * 0.5).astype(np.float32))  # exactly on a grid
    return out


def ggml_quantize(harness, name, x):
    """The row's block bytes from ggml's reference quantizer."""
    data = struct.pack("<I", len(x)) + np.asarray(x, dtype="<f4").tobytes()
    return subprocess.run([harness, name.lower()], input=data, capture_output=True, check=True).stdout


def main(path, harness=None):
    rng = np.random.default_rng(20261205)
    version = importlib.metadata.version("gguf")
    source = "gguf-py %s (llama.cpp's Python package)" % version
    if harness:
        source += " and ggml's quantizers (llama-cpp-python 0.3.36's llama.cpp)"
    doc = {"source": source + ", tools/make-quant-vectors.py", "types": {}}
    for name in TYPES:
        qtype = T[name]
        block, nbytes = GGML_QUANT_SIZES[qtype]
        entry = {"quantize": [], "dequantize": []}
        for x in rows(rng, block):
            try:
                q = bytes(quants.quantize(x.reshape(1, -1), qtype).tobytes())
                source = "gguf-py"
            except (NotImplementedError, quants.QuantError):
                q, source = None, "ggml"
            if harness:
                g = ggml_quantize(harness, name, x)
                assert q is None or q == g, "%s: gguf-py and ggml quantize differently" % name
                q = g
            if q is not None:
                entry["quantize_source"] = source
                entry["quantize"].append({"x": [float(v) for v in x], "bytes": q.hex()})
        raw = bytearray(rng.integers(0, 256, 6 * nbytes, dtype=np.uint8).tobytes())
        for b in range(6):
            for off in SCALES[name]:
                d = np.float16(rng.standard_normal() * (10.0 ** rng.integers(-3, 3)))
                raw[b * nbytes + off : b * nbytes + off + 2] = d.tobytes()
        y = quants.dequantize(np.frombuffer(bytes(raw), dtype=np.uint8).reshape(1, -1), qtype)
        entry["dequantize"].append(
            {"bytes": bytes(raw).hex(), "y_bits": [int(v) for v in y.astype(np.float32).reshape(-1).view(np.uint32)]}
        )
        doc["types"][name.lower()] = entry
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
