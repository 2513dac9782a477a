/*
 * lora_params.c: the LoRA modules a training run adapts: which Linear / Conv2d weights of a
 * model (per target set), their kohya names, their initial values, the flat buffers the
 * optimizer works on, the side paths the model runs them through, and the output file.
 *
 * Layout (llm.c's one-allocation idea): params and grads are single float arrays; module i owns
 * down_i (rank x in·kh·kw) followed by up_i (out x rank), modules in order, text encoder first
 * (kohya's order: text_encoder_loras + unet_loras). Every module is also a mood_side_path with
 * scale alpha / rank whose factors point into params, so the model always runs the current
 * values.
 *
 * Kohya names come from lora/'s key map of the family (the same table that resolves names when
 * a LoRA is loaded); a module the family's table does not know (test models with other block
 * counts) gets kohya's SD1/SD2 rule, "lora_unet_" + the diffusers path with '.' -> '_'.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/model_impl.h"
#include "lora/lora_internal.h"
#include "mood/hash.h"
#include "train/train_internal.h"

/* ----- creation --------------------------------------------------------------------------- */

int mood__lora_params_new(mood__lora_params **out, const mood__lora_spec *specs, size_t n, int rank,
                          double alpha)
{
    mood__lora_params *lp;
    size_t total = 0;
    int err = 0;
    *out = NULL;
    if (!(lp = mood_calloc(1, sizeof *lp)))
        return mood_error_nomem();
    lp->mods = mood_calloc(n ? n : 1, sizeof *lp->mods);
    lp->paths = mood_calloc(n ? n : 1, sizeof *lp->paths);
    lp->tensor_off = mood_calloc(2 * n + 1, sizeof *lp->tensor_off);
    if (!lp->mods || !lp->paths || !lp->tensor_off) {
        err = mood_error_nomem();
        goto done;
    }
    lp->n = n;
    for (size_t i = 0; i < n && !err; i++) {
        const mood__lora_spec *s = &specs[i];
        mood_train_module *md = &lp->mods[i];
        int r = s->rank > 0 ? s->rank : rank;
        double a = s->alpha > 0 ? s->alpha : alpha;
        if (r < 1 || r > 4096 || !isfinite(a) || a <= 0) {
            err = mood_error_set(MOOD_EINVAL,
                                 "LoRA module %s: rank must be 1..4096 and alpha > 0 (got %d, %g)",
                                 s->weight, r, a);
            break;
        }
        if (s->out < 1 || s->in < 1 || s->kh < 1 || s->kw < 1 || (s->ndim != 2 && s->ndim != 4) ||
            s->in * s->kh * s->kw > ((int64_t)1 << 30) || s->out > ((int64_t)1 << 30)) {
            err = mood_error_set(MOOD_EINVAL, "LoRA module %s: bad shape", s->weight);
            break;
        }
        md->weight = mood_strdup(s->weight);
        md->kohya = mood_strdup(s->kohya);
        if (!md->weight || !md->kohya) {
            err = mood_error_nomem();
            break;
        }
        md->part = s->part;
        md->ndim = s->ndim;
        md->out = s->out, md->in = s->in, md->kh = s->kh, md->kw = s->kw;
        md->rank = r;
        md->alpha = a;
        md->scale = (float)(a / r);
        lp->tensor_off[2 * i] = total;
        total += (size_t)r * (size_t)(s->in * s->kh * s->kw);
        lp->tensor_off[2 * i + 1] = total;
        total += (size_t)s->out * (size_t)r;
        if (s->part != MOOD_PART_UNET)
            lp->n_te++;
    }
    lp->tensor_off[2 * n] = total;
    lp->n_params = total;
    lp->n_tensors = 2 * n;
    lp->te_end = lp->tensor_off[2 * lp->n_te];
    if (!err && (!(lp->params = mood_calloc(total ? total : 1, sizeof *lp->params)) ||
                 !(lp->grads = mood_calloc(total ? total : 1, sizeof *lp->grads))))
        err = mood_error_nomem();
    for (size_t i = 0; i < n && !err; i++) {
        mood_train_module *md = &lp->mods[i];
        md->down = lp->params + lp->tensor_off[2 * i];
        md->up = lp->params + lp->tensor_off[2 * i + 1];
        md->down_grad = lp->grads + lp->tensor_off[2 * i];
        md->up_grad = lp->grads + lp->tensor_off[2 * i + 1];
        lp->paths[i] = (mood_side_path){md->weight, md->down, md->up, md->rank, md->scale};
    }
done:
    if (err)
        mood__lora_params_free(lp);
    else
        *out = lp;
    return err;
}

void mood__lora_params_free(mood__lora_params *lp)
{
    if (!lp)
        return;
    for (size_t i = 0; lp->mods && i < lp->n; i++) {
        mood_free((char *)lp->mods[i].weight);
        mood_free((char *)lp->mods[i].kohya);
    }
    mood_free(lp->mods);
    mood_free(lp->paths);
    mood_free(lp->tensor_off);
    mood_free(lp->params);
    mood_free(lp->grads);
    mood__full_params_free(lp->full);
    mood_free(lp);
}

/* torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5)) in Python floats, then uniform_(-b, b):
 * per element x = 24 random bits * 2^-24, x * (to - from) + from in float32 (fused, as torch's
 * CPU uniform kernel is compiled). */
static void kaiming_uniform(float *w, size_t n, int64_t fan_in, mood_rng_torch_cpu *g)
{
    double a = sqrt(5.0), gain = sqrt(2.0 / (1 + a * a));
    double bound = sqrt(3.0) * (gain / sqrt((double)fan_in));
    float from = (float)-bound, to = (float)bound, range = to - from;
    for (size_t i = 0; i < n; i++) {
        float x = (float)(mood_rng_torch_cpu_next_u32(g) & 0xffffffu) * 0x1p-24f;
        w[i] = fmaf(x, range, from);
    }
}

int mood__lora_params_init(mood__lora_params *lp, mood_rng_torch_cpu *g)
{
    for (size_t i = 0; i < lp->n; i++) {
        mood_train_module *md = &lp->mods[i];
        int64_t fan_in = md->in * md->kh * md->kw;
        kaiming_uniform(md->down, (size_t)md->rank * (size_t)fan_in, fan_in, g);
        memset(md->up, 0, (size_t)md->out * (size_t)md->rank * sizeof *md->up);
    }
    return 0;
}

/* ----- selection -------------------------------------------------------------------------- */

enum {
    K_ATTN = 1, /* attn1/attn2 to_q, to_k, to_v, to_out.0 */
    K_FF = 2,   /* ff.net.0.proj, ff.net.2 */
    K_PROJ = 4, /* transformer proj_in / proj_out */
    K_RES = 8,  /* resnet convs, shortcut, time_emb_proj */
    K_SAMP = 16 /* down/upsampler convs */
};

/* What kind of layer UNet module `mod` (without ".weight") is; 0 for the others. */
static int classify(const char *mod)
{
    static const char *const attn[] = {".to_q", ".to_k", ".to_v", ".to_out.0"};
    if (strstr(mod, ".attentions.")) {
        for (int i = 0; i < 4; i++)
            if (mood_str_ends_with(mod, attn[i]) &&
                (strstr(mod, ".attn1.") || strstr(mod, ".attn2.")))
                return K_ATTN;
        if (mood_str_ends_with(mod, ".ff.net.0.proj") || mood_str_ends_with(mod, ".ff.net.2"))
            return K_FF;
        if (mood_str_ends_with(mod, ".proj_in") || mood_str_ends_with(mod, ".proj_out"))
            return K_PROJ;
        return 0;
    }
    if (strstr(mod, ".resnets.") &&
        (mood_str_ends_with(mod, ".conv1") || mood_str_ends_with(mod, ".conv2") ||
         mood_str_ends_with(mod, ".conv_shortcut") || mood_str_ends_with(mod, ".time_emb_proj")))
        return K_RES;
    if (strstr(mod, "samplers.0.conv"))
        return K_SAMP;
    return 0;
}

/* "up_blocks.<i>.attentions.1." for the first cross-attention up block (B-LoRA / InstantStyle's
 * style block: SDXL up_blocks.0.attentions.1, SD1/SD2 up_blocks.1.attentions.1). */
static void style_prefix(char *buf, size_t size, const mood_unet_config *c)
{
    int first = 0;
    for (int i = 0; i < c->n_blocks; i++) {
        if (c->up_block_types[i] == MOOD_UNET_CROSS_ATTN_UP_BLOCK_2D) {
            first = i;
            break;
        }
    }
    snprintf(buf, size, "up_blocks.%d.attentions.1.", first);
}

static int wanted(const char *mod, mood_train_targets t, const char *style)
{
    int k = classify(mod);
    switch (t) {
    case MOOD_TRAIN_ATTN:
        return k == K_ATTN;
    case MOOD_TRAIN_ATTN_FF:
        return k == K_ATTN || k == K_FF;
    case MOOD_TRAIN_ALL:
        return k != 0;
    case MOOD_TRAIN_STYLE_BLOCKS:
        return k == K_ATTN && strncmp(mod, style, strlen(style)) == 0;
    }
    return 0;
}

/* The kohya name of a module: from the key map under `dotted` + mod, else prefix + mod with
 * '.' -> '_'. */
static char *kohya_name(const mood_keymap *km, const char *dotted, const char *prefix,
                        const char *mod)
{
    char key[512];
    const mood_target *tg;
    snprintf(key, sizeof key, "%s%s", dotted, mod);
    if (km && (tg = mood__keymap_find(km, key)) != NULL && tg->kohya_name)
        return mood_strdup(tg->kohya_name);
    snprintf(key, sizeof key, "%s%s", prefix, mod);
    for (char *p = key; *p; p++)
        if (*p == '.')
            *p = '_';
    return mood_strdup(key);
}

typedef struct spec_list {
    mood__lora_spec *s;
    size_t n, cap;
} spec_list;

static int spec_add(spec_list *l, const mood_keymap *km, const char *weight, mood_part part,
                    int ndim, const int64_t *shape, const char *dotted, const char *prefix)
{
    char mod[512];
    mood__lora_spec *s;
    snprintf(mod, sizeof mod, "%.*s", (int)(strlen(weight) - 7), weight); /* drop ".weight" */
    if (mood_array_reserve(&l->s, &l->cap, l->n + 1, sizeof *l->s, 64) != 0)
        return mood_error_nomem();
    s = &l->s[l->n];
    memset(s, 0, sizeof *s);
    s->weight = mood_strdup(weight);
    s->kohya = kohya_name(km, dotted, prefix, mod);
    if (!s->weight || !s->kohya) {
        mood_free((char *)s->weight);
        mood_free((char *)s->kohya);
        return mood_error_nomem();
    }
    l->n++;
    s->part = part;
    s->ndim = ndim;
    s->out = shape[0], s->in = shape[1];
    s->kh = ndim == 4 ? shape[2] : 1, s->kw = ndim == 4 ? shape[3] : 1;
    return 0;
}

/* The attention and MLP Linear layers of a text encoder's first `layers` layers (part TE1: the
 * model's only one or SDXL's first, TE2: SDXL's second), in kohya's module order. Their kohya
 * names come from the key map under diffusers' component ("text_encoder.", "text_encoder_2.");
 * the fallback prefix is kohya's for the family (lora_te_, SDXL lora_te1_ / lora_te2_). */
static int te_specs(spec_list *l, mood_model *m, const mood_keymap *km, int layers, mood_part part)
{
    static const char *const subs[] = {"self_attn.q_proj",   "self_attn.k_proj", "self_attn.v_proj",
                                       "self_attn.out_proj", "mlp.fc1",          "mlp.fc2"};
    int sdxl = m->family == MOOD_FAMILY_SDXL || m->clip2 != NULL, te2 = part == MOOD_PART_TE2;
    mood_clip *clip = te2 ? m->clip2 : m->clip;
    const char *dotted = te2 ? "text_encoder_2." : "text_encoder.";
    const char *prefix = te2 ? "lora_te2_" : sdxl ? "lora_te1_" : "lora_te_";
    int err = 0;
    if (!clip)
        return mood_error_set(MOOD_EINVAL, "%s: the model has no text encoder 2", m->path);
    for (int i = 0; i < layers && !err; i++) {
        for (int k = 0; k < 6 && !err; k++) {
            char name[256];
            int ndim = 0;
            int64_t shape[4] = {0};
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s.weight", i, subs[k]);
            if (!mood_clip_weight(clip, name, &ndim, shape) || ndim != 2)
                return mood_error_set(MOOD_EFORMAT, "text encoder%s: no Linear weight %s",
                                      te2 ? " 2" : "", name);
            err = spec_add(l, km, name, part, 2, shape, dotted, prefix);
        }
    }
    return err;
}

static int unet_specs(spec_list *l, mood_model *m, const mood_keymap *km, mood_train_targets t)
{
    char style[64], mod[512];
    int err = 0;
    style_prefix(style, sizeof style, mood_unet_get_config(m->unet));
    for (size_t i = 0; i < mood_unet_weight_count(m->unet) && !err; i++) {
        const char *name = mood_unet_weight_name(m->unet, i);
        int ndim = 0;
        int64_t shape[4] = {0};
        if (!mood_str_ends_with(name, ".weight") ||
            !mood_unet_weight(m->unet, name, &ndim, shape) || (ndim != 2 && ndim != 4))
            continue;
        snprintf(mod, sizeof mod, "%.*s", (int)(strlen(name) - 7), name);
        if (wanted(mod, t, style))
            err = spec_add(l, km, name, MOOD_PART_UNET, ndim, shape, "unet.", "lora_unet_");
    }
    return err;
}

int mood__lora_params_for_model(mood__lora_params **out, mood_model *m, mood_train_targets targets,
                                int te_layers, int te2_layers, int rank, double alpha)
{
    mood_keymap *km = NULL;
    spec_list l = {0};
    int err = 0;
    *out = NULL;
    if (m->family != MOOD_FAMILY_UNKNOWN && (err = mood__keymap_for_family(&km, m->family)) != 0)
        return err;
    if (te_layers > 0)
        err = te_specs(&l, m, km, te_layers, MOOD_PART_TE1);
    if (!err && te2_layers > 0)
        err = te_specs(&l, m, km, te2_layers, MOOD_PART_TE2);
    if (!err)
        err = unet_specs(&l, m, km, targets);
    if (!err && l.n == 0 && targets == MOOD_TRAIN_STYLE_BLOCKS) {
        char style[64];
        style_prefix(style, sizeof style, mood_unet_get_config(m->unet));
        style[strlen(style) - 1] = '\0';
        err = mood_error_set(MOOD_EINVAL,
                             "%s: the UNet has no style block %s (the targets \"style-blocks\" "
                             "train its attention); choose other targets",
                             m->path, style);
    } else if (!err && l.n == 0) {
        err = mood_error_set(MOOD_EINVAL, "%s: the model has no layers for the targets \"%s\"",
                             m->path, mood_train_targets_name(targets));
    }
    if (!err)
        err = mood__lora_params_new(out, l.s, l.n, rank, alpha);
    for (size_t i = 0; i < l.n; i++) {
        mood_free((char *)l.s[i].weight);
        mood_free((char *)l.s[i].kohya);
    }
    mood_free(l.s);
    mood__keymap_free(km);
    return err;
}

int mood__lora_params_attach(const mood__lora_params *lp, mood_model *m)
{
    size_t n1 = 0, n2 = 0, n_te = lp->n_te;
    int err;
    while (n1 < n_te && lp->mods[n1].part == MOOD_PART_TE1)
        n1++;
    while (n1 + n2 < n_te && lp->mods[n1 + n2].part == MOOD_PART_TE2)
        n2++;
    if (n1 + n2 != n_te || (n2 && !m->clip2))
        return mood_error_set(MOOD_EINVAL, "LoRA modules: text encoder 1's, then 2's, then the "
                                           "UNet's expected");
    if ((err = mood_unet_set_side_paths(m->unet, lp->paths + n_te, lp->n - n_te)) != 0 ||
        (n1 && (err = mood_clip_set_side_paths(m->clip, lp->paths, n1)) != 0) ||
        (n2 && (err = mood_clip_set_side_paths(m->clip2, lp->paths + n1, n2)) != 0))
        return err;
    return 0;
}

/* ----- names ------------------------------------------------------------------------------ */

static const char *const target_names[] = {"attn", "attn+ff", "all", "style-blocks"};

int mood_train_targets_parse(mood_train_targets *out, const char *name)
{
    for (int i = 0; name && i < 4; i++) {
        if (strcmp(name, target_names[i]) == 0) {
            *out = (mood_train_targets)i;
            return 0;
        }
    }
    return mood_error_set(MOOD_EINVAL,
                          "unknown LoRA targets \"%s\" (known: attn, attn+ff, all, style-blocks)",
                          name ? name : "");
}

const char *mood_train_targets_name(mood_train_targets t)
{
    return (unsigned)t < 4 ? target_names[t] : "?";
}

/* ----- output ----------------------------------------------------------------------------- */

int mood__lora_params_write(const mood__lora_params *lp, const char *path, mood_family family,
                            mood_dtype dtype, const char *const *meta)
{
    mood_lora_out_module *mods = mood_calloc(lp->n ? lp->n : 1, sizeof *mods);
    int err = 0;
    if (!mods)
        return mood_error_nomem();
    /* borrowed pointers: the writer converts (copies) the factors when it adds them */
    for (size_t i = 0; i < lp->n; i++) {
        const mood_train_module *md = &lp->mods[i];
        mods[i] = (mood_lora_out_module){(char *)md->kohya, md->rank, md->alpha, md->up, md->down,
                                         md->ndim,          md->out,  md->in,    md->kh, md->kw};
    }
    err = mood__lora_write(path, mods, lp->n, family, dtype, meta, NULL, NULL);
    mood_free(mods);
    return err;
}

void mood__lora_params_layout(const mood__lora_params *lp, char hex_out[65])
{
    mood_buf b;
    if (lp->full) {
        mood__full_params_layout(lp, hex_out);
        return;
    }
    mood_buf_init(&b);
    for (size_t i = 0; i < lp->n; i++) {
        const mood_train_module *md = &lp->mods[i];
        if (mood_buf_printf(&b, "%s %d %lld %lld %lld %lld %d %.17g\n", md->kohya, md->ndim,
                            (long long)md->out, (long long)md->in, (long long)md->kh,
                            (long long)md->kw, md->rank, md->alpha) != 0)
            break;
    }
    mood_sha256_hex(hex_out, b.data ? b.data : "", b.len);
    mood_buf_dispose(&b);
}
