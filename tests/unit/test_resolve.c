/*
 * test_resolve.c: prompt tags and LoRA names (styles/resolve.c). <lora:NAME:TE:UNET:DYN> is read
 * as AUTOMATIC1111's extra_networks_lora.py reads it (lora-formats.md section 4.2): the first
 * number is the text encoder's, the second the UNet's (the text encoder's when absent), a fourth
 * is DyLoRA's rank (a whole number from 1, carried to the adapter), te=/unet=/dyn= override. Each
 * adapter's alias is its LoRA's own name made safe for A1111's tag and "Lora hashes"
 * ([A-Za-z0-9_.-]), unique per LoRA. hash=H applies the registry's LoRA of that hash at the tag's
 * weights, before the name (an image's LoRA found by the hash "Lora hashes" recorded). A style's
 * template has every "{prompt}" replaced, its trigger words are added unless the prompt holds them
 * (whole words, any case); the error codes of what is not there are those mood/styles.h gives.
 */
#include <limits.h>

#include "harness.h"
#include "mood/hash.h"
#include "mood/registry.h"
#include "mood/styles.h"

/* The fixture LoRA (text encoder and UNet modules) copied to the scratch folder as NAME; with
 * `flip`, its last tensor byte changed: another LoRA (another AutoV3). Returns the path. */
static const char *lora_copy(const char *name, int flip)
{
    size_t n = 0;
    unsigned char *d = read_file(fixture("pipeline/lora.safetensors"), &n);
    const char *path = scratch_path(name);
    MOOD_CHECK(d && n > 0);
    if (!d)
        return path;
    d[n - 1] ^= (unsigned char)flip; /* another flip, another file */
    MOOD_CHECK(write_file(path, d, n) == 0);
    free(d);
    return path;
}

/* Resolves `prompt` (no registry) into *s; returns the error. */
static int resolve(mood_resolved_styles *s, const char *prompt)
{
    harness_log_start();
    int err = mood_styles_resolve(s, NULL, prompt, NULL, NULL, 0, NULL, 0, 0);
    harness_log_stop();
    return err;
}

static int last_dyn; /* the DyLoRA rank cut of check_tag's adapter */

/* The weights one tag body (after "<lora:PATH") gives: te, unet. */
static void check_tag(const char *args, double te, double unet)
{
    char prompt[2048];
    mood_resolved_styles s;
    const char *path = lora_copy("a.safetensors", 0);
    snprintf(prompt, sizeof prompt, "a cat <lora:%.*s%s>", (int)(strlen(path) - 12), path, args);
    MOOD_CHECK_OK(resolve(&s, prompt));
    MOOD_CHECK_MSG(s.n == 1, "%s", args);
    last_dyn = s.n == 1 ? s.adapters[0].dyn : -1;
    if (s.n == 1)
        MOOD_CHECK_MSG(s.adapters[0].te == te && s.adapters[0].unet == unet,
                       "%s: te %g unet %g, expected %g %g", args, s.adapters[0].te,
                       s.adapters[0].unet, te, unet);
    MOOD_CHECK(s.prompt && strcmp(s.prompt, "a cat") == 0);
    mood_resolved_styles_dispose(&s);
}

static void test_a1111_order(void)
{
    check_tag("", 1, 1);
    check_tag(":0.5", 0.5, 0.5);
    check_tag(":0.3:0.9", 0.3, 0.9); /* A1111: <lora:NAME:TE:UNET> */
    check_tag(":te=0.4", 0.4, 0.4);  /* UNET defaults to TE, te= included */
    check_tag(":unet=0.4", 1, 0.4);
    check_tag(":0.5:unet=0.2", 0.5, 0.2);
    check_tag(":0.5:0.6:te=0.1", 0.1, 0.6);
    check_tag(":unet=0.7:0.2", 0.2, 0.7);
    check_tag(":te=0.5:0.8", 0.5, 0.5); /* a named value wins wherever it stands */
    check_tag(":unet=0.3:0.1:0.9", 0.1, 0.3);
    check_tag(": 0.25 : 0.75 ", 0.25, 0.75); /* float() strips white space */
}

static void test_dyn(void)
{
    static const char *const tags[] = {":0.3:0.9:4", ":0.3:0.9:dyn=4", ":dyn=4:te=0.3:unet=0.9",
                                       ":0.3:0.9:8:dyn=4", ":0.3:0.9: +4 "};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        check_tag(tags[i], 0.3, 0.9);
        MOOD_CHECK_MSG(last_dyn == 4, "%s: dyn %d", tags[i], last_dyn); /* dyn= wins */
        MOOD_CHECK_MSG(!strstr(harness_logged, "DyLoRA"), "%s: warnings \"%s\"", tags[i],
                       harness_logged);
    }
    check_tag(":0.3:0.9", 0.3, 0.9);
    MOOD_CHECK(last_dyn == 0);
    check_tag(":0.3:0.9:dyn=99999999999", 0.3, 0.9); /* A1111's slice: every rank */
    MOOD_CHECK(last_dyn == INT_MAX);
    check_tag(":0.3:0.9:4:5", 0.3, 0.9); /* A1111 ignores what follows */
    MOOD_CHECK(last_dyn == 4);
    MOOD_CHECK(strstr(harness_logged, "\"5\" is one argument too many"));
}

static void test_bad_tags(void)
{
    static const char *const bad[] = {":abc",     ":0.3:x", ":0.3:0.9:x", ":te=x",
                                      ":dyn=1.5", ":dyn=0", ":nan",       ":0.3:0.9:-2"};
    const char *path = lora_copy("a.safetensors", 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char prompt[2048];
        mood_resolved_styles s;
        snprintf(prompt, sizeof prompt, "<lora:%.*s%s>", (int)(strlen(path) - 12), path, bad[i]);
        MOOD_CHECK_MSG(resolve(&s, prompt) == MOOD_EINVAL, "%s", bad[i]);
        MOOD_CHECK_MSG(strstr(mood_error_last(), "prompt tag <lora:"), "%s: %s", bad[i],
                       mood_error_last());
    }
}

/* A --lora file's cut (mood_weighted_adapter.dyn) reaches its resolved adapter; a negative one is
 * refused, naming the file. */
static void test_file_dyn(void)
{
    const char *path = lora_copy("a.safetensors", 0);
    mood_weighted_adapter w = {.path = path, .unet = 0.5, .te = 0.5, .dyn = 2};
    mood_resolved_styles s;
    MOOD_CHECK_OK(mood_styles_resolve(&s, NULL, "a cat", NULL, NULL, 0, &w, 1, 0));
    MOOD_CHECK(s.n == 1 && s.adapters[0].dyn == 2);
    mood_resolved_styles_dispose(&s);
    w.dyn = -1;
    MOOD_CHECK(mood_styles_resolve(&s, NULL, "a cat", NULL, NULL, 0, &w, 1, 0) == MOOD_EINVAL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "a.safetensors: a negative DyLoRA"), "%s",
                   mood_error_last());
}

/* A name that would break <lora:NAME:W> or "Lora hashes" gets a safe alias, the name import
 * would give the file's style (accents dropped from their letters); the name stays. */
static void test_alias_safe(void)
{
    const char *path = lora_copy("my:lo,ra x\xc3\xa9<1>.safetensors", 0);
    mood_weighted_adapter w = {.path = path, .unet = 0.5, .te = 0.5};
    mood_resolved_styles s;
    MOOD_CHECK_OK(mood_styles_resolve(&s, NULL, "a cat", NULL, NULL, 0, &w, 1, 0));
    MOOD_CHECK(s.n == 1);
    if (s.n == 1) {
        MOOD_CHECK_MSG(strcmp(s.adapters[0].alias, "my_lo_ra_xe_1") == 0, "alias %s",
                       s.adapters[0].alias);
        MOOD_CHECK(strcmp(s.adapters[0].name, "my:lo,ra x\xc3\xa9<1>") == 0);
    }
    mood_resolved_styles_dispose(&s);
}

/* Two LoRAs never share an alias; one LoRA applied twice is one adapter, its multipliers added up
 * (A1111 reads the one tag written for it as the same weights). */
static void test_alias_unique(void)
{
    const char *dir1 = scratch_fresh_dir("one"), *dir2 = scratch_fresh_dir("two");
    char p1[1024], p2[1024], *prompt;
    mood_resolved_styles s;
    size_t n = 0;
    unsigned char *d = read_file(fixture("pipeline/lora.safetensors"), &n);
    snprintf(p1, sizeof p1, "%s/lora.safetensors", dir1);
    snprintf(p2, sizeof p2, "%s/LoRA.safetensors", dir2);
    MOOD_CHECK(d && write_file(p1, d, n) == 0);
    if (d)
        d[n - 1] ^= 1;
    MOOD_CHECK(d && write_file(p2, d, n) == 0);
    free(d);
    mood_weighted_adapter w[4] = {{.path = p1, .unet = 1, .te = 1},
                                  {.path = p2, .unet = 1, .te = 1},
                                  {.path = p1, .unet = 0.5, .te = 0.25},
                                  {.path = p1, .unet = 0.5, .te = 0.5, .dyn = 2}};
    prompt = malloc(strlen(p2) + 64);
    snprintf(prompt, strlen(p2) + 64, "x <lora:%.*s:0.2>", (int)(strlen(p2) - 12), p2);
    MOOD_CHECK_OK(mood_styles_resolve(&s, NULL, prompt, NULL, NULL, 0, w, 4, 0));
    MOOD_CHECK_MSG(s.n == 3, "%zu adapters", s.n);
    if (s.n == 3) {
        /* the tag first (p2), then the files in order; another DyLoRA cut is another entry */
        MOOD_CHECK_MSG(strcmp(s.adapters[0].alias, "LoRA") == 0, "%s", s.adapters[0].alias);
        MOOD_CHECK_MSG(strcmp(s.adapters[1].alias, "lora_2") == 0, "%s", s.adapters[1].alias);
        MOOD_CHECK_MSG(strcmp(s.adapters[2].alias, "lora_2") == 0, "%s", s.adapters[2].alias);
        MOOD_CHECK(strcmp(s.adapters[0].hash, s.adapters[1].hash) != 0);
        MOOD_CHECK(fabs(s.adapters[0].unet - 1.2) < 1e-12 && fabs(s.adapters[0].te - 1.2) < 1e-12);
        MOOD_CHECK(s.adapters[1].unet == 1.5 && s.adapters[1].te == 1.25);
        MOOD_CHECK(s.adapters[2].unet == 0.5 && s.adapters[2].dyn == 2);
    }
    mood_resolved_styles_dispose(&s);
    free(prompt);
}

/* An image's prompt that tags one LoRA twice: A1111 applies it twice at the last tag's weights
 * (one network object per name, its multipliers set by each tag in turn), and says so; two
 * names of one file are two networks there, added up (then written as one tag, as the same
 * LoRA always is). A LoRA found nowhere is listed once. */
static void test_a1111_repeats(void)
{
    const char *p1 = lora_copy("rep.safetensors", 0), *p2 = lora_copy("rep2.safetensors", 0);
    char prompt[4096];
    mood_resolved_styles s;
    int n1 = (int)(strlen(p1) - 12), n2 = (int)(strlen(p2) - 12);
    snprintf(prompt, sizeof prompt,
             "x <lora:%.*s:0.5:0.1> <lora:%.*s:0.3> <lora:%.*s:0.25> <lora:gone> <lora:gone:2>", n1,
             p1, n1, p1, n2, p2);
    harness_log_start();
    MOOD_CHECK_OK(mood_styles_resolve(&s, NULL, prompt, NULL, NULL, 0, NULL, 0,
                                      MOOD_STYLES_A1111_REPEATS | MOOD_STYLES_SKIP_MISSING));
    harness_log_stop();
    MOOD_CHECK_MSG(s.n == 1, "%zu adapters", s.n);
    if (s.n == 1) /* twice 0.3, and 0.25 of the same file under another name: added up */
        MOOD_CHECK_MSG(fabs(s.adapters[0].unet - 0.85) < 1e-12 &&
                           fabs(s.adapters[0].te - 0.85) < 1e-12,
                       "te %g unet %g", s.adapters[0].te, s.adapters[0].unet);
    MOOD_CHECK_MSG(strstr(harness_logged, "tagged 2 times") && strstr(harness_logged, "0.6 in all"),
                   "%s", harness_logged);
    MOOD_CHECK_MSG(s.missing && strcmp(s.missing, "gone") == 0, "missing \"%s\"", s.missing);
    mood_resolved_styles_dispose(&s);
    /* only the image's tags follow A1111: a --lora of the same file adds up; a tag's repeat at
     * another DyLoRA cut is the same network (the last tag's cut) */
    snprintf(prompt, sizeof prompt, "x <lora:%.*s:0.5:dyn=2> <lora:%.*s:0.3:0.2:dyn=4>", n1, p1, n1,
             p1);
    mood_weighted_adapter w = {.path = p1, .unet = 0.15, .te = 0.15};
    harness_log_start();
    MOOD_CHECK_OK(
        mood_styles_resolve(&s, NULL, prompt, NULL, NULL, 0, &w, 1, MOOD_STYLES_A1111_REPEATS));
    harness_log_stop();
    MOOD_CHECK_MSG(s.n == 2, "%zu adapters", s.n);
    if (s.n == 2) {
        MOOD_CHECK_MSG(s.adapters[0].dyn == 4 && fabs(s.adapters[0].te - 0.6) < 1e-12 &&
                           fabs(s.adapters[0].unet - 0.4) < 1e-12,
                       "dyn %d te %g unet %g", s.adapters[0].dyn, s.adapters[0].te,
                       s.adapters[0].unet);
        MOOD_CHECK(s.adapters[1].dyn == 0 && s.adapters[1].unet == 0.15); /* another cut */
    }
    mood_resolved_styles_dispose(&s);
    /* a tag left open is text, as in A1111, and said */
    harness_log_start();
    MOOD_CHECK_OK(mood_styles_resolve(&s, NULL, "x <lora:nope:0.5", NULL, NULL, 0, NULL, 0, 0));
    harness_log_stop();
    MOOD_CHECK(s.n == 0 && strcmp(s.prompt, "x <lora:nope:0.5") == 0);
    MOOD_CHECK_MSG(strstr(harness_logged, "'<lora:nope:0.5' has no closing '>'"), "%s",
                   harness_logged);
    mood_resolved_styles_dispose(&s);
    /* a prompt typed for mood adds a repeated tag's multipliers up, and says A1111 would not */
    snprintf(prompt, sizeof prompt, "x <lora:%.*s:0.5> <lora:%.*s:0.25>", n1, p1, n1, p1);
    harness_log_start();
    MOOD_CHECK_OK(mood_styles_resolve(&s, NULL, prompt, NULL, NULL, 0, NULL, 0, 0));
    harness_log_stop();
    MOOD_CHECK(s.n == 1 && s.adapters[0].unet == 0.75);
    MOOD_CHECK_MSG(strstr(harness_logged, "tagged 2 times: mood applies the sum") &&
                       strstr(harness_logged, "A1111 applies 2 times the last one"),
                   "%s", harness_logged);
    mood_resolved_styles_dispose(&s);
}

/* hash=H: the registry's LoRA of that hash, at the tag's weights, over a style of the tag's name
 * that holds another LoRA; a hash the registry lacks leaves the name to decide. */
static void test_hash_wins(void)
{
    const char *home = scratch_fresh_dir("home");
    mood_registry *reg = NULL;
    mood_import_result ra, rb;
    mood_file_hashes hb;
    mood_resolved_styles s;
    char prompt[256];
    const char *pa = lora_copy("alpha.safetensors", 0), *pb = lora_copy("beta.safetensors", 1);
    MOOD_CHECK_OK(mood_registry_open(&reg, home));
    if (!reg)
        return;
    MOOD_CHECK_OK(mood_registry_import_file(reg, &ra, pa, NULL, NULL));
    MOOD_CHECK_OK(mood_registry_import_file(reg, &rb, pb, NULL, NULL));
    MOOD_CHECK_OK(mood_hash_file_ex(&hb, pb, MOOD_HASH_SKIP_CRC32, NULL, NULL));
    /* style alpha at 0.6: by its name, a tag's weight is multiplied by it */
    mood_style_lora l = {ra.sha256, 0.6, 0.6};
    mood_style_spec spec = {.loras = &l, .n_loras = 1};
    MOOD_CHECK_OK(mood_registry_style_edit(reg, "alpha", &spec));

    snprintf(prompt, sizeof prompt, "a cat <lora:alpha:0.3:0.9:hash=%.12s>", hb.autov3);
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, prompt, NULL, NULL, 0, NULL, 0, 0));
    MOOD_CHECK(s.n == 1);
    if (s.n == 1) {
        MOOD_CHECK_MSG(strncmp(s.adapters[0].hash, hb.autov3, 12) == 0, "hash %s",
                       s.adapters[0].hash);
        MOOD_CHECK(s.adapters[0].te == 0.3 && s.adapters[0].unet == 0.9);
        MOOD_CHECK(strcmp(s.adapters[0].alias, "alpha") == 0); /* the image's name */
        MOOD_CHECK(strcmp(s.adapters[0].name, "beta") == 0);   /* the style holding it */
    }
    mood_resolved_styles_dispose(&s);

    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, "<lora:alpha:0.5:hash=0123456789ab>", NULL, NULL, 0,
                                      NULL, 0, 0));
    MOOD_CHECK(s.n == 1);
    if (s.n == 1) {
        MOOD_CHECK(strncmp(s.adapters[0].hash, ra.autov3, 12) == 0);
        MOOD_CHECK(fabs(s.adapters[0].unet - 0.3) < 1e-12); /* 0.5 x the style's 0.6 */
    }
    mood_resolved_styles_dispose(&s);
    mood_registry_close(reg);
}

/* The prompt `prompt` gives with registry style `style` (NULL: none); "" on an error. */
static char *styled(mood_registry *reg, const char *prompt, const char *style)
{
    static char out[512];
    mood_style_arg a = {style, 1, 1};
    mood_resolved_styles s;
    out[0] = '\0';
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, prompt, NULL, &a, style ? 1 : 0, NULL, 0, 0));
    if (s.prompt)
        snprintf(out, sizeof out, "%s", s.prompt);
    mood_resolved_styles_dispose(&s);
    return out;
}

#define PROMPT_IS(reg, prompt, style, want)                                                        \
    do {                                                                                           \
        const char *got_ = styled(reg, prompt, style);                                             \
        MOOD_CHECK_MSG(strcmp(got_, want) == 0, "\"%s\" with %s: \"%s\", expected \"%s\"", prompt, \
                       (const char *)(style) ? (const char *)(style) : "no style", got_, want);    \
    } while (0)

/* A template's every "{prompt}" is the prompt (A1111's str.replace); each trigger word of a
 * style is added unless the prompt holds it as whole words, in any case (CLIP lower-cases). */
static void test_template_and_triggers(void)
{
    const char *home = scratch_fresh_dir("home-tpl");
    mood_registry *reg = NULL;
    mood_import_result ra;
    const char *pa = lora_copy("ink.safetensors", 0);
    MOOD_CHECK_OK(mood_registry_open(&reg, home));
    if (!reg)
        return;
    MOOD_CHECK_OK(mood_registry_import_file(reg, &ra, pa, NULL, NULL));
    mood_style_lora l = {ra.sha256, 1, 1};
    mood_style_spec twice = {
        .template_text = "{prompt}, and again {prompt}!", .loras = &l, .n_loras = 1};
    mood_style_spec words = {.trigger_words = "inkwash, sumi", .loras = &l, .n_loras = 1};
    MOOD_CHECK_OK(mood_registry_style_create(reg, "twice", &twice));
    MOOD_CHECK_OK(mood_registry_style_create(reg, "words", &words));

    PROMPT_IS(reg, "a cat", "twice", "a cat, and again a cat!");
    PROMPT_IS(reg, "", "twice", ", and again !");
    PROMPT_IS(reg, "a cat", "words", "a cat, inkwash, sumi");
    PROMPT_IS(reg, "a cat, INKWASH", "words", "a cat, INKWASH, sumi");
    PROMPT_IS(reg, "(Inkwash:1.2) cat, SUMI", "words", "(Inkwash:1.2) cat, SUMI");
    /* whole words only: another word that starts or ends with it is not the trigger */
    PROMPT_IS(reg, "inkwashes, tsumi", "words", "inkwashes, tsumi, inkwash, sumi");
    PROMPT_IS(reg, "a cat, Inkwash <style:words>", NULL, "a cat, Inkwash, sumi");
    /* a comma before a tag stays, as A1111 encodes it ("1girl, solo, <lora:x>" is "1girl, solo,
     * "); templates join as A1111's styles do on the prompt with its tags (merge_prompts), so the
     * tokens are A1111's (", ," two commas, never the one token ",,"); trigger words after a
     * comma get no second one */
    PROMPT_IS(reg, "1girl, solo, <style:twice>", NULL, "1girl, solo, , and again 1girl, solo,!");
    PROMPT_IS(reg, "a cat <style:twice>", NULL, "a cat, and again a cat!");
    PROMPT_IS(reg, "1girl, solo, <style:words>", NULL, "1girl, solo, inkwash, sumi");
    PROMPT_IS(reg, "1girl, solo,", NULL, "1girl, solo,");
    mood_registry_close(reg);
}

/* A style given twice puts its words in once (its LoRA at the sum of the weights); a style at
 * weight 0 is off: none of its LoRAs, none of its words; at a negative one, its LoRAs without
 * its words; a <lora:> tag that names a LoRA by its
 * file's stem, as A1111 does ("Ink Wash (v2)"), finds the style import made of that file. */
static void test_twice_zero_and_file_names(void)
{
    const char *home = scratch_fresh_dir("home-twice");
    mood_registry *reg = NULL;
    mood_import_result ra;
    mood_resolved_styles s;
    mood_style_arg twice[2] = {{"words", 0.5, 1}, {"words", 0.25, 1}};
    mood_style_arg off = {"words", 0, 1};
    mood_style_arg minus = {"words", -0.5, 1};
    mood_style_arg cancel[2] = {{"words", 0.5, 1}, {"words", -0.5, 1}};
    const char *pa = lora_copy("Ink Wash (v2).safetensors", 0);
    MOOD_CHECK_OK(mood_registry_open(&reg, home));
    if (!reg)
        return;
    MOOD_CHECK_OK(mood_registry_import_file(reg, &ra, pa, NULL, NULL));
    MOOD_CHECK(strcmp(ra.name, "Ink_Wash_v2") == 0);
    mood_style_lora l = {ra.sha256, 1, 1};
    mood_style_spec words = {.template_text = "{prompt}, in ink",
                             .trigger_words = "sumi",
                             .negative = "blurry",
                             .loras = &l,
                             .n_loras = 1};
    MOOD_CHECK_OK(mood_registry_style_create(reg, "words", &words));
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, "a cat", NULL, twice, 2, NULL, 0, 0));
    MOOD_CHECK_MSG(strcmp(s.prompt, "a cat, in ink, sumi") == 0, "%s", s.prompt);
    MOOD_CHECK_MSG(strcmp(s.negative, "blurry") == 0, "%s", s.negative);
    MOOD_CHECK(s.n == 1 && s.adapters[0].unet == 0.75);
    mood_resolved_styles_dispose(&s);
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, "a cat", NULL, &off, 1, NULL, 0, 0));
    MOOD_CHECK_MSG(strcmp(s.prompt, "a cat") == 0 && s.n == 0, "%s, %zu LoRAs", s.prompt, s.n);
    mood_resolved_styles_dispose(&s);
    /* a negative weight subtracts the LoRA and adds no words; weights that cancel leave the
     * LoRA out (no <lora:words:0> in the image) */
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, "a cat", NULL, &minus, 1, NULL, 0, 0));
    MOOD_CHECK_MSG(strcmp(s.prompt, "a cat") == 0 && strcmp(s.negative, "") == 0 && s.n == 1 &&
                       s.adapters[0].unet == -0.5,
                   "%s | %s, %zu LoRAs", s.prompt, s.negative, s.n);
    mood_resolved_styles_dispose(&s);
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, "a cat", NULL, cancel, 2, NULL, 0, 0));
    MOOD_CHECK_MSG(s.n == 0, "%zu LoRAs", s.n);
    mood_resolved_styles_dispose(&s);
    MOOD_CHECK_OK(
        mood_styles_resolve(&s, reg, "a cat <lora:Ink Wash (v2):0.5>", NULL, NULL, 0, NULL, 0, 0));
    MOOD_CHECK(s.n == 1 && s.adapters[0].unet == 0.5 &&
               strcmp(s.adapters[0].alias, "Ink_Wash_v2") == 0);
    mood_resolved_styles_dispose(&s);
    /* two file names that give one style name ("style", "style-2"): a tag of the second file's
     * stem is not the first file's style (it ran another LoRA) */
    mood_import_result rb, rc;
    MOOD_CHECK_OK(
        mood_registry_import_file(reg, &rb, lora_copy("\xe6\xb0\xb4.safetensors", 1), NULL, NULL));
    MOOD_CHECK_OK(
        mood_registry_import_file(reg, &rc, lora_copy("\xe5\xa2\xa8.safetensors", 2), NULL, NULL));
    MOOD_CHECK(strcmp(rb.name, "style") == 0 && strcmp(rc.name, "style-2") == 0);
    MOOD_CHECK(mood_styles_resolve(&s, reg, "a cat <lora:\xe5\xa2\xa8:0.5>", NULL, NULL, 0, NULL, 0,
                                   0) == MOOD_EINVAL);
    MOOD_CHECK_OK(
        mood_styles_resolve(&s, reg, "a cat <lora:\xe6\xb0\xb4:0.5>", NULL, NULL, 0, NULL, 0, 0));
    MOOD_CHECK(s.n == 1 && strncmp(s.adapters[0].hash, rb.autov3, 12) == 0);
    mood_resolved_styles_dispose(&s);
    /* a tag in a style's template applies, as A1111 reads a style's text before its tags */
    mood_style_lora l2 = {ra.sha256, 1, 1};
    mood_style_spec tagged = {
        .template_text = "{prompt}, <lora:style:0.25> inked", .loras = &l2, .n_loras = 1};
    MOOD_CHECK_OK(mood_registry_style_create(reg, "tagged", &tagged));
    mood_style_arg t1 = {"tagged", 1, 1};
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, "a cat", NULL, &t1, 1, NULL, 0, 0));
    MOOD_CHECK_MSG(strcmp(s.prompt, "a cat,  inked") == 0 && s.n == 2, "%s, %zu LoRAs", s.prompt,
                   s.n);
    if (s.n == 2)
        MOOD_CHECK(s.adapters[1].unet == 0.25 && strncmp(s.adapters[1].hash, rb.autov3, 12) == 0);
    mood_resolved_styles_dispose(&s);
    mood_registry_close(reg);
}

/* Which code says what is not there (mood/styles.h): a name the registry lacks is the user's
 * input (MOOD_EINVAL); a missing file, or no registry to look in, is MOOD_ENOTFOUND. */
static void test_not_found_codes(void)
{
    const char *home = scratch_fresh_dir("home-codes");
    mood_registry *reg = NULL;
    mood_resolved_styles s;
    mood_style_arg nope = {"no-such-style", 1, 1};
    mood_weighted_adapter w = {
        .path = scratch_path("no-such-file.safetensors"), .unet = 1, .te = 1};
    MOOD_CHECK_OK(mood_registry_open(&reg, home));
    MOOD_CHECK(mood_styles_resolve(&s, reg, "a <style:no-such-style>", NULL, NULL, 0, NULL, 0, 0) ==
               MOOD_EINVAL);
    MOOD_CHECK(s.prompt == NULL && s.n == 0);
    MOOD_CHECK(mood_styles_resolve(&s, reg, "a", NULL, &nope, 1, NULL, 0, 0) == MOOD_EINVAL);
    MOOD_CHECK(mood_styles_resolve(&s, reg, "a <lora:no-such-lora>", NULL, NULL, 0, NULL, 0, 0) ==
               MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "no such file here") != NULL);
    MOOD_CHECK(mood_styles_resolve(&s, NULL, "a <style:no-such-style>", NULL, NULL, 0, NULL, 0,
                                   0) == MOOD_ENOTFOUND);
    MOOD_CHECK(mood_styles_resolve(&s, NULL, "a <lora:no-such-lora>", NULL, NULL, 0, NULL, 0, 0) ==
               MOOD_ENOTFOUND);
    MOOD_CHECK(mood_styles_resolve(&s, reg, "a", NULL, NULL, 0, &w, 1, 0) == MOOD_ENOTFOUND);
    MOOD_CHECK(mood_styles_resolve(&s, reg, "a", NULL, NULL, 0, &w, 1, MOOD_STYLES_SKIP_MISSING) ==
               MOOD_ENOTFOUND);
    MOOD_CHECK_OK(mood_styles_resolve(&s, reg, "a <lora:no-such-lora> <style:gone>", NULL, &nope, 1,
                                      NULL, 0, MOOD_STYLES_SKIP_MISSING));
    MOOD_CHECK_MSG(s.missing && strcmp(s.missing, "no-such-lora, gone, no-such-style") == 0,
                   "missing: %s", s.missing ? s.missing : "(null)");
    mood_resolved_styles_dispose(&s);
    mood_registry_close(reg);
}

/* Dispose takes NULL, and a result twice. */
static void test_dispose(void)
{
    mood_resolved_styles s;
    mood_resolved_styles_dispose(NULL);
    MOOD_CHECK_OK(resolve(&s, "a cat"));
    mood_resolved_styles_dispose(&s);
    mood_resolved_styles_dispose(&s);
    MOOD_CHECK(s.prompt == NULL && s.n == 0);
}

MOOD_TEST_MAIN(MOOD_T(test_a1111_order), MOOD_T(test_dyn), MOOD_T(test_file_dyn),
               MOOD_T(test_bad_tags), MOOD_T(test_alias_safe), MOOD_T(test_alias_unique),
               MOOD_T(test_a1111_repeats), MOOD_T(test_hash_wins),
               MOOD_T(test_template_and_triggers), MOOD_T(test_twice_zero_and_file_names),
               MOOD_T(test_not_found_codes), MOOD_T(test_dispose))
