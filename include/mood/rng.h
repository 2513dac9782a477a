/*
 * rng.h: random numbers that equal torch's, so a seed gives the same noise in mood as in ComfyUI,
 * diffusers or AUTOMATIC1111.
 *
 * Two generators:
 *
 *  - mood_rng_torch_cpu: torch's CPU generator (at::CPUGeneratorImpl). torch.manual_seed(seed)
 *    followed by torch.randn / torch.rand / torch.randint on the CPU. Bit-identical to torch 2.x
 *    on x86-64 (checked against torch 2.15 by tests/unit/test_rng.c).
 *
 *  - mood_rng_torch_cuda: torch's CUDA generator (Philox4x32-10 through curand, with torch's
 *    seed/offset bookkeeping and its grid-stride kernel layout), computed on the CPU. The
 *    uniform bits are exact; the normals come from the GPU's logf/__sincosf, which the CPU can
 *    only approximate: expect differences of about 1e-6 (see mood_rng_torch_cuda_randn).
 *    AUTOMATIC1111's CPU re-implementation of the same noise (its "NV" RNG source,
 *    modules/rng_philox.py, which computes Box-Muller in double) agrees within 2e-6
 *    (tests/unit/test_rng.c); no real GPU output has been compared yet.
 *
 * Seeds are uint64_t. torch.manual_seed(s) with a negative s uses s modulo 2^64, so pass
 * (uint64_t)s.
 *
 * Thread-safety: a generator object has no locks; use each one from one thread at a time.
 * Distinct objects, and the free functions, may be used from any number of threads at once.
 */
#ifndef MOOD_RNG_H
#define MOOD_RNG_H

#include <stddef.h>
#include <stdint.h>

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----- torch CPU generator (mt19937) ------------------------------------------------------ */

typedef struct mood_rng_torch_cpu mood_rng_torch_cpu;

/* Which build of torch's normal kernel to reproduce for float32 tensors of 16 or more elements.
 * torch picks it at run time from the CPU (torch.backends.cpu.get_cpu_capability()):
 *  - AVX2: x86-64 CPUs with AVX2, and AVX512 ones too (torch does not dispatch normal_ to its
 *    AVX512 build). Box-Muller in float with torch's Cephes-style log/sincos (avx_mathfun.h).
 *    This is what nearly every ComfyUI/A1111 user on a PC gets; the default.
 *  - SCALAR: torch's DEFAULT build (x86 without AVX2, ATEN_CPU_CAPABILITY=default): float
 *    Box-Muller with the C library's logf/cosf/sinf. Equal to torch when both use glibc's libm.
 * float64 tensors, tensors under 16 elements, rand and randint do not depend on this. */
typedef enum mood_rng_cpu_kernel {
    MOOD_RNG_CPU_KERNEL_AVX2 = 0,
    MOOD_RNG_CPU_KERNEL_SCALAR = 1
} mood_rng_cpu_kernel;

/* A generator in the state torch.manual_seed(seed) leaves torch's CPU generator in (mt19937
 * seeded with the low 32 bits of seed, no cached normal). *out belongs to the caller, who frees
 * it with mood_rng_torch_cpu_free. Errors: MOOD_EINVAL (out NULL), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_rng_torch_cpu_new(mood_rng_torch_cpu **out, uint64_t seed);
void mood_rng_torch_cpu_free(mood_rng_torch_cpu *g); /* NULL: no-op */

/* Re-seeds g as torch.manual_seed(seed) does (also drops the cached normal). */
void mood_rng_torch_cpu_seed(mood_rng_torch_cpu *g, uint64_t seed);
/* Selects the float32 normal kernel (see mood_rng_cpu_kernel). MOOD_EINVAL for unknown kinds. */
MOOD_WARN_UNUSED int mood_rng_torch_cpu_set_kernel(mood_rng_torch_cpu *g, mood_rng_cpu_kernel k);

/* out[0..n) = torch.randn(n) (any shape with n elements, contiguous), float32; advances g
 * exactly as torch advances its generator, including the cached second Box-Muller value of the
 * small-tensor path, so a sequence of calls equals the same sequence of torch calls. */
MOOD_WARN_UNUSED int mood_rng_torch_cpu_randn(mood_rng_torch_cpu *g, float *out, size_t n);
/* The same with dtype=torch.float64. */
MOOD_WARN_UNUSED int mood_rng_torch_cpu_randn_f64(mood_rng_torch_cpu *g, double *out, size_t n);
/* torch.rand(n) in float32 / float64. */
MOOD_WARN_UNUSED int mood_rng_torch_cpu_rand(mood_rng_torch_cpu *g, float *out, size_t n);
MOOD_WARN_UNUSED int mood_rng_torch_cpu_rand_f64(mood_rng_torch_cpu *g, double *out, size_t n);
/* torch.randint(low, high, (n,)) (int64). MOOD_EINVAL unless low < high. */
MOOD_WARN_UNUSED int mood_rng_torch_cpu_randint(mood_rng_torch_cpu *g, int64_t *out, size_t n,
                                                int64_t low, int64_t high);
/* The next raw 32-bit output of the mt19937 engine (torch's generator.random()). */
uint32_t mood_rng_torch_cpu_next_u32(mood_rng_torch_cpu *g);

/* Bytes of a serialised generator state (mood_rng_torch_cpu_get_state). */
#define MOOD_RNG_TORCH_CPU_STATE_SIZE 2524

/* Serialises g's whole state (mt19937 words and position, the cached normal, the kernel choice)
 * into out, little-endian, so a training run can be checkpointed and resumed with the same
 * random stream. The format is mood's own (version 1), not torch's get_state() layout. */
void mood_rng_torch_cpu_get_state(const mood_rng_torch_cpu *g,
                                  uint8_t out[MOOD_RNG_TORCH_CPU_STATE_SIZE]);
/* Restores a state written by mood_rng_torch_cpu_get_state. MOOD_EFORMAT (g unchanged) when
 * `size` is not MOOD_RNG_TORCH_CPU_STATE_SIZE or the bytes are not a valid state. */
MOOD_WARN_UNUSED int mood_rng_torch_cpu_set_state(mood_rng_torch_cpu *g, const uint8_t *in,
                                                  size_t size);

/* ----- Philox4x32-10 and torch's CUDA generator ------------------------------------------- */

/* One Philox4x32-10 block (Salmon et al. 2011, as in Random123 and curand): out = the 4 words
 * for counter ctr under key. Pure function. */
void mood_rng_philox(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);

/* The GPU properties that decide how torch lays random numbers out over a tensor. torch launches
 * blocks of 256 threads, grid = min(ceil(n / 256), sm_count * (max_threads_per_sm / 256));
 * thread t draws element t, t + 256*grid, ... . While n <= 256*grid every thread makes one
 * element and the result does not depend on the GPU; above that (an RTX 4090 with the defaults:
 * n > 196608, e.g. SDXL latents 4x128x128 in batches of 4 or more; an RTX 3090: n > 125952) it
 * does. A1111 draws each image's noise separately (4 x h/8 x w/8), which stays below. */
typedef struct mood_rng_cuda_layout {
    uint32_t sm_count;           /* cudaDeviceProp.multiProcessorCount */
    uint32_t max_threads_per_sm; /* cudaDeviceProp.maxThreadsPerMultiProcessor */
} mood_rng_cuda_layout;

/* Defaults: an RTX 4090 (128 SMs, 1536 threads per SM). Others: RTX 3090 82/1536, RTX 3080
 * 68/1536, RTX 3060 28/1536, RTX 4080 76/1536, RTX 4070 46/1536, RTX 2080 Ti 68/1024,
 * A100 108/2048, H100 SXM 132/2048. */
void mood_rng_cuda_layout_init(mood_rng_cuda_layout *layout);

typedef struct mood_rng_torch_cuda mood_rng_torch_cuda;

/* The state torch.manual_seed(seed) leaves torch's CUDA generator in: Philox key = seed,
 * offset 0. layout may be NULL (defaults). *out belongs to the caller (mood_rng_torch_cuda_free).
 * Errors: MOOD_EINVAL (out NULL, sm_count 0, max_threads_per_sm < 256), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_rng_torch_cuda_new(mood_rng_torch_cuda **out, uint64_t seed,
                                             const mood_rng_cuda_layout *layout);
void mood_rng_torch_cuda_free(mood_rng_torch_cuda *g); /* NULL: no-op */

/* torch's philox offset (generator.get_offset()); each randn call advances it by a multiple
 * of 4. */
uint64_t mood_rng_torch_cuda_offset(const mood_rng_torch_cuda *g);
void mood_rng_torch_cuda_set_offset(mood_rng_torch_cuda *g, uint64_t offset);

/* out[0..n) = torch.randn(n, device="cuda") (float32) computed on the CPU. The Philox words
 * and their placement are exact; each value is then s * sin(v) (or cos) with
 * s = sqrt(-2 log u) as curand's Box-Muller computes it, but with correctly rounded
 * log/sin/cos where the GPU uses logf and the __sincosf intrinsic: results differ from a GPU's
 * by a few float ulps of the value (|diff| about 1e-6). MOOD_EINVAL for n > 2^31 - 1 (torch
 * splits such tensors into several launches; not reproduced). */
MOOD_WARN_UNUSED int mood_rng_torch_cuda_randn(mood_rng_torch_cuda *g, float *out, size_t n);
/* The same with dtype=torch.float64 (curand_normal2_double; GPU sincospi/log approximated). */
MOOD_WARN_UNUSED int mood_rng_torch_cuda_randn_f64(mood_rng_torch_cuda *g, double *out, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_RNG_H */
