/*
 * quant.c - bitsandbytes-compatible quantized formats: NF4 (+ double quantization), LLM.int8()
 * weights and blockwise 8-bit dynamic quantization. See quant.h for the layouts and
 * ../shared/reference/bnb.md for the bit-level facts this file reproduces.
 */
#include "quant.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "../util/alloc.h"

/* ---- tables ---- */

const float sw_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/*
 * The signed dynamic map, as printed (%a) by sw_q8_create_dynamic_map() below; test-quant checks
 * that the two agree bit for bit and that the values match the ones quoted in bnb.md §3.1
 * (-0.99296874, -0.97890627, -0.96484375, ..., -5.5e-07, 0, 5.5e-07, 3.25e-06, ..., 0.99296874, 1).
 */
const float sw_q8_dynamic_map[256] = {
    -0x1.fc6666p-1, -0x1.f53334p-1, -0x1.eep-1, -0x1.e6ccccp-1,
    -0x1.df999ap-1, -0x1.d86666p-1, -0x1.d13334p-1, -0x1.cap-1,
    -0x1.c2ccccp-1, -0x1.bb999ap-1, -0x1.b46666p-1, -0x1.ad3334p-1,
    -0x1.a6p-1, -0x1.9eccccp-1, -0x1.97999ap-1, -0x1.906666p-1,
    -0x1.893334p-1, -0x1.82p-1, -0x1.7acccep-1, -0x1.73999ap-1,
    -0x1.6c6666p-1, -0x1.653334p-1, -0x1.5ep-1, -0x1.56cccep-1,
    -0x1.4f999ap-1, -0x1.486666p-1, -0x1.413334p-1, -0x1.3ap-1,
    -0x1.32cccep-1, -0x1.2b999ap-1, -0x1.246666p-1, -0x1.1d3334p-1,
    -0x1.16p-1, -0x1.0eccccp-1, -0x1.07999ap-1, -0x1.006666p-1,
    -0x1.f26664p-2, -0x1.e4p-2, -0x1.d59998p-2, -0x1.c73332p-2,
    -0x1.b8ccccp-2, -0x1.aa6664p-2, -0x1.9cp-2, -0x1.8d9998p-2,
    -0x1.7f3334p-2, -0x1.70ccccp-2, -0x1.626664p-2, -0x1.54p-2,
    -0x1.459998p-2, -0x1.373334p-2, -0x1.28ccccp-2, -0x1.1a6666p-2,
    -0x1.0cp-2, -0x1.fb3332p-3, -0x1.de6666p-3, -0x1.c1999ap-3,
    -0x1.a4ccccp-3, -0x1.88p-3, -0x1.6b3332p-3, -0x1.4e6666p-3,
    -0x1.31999ap-3, -0x1.14ccccp-3, -0x1.fp-4, -0x1.b66668p-4,
    -0x1.93d70ap-4, -0x1.8851eep-4, -0x1.7ccccep-4, -0x1.7147aep-4,
    -0x1.65c29p-4, -0x1.5a3d7p-4, -0x1.4eb854p-4, -0x1.433334p-4,
    -0x1.37ae16p-4, -0x1.2c28f6p-4, -0x1.20a3d6p-4, -0x1.151ebap-4,
    -0x1.09999ap-4, -0x1.fc28f6p-5, -0x1.e51ebap-5, -0x1.ce147ap-5,
    -0x1.b70a4p-5, -0x1.ap-5, -0x1.88f5c2p-5, -0x1.71eb84p-5,
    -0x1.5ae146p-5, -0x1.43d70ap-5, -0x1.2ccccep-5, -0x1.15c28ep-5,
    -0x1.fd70a4p-6, -0x1.cf5c26p-6, -0x1.a147aep-6, -0x1.733334p-6,
    -0x1.451eb8p-6, -0x1.170a3ep-6, -0x1.d1eb86p-7, -0x1.75c29p-7,
    -0x1.3e76c8p-7, -0x1.2c083p-7, -0x1.19999ap-7, -0x1.072b02p-7,
    -0x1.e978d4p-8, -0x1.c49ba6p-8, -0x1.9fbe78p-8, -0x1.7ae148p-8,
    -0x1.56041ap-8, -0x1.3126e8p-8, -0x1.0c49bap-8, -0x1.ced914p-9,
    -0x1.851eb8p-9, -0x1.3b645ap-9, -0x1.e353f8p-10, -0x1.4fdf3ap-10,
    -0x1.eecbfep-11, -0x1.b3d07cp-11, -0x1.78d5p-11, -0x1.3dd982p-11,
    -0x1.02dep-11, -0x1.8fc504p-12, -0x1.19ce0ap-12, -0x1.47ae16p-13,
    -0x1.743e96p-14, -0x1.15df66p-14, -0x1.6f0068p-15, -0x1.64840cp-16,
    -0x1.040bfep-17, -0x1.b43528p-19, -0x1.27476ep-21, 0x0p+0,
    0x1.27476ep-21, 0x1.b43528p-19, 0x1.040bfep-17, 0x1.64840cp-16,
    0x1.6f0068p-15, 0x1.15df66p-14, 0x1.743e96p-14, 0x1.47ae16p-13,
    0x1.19ce0ap-12, 0x1.8fc504p-12, 0x1.02dep-11, 0x1.3dd982p-11,
    0x1.78d5p-11, 0x1.b3d07cp-11, 0x1.eecbfep-11, 0x1.4fdf3ap-10,
    0x1.e353f8p-10, 0x1.3b645ap-9, 0x1.851eb8p-9, 0x1.ced914p-9,
    0x1.0c49bap-8, 0x1.3126e8p-8, 0x1.56041ap-8, 0x1.7ae148p-8,
    0x1.9fbe78p-8, 0x1.c49ba6p-8, 0x1.e978d4p-8, 0x1.072b02p-7,
    0x1.19999ap-7, 0x1.2c083p-7, 0x1.3e76c8p-7, 0x1.75c29p-7,
    0x1.d1eb86p-7, 0x1.170a3ep-6, 0x1.451eb8p-6, 0x1.733334p-6,
    0x1.a147aep-6, 0x1.cf5c26p-6, 0x1.fd70a4p-6, 0x1.15c28ep-5,
    0x1.2ccccep-5, 0x1.43d70ap-5, 0x1.5ae146p-5, 0x1.71eb84p-5,
    0x1.88f5c2p-5, 0x1.ap-5, 0x1.b70a4p-5, 0x1.ce147ap-5,
    0x1.e51ebap-5, 0x1.fc28f6p-5, 0x1.09999ap-4, 0x1.151ebap-4,
    0x1.20a3d6p-4, 0x1.2c28f6p-4, 0x1.37ae16p-4, 0x1.433334p-4,
    0x1.4eb854p-4, 0x1.5a3d7p-4, 0x1.65c29p-4, 0x1.7147aep-4,
    0x1.7ccccep-4, 0x1.8851eep-4, 0x1.93d70ap-4, 0x1.b66668p-4,
    0x1.fp-4, 0x1.14ccccp-3, 0x1.31999ap-3, 0x1.4e6666p-3,
    0x1.6b3332p-3, 0x1.88p-3, 0x1.a4ccccp-3, 0x1.c1999ap-3,
    0x1.de6666p-3, 0x1.fb3332p-3, 0x1.0cp-2, 0x1.1a6666p-2,
    0x1.28ccccp-2, 0x1.373334p-2, 0x1.459998p-2, 0x1.54p-2,
    0x1.626664p-2, 0x1.70ccccp-2, 0x1.7f3334p-2, 0x1.8d9998p-2,
    0x1.9cp-2, 0x1.aa6664p-2, 0x1.b8ccccp-2, 0x1.c73332p-2,
    0x1.d59998p-2, 0x1.e4p-2, 0x1.f26664p-2, 0x1.006666p-1,
    0x1.07999ap-1, 0x1.0eccccp-1, 0x1.16p-1, 0x1.1d3334p-1,
    0x1.246666p-1, 0x1.2b999ap-1, 0x1.32cccep-1, 0x1.3ap-1,
    0x1.413334p-1, 0x1.486666p-1, 0x1.4f999ap-1, 0x1.56cccep-1,
    0x1.5ep-1, 0x1.653334p-1, 0x1.6c6666p-1, 0x1.73999ap-1,
    0x1.7acccep-1, 0x1.82p-1, 0x1.893334p-1, 0x1.906666p-1,
    0x1.97999ap-1, 0x1.9eccccp-1, 0x1.a6p-1, 0x1.ad3334p-1,
    0x1.b46666p-1, 0x1.bb999ap-1, 0x1.c2ccccp-1, 0x1.cap-1,
    0x1.d13334p-1, 0x1.d86666p-1, 0x1.df999ap-1, 0x1.e6ccccp-1,
    0x1.eep-1, 0x1.f53334p-1, 0x1.fc6666p-1, 0x1p+0
};

/*
 * torch.linspace(start, end, steps) in float32 the way torch's scalar CPU kernel computes it:
 * step = (end - start) / (steps - 1) in float32; the first half is start + i*step, the second
 * half end - (steps-1-i)*step (symmetric, so the last entry is exactly `end`).
 * Caveat: torch's vectorized CPU loop (Vectorized::arange, chunks of 8 or 16 floats) rounds some
 * interior entries differently by an ulp, so a map dumped from a given torch build may differ from
 * this one in the last bit of a few entries; that only matters for inputs within ulps of a midpoint.
 */
static void linspace_f32(float *out, float start, float end, int steps)
{
    float step = (end - start) / (float)(steps - 1);
    int halfway = steps / 2;

    for (int i = 0; i < steps; i++)
        out[i] = i < halfway ? start + step * (float)i : end - step * (float)(steps - 1 - i);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;

    return (x > y) - (x < y);
}

/*
 * bnb create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for i = 0..6,
 * boundaries = linspace(0.1, 1, 2^i + 1), means of neighbours ((b[j] + b[j+1]) / 2 in float32),
 * times float32(10^(i-6)) with both signs; then 0 and 1.0; sorted.
 */
void sw_q8_create_dynamic_map(float map[256])
{
    float b[65];
    int n = 0;

    for (int i = 0; i < 7; i++) {
        int steps = (1 << i) + 1;
        float scale = (float)pow(10.0, i - 6);

        linspace_f32(b, 0.1f, 1.0f, steps);
        for (int j = 0; j < steps - 1; j++)
            map[n++] = scale * ((b[j] + b[j + 1]) / 2.0f);
        for (int j = 0; j < steps - 1; j++)
            map[n++] = -scale * ((b[j] + b[j + 1]) / 2.0f);
    }
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    qsort(map, 256, sizeof(float), cmp_float);
}

/* ---- blockwise 8-bit dynamic ---- */

/*
 * Exact port of bnb's dQuantize (csrc/kernels.cu, non-stochastic): binary descent from pivot 127
 * with steps 64..1, then a midpoint test against the neighbour on the side x lies. A value exactly
 * on a midpoint resolves to the descent's final pivot (the lower code when x lies above it, the
 * upper one when below). NaN walks down to code 0, as on CUDA.
 */
uint8_t sw_q8_quantize_one(const float *code, float x)
{
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];

    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255)
        upper = code[upper_pivot];
    if (lower_pivot == 0)
        lower = code[lower_pivot];
    if (x > val) {
        float mid = (upper + val) * 0.5f;

        return (uint8_t)(x > mid ? upper_pivot : pivot);
    } else {
        float mid = (lower + val) * 0.5f;

        return (uint8_t)(x < mid ? lower_pivot : pivot);
    }
}

void sw_q8_quantize(const float *x, size_t n, int blocksize, uint8_t *q, float *absmax)
{
    for (size_t b0 = 0, blk = 0; b0 < n; b0 += (size_t)blocksize, blk++) {
        size_t end = b0 + (size_t)blocksize < n ? b0 + (size_t)blocksize : n;
        float amax = 0.0f, inv;

        for (size_t i = b0; i < end; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        absmax[blk] = amax;
        inv = 1.0f / amax; /* inf for an all-zero block: 0 * inf = NaN -> code 0, as bnb */
        for (size_t i = b0; i < end; i++)
            q[i] = sw_q8_quantize_one(sw_q8_dynamic_map, x[i] * inv);
    }
}

void sw_q8_dequantize(const uint8_t *q, const float *absmax, size_t n, int blocksize, float *x)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sw_q8_dynamic_map[q[i]] * absmax[i / (size_t)blocksize];
}
