/*
 * keymap.c: the alias table that resolves every module name a LoRA file may use to the base
 * tensor it patches (lora-formats.md §2.5–2.7).
 *
 * No tool parses a flat kohya name back into a path ('.' -> '_' is not invertible); like kohya,
 * ComfyUI and A1111 we build a forward table from the base model's own tensor names. One builder
 * (add_key) turns one single-file checkpoint key into a target and all its aliases; the table of
 * a real checkpoint feeds it the file's keys, the table of a family feeds it a generated list of
 * the same keys (family_keys), so both tables are made by the same code.
 *
 * Invariants: targets are only appended while building; lookups use an open-addressing hash
 * table (FNV-1a, load <= 1/2) of alias -> target index, so a lookup is O(1). The first target
 * that claims an alias keeps it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora_internal.h"

struct mood_keymap {
    mood_target *targets;
    size_t n_targets, cap_targets;
    mood_buf names;     /* alias strings, each NUL-terminated */
    uint32_t *slot_off; /* offset + 1 of the alias in names; 0 = empty slot */
    uint32_t *slot_target;
    uint32_t *slot_hash; /* compared before the strings: most probes then touch no name */
    size_t n_slots, n_aliases;
    mood_family family;
};

/* A checkpoint key the builder looks at: its name and shape. */
typedef struct base_key {
    const char *name;
    int ndim;
    int64_t shape[4];
} base_key;

/* The keys of one base: a real file (bias lookups go to it) or a generated, name-sorted list. */
typedef struct key_list {
    base_key *keys;
    size_t n;
    const mood_st_file *st;
} key_list;

#define NAME_MAX_LEN 512

/* snprintf into a NAME_MAX_LEN buffer; names longer than that are cut (and then match nothing). */
static void nprintf(char *dst, const char *fmt, ...) MOOD_PRINTF(2, 3);
static void nprintf(char *dst, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, NAME_MAX_LEN, fmt, ap);
    va_end(ap);
}

/* ----- hash table -------------------------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static size_t probe(const mood_keymap *m, const char *name, uint64_t h, int *found)
{
    size_t mask = m->n_slots - 1, i = (size_t)h & mask;
    while (m->slot_off[i]) {
        if (m->slot_hash[i] == (uint32_t)(h >> 32) &&
            strcmp(m->names.data + m->slot_off[i] - 1, name) == 0) {
            *found = 1;
            return i;
        }
        i = (i + 1) & mask;
    }
    *found = 0;
    return i;
}

/* Makes room for at least `want` aliases at load <= 1/2. */
static int grow_slots(mood_keymap *m, size_t want)
{
    size_t old_n = m->n_slots, n = old_n ? old_n : 4096;
    uint32_t *old_off = m->slot_off, *old_t = m->slot_target, *old_h = m->slot_hash;
    int found;
    while (n < 2 * want)
        n *= 2;
    if (n == old_n)
        return 0;
    m->slot_off = mood_calloc(n, sizeof *m->slot_off);
    m->slot_target = mood_calloc(n, sizeof *m->slot_target);
    m->slot_hash = mood_calloc(n, sizeof *m->slot_hash);
    if (!m->slot_off || !m->slot_target || !m->slot_hash) {
        mood_free(m->slot_off);
        mood_free(m->slot_target);
        mood_free(m->slot_hash);
        m->slot_off = old_off;
        m->slot_target = old_t;
        m->slot_hash = old_h;
        return mood_error_nomem();
    }
    m->n_slots = n;
    for (size_t i = 0; i < old_n; i++) {
        const char *name = old_off[i] ? m->names.data + old_off[i] - 1 : NULL;
        size_t j;
        if (!name)
            continue;
        j = probe(m, name, hash_str(name), &found);
        m->slot_off[j] = old_off[i];
        m->slot_target[j] = old_t[i];
        m->slot_hash[j] = old_h[i];
    }
    mood_free(old_off);
    mood_free(old_t);
    mood_free(old_h);
    return 0;
}

/* Adds alias -> target ti unless the alias is taken. */
static int add_alias(mood_keymap *m, const char *alias, size_t ti)
{
    int found, err;
    size_t i, off;
    uint64_t h = hash_str(alias);
    if (2 * (m->n_aliases + 1) > m->n_slots && (err = grow_slots(m, 2 * m->n_aliases + 2)) != 0)
        return err;
    i = probe(m, alias, h, &found);
    if (found)
        return 0;
    off = m->names.len;
    if (off >= UINT32_MAX - NAME_MAX_LEN)
        return mood_error_set(MOOD_ENOMEM, "alias table: too many names");
    if ((err = mood_buf_append(&m->names, alias, strlen(alias) + 1)) != 0)
        return err;
    m->slot_off[i] = (uint32_t)off + 1;
    m->slot_target[i] = (uint32_t)ti;
    m->slot_hash[i] = (uint32_t)(h >> 32);
    m->n_aliases++;
    return 0;
}

/* ----- names ------------------------------------------------------------------------------- */

/* dst = prefix + src with '.' replaced by '_' when us is set. */
static void join(char *dst, const char *prefix, const char *src, int us)
{
    size_t n = strlen(prefix);
    memcpy(dst, prefix, n);
    for (; *src && n < NAME_MAX_LEN - 1; src++)
        dst[n++] = (us && *src == '.') ? '_' : *src;
    dst[n] = '\0';
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Renames an LDM ResBlock child to its diffusers name (§2.5); NULL when not a known child. */
static const char *res_rename(const char *rest)
{
    static const char *const map[][2] = {
        {"in_layers.0", "norm1"},          {"in_layers.2", "conv1"},
        {"out_layers.0", "norm2"},         {"out_layers.3", "conv2"},
        {"emb_layers.1", "time_emb_proj"}, {"skip_connection", "conv_shortcut"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(rest, map[i][0]) == 0)
            return map[i][1];
    }
    return NULL;
}

/* Parses "N.M.rest" (rest may be empty). */
static int parse_nm(const char *s, int *n, int *mm, const char **rest)
{
    char *end;
    long a = strtol(s, &end, 10), b;
    if (end == s || *end != '.' || a < 0 || a > 99)
        return -1;
    s = end + 1;
    b = strtol(s, &end, 10);
    if (end == s || (*end != '.' && *end) || b < 0 || b > 9)
        return -1;
    *n = (int)a;
    *mm = (int)b;
    *rest = *end ? end + 1 : end;
    return 0;
}

static int block_child(char *out, const char *head, const char *rest, int resnet)
{
    const char *r = resnet ? res_rename(rest) : rest;
    if (!r || !*r)
        return -1;
    nprintf(out, "%s.%s", head, r);
    return 0;
}

static int ldm_input(char *out, const char *s)
{
    int n, mm, x, i;
    const char *rest;
    char head[64];
    if (parse_nm(s, &n, &mm, &rest) != 0)
        return -1;
    if (n == 0)
        return (mm == 0 && !*rest) ? (nprintf(out, "conv_in"), 0) : -1;
    x = (n - 1) / 3;
    i = (n - 1) % 3;
    if (i == 2) /* the third slot of a level is its downsampler */
        return (mm == 0 && strcmp(rest, "op") == 0)
                   ? (nprintf(out, "down_blocks.%d.downsamplers.0.conv", x), 0)
                   : -1;
    snprintf(head, sizeof head, "down_blocks.%d.%s.%d", x, mm == 0 ? "resnets" : "attentions", i);
    return mm > 1 ? -1 : block_child(out, head, rest, mm == 0);
}

static int ldm_output(char *out, const char *s)
{
    int n, mm;
    const char *rest;
    char head[64];
    if (parse_nm(s, &n, &mm, &rest) != 0)
        return -1;
    /* An upsampler sits at .1 when the level has no attention, else at .2: its child is always
     * "conv", which no resnet or attention has. */
    if (mm > 0 && strcmp(rest, "conv") == 0)
        return nprintf(out, "up_blocks.%d.upsamplers.0.conv", n / 3), 0;
    snprintf(head, sizeof head, "up_blocks.%d.%s.%d", n / 3, mm == 0 ? "resnets" : "attentions",
             n % 3);
    return mm > 1 ? -1 : block_child(out, head, rest, mm == 0);
}

static int ldm_middle(char *out, const char *s)
{
    if (starts(s, "0."))
        return block_child(out, "mid_block.resnets.0", s + 2, 1);
    if (starts(s, "1."))
        return block_child(out, "mid_block.attentions.0", s + 2, 0);
    if (starts(s, "2."))
        return block_child(out, "mid_block.resnets.1", s + 2, 1);
    return -1;
}

int mood__keymap_ldm_to_diffusers(char *out, size_t size, const char *ldm)
{
    static const char *const top[][2] = {
        {"out.0", "conv_norm_out"},
        {"out.2", "conv_out"},
        {"time_embed.0", "time_embedding.linear_1"},
        {"time_embed.2", "time_embedding.linear_2"},
        {"label_emb.0.0", "add_embedding.linear_1"},
        {"label_emb.0.2", "add_embedding.linear_2"},
    };
    char buf[NAME_MAX_LEN];
    int rc = -1;
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) {
        if (strcmp(ldm, top[i][0]) == 0) {
            nprintf(buf, "%s", top[i][1]);
            rc = 0;
        }
    }
    if (starts(ldm, "input_blocks."))
        rc = ldm_input(buf, ldm + 13);
    else if (starts(ldm, "output_blocks."))
        rc = ldm_output(buf, ldm + 14);
    else if (starts(ldm, "middle_block."))
        rc = ldm_middle(buf, ldm + 13);
    if (rc == 0 && (size_t)snprintf(out, size, "%s", buf) >= size)
        rc = -1;
    return rc;
}

/* ----- building ---------------------------------------------------------------------------- */

static int key_exists(const key_list *kl, const char *name)
{
    size_t lo = 0, hi = kl->n;
    if (kl->st)
        return mood_st_find(kl->st, name) != NULL;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(kl->keys[mid].name, name);
        if (c == 0)
            return 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* Appends a target for key k (bias key bias, may be NULL); its index goes to *ti. */
static int new_target(mood_keymap *m, size_t *ti, const base_key *k, const char *bias,
                      const char *kohya, mood_part part, int slice)
{
    mood_target *t;
    if (m->n_targets == m->cap_targets) {
        size_t cap = m->cap_targets ? m->cap_targets * 2 : 256;
        mood_target *grown = mood_realloc(m->targets, cap * sizeof *grown);
        if (!grown)
            return mood_error_nomem();
        m->targets = grown;
        m->cap_targets = cap;
    }
    t = &m->targets[m->n_targets];
    memset(t, 0, sizeof *t);
    t->part = part;
    t->slice = slice;
    t->ndim = k->ndim;
    memcpy(t->shape, k->shape, sizeof t->shape);
    if (slice >= 0)
        t->shape[0] /= 3; /* rows d of the (3d, d) in_proj weight */
    t->key = mood_strdup(k->name);
    t->bias_key = bias ? mood_strdup(bias) : NULL;
    t->kohya_name = mood_strdup(kohya);
    m->n_targets++;
    if (!t->key || !t->kohya_name || (bias && !t->bias_key))
        return mood_error_nomem();
    *ti = m->n_targets - 1;
    return 0;
}

/* Bias key of a ".weight" key if the base has it. */
static const char *bias_of(char *buf, const key_list *kl, const char *name, size_t stem_len)
{
    nprintf(buf, "%.*s.bias", (int)stem_len, name);
    return key_exists(kl, buf) ? buf : NULL;
}

static int add_diffusers_aliases(mood_keymap *m, const char *d, size_t ti);

/* Aliases of a UNet key, LDM path ldm (without ".weight"). */
static int add_unet(mood_keymap *m, const key_list *kl, const base_key *k, const char *ldm)
{
    char d[NAME_MAX_LEN], a[NAME_MAX_LEN], bias[NAME_MAX_LEN], kohya[NAME_MAX_LEN];
    int has_d = mood__keymap_ldm_to_diffusers(d, sizeof d, ldm) == 0, err = 0;
    size_t ti;
    const char *pre[] = {"lora_unet_", "oft_unet_"};
    join(kohya, "lora_unet_", (has_d && m->family != MOOD_FAMILY_SDXL) ? d : ldm, 1);
    if ((err = new_target(m, &ti, k, bias_of(bias, kl, k->name, strlen(k->name) - 7), kohya,
                          MOOD_PART_UNET, -1)) != 0)
        return err;
    if (has_d && !(m->targets[ti].model_name = mood_strdup(d)))
        return mood_error_nomem();
    for (int i = 0; i < 2 && !err; i++) {
        join(a, pre[i], ldm, 1);
        err = add_alias(m, a, ti);
    }
    join(a, "diffusion_model.", ldm, 0);
    err = err ? err : add_alias(m, a, ti);
    join(a, "model.diffusion_model.", ldm, 0);
    err = err ? err : add_alias(m, a, ti);
    if (!has_d || err)
        return err;
    return add_diffusers_aliases(m, d, ti);
}

/* The diffusers spellings of one UNet module d (§2.3, §2.7). */
static int add_diffusers_aliases(mood_keymap *m, const char *d, size_t ti)
{
    char a[NAME_MAX_LEN], p[NAME_MAX_LEN];
    const char *last = strrchr(d, '.');
    size_t stem;
    int err = 0;
    const char *pre_us[] = {"lora_unet_", "lycoris_", "oft_unet_"};
    for (int i = 0; i < 3 && !err; i++) {
        join(a, pre_us[i], d, 1);
        err = add_alias(m, a, ti);
    }
    join(a, "unet.", d, 0);
    err = err ? err : add_alias(m, a, ti);
    err = err ? err : add_alias(m, d, ti);
    if (err || !last)
        return err;
    /* Old attention processors: "...attn1.processor.to_q" and "...processor.to_out". */
    stem = (size_t)(last - d);
    if (strcmp(last, ".to_q") == 0 || strcmp(last, ".to_k") == 0 || strcmp(last, ".to_v") == 0)
        nprintf(p, "%.*s.processor%s", (int)stem, d, last);
    else if (strlen(d) > 9 && strcmp(d + strlen(d) - 9, ".to_out.0") == 0)
        nprintf(p, "%.*s.processor.to_out", (int)(strlen(d) - 9), d);
    else
        return 0;
    join(a, "unet.", p, 0);
    err = add_alias(m, a, ti);
    return err ? err : add_alias(m, p, ti);
}

/* Aliases of a text-encoder module with Hugging Face path hf ("text_model.encoder..."). */
static int add_te(mood_keymap *m, const base_key *k, const char *bias, const char *hf,
                  mood_part part, int slice, const char *generic)
{
    char a[NAME_MAX_LEN], kohya[NAME_MAX_LEN];
    const char *flat[3] = {NULL, NULL, NULL}, *dotted = "text_encoder.";
    size_t ti;
    int err;
    if (m->family == MOOD_FAMILY_SDXL && part == MOOD_PART_TE2) {
        flat[0] = "lora_te2_";
        dotted = "text_encoder_2.";
    } else if (m->family == MOOD_FAMILY_SDXL) {
        flat[0] = "lora_te1_";
        flat[1] = "lora_te_"; /* like ComfyUI: lora_te_ means CLIP-L when it is present */
    } else {
        flat[0] = "lora_te_";
        flat[1] = "lora_te1_";
    }
    join(kohya, flat[0], hf, 1);
    if ((err = new_target(m, &ti, k, bias, kohya, part, slice)) != 0)
        return err;
    if (!(m->targets[ti].model_name = mood_strdup(hf)))
        return mood_error_nomem();
    for (int i = 0; i < 3 && flat[i] && !err; i++) {
        join(a, flat[i], hf, 1);
        err = add_alias(m, a, ti);
    }
    join(a, dotted, hf, 0);
    err = err ? err : add_alias(m, a, ti);
    if (!err && generic)
        err = add_alias(m, generic, ti);
    return err;
}

/* OpenCLIP resblock child -> Hugging Face CLIP child (§2.6). */
static const char *openclip_rename(const char *child)
{
    static const char *const map[][2] = {
        {"attn.out_proj.weight", "self_attn.out_proj"},
        {"mlp.c_fc.weight", "mlp.fc1"},
        {"mlp.c_proj.weight", "mlp.fc2"},
        {"ln_1.weight", "layer_norm1"},
        {"ln_2.weight", "layer_norm2"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(child, map[i][0]) == 0)
            return map[i][1];
    }
    return NULL;
}

/* An OpenCLIP text encoder key (after "<prefix>model."). */
static int add_openclip(mood_keymap *m, const key_list *kl, const base_key *k, const char *rest,
                        mood_part part)
{
    char hf[NAME_MAX_LEN], bias[NAME_MAX_LEN], gen[NAME_MAX_LEN];
    size_t stem = strlen(k->name);
    const char *child, *b;
    char *end;
    long layer;
    if (strcmp(rest, "text_projection") == 0 && k->ndim == 2) {
        base_key t = *k;
        t.shape[0] = k->shape[1]; /* stored as x @ P: the Linear weight is Pᵀ */
        t.shape[1] = k->shape[0];
        int err = add_te(m, &t, NULL, "text_projection", part, -1, NULL);
        if (!err)
            m->targets[m->n_targets - 1].transposed = 1;
        return err;
    }
    if (strcmp(rest, "ln_final.weight") == 0)
        return add_te(m, k, bias_of(bias, kl, k->name, stem - 7), "text_model.final_layer_norm",
                      part, -1, NULL);
    if (!starts(rest, "transformer.resblocks."))
        return 0;
    layer = strtol(rest + 22, &end, 10);
    if (end == rest + 22 || *end != '.' || layer < 0)
        return 0;
    child = end + 1;
    if (strcmp(child, "attn.in_proj_weight") == 0) {
        static const char *const qkv[] = {"q", "k", "v"};
        int err = 0;
        nprintf(bias, "%.*s_bias", (int)(stem - 7), k->name);
        b = key_exists(kl, bias) ? bias : NULL;
        for (int s = 0; s < 3 && !err; s++) {
            nprintf(hf, "text_model.encoder.layers.%ld.self_attn.%s_proj", layer, qkv[s]);
            err = add_te(m, k, b, hf, part, s, NULL);
        }
        return err;
    }
    if (!(child = openclip_rename(child)))
        return 0;
    nprintf(hf, "text_model.encoder.layers.%ld.%s", layer, child);
    nprintf(gen, "%.*s", (int)(stem - 7), k->name);
    return add_te(m, k, bias_of(bias, kl, k->name, stem - 7), hf, part, -1, gen);
}

/* A Hugging Face CLIP key (after "<prefix>transformer."), with or without "text_model.". */
static int add_hf_clip(mood_keymap *m, const key_list *kl, const base_key *k, const char *rest,
                       mood_part part)
{
    char hf[NAME_MAX_LEN], bias[NAME_MAX_LEN], gen[NAME_MAX_LEN];
    size_t n = strlen(rest), stem = strlen(k->name) - 7;
    if (starts(rest, "text_model."))
        rest += 11, n -= 11;
    if (!starts(rest, "encoder.layers.") && !starts(rest, "final_layer_norm."))
        return 0;
    nprintf(hf, "text_model.%.*s", (int)(n - 7), rest);
    nprintf(gen, "%.*s", (int)stem, k->name);
    return add_te(m, k, bias_of(bias, kl, k->name, stem), hf, part, -1, gen);
}

/* The builder: one checkpoint key -> target(s) and aliases; other keys are ignored. */
static int add_key(mood_keymap *m, const key_list *kl, const base_key *k)
{
    const char *s = k->name;
    char ldm[NAME_MAX_LEN];
    if (k->ndim < 1 || k->ndim > 4)
        return 0;
    if (starts(s, "model.diffusion_model.") && mood_str_ends_with(s, ".weight")) {
        nprintf(ldm, "%.*s", (int)(strlen(s) - 29), s + 22);
        return add_unet(m, kl, k, ldm);
    }
    if (starts(s, "cond_stage_model.transformer."))
        return mood_str_ends_with(s, ".weight") ? add_hf_clip(m, kl, k, s + 29, MOOD_PART_TE1) : 0;
    if (starts(s, "cond_stage_model.model."))
        return add_openclip(m, kl, k, s + 23, MOOD_PART_TE1);
    if (starts(s, "conditioner.embedders.0.transformer."))
        return mood_str_ends_with(s, ".weight") ? add_hf_clip(m, kl, k, s + 36, MOOD_PART_TE1) : 0;
    if (starts(s, "conditioner.embedders.1.model."))
        return add_openclip(m, kl, k, s + 30, MOOD_PART_TE2);
    return 0;
}

static int keymap_build(mood_keymap **out, const key_list *kl, mood_family family)
{
    mood_keymap *m = mood_calloc(1, sizeof *m);
    int err = 0;
    *out = NULL;
    if (!m)
        return mood_error_nomem();
    m->family = family;
    mood_buf_init(&m->names);
    /* about 8 aliases per target: size the table once */
    if ((err = grow_slots(m, 8 * kl->n)) != 0 || (err = mood_buf_reserve(&m->names, 64 * kl->n)))
        goto done;
    for (size_t i = 0; i < kl->n && !err; i++)
        err = add_key(m, kl, &kl->keys[i]);
done:
    if (err)
        mood__keymap_free(m);
    else
        *out = m;
    return err;
}

int mood__keymap_from_checkpoint(mood_keymap **out, const mood_st_file *f, mood_family family)
{
    key_list kl = {NULL, mood_st_count(f), f};
    int err;
    *out = NULL;
    kl.keys = mood_calloc(kl.n + 1, sizeof *kl.keys);
    if (!kl.keys)
        return mood_error_nomem();
    for (size_t i = 0; i < kl.n; i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        kl.keys[i].name = t->name;
        kl.keys[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim && d < 4; d++)
            kl.keys[i].shape[d] = t->shape[d];
    }
    err = keymap_build(out, &kl, family);
    if (err)
        mood_error_prefix("%s: building the key map", mood_st_path(f));
    mood_free(kl.keys);
    return err;
}

static int cmp_key(const void *a, const void *b);

/* ----- diffusers -> LDM names, for bases known by diffusers names ---------------------------- */

/* The LDM ResBlock child of a diffusers resnet child (res_rename backwards). */
static const char *res_rename_back(const char *child)
{
    static const char *const map[][2] = {
        {"norm1", "in_layers.0"},          {"conv1", "in_layers.2"},
        {"norm2", "out_layers.0"},         {"conv2", "out_layers.3"},
        {"time_emb_proj", "emb_layers.1"}, {"conv_shortcut", "skip_connection"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(child, map[i][0]) == 0)
            return map[i][1];
    }
    return NULL;
}

/* "X.<sub>.I.rest" parsed; with x NULL, "<sub>.I.rest" (the mid block's). */
static int parse_block(const char *s, int *x, char *sub, size_t subsz, int *i, const char **rest)
{
    char *end;
    long a = 0, b;
    const char *dot;
    if (x) {
        a = strtol(s, &end, 10);
        if (end == s || *end != '.' || a < 0 || a > 99)
            return -1;
        s = end + 1;
    }
    if (!(dot = strchr(s, '.')) || (size_t)(dot - s) >= subsz)
        return -1;
    memcpy(sub, s, (size_t)(dot - s));
    sub[dot - s] = '\0';
    s = dot + 1;
    b = strtol(s, &end, 10);
    if (end == s || *end != '.' || b < 0 || b > 9)
        return -1;
    if (x)
        *x = (int)a;
    *i = (int)b;
    *rest = end + 1;
    return 0;
}

/* The LDM/SGM module name of diffusers UNet module d, for a UNet of two resnets per level (the
 * inverse of mood__keymap_ldm_to_diffusers); -1 when there is none. An up level's upsampler sits
 * at slot 2 when the level has attentions, else at slot 1. */
static int diffusers_to_ldm(char *out, const key_list *kl, const char *d)
{
    static const char *const top[][2] = {
        {"conv_norm_out", "out.0"},
        {"conv_out", "out.2"},
        {"conv_in", "input_blocks.0.0"},
        {"time_embedding.linear_1", "time_embed.0"},
        {"time_embedding.linear_2", "time_embed.2"},
        {"add_embedding.linear_1", "label_emb.0.0"},
        {"add_embedding.linear_2", "label_emb.0.2"},
    };
    char sub[32], probe[NAME_MAX_LEN];
    const char *rest, *child;
    int x = 0, i = 0, down = starts(d, "down_blocks."), up = starts(d, "up_blocks.");
    for (size_t k = 0; k < sizeof top / sizeof top[0]; k++)
        if (strcmp(d, top[k][0]) == 0)
            return nprintf(out, "%s", top[k][1]), 0;
    if (starts(d, "mid_block.")) {
        if (parse_block(d + 10, NULL, sub, sizeof sub, &i, &rest) != 0)
            return -1;
    } else if (!(down || up) ||
               parse_block(d + (down ? 12 : 10), &x, sub, sizeof sub, &i, &rest) != 0) {
        return -1;
    }
    child = strcmp(sub, "resnets") == 0 ? res_rename_back(rest) : rest;
    if (!child || !*child)
        return -1;
    if (starts(d, "mid_block.")) {
        if (strcmp(sub, "attentions") == 0 && i == 0)
            return nprintf(out, "middle_block.1.%s", child), 0;
        if (strcmp(sub, "resnets") == 0 && i <= 1)
            return nprintf(out, "middle_block.%d.%s", 2 * i, child), 0;
        return -1;
    }
    if (strcmp(sub, "resnets") == 0 || strcmp(sub, "attentions") == 0) {
        int slot = strcmp(sub, "attentions") == 0;
        if (i > (down ? 1 : 2))
            return -1;
        nprintf(out, "%s.%d.%d.%s", down ? "input_blocks" : "output_blocks",
                down ? 3 * x + i + 1 : 3 * x + i, slot, child);
        return 0;
    }
    if (down && strcmp(sub, "downsamplers") == 0 && i == 0 && strcmp(rest, "conv") == 0)
        return nprintf(out, "input_blocks.%d.0.op", 3 * x + 3), 0;
    if (up && strcmp(sub, "upsamplers") == 0 && i == 0 && strcmp(rest, "conv") == 0) {
        nprintf(probe, "up_blocks.%d.attentions.0.proj_in.weight", x);
        nprintf(out, "output_blocks.%d.%d.conv", 3 * x + 2, key_exists(kl, probe) ? 2 : 1);
        return 0;
    }
    return -1;
}

/* Whether a UNet known by diffusers names has two resnets in every down level and three in every
 * up level, the layout LDM's block numbering assumes (SD1, SD2, SDXL). */
static int ldm_numbering_holds(const key_list *kl)
{
    int max_res[2][16], seen = 0;
    memset(max_res, -1, sizeof max_res);
    for (size_t k = 0; k < kl->n; k++) {
        const char *n = kl->keys[k].name, *p;
        int up = starts(n, "up_blocks."), x;
        char *end;
        long r;
        if (!up && !starts(n, "down_blocks."))
            continue;
        x = (int)strtol(n + (up ? 10 : 12), &end, 10);
        if (x < 0 || x >= 16 || !starts(end, ".resnets."))
            continue;
        p = end + 9;
        r = strtol(p, &end, 10);
        if (end != p && r > max_res[up][x])
            max_res[up][x] = (int)r;
        seen = 1;
    }
    for (int up = 0; up < 2; up++)
        for (int x = 0; x < 16; x++)
            if (max_res[up][x] >= 0 && max_res[up][x] != (up ? 2 : 1))
                return 0;
    return seen;
}

/* One weight of a base given by its engine names (mood__keymap_from_names). */
static int add_named(mood_keymap *m, const key_list *kl, const mood_base_weight *w, int ldm_ok)
{
    char stem[NAME_MAX_LEN], bias[NAME_MAX_LEN], kohya[NAME_MAX_LEN], ldm[NAME_MAX_LEN];
    char back[NAME_MAX_LEN], a[NAME_MAX_LEN];
    size_t n = strlen(w->name), ti;
    base_key k = {w->name, w->ndim, {0}};
    int err, has_ldm;
    if (n < 8 || n >= NAME_MAX_LEN || !mood_str_ends_with(w->name, ".weight"))
        return 0; /* biases and buffers are found through their weight */
    nprintf(stem, "%.*s", (int)(n - 7), w->name);
    memcpy(k.shape, w->shape, sizeof k.shape);
    const char *b = bias_of(bias, kl, w->name, n - 7);
    if (w->part != MOOD_PART_UNET)
        return add_te(m, &k, b, stem, w->part, -1, NULL);
    /* the LDM name too, checked by mapping it back (kohya names SDXL modules by it) */
    has_ldm = ldm_ok && diffusers_to_ldm(ldm, kl, stem) == 0 &&
              mood__keymap_ldm_to_diffusers(back, sizeof back, ldm) == 0 && !strcmp(back, stem);
    join(kohya, "lora_unet_", has_ldm && m->family == MOOD_FAMILY_SDXL ? ldm : stem, 1);
    if ((err = new_target(m, &ti, &k, b, kohya, MOOD_PART_UNET, -1)) != 0)
        return err;
    if (!(m->targets[ti].model_name = mood_strdup(stem)))
        return mood_error_nomem();
    if ((err = add_diffusers_aliases(m, stem, ti)) != 0 || !has_ldm)
        return err;
    join(a, "lora_unet_", ldm, 1);
    err = add_alias(m, a, ti);
    join(a, "oft_unet_", ldm, 1);
    err = err ? err : add_alias(m, a, ti);
    join(a, "diffusion_model.", ldm, 0);
    err = err ? err : add_alias(m, a, ti);
    join(a, "model.diffusion_model.", ldm, 0);
    return err ? err : add_alias(m, a, ti);
}

int mood__keymap_from_names(mood_keymap **out, const mood_base_weight *w, size_t n,
                            mood_family family)
{
    key_list kl = {NULL, n, NULL};
    mood_keymap *m = mood_calloc(1, sizeof *m);
    int err = 0;
    *out = NULL;
    kl.keys = mood_calloc(n + 1, sizeof *kl.keys);
    if (!m || !kl.keys) {
        err = mood_error_nomem();
        goto done;
    }
    for (size_t i = 0; i < n; i++) /* name-sorted, for bias lookups */
        kl.keys[i] = (base_key){w[i].name, w[i].ndim, {0}};
    qsort(kl.keys, n, sizeof *kl.keys, cmp_key);
    m->family = family;
    mood_buf_init(&m->names);
    if ((err = grow_slots(m, 8 * n)) != 0 || (err = mood_buf_reserve(&m->names, 64 * n)) != 0)
        goto done;
    int ldm_ok = ldm_numbering_holds(&kl);
    for (size_t i = 0; i < n && !err; i++)
        err = add_named(m, &kl, &w[i], ldm_ok);
done:
    mood_free(kl.keys);
    if (err)
        mood__keymap_free(m);
    else
        *out = m;
    return err;
}

/* ----- modules of a UNet other than the family's release one -------------------------------- */

/* The UNet2DConditionModel's module-name words, multi-word ones first so that the longest wins:
 * kohya writes a module "down_blocks.1.attentions.0.proj_in" as
 * "lora_unet_down_blocks_1_attentions_0_proj_in", and these put the dots back. */
static const char *const unet_words[] = {"transformer_blocks",
                                         "conv_shortcut",
                                         "time_emb_proj",
                                         "time_embedding",
                                         "add_embedding",
                                         "downsamplers",
                                         "upsamplers",
                                         "down_blocks",
                                         "up_blocks",
                                         "mid_block",
                                         "attentions",
                                         "resnets",
                                         "proj_in",
                                         "proj_out",
                                         "linear_1",
                                         "linear_2",
                                         "conv_in",
                                         "conv_out",
                                         "to_out",
                                         "to_q",
                                         "to_k",
                                         "to_v",
                                         "attn1",
                                         "attn2",
                                         "conv1",
                                         "conv2",
                                         "conv",
                                         "net",
                                         "ff",
                                         "proj"};

/* The leaves a LoRA can patch (Linear and Conv layers), as the path's last words. */
static const char *const unet_leaves[] = {
    ".to_q",          ".to_k",          ".to_v",     ".to_out.0", ".ff.net.0.proj",
    ".ff.net.2",      ".proj_in",       ".proj_out", ".conv1",    ".conv2",
    ".conv_shortcut", ".time_emb_proj", ".conv",     ".linear_1", ".linear_2"};

/* kohya's underscored UNet module path (after "lora_unet_") -> the diffusers path, or -1 when it
 * is not one of a UNet2DConditionModel's Linear or Conv layers. */
static int unet_path_from_kohya(char *out, size_t size, const char *rest)
{
    size_t n = 0;
    const char *p = rest;
    int leaf = 0;
    if (strncmp(rest, "down_blocks_", 12) && strncmp(rest, "up_blocks_", 10) &&
        strncmp(rest, "mid_block_", 10) && strcmp(rest, "conv_in") && strcmp(rest, "conv_out") &&
        strncmp(rest, "time_embedding_", 15) && strncmp(rest, "add_embedding_", 14))
        return -1;
    while (*p) {
        size_t len = 0;
        if (*p >= '0' && *p <= '9') {
            while (p[len] >= '0' && p[len] <= '9')
                len++;
        } else {
            for (size_t i = 0; i < sizeof unet_words / sizeof unet_words[0] && !len; i++) {
                size_t k = strlen(unet_words[i]);
                if (strncmp(p, unet_words[i], k) == 0 && (p[k] == '_' || p[k] == '\0'))
                    len = k;
            }
        }
        if (!len || n + len + 2 > size)
            return -1;
        if (n)
            out[n++] = '.';
        memcpy(out + n, p, len);
        n += len;
        p += len;
        if (*p == '_')
            p++;
    }
    out[n] = '\0';
    if (strcmp(out, "conv_in") == 0 || strcmp(out, "conv_out") == 0)
        return 0;
    for (size_t i = 0; i < sizeof unet_leaves / sizeof unet_leaves[0]; i++)
        leaf |= mood_str_ends_with(out, unet_leaves[i]);
    return leaf ? 0 : -1;
}

int mood__keymap_add_unet_module(mood_keymap *m, const char *kohya_module)
{
    char d[NAME_MAX_LEN], key[NAME_MAX_LEN];
    base_key k = {key, 0, {0}};
    size_t ti;
    int err;
    if (strncmp(kohya_module, "lora_unet_", 10) != 0 || strlen(kohya_module) >= NAME_MAX_LEN - 8 ||
        unet_path_from_kohya(d, sizeof d, kohya_module + 10) != 0)
        return 0;
    nprintf(key, "%s.weight", d);
    k.ndim = mood_str_ends_with(d, ".conv") || mood_str_ends_with(d, ".conv1") ||
                     mood_str_ends_with(d, ".conv2") || !strcmp(d, "conv_in") ||
                     !strcmp(d, "conv_out")
                 ? 4
                 : 0; /* a Linear, or a 1x1 convolution where the model uses them: unknown */
    if ((err = new_target(m, &ti, &k, NULL, kohya_module, MOOD_PART_UNET, -1)) != 0)
        return err;
    if (!(m->targets[ti].model_name = mood_strdup(d)))
        return mood_error_nomem();
    return add_diffusers_aliases(m, d, ti);
}

void mood__keymap_free(mood_keymap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_targets; i++) {
        mood_free(m->targets[i].key);
        mood_free(m->targets[i].bias_key);
        mood_free(m->targets[i].kohya_name);
        mood_free(m->targets[i].model_name);
    }
    mood_free(m->targets);
    mood_free(m->slot_off);
    mood_free(m->slot_target);
    mood_free(m->slot_hash);
    mood_buf_dispose(&m->names);
    mood_free(m);
}

const mood_target *mood__keymap_find(const mood_keymap *m, const char *module_name)
{
    int found;
    size_t i;
    if (!m || !module_name || strlen(module_name) >= NAME_MAX_LEN)
        return NULL;
    i = probe(m, module_name, hash_str(module_name), &found);
    return found ? &m->targets[m->slot_target[i]] : NULL;
}

size_t mood__keymap_target_count(const mood_keymap *m)
{
    return m->n_targets;
}

const mood_target *mood__keymap_target(const mood_keymap *m, size_t i)
{
    return i < m->n_targets ? &m->targets[i] : NULL;
}

mood_family mood__keymap_family(const mood_keymap *m)
{
    return m->family;
}

/* ----- generated tables (family architectures) --------------------------------------------- */

/* Keys of a family's real checkpoint, generated from its architecture (§2.4). */
typedef struct gen {
    base_key *keys;
    size_t n, cap;
    int err;
} gen;

static void gen_add(gen *g, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d)
{
    base_key *k;
    if (g->err)
        return;
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 1024;
        base_key *grown = mood_realloc(g->keys, cap * sizeof *grown);
        if (!grown) {
            g->err = mood_error_nomem();
            return;
        }
        g->keys = grown;
        g->cap = cap;
    }
    k = &g->keys[g->n];
    if (!(k->name = mood_strdup(name))) {
        g->err = mood_error_nomem();
        return;
    }
    k->ndim = ndim;
    k->shape[0] = a, k->shape[1] = b, k->shape[2] = c, k->shape[3] = d;
    g->n++;
}

/* A ".weight" (ndim 1, 2 or 4) and optionally its ".bias". */
static void gen_w(gen *g, const char *stem, int bias, int ndim, int64_t o, int64_t i, int64_t k)
{
    char name[NAME_MAX_LEN];
    nprintf(name, "%s.weight", stem);
    gen_add(g, name, ndim, o, ndim > 1 ? i : 0, ndim > 2 ? k : 0, ndim > 2 ? k : 0);
    if (bias) {
        nprintf(name, "%s.bias", stem);
        gen_add(g, name, 1, o, 0, 0, 0);
    }
}

static void gen_sub(gen *g, const char *head, const char *child, int bias, int ndim, int64_t o,
                    int64_t i, int64_t k)
{
    char stem[NAME_MAX_LEN];
    nprintf(stem, "%s.%s", head, child);
    gen_w(g, stem, bias, ndim, o, i, k);
}

static void gen_resblock(gen *g, const char *p, int64_t cin, int64_t cout)
{
    gen_sub(g, p, "in_layers.0", 1, 1, cin, 0, 0);
    gen_sub(g, p, "in_layers.2", 1, 4, cout, cin, 3);
    gen_sub(g, p, "emb_layers.1", 1, 2, cout, 1280, 0);
    gen_sub(g, p, "out_layers.0", 1, 1, cout, 0, 0);
    gen_sub(g, p, "out_layers.3", 1, 4, cout, cout, 3);
    if (cin != cout)
        gen_sub(g, p, "skip_connection", 1, 4, cout, cin, 1);
}

static void gen_transformer(gen *g, const char *p, int64_t c, int64_t ctx, int depth, int conv)
{
    char tb[NAME_MAX_LEN];
    gen_sub(g, p, "norm", 1, 1, c, 0, 0);
    gen_sub(g, p, "proj_in", 1, conv ? 4 : 2, c, c, 1);
    for (int t = 0; t < depth; t++) {
        nprintf(tb, "%s.transformer_blocks.%d", p, t);
        gen_sub(g, tb, "norm1", 1, 1, c, 0, 0);
        gen_sub(g, tb, "norm2", 1, 1, c, 0, 0);
        gen_sub(g, tb, "norm3", 1, 1, c, 0, 0);
        gen_sub(g, tb, "attn1.to_q", 0, 2, c, c, 0);
        gen_sub(g, tb, "attn1.to_k", 0, 2, c, c, 0);
        gen_sub(g, tb, "attn1.to_v", 0, 2, c, c, 0);
        gen_sub(g, tb, "attn1.to_out.0", 1, 2, c, c, 0);
        gen_sub(g, tb, "attn2.to_q", 0, 2, c, c, 0);
        gen_sub(g, tb, "attn2.to_k", 0, 2, c, ctx, 0);
        gen_sub(g, tb, "attn2.to_v", 0, 2, c, ctx, 0);
        gen_sub(g, tb, "attn2.to_out.0", 1, 2, c, c, 0);
        gen_sub(g, tb, "ff.net.0.proj", 1, 2, 8 * c, c, 0);
        gen_sub(g, tb, "ff.net.2", 1, 2, c, 4 * c, 0);
    }
    gen_sub(g, p, "proj_out", 1, conv ? 4 : 2, c, c, 1);
}

/* The UNet of a family: levels, widths and attention depths of §2.4. */
typedef struct unet_arch {
    int levels;
    int64_t ch[4];
    int depth_down[4]; /* transformer blocks per attention, 0 = no attention */
    int depth_mid;
    int64_t ctx;
    int conv_proj; /* SD1 proj_in/proj_out are 1x1 convs */
    int sdxl;
} unet_arch;

#define UNET "model.diffusion_model."

static void gen_unet_down(gen *g, const unet_arch *a, int64_t *skips, int *ns)
{
    char p[NAME_MAX_LEN];
    int64_t prev = a->ch[0];
    gen_w(g, UNET "input_blocks.0.0", 1, 4, a->ch[0], 4, 3);
    skips[(*ns)++] = a->ch[0];
    for (int x = 0; x < a->levels; x++) {
        for (int i = 0; i < 2; i++) {
            int n = 1 + 3 * x + i;
            nprintf(p, UNET "input_blocks.%d.0", n);
            gen_resblock(g, p, prev, a->ch[x]);
            prev = a->ch[x];
            nprintf(p, UNET "input_blocks.%d.1", n);
            if (a->depth_down[x])
                gen_transformer(g, p, prev, a->ctx, a->depth_down[x], a->conv_proj);
            skips[(*ns)++] = prev;
        }
        if (x != a->levels - 1) {
            nprintf(p, UNET "input_blocks.%d.0.op", 3 + 3 * x);
            gen_w(g, p, 1, 4, prev, prev, 3);
            skips[(*ns)++] = prev;
        }
    }
}

static void gen_unet_up(gen *g, const unet_arch *a, const int64_t *skips, int ns)
{
    char p[NAME_MAX_LEN];
    int64_t prev = a->ch[a->levels - 1];
    for (int x = 0; x < a->levels; x++) {
        int l = a->levels - 1 - x, depth = a->depth_down[l];
        for (int i = 0; i < 3; i++) {
            int n = 3 * x + i;
            nprintf(p, UNET "output_blocks.%d.0", n);
            gen_resblock(g, p, prev + skips[--ns], a->ch[l]);
            prev = a->ch[l];
            nprintf(p, UNET "output_blocks.%d.1", n);
            if (depth)
                gen_transformer(g, p, prev, a->ctx, depth, a->conv_proj);
        }
        if (x != a->levels - 1) {
            nprintf(p, UNET "output_blocks.%d.%d.conv", 3 * x + 2, depth ? 2 : 1);
            gen_w(g, p, 1, 4, prev, prev, 3);
        }
    }
}

static void gen_unet(gen *g, const unet_arch *a)
{
    int64_t skips[16], top = a->ch[a->levels - 1];
    int ns = 0;
    gen_w(g, UNET "time_embed.0", 1, 2, 1280, a->ch[0], 0);
    gen_w(g, UNET "time_embed.2", 1, 2, 1280, 1280, 0);
    if (a->sdxl) {
        gen_w(g, UNET "label_emb.0.0", 1, 2, 1280, 2816, 0);
        gen_w(g, UNET "label_emb.0.2", 1, 2, 1280, 1280, 0);
    }
    gen_unet_down(g, a, skips, &ns);
    gen_resblock(g, UNET "middle_block.0", top, top);
    gen_transformer(g, UNET "middle_block.1", top, a->ctx, a->depth_mid, a->conv_proj);
    gen_resblock(g, UNET "middle_block.2", top, top);
    gen_unet_up(g, a, skips, ns);
    gen_w(g, UNET "out.0", 1, 1, a->ch[0], 0, 0);
    gen_w(g, UNET "out.2", 1, 4, 4, a->ch[0], 3);
}

/* Hugging Face CLIP encoder layers under prefix (…"text_model.encoder.layers."). */
static void gen_hf_clip(gen *g, const char *prefix, int layers, int64_t d, int64_t mlp)
{
    static const char *const attn[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    char p[NAME_MAX_LEN];
    for (int i = 0; i < layers; i++) {
        for (int j = 0; j < 4; j++) {
            nprintf(p, "%sencoder.layers.%d.self_attn.%s", prefix, i, attn[j]);
            gen_w(g, p, 1, 2, d, d, 0);
        }
        nprintf(p, "%sencoder.layers.%d", prefix, i);
        gen_sub(g, p, "mlp.fc1", 1, 2, mlp, d, 0);
        gen_sub(g, p, "mlp.fc2", 1, 2, d, mlp, 0);
        gen_sub(g, p, "layer_norm1", 1, 1, d, 0, 0);
        gen_sub(g, p, "layer_norm2", 1, 1, d, 0, 0);
    }
    nprintf(p, "%sfinal_layer_norm", prefix);
    gen_w(g, p, 1, 1, d, 0, 0);
}

/* OpenCLIP resblocks under prefix (…"model."). */
static void gen_openclip(gen *g, const char *prefix, int layers, int64_t d, int64_t mlp)
{
    char p[NAME_MAX_LEN];
    for (int i = 0; i < layers; i++) {
        nprintf(p, "%stransformer.resblocks.%d.attn.in_proj_weight", prefix, i);
        gen_add(g, p, 2, 3 * d, d, 0, 0);
        nprintf(p, "%stransformer.resblocks.%d.attn.in_proj_bias", prefix, i);
        gen_add(g, p, 1, 3 * d, 0, 0, 0);
        nprintf(p, "%stransformer.resblocks.%d", prefix, i);
        gen_sub(g, p, "attn.out_proj", 1, 2, d, d, 0);
        gen_sub(g, p, "mlp.c_fc", 1, 2, mlp, d, 0);
        gen_sub(g, p, "mlp.c_proj", 1, 2, d, mlp, 0);
        gen_sub(g, p, "ln_1", 1, 1, d, 0, 0);
        gen_sub(g, p, "ln_2", 1, 1, d, 0, 0);
    }
    nprintf(p, "%sln_final", prefix);
    gen_w(g, p, 1, 1, d, 0, 0);
    nprintf(p, "%stext_projection", prefix);
    gen_add(g, p, 2, d, d, 0, 0);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const base_key *)a)->name, ((const base_key *)b)->name);
}

static void family_keys(gen *g, mood_family family)
{
    static const unet_arch sd1 = {4, {320, 640, 1280, 1280}, {1, 1, 1, 0}, 1, 768, 1, 0};
    static const unet_arch sd2 = {4, {320, 640, 1280, 1280}, {1, 1, 1, 0}, 1, 1024, 0, 0};
    static const unet_arch sdxl = {3, {320, 640, 1280, 0}, {0, 2, 10, 0}, 10, 2048, 0, 1};
    if (family == MOOD_FAMILY_SD1) {
        gen_unet(g, &sd1);
        gen_hf_clip(g, "cond_stage_model.transformer.text_model.", 12, 768, 3072);
    } else if (family == MOOD_FAMILY_SD2) {
        gen_unet(g, &sd2);
        /* kohya trains 23 layers (§2.4); the checkpoint has 24 */
        gen_openclip(g, "cond_stage_model.model.", 24, 1024, 4096);
    } else if (family == MOOD_FAMILY_SDXL) {
        gen_unet(g, &sdxl);
        gen_hf_clip(g, "conditioner.embedders.0.transformer.text_model.", 12, 768, 3072);
        gen_openclip(g, "conditioner.embedders.1.model.", 32, 1280, 5120);
    }
}

int mood__keymap_for_family(mood_keymap **out, mood_family family)
{
    gen g = {NULL, 0, 0, 0};
    key_list kl;
    int err;
    *out = NULL;
    if (family == MOOD_FAMILY_UNKNOWN)
        return mood_error_set(MOOD_EINVAL, "no key map for an unknown base family");
    family_keys(&g, family);
    if ((err = g.err) == 0) {
        qsort(g.keys, g.n, sizeof *g.keys, cmp_key);
        kl.keys = g.keys;
        kl.n = g.n;
        kl.st = NULL;
        err = keymap_build(out, &kl, family);
    }
    for (size_t i = 0; i < g.n; i++)
        mood_free((char *)g.keys[i].name);
    mood_free(g.keys);
    return err;
}
