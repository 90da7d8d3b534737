/*
 * codec.h - tensors on the wire: an fp32 tensor of up to SW_CODEC_MAX_DIMS dims is encoded into a
 * header (dtype, shape, codec, blocksize, zstd flag, payload length; packed as the protobuf
 * `TensorHeader` of proto/swarmd.proto) and a raw payload that p2p/ carries as opaque bytes.
 *
 * Codecs and their payloads (all little-endian, n = number of elements):
 *
 *   none        fp32 as is                                      4 n bytes, exact (bit for bit)
 *   fp16        IEEE half, round to nearest even                2 n bytes
 *   bf16        bfloat16, round to nearest even                 2 n bytes
 *   blockwise8  float32 absmax[ceil(n / bs)] | uint8 q[n]       4 ceil(n / bs) + n bytes
 *               bitsandbytes' blockwise quantization with the signed dynamic 8-bit map
 *               (kernels/quant.h, sw_q8_quantize): x ~= sw_q8_dynamic_map[q[i]] * absmax[i / bs].
 *               The 256-entry map does not travel: both sides have it. bs travels in the header
 *               (a power of two in [SW_CODEC_Q8_MIN_BLOCK, SW_CODEC_Q8_MAX_BLOCK]); the default
 *               is SW_CODEC_Q8_BLOCKSIZE (see below for why). hivemind's BLOCKWISE_8BIT uses 4096
 *               with extra length words and the code table in the buffer, so it is not byte-compatible.
 *
 * With zstd set, the payload above is compressed as exactly one zstd frame (content size recorded).
 *
 * Error bounds of a round trip (x = input, y = decoded), for finite x:
 *   none        y == x bit for bit (NaN payloads and -0.0 included).
 *   fp16        |y - x| <= 2^-11 |x| when |x| is in the normal half range [2^-14, 65504];
 *               |y - x| <= 2^-25 below it (subnormal spacing / 2); |x| >= 65520 becomes +-inf
 *               (IEEE overflow, as a cast to half does).
 *   bf16        |y - x| <= 2^-8 |x| for normal x; values that round past FLT_MAX become +-inf.
 *   blockwise8  |y - x| <= absmax_block * (largest gap of the map) / 2 = absmax * 0.00703...
 *               (and 0 for an all-zero block). Mean |err| on N(0,1) data is well under bnb's bar
 *               of 0.011 (bnb.md section 5).
 * Non-finite input: none, fp16 and bf16 carry +-inf and NaN through (as NaN and inf of the target
 * type). blockwise8 cannot represent them (one inf would wipe out its block), so the encoder
 * refuses such input with SW_EFORMAT naming the first bad index: the caller picks another codec.
 * The decoder in turn refuses a NaN, infinite or negative absmax.
 *
 * Why blocksize 64 by default: activations have a few outlier channels (|x| 10-1000x the rest);
 * every block that holds one gets a large absmax and its other elements land on coarse codes.
 * Smaller blocks confine the damage, at 4 bytes of absmax per block. bench/bench-codec measured
 * (rel-L2 error, bytes per element):
 *                          64                 256                4096
 *   fixture hidden states  9.6e-3, 1.0625     1.12e-2, 1.0158    1.23e-2, 1.0024
 *   synthetic (outliers)   7.0e-3, 1.0625     9.3e-3, 1.0156     1.91e-2, 1.0010
 * so 64 costs 6% more bytes than hivemind's 4096 for 2.7x less error on outlier-heavy data (bf16,
 * for scale: 1.6e-3 at 2 bytes). 64 is also the smallest block bitsandbytes' CUDA kernels take.
 * (With zstd, 4096 shrinks to 0.77 B/elem: blocks dominated by an outlier use few codes, and zstd
 * takes back exactly the precision they lost.)
 *
 * Speed (one thread, same run, memcpy 7.6 GB/s): blockwise8 encodes at ~0.85 GB/s of fp32 and
 * decodes at ~6 GB/s; the encoder uses a table-driven quantizer that gives sw_q8_quantize's codes
 * byte for byte (checked on every float in [-2, 2]) at ~8x its speed.
 *
 * Validation (the decoder treats header and payload as hostile): unknown dtype or codec,
 * more than SW_CODEC_MAX_DIMS dims, a negative dim or one above SW_CODEC_MAX_DIM, a product of
 * dims that overflows or exceeds SW_CODEC_MAX_NUMEL, a blocksize that is not valid for the codec,
 * encoded_len != payload length, raw length != numel x element size, a zstd payload that is not
 * exactly one frame, whose content size is not the expected one, or that decompresses to more or
 * fewer bytes than expected (decompression never writes beyond the expected size), a bad absmax.
 * Each is refused with SW_EFORMAT (SW_EUNSUPPORTED for a well-formed unknown codec or dtype,
 * SW_ELIMIT for an output buffer that is too small) and an sw_err detail saying what was wrong.
 *
 * Buffers: encode and decode write into caller-provided buffers. sw_codec_encoded_bound() gives
 * the payload capacity an encode needs. Without zstd neither direction allocates. zstd calls need
 * an sw_codec_ctx_t, which holds the zstd contexts and a scratch buffer that grows to the largest
 * raw payload seen and is then reused, so a hot path with a long-lived context allocates nothing
 * after its first call. A context is used by one thread at a time.
 */
#ifndef SW_PIPELINE_CODEC_H
#define SW_PIPELINE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tensor.h"

#define SW_CODEC_MAX_DIMS 8
#define SW_CODEC_MAX_DIM ((int64_t)1 << 40)     /* largest single dim accepted */
#define SW_CODEC_MAX_NUMEL ((uint64_t)1 << 34)  /* 16 Gi elements: 64 GiB of fp32 */
#define SW_CODEC_Q8_BLOCKSIZE 64
#define SW_CODEC_Q8_MIN_BLOCK 64
#define SW_CODEC_Q8_MAX_BLOCK 4096
#define SW_CODEC_ZSTD_LEVEL 1                   /* default level when zstd is asked for */
#define SW_CODEC_MAX_HEADER 256                 /* packed TensorHeader bytes accepted */

/* Values equal the TensorHeader.Codec enum of proto/swarmd.proto. */
typedef enum {
    SW_CODEC_NONE = 0,
    SW_CODEC_FP16 = 1,
    SW_CODEC_BF16 = 2,
    SW_CODEC_BLOCKWISE8 = 3,
    SW_CODEC_COUNT
} sw_codec_t;

/* What to encode with. Zero-initialized = codec none, no zstd. */
typedef struct {
    sw_codec_t codec;
    int blocksize;   /* blockwise8: elements per absmax block; 0 = SW_CODEC_Q8_BLOCKSIZE */
    int zstd;        /* compress the payload with zstd */
    int zstd_level;  /* 0 = SW_CODEC_ZSTD_LEVEL; else 1..ZSTD_maxCLevel() (negative: fast modes) */
} sw_codec_opts_t;

/* The decoded form of a TensorHeader. */
typedef struct {
    sw_dtype_t dtype;     /* the sender's element type, a hint for the receiver's storage; the
                             codec alone fixes the payload layout and decoding always yields fp32.
                             The encoder sets SW_DTYPE_F32; callers may change it before packing. */
    int ndim;             /* 0..SW_CODEC_MAX_DIMS; 0 = a scalar (one element) */
    int64_t shape[SW_CODEC_MAX_DIMS];
    sw_codec_t codec;
    int blocksize;        /* blockwise8 only; 0 otherwise */
    int zstd;             /* 0 or 1 */
    uint64_t encoded_len; /* payload bytes as sent (after zstd) */
} sw_tensor_header_t;

typedef struct sw_codec_ctx sw_codec_ctx_t;

/* Creates a context for zstd calls. *out is owned by the caller (sw_codec_ctx_free). */
int sw_codec_ctx_new(sw_codec_ctx_t **out);
void sw_codec_ctx_free(sw_codec_ctx_t *ctx);

const char *sw_codec_name(sw_codec_t c);
/* Parses "none", "fp16", "bf16", "blockwise8" (also "q8"); -EINVAL with a detail otherwise. */
int sw_codec_parse(const char *name, sw_codec_t *out);

/*
 * Checks a header as the decoder does (everything but the payload) and sets *numel and
 * *raw_len (payload bytes before zstd). Either pointer may be NULL.
 */
int sw_codec_header_check(const sw_tensor_header_t *h, uint64_t *numel, size_t *raw_len);

/* Number of payload bytes before zstd for numel elements: exact. -EINVAL on bad options. */
int sw_codec_raw_size(const sw_codec_opts_t *opts, uint64_t numel, size_t *out);
/* Payload capacity an encode of numel elements with opts needs (raw size, or zstd's bound). */
int sw_codec_encoded_bound(const sw_codec_opts_t *opts, uint64_t numel, size_t *out);

/*
 * Encodes x (the product of shape[0..ndim) fp32 values, row-major) into out (out_cap bytes, at
 * least sw_codec_encoded_bound()) and fills *h; h->encoded_len is the number of bytes written.
 * ctx is needed when opts->zstd is set (NULL otherwise is fine). Returns 0, -EINVAL for bad
 * options or shape, SW_ELIMIT if out_cap is too small, SW_EFORMAT for non-finite input to
 * blockwise8, -ENOMEM. On failure *h and out are unspecified.
 */
int sw_codec_encode(sw_codec_ctx_t *ctx, const sw_codec_opts_t *opts, const float *x, int ndim,
                    const int64_t *shape, sw_tensor_header_t *h, void *out, size_t out_cap);

/*
 * Decodes payload (len bytes, as received) described by h into out (out_cap floats). On success
 * out[0..numel) holds the tensor. ctx is needed when h->zstd is set. Never reads past payload+len
 * nor writes past out+out_cap. Errors as described at the top of this file.
 */
int sw_codec_decode(sw_codec_ctx_t *ctx, const sw_tensor_header_t *h, const void *payload,
                    size_t len, float *out, size_t out_cap);

/* ---- the TensorHeader protobuf ---- */

/* Bytes sw_codec_header_pack will write for h (at most SW_CODEC_MAX_HEADER). */
size_t sw_codec_header_packed_size(const sw_tensor_header_t *h);
/*
 * Packs h (which must pass sw_codec_header_check) into buf (cap bytes); *len = bytes written.
 * SW_ELIMIT if cap is too small.
 */
int sw_codec_header_pack(const sw_tensor_header_t *h, uint8_t *buf, size_t cap, size_t *len);
/*
 * Parses a packed TensorHeader (at most SW_CODEC_MAX_HEADER bytes) into *h and runs
 * sw_codec_header_check on it. SW_EFORMAT with a detail for anything malformed.
 */
int sw_codec_header_unpack(const uint8_t *buf, size_t len, sw_tensor_header_t *h);

#endif
