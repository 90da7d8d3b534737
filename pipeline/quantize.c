/*
 * quantize.c - writes a pre-quantized copy of a checkpoint (sw_model_quantize, model.h) in the
 * transformers + bitsandbytes layout, so it loads without re-quantization here and in
 * transformers with bitsandbytes.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../util/alloc.h"
#include "../util/error.h"
#include "../util/file.h"
#include "model.h"


/* transformers' BitsAndBytesConfig.to_dict() for the format written (5.x key set). */
static json_t *quantization_config(sw_quant_t q, float threshold)
{
    int nf4 = q == SW_QUANT_NF4;

    return json_pack("{s:b, s:b, s:s, s:s, s:s, s:b, s:b, s:b, s:n, s:f, s:b, s:b, s:s}",
                     "_load_in_4bit", nf4, "_load_in_8bit", !nf4,
                     "bnb_4bit_compute_dtype", "bfloat16", "bnb_4bit_quant_storage", "uint8",
                     "bnb_4bit_quant_type", "nf4", "bnb_4bit_use_double_quant", nf4,
                     "llm_int8_enable_fp32_cpu_offload", 0, "llm_int8_has_fp16_weight", 0,
                     "llm_int8_skip_modules", "llm_int8_threshold", (double)threshold,
                     "load_in_4bit", nf4, "load_in_8bit", !nf4, "quant_method", "bitsandbytes");
}

static int write_config(const char *src, const char *dst, sw_quant_t q, float threshold)
{
    char *in = sw_path_join(src, "config.json"), *out = sw_path_join(dst, "config.json");
    json_t *cfg = NULL;
    int r = -ENOMEM;

    if (!in || !out)
        goto done;
    if ((r = sw_json_load(in, 1 << 20, &cfg)) < 0)
        goto done;
    if (json_object_set_new(cfg, "quantization_config", quantization_config(q, threshold)) != 0) {
        r = -ENOMEM;
        goto done;
    }
    if (json_dump_file(cfg, out, JSON_INDENT(2)) != 0)
        r = sw_err(-EIO, "%s: cannot write; check the directory and free space", out);
done:
    json_decref(cfg);
    sw_free(in);
    sw_free(out);
    return r;
}

/* Copies the small side files (tokenizer, generation config) that are not weights or config. */
static int copy_side_files(const char *src, const char *dst)
{
    DIR *d = opendir(src);
    struct dirent *e;
    int r = 0;

    if (!d)
        return sw_err(-errno, "%s: cannot list: %s", src, strerror(errno));
    while (r == 0 && (e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        char *from, *to, *buf;
        size_t blen;
        FILE *f;

        if (n[0] == '.' || strcmp(n, "config.json") == 0 ||
            (len > 12 && strcmp(n + len - 12, ".safetensors") == 0) ||
            strstr(n, ".safetensors.index.json") || strcmp(n, "reference.safetensors") == 0)
            continue;
        from = sw_path_join(src, n);
        to = sw_path_join(dst, n);
        if (!from || !to) {
            r = -ENOMEM;
        } else if (sw_file_read(from, 64u << 20, &buf, &blen) == 0) {
            f = fopen(to, "wb");
            if (!f || fwrite(buf, 1, blen, f) != blen)
                r = sw_err(-EIO, "%s: cannot write", to);
            if (f && fclose(f) != 0 && r == 0)
                r = sw_err(-EIO, "%s: cannot write", to);
            sw_free(buf);
        } /* directories and unreadable extras are skipped */
        sw_free(from);
        sw_free(to);
    }
    closedir(d);
    return r;
}

/* mkdir -p: creates dir and its missing parents. */
static int make_dirs(const char *dir)
{
    char path[4096];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(path))
        return sw_err(-ENAMETOOLONG, "output directory name is empty or too long");
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        path[i] = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return sw_err(-errno, "%s: cannot create: %s", path, strerror(errno));
        path[i] = i < n ? '/' : '\0';
    }
    return 0;
}

int sw_model_quantize(const char *src, const char *dst, const sw_load_opts_t *opts)
{
    sw_model_t *m = NULL;
    sw_st_writer_t *w = NULL;
    sw_tensor_t *qt = NULL;
    const sw_model_config_t *c;
    char name[256], *out = NULL;
    size_t nq = 0;
    int r;

    if (opts->quant != SW_QUANT_NF4 && opts->quant != SW_QUANT_INT8)
        return sw_err(SW_EUSAGE, "quantize needs --quant nf4 or --quant int8");
    if ((r = sw_model_open(src, &m)) < 0)
        return r;
    c = sw_model_config(m);
    if ((r = make_dirs(dst)) < 0)
        goto done;
    qt = sw_calloc((size_t)c->num_layers * SW_BLOCK_LINEARS, sizeof(*qt));
    out = sw_path_join(dst, "model.safetensors");
    if (!qt || !out || (r = sw_st_writer_new(&w)) < 0) {
        r = r < 0 ? r : -ENOMEM;
        goto done;
    }
    /* every tensor of the checkpoint: block Linears quantized, everything else as stored */
    for (size_t i = 0; i < sw_st_dir_count(sw_model_checkpoint(m)); i++) {
        const char *tn = sw_st_dir_name(sw_model_checkpoint(m), i);
        const sw_st_tensor_t *t;
        int layer = -1, is_linear = 0;

        if (sscanf(tn, "model.layers.%d.", &layer) == 1)
            for (int k = 0; k < SW_BLOCK_LINEARS; k++) {
                snprintf(name, sizeof(name), "model.layers.%d.%s.weight", layer,
                         sw_block_linear_names[k]);
                is_linear |= strcmp(tn, name) == 0;
            }
        if (is_linear)
            continue;
        if ((r = sw_st_dir_find(sw_model_checkpoint(m), tn, &t)) < 0)
            goto done;
        if (t->dtype == SW_ST_U8 || t->dtype == SW_ST_I8) {
            r = sw_err(SW_EUNSUPPORTED, "%s is already quantized (%s); quantize the 16-bit "
                       "original instead", src, tn);
            goto done;
        }
        if ((r = sw_st_writer_add(w, tn, t->dtype, t->ndim, t->shape, t->data, t->nbytes)) < 0)
            goto done;
    }
    for (int l = 0; l < c->num_layers; l++) {
        int64_t shapes[SW_BLOCK_LINEARS][2];

        sw_block_linear_shapes(c, shapes);
        for (int k = 0; k < SW_BLOCK_LINEARS; k++) {
            const sw_st_tensor_t *t;
            sw_quant_t stored;
            char prefix[200];
            snprintf(prefix, sizeof(prefix), "model.layers.%d.%s", l, sw_block_linear_names[k]);
            if ((r = sw_weight_stored_format(sw_model_checkpoint(m), prefix, &stored)) < 0)
                goto done;
            if (stored != SW_QUANT_NONE) {
                r = sw_err(SW_EUNSUPPORTED, "%s is already quantized (%s.weight is %s); quantize "
                           "the 16-bit original instead", src, prefix, sw_quant_name(stored));
                goto done;
            }
            snprintf(name, sizeof(name), "%s.weight", prefix);
            if ((r = sw_st_dir_find(sw_model_checkpoint(m), name, &t)) < 0 ||
                (r = sw_weight_load(sw_model_checkpoint(m), src, prefix, shapes[k][0],
                                    shapes[k][1], opts, &qt[nq])) < 0)
                goto done;
            nq++;
            sw_dtype_t orig = t->dtype == SW_ST_F32 ? SW_DTYPE_F32
                              : t->dtype == SW_ST_F16 ? SW_DTYPE_F16 : SW_DTYPE_BF16;
            if ((r = sw_weight_save(w, prefix, &qt[nq - 1], orig)) < 0)
                goto done;
        }
        if (opts->progress)
            opts->progress(opts->progress_ctx, l, l + 1, c->num_layers);
    }
    if ((r = sw_st_writer_metadata(w, "format", "pt")) < 0 ||
        (r = sw_st_writer_save(w, out)) < 0 ||
        (r = write_config(src, dst, opts->quant, opts->int8_threshold)) < 0 ||
        (r = copy_side_files(src, dst)) < 0)
        goto done;
done:
    for (size_t i = 0; i < nq; i++)
        sw_qtensor_free(&qt[i]);
    sw_free(qt);
    sw_free(out);
    sw_st_writer_free(w);
    sw_model_close(m);
    return r;
}
