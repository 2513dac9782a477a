/*
 * core.h: what every part of libmood shares: error codes and the thread-local error message,
 * the log sink, the progress callback, version and build information.
 *
 * Errors: every fallible function returns an int, 0 (MOOD_OK) on success or a negative MOOD_E*
 * code; the human-readable detail (naming the file, tensor or key and what was expected) is kept
 * per thread and read with mood_error_last(). The library never prints and never exits.
 *
 * Arguments: a pointer may be NULL only where its function's comment says so (an optional
 * output, default options). NULL where a value is needed is MOOD_EINVAL with a message naming the
 * function and the argument ("mood_hash_file: path is NULL"), not a crash. Every _free, _close
 * and _dispose function accepts NULL and does nothing with it; as with free(), a handle is
 * closed once (a second close uses freed memory). Accessors that return a value rather than an
 * error code (names, counts, predicates) take a valid handle.
 *
 * Threads: each header says how its objects may be shared (one thread at a time, as a rule;
 * distinct objects on distinct threads freely). Callbacks (progress, sample previews) run on
 * the thread that called the function that takes them. The log sink is one for the process:
 * set it before starting threads; it may be called from any thread that logs.
 */
#ifndef MOOD_CORE_H
#define MOOD_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MOOD_WARN_UNUSED  __attribute__((warn_unused_result))
#define MOOD_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MOOD_WARN_UNUSED
#define MOOD_PRINTF(f, a)
#endif

enum {
    MOOD_OK = 0,
    MOOD_ENOMEM = -1,       /* out of memory */
    MOOD_EINVAL = -2,       /* bad argument or option given by the caller */
    MOOD_EIO = -3,          /* reading or writing failed: disk full, permissions, ... */
    MOOD_ENOTFOUND = -4,    /* a file, tensor or name that was asked for does not exist */
    MOOD_EFORMAT = -5,      /* a file's content is malformed, truncated or hostile */
    MOOD_EUNSUPPORTED = -6, /* a valid input that mood cannot handle (yet) */
    MOOD_EFAMILY = -7,      /* an adapter made for another base family */
    MOOD_EBACKEND = -8,     /* a compute backend failed */
    MOOD_ECANCELLED = -9    /* a progress callback asked to stop */
};

/* The message of the last error on this thread ("" when none). Valid until the next call that
 * sets an error on this thread. */
const char *mood_error_last(void);
/* Name of an error code, e.g. "format error". */
const char *mood_error_name(int code);
/* True for codes caused by the input (exit status 1 in the CLI); false for the environment
 * (missing file, I/O, memory: exit status 2). */
int mood_error_is_user(int code);

/* Whether an output file can be written at path, checked before the work that fills it:
 * MOOD_EINVAL when path is a folder or has no file name, MOOD_ENOTFOUND when its folder does not
 * exist, MOOD_EIO when the folder cannot be written. */
int mood_output_path_check(const char *path);
/* mood_output_path_check, and MOOD_EINVAL when path is the same file as one of the n inputs
 * (however spelled: links and relative paths included), so that no command writes over what it
 * reads. NULL inputs are skipped. */
int mood_output_path_check_inputs(const char *path, const char *const *inputs, size_t n);

/* Log sink. Levels: 0 error, 1 warning, 2 info, 3 debug. The default sink drops everything, so
 * the library stays silent unless the application installs one. */
typedef void (*mood_log_fn)(int level, const char *message, void *payload);
void mood_log_set(mood_log_fn fn, void *payload);

/* Progress of long work. `done` out of `total` units (bytes, tensors, steps) of the named
 * phase. A non-zero return cancels the work with MOOD_ECANCELLED. */
typedef struct mood_progress {
    const char *phase;
    uint64_t done;
    uint64_t total;
} mood_progress;
typedef int (*mood_progress_fn)(const mood_progress *p, void *payload);

/* A runtime adapter side path on one Linear or Conv2d layer of a model (the text encoder, the
 * UNet): y = W x + b + scale · up(down(x)) instead of merging ΔW into W. `weight` is the layer's
 * weight name in the model's own (diffusers / transformers) naming, e.g.
 * "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight".
 *   rank > 0: low rank. down (rank x in) for Linear, (rank x in x kh x kw) for a convolution
 *             (applied with the layer's stride and padding); up (out x rank), a 1x1 convolution.
 *   rank = 0: dense. up holds ΔW in the weight's own shape; down is NULL.
 * Pointers are borrowed: they must outlive the model's use of the path. */
typedef struct mood_side_path {
    const char *weight;
    const float *down;
    const float *up;
    int rank;
    float scale;
} mood_side_path;

/* Gradients of one side path's factors (training: mood_unet_backward, mood_clip_backward), in
 * the factors' own shapes (mood_side_path): ddown (rank x in [x kh x kw]), dup (out x rank), or
 * for a dense path (rank 0) dup in the weight's shape (ddown unused). NULL: not wanted. */
typedef struct mood_side_grad {
    float *ddown, *dup;
} mood_side_grad;

/* Removes the temporary files of writes still in progress, so an interrupted command leaves
 * nothing behind. Async-signal-safe: call it from a SIGINT/SIGTERM handler. */
void mood_atomic_cleanup_all(void);

/* The OPENBLAS_CORETYPE this CPU should use when OpenBLAS did not recognise it and runs its
 * generic kernels ("SkylakeX", "Haswell"), or NULL when OpenBLAS chose well. OpenBLAS reads the
 * variable only when it loads, so a program sets it and re-executes itself (as `mood` does). */
const char *mood_blas_coretype_hint(void);
/* For a program's main(), first thing: when mood_blas_coretype_hint() names kernels and the
 * user set no OPENBLAS_CORETYPE, sets it and re-executes the program (/proc/self/exe, same argv)
 * once; returns (doing nothing) otherwise or when that fails. */
void mood_blas_tune_process(char **argv);

const char *mood_version(void);
/* One line describing how this library was built (type, sanitizers, CUDA architectures). */
const char *mood_build_info(void);
/* Number of CUDA devices usable by this build; 0 when the CUDA backend is not built or no GPU is
 * present. `name` receives the first device's name (may be NULL). */
int mood_cuda_device_count(char *name, size_t name_size);
int mood_cuda_compiled(void);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_CORE_H */
