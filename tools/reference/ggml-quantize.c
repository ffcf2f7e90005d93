// A reference quantizer: ggml's own (llama.cpp's ggml-quants.c, without an
// importance matrix, as llama-quantize runs it by default) for one row.
// Reads a little-endian u32 count and that many f32 from stdin, writes the
// row's block bytes to stdout. Built by tools/reference/build-ggml-quantize.sh
// from a llama.cpp source package; never committed as a build.
//
//     ggml-quantize <type>     type: q4_0 q4_1 q5_0 q5_1 q8_0 iq4_nl q3_k q2_k iq4_xs
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "ggml.h"
#include "ggml-quants.h"

// The few ggml.c symbols ggml-quants.c calls.
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
    abort();
}
static size_t block_bytes(enum ggml_type t, int64_t * blck) {
    switch (t) {
        case GGML_TYPE_Q4_0: *blck = 32; return 18;
        case GGML_TYPE_Q4_1: *blck = 32; return 20;
        case GGML_TYPE_Q5_0: *blck = 32; return 22;
        case GGML_TYPE_Q5_1: *blck = 32; return 24;
        case GGML_TYPE_Q8_0: *blck = 32; return 34;
        case GGML_TYPE_IQ4_NL: *blck = 32; return 18;
        case GGML_TYPE_Q3_K: *blck = 256; return 110;
        case GGML_TYPE_Q2_K: *blck = 256; return 84;
        case GGML_TYPE_IQ4_XS: *blck = 256; return 136;
        default: fprintf(stderr, "type %d not in the harness\n", (int) t); abort();
    }
}
size_t ggml_type_size(enum ggml_type t) { int64_t b; return block_bytes(t, &b); }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { int64_t b; size_t s = block_bytes(t, &b); return s * ne / b; }
const char * ggml_type_name(enum ggml_type t) { (void) t; return "?"; }

int main(int argc, char ** argv) {
    if (argc != 2) { fprintf(stderr, "usage: ggml-quantize <type>\n"); return 2; }
    uint32_t n;
    if (fread(&n, 4, 1, stdin) != 1 || n % 32 != 0) { fprintf(stderr, "bad count\n"); return 2; }
    float * x = malloc(n * sizeof(float));
    if (fread(x, sizeof(float), n, stdin) != n) { fprintf(stderr, "short input\n"); return 2; }
    uint8_t * out = calloc(n, 2);
    size_t bytes;
    const char * t = argv[1];
    if (!strcmp(t, "q4_0")) { quantize_row_q4_0_ref(x, (block_q4_0 *) out, n); bytes = n / 32 * 18; }
    else if (!strcmp(t, "q4_1")) { quantize_row_q4_1_ref(x, (block_q4_1 *) out, n); bytes = n / 32 * 20; }
    else if (!strcmp(t, "q5_0")) { quantize_row_q5_0_ref(x, (block_q5_0 *) out, n); bytes = n / 32 * 22; }
    else if (!strcmp(t, "q5_1")) { quantize_row_q5_1_ref(x, (block_q5_1 *) out, n); bytes = n / 32 * 24; }
    else if (!strcmp(t, "q8_0")) { quantize_row_q8_0_ref(x, (block_q8_0 *) out, n); bytes = n / 32 * 34; }
    else if (!strcmp(t, "iq4_nl")) { bytes = quantize_iq4_nl(x, out, 1, n, NULL); }
    else if (!strcmp(t, "q3_k")) { quantize_row_q3_K_ref(x, (block_q3_K *) out, n); bytes = n / 256 * 110; }
    else if (!strcmp(t, "q2_k")) { quantize_row_q2_K_ref(x, (block_q2_K *) out, n); bytes = n / 256 * 84; }
    // As llama-quantize without an importance matrix (quantize_iq4_xs, ntry 7).
    else if (!strcmp(t, "iq4_xs")) { bytes = quantize_iq4_xs(x, out, 1, n, NULL); }
    else { fprintf(stderr, "unknown type %s\n", t); return 2; }
    fwrite(out, 1, bytes, stdout);
    return 0;
}
