/*
 * pool.cu: the CUDA backend's device memory pool, a size-class caching allocator. Requests are
 * rounded up to a class (multiples of 256 bytes up to 4 KiB, then four classes per power of two:
 * 1.25, 1.5, 1.75 and 2 times 2^k, so at most 25% is lost to rounding); a freed block goes to its
 * class's free list and the next request of that class takes it back, so a workload that repeats
 * (a sampler step, a training step) stops calling cudaMalloc after its first iteration. When
 * cudaMalloc fails the cached blocks are returned to the driver and the allocation retried once.
 *
 * Blocks are never split or merged (each is one cudaMalloc), which keeps the bookkeeping small:
 * a free list per class and a hash table from pointer to class for the blocks in use. All work
 * of a context runs on its one stream, so a block freed by the host can be handed out again at
 * once: kernels using it before and after run in stream order.
 *
 * A CUDA graph's reservation (mood_cuda_pool_resv, cuda_internal.h) diverts the pool while a graph
 * is recorded: blocks handed out then belong to the graph until it is freed, because its replays
 * read and write them at times the host does not see; freeing one during the recording only
 * makes it available to the recording's next request of its class. A block the driver must
 * supply during a stream capture is asked for in relaxed capture mode (cudaMalloc is not a
 * stream operation: the graph just gets the address, as PyTorch's allocator does), and no
 * cached block is returned to the driver then (cudaFree may synchronise: a capture forbids it).
 */
#include <stdint.h>
#include <string.h>

#include "engine/cuda/cuda_internal.h"

#define SMALL_LIMIT 4096 /* classes of 256 bytes up to here */
#define SMALL_STEP  256
#define NUM_SMALL   (SMALL_LIMIT / SMALL_STEP)
#define NUM_CLASSES (NUM_SMALL + 4 * 52)

typedef struct free_list {
    void **ptrs;
    size_t n, cap;
} free_list;

typedef struct used_slot {
    uintptr_t key; /* 0: empty */
    int cls;
} used_slot;

struct mood_cuda_pool {
    int device;
    free_list lists[NUM_CLASSES];
    used_slot *used; /* open addressing, linear probing, power-of-two size */
    size_t used_cap, used_n;
    mood_cuda_pool_stats stats;
    mood_cuda_pool_resv *resv; /* the recording graph's reservation, or NULL */
};

static size_t round_up(size_t v, size_t step)
{
    return (v + step - 1) / step * step;
}

/* floor(log2(v)) for v > 0. */
static int log2_floor(size_t v)
{
    return 63 - __builtin_clzll((unsigned long long)v);
}

/* The class index of a request and the bytes the class holds. */
static int class_of(size_t bytes, size_t *size)
{
    if (bytes == 0)
        bytes = 1;
    if (bytes <= SMALL_LIMIT) {
        *size = round_up(bytes, SMALL_STEP);
        return (int)(*size / SMALL_STEP) - 1;
    }
    /* 2^k < bytes <= 2^(k+1): classes 2^k * 5/4, 6/4, 7/4, 8/4 */
    int k = log2_floor(bytes - 1);
    size_t step = (size_t)1 << (k - 2);
    *size = round_up(bytes, step);
    return NUM_SMALL + (k - 12) * 4 + (int)(*size / step) - 5;
}

size_t mood__cuda_pool_class_size(size_t bytes)
{
    size_t size;
    class_of(bytes, &size);
    return size;
}

/* The bytes class cls holds (the inverse of class_of). */
static size_t class_size(int cls)
{
    if (cls < NUM_SMALL)
        return (size_t)(cls + 1) * SMALL_STEP;
    int k = (cls - NUM_SMALL) / 4 + 12, q = (cls - NUM_SMALL) % 4 + 5;
    return ((size_t)1 << (k - 2)) * (size_t)q;
}

static size_t hash_ptr(uintptr_t key, size_t cap)
{
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (cap - 1);
}

static int used_grow(mood_cuda_pool *p)
{
    size_t cap = p->used_cap ? p->used_cap * 2 : 256;
    used_slot *slots = (used_slot *)mood_calloc(cap, sizeof *slots);
    if (!slots)
        return mood_error_nomem();
    for (size_t i = 0; i < p->used_cap; i++) {
        if (!p->used[i].key)
            continue;
        size_t j = hash_ptr(p->used[i].key, cap);
        while (slots[j].key)
            j = (j + 1) & (cap - 1);
        slots[j] = p->used[i];
    }
    mood_free(p->used);
    p->used = slots;
    p->used_cap = cap;
    return 0;
}

static int used_insert(mood_cuda_pool *p, void *ptr, int cls)
{
    if ((p->used_n + 1) * 2 > p->used_cap)
        MOOD_TRY(used_grow(p));
    size_t j = hash_ptr((uintptr_t)ptr, p->used_cap);
    while (p->used[j].key)
        j = (j + 1) & (p->used_cap - 1);
    p->used[j].key = (uintptr_t)ptr;
    p->used[j].cls = cls;
    p->used_n++;
    return 0;
}

/* Removes ptr and returns its class, or -1 when it is not in the table. Backward-shift deletion
 * keeps every probe chain unbroken without tombstones. */
static int used_remove(mood_cuda_pool *p, void *ptr)
{
    if (!p->used_cap)
        return -1;
    size_t mask = p->used_cap - 1, j = hash_ptr((uintptr_t)ptr, p->used_cap);
    while (p->used[j].key && p->used[j].key != (uintptr_t)ptr)
        j = (j + 1) & mask;
    if (!p->used[j].key)
        return -1;
    int cls = p->used[j].cls;
    size_t hole = j;
    for (size_t i = (hole + 1) & mask; p->used[i].key; i = (i + 1) & mask) {
        size_t home = hash_ptr(p->used[i].key, p->used_cap);
        /* entry i may move into the hole when its home is not in (hole, i] (cyclically) */
        int stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            p->used[hole] = p->used[i];
            hole = i;
        }
    }
    p->used[hole].key = 0;
    p->used_n--;
    return cls;
}

int mood__cuda_pool_new(mood_cuda_pool **out, int device)
{
    mood_cuda_pool *p = (mood_cuda_pool *)mood_calloc(1, sizeof *p);
    if (!p)
        return mood_error_nomem();
    p->device = device;
    *out = p;
    return 0;
}

void mood__cuda_pool_trim(mood_cuda_pool *p)
{
    for (int c = 0; c < NUM_CLASSES; c++) {
        free_list *l = &p->lists[c];
        for (size_t i = 0; i < l->n; i++)
            cudaFree(l->ptrs[i]);
        p->stats.cached -= l->n * class_size(c);
        l->n = 0;
    }
}

void mood__cuda_pool_free_all(mood_cuda_pool *p)
{
    if (!p)
        return;
    mood__cuda_pool_trim(p);
    for (size_t i = 0; i < p->used_cap; i++)
        if (p->used[i].key)
            cudaFree((void *)p->used[i].key);
    for (int c = 0; c < NUM_CLASSES; c++)
        mood_free(p->lists[c].ptrs);
    mood_free(p->used);
    mood_free(p);
}

static void note_peak(mood_cuda_pool *p)
{
    size_t total = p->stats.in_use + p->stats.cached;
    if (total > p->stats.peak)
        p->stats.peak = total;
}

/* cudaMalloc, allowed during a stream capture of this thread when a reservation is active (the
 * call is not captured; the thread's capture mode is relaxed for it and restored). */
static cudaError_t device_malloc(mood_cuda_pool *p, void **ptr, size_t size)
{
    if (!p->resv)
        return cudaMalloc(ptr, size);
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaError_t e = cudaThreadExchangeStreamCaptureMode(&mode);
    if (e != cudaSuccess)
        return e;
    e = cudaMalloc(ptr, size);
    cudaThreadExchangeStreamCaptureMode(&mode);
    return e;
}

/* An idle block of class cls in the active reservation, marked busy; NULL when there is none. */
static void *resv_take(mood_cuda_pool *p, int cls)
{
    mood_cuda_pool_resv *r = p->resv;
    for (size_t i = r ? r->n : 0; i-- > 0;)
        if (r->blocks[i].idle && r->blocks[i].cls == cls) {
            r->blocks[i].idle = 0;
            p->stats.hits++;
            return r->blocks[i].ptr;
        }
    return NULL;
}

/* Records a new block in the active reservation. */
static int resv_add(mood_cuda_pool *p, void *ptr, int cls, size_t size)
{
    mood_cuda_pool_resv *r = p->resv;
    if (!r)
        return 0;
    MOOD_TRY(mood_array_reserve(&r->blocks, &r->cap, r->n, sizeof *r->blocks, 64));
    r->blocks[r->n].ptr = ptr, r->blocks[r->n].cls = cls, r->blocks[r->n].idle = 0;
    r->n++;
    r->bytes += size;
    return 0;
}

/* A block of class cls (size bytes) from the free list or the driver, not yet recorded as in
 * use. */
static int obtain(mood_cuda_pool *p, void **out, int cls, size_t size)
{
    free_list *l = &p->lists[cls];
    if (l->n) {
        *out = l->ptrs[--l->n];
        p->stats.cached -= size;
        p->stats.hits++;
        return 0;
    }
    cudaError_t e = device_malloc(p, out, size);
    if (e == cudaErrorMemoryAllocation && !p->resv) { /* no trim while a graph records */
        cudaGetLastError(); /* not sticky, but keep the next check clean */
        mood__cuda_pool_trim(p);
        e = device_malloc(p, out, size);
    }
    if (e != cudaSuccess) {
        *out = NULL;
        int rc = mood__cuda_fail(e, "cudaMalloc", __FILE__, __LINE__);
        mood_error_prefix("cuda pool: %zu bytes (%zu in use, %zu cached)", size, p->stats.in_use,
                          p->stats.cached);
        return rc;
    }
    p->stats.device_allocs++;
    return 0;
}

int mood__cuda_pool_alloc(mood_cuda_pool *p, void **out, size_t bytes)
{
    size_t size = 0;
    /* past 2^62 bytes the class arithmetic would wrap to a small class */
    int cls = bytes > ((size_t)1 << 62) ? NUM_CLASSES : class_of(bytes, &size);
    *out = NULL;
    if (cls >= NUM_CLASSES)
        return mood_error_set(MOOD_ENOMEM, "cuda pool: request of %zu bytes is too large", bytes);
    void *ptr = resv_take(p, cls);
    if (ptr) { /* already in the table and in in_use */
        *out = ptr;
        return 0;
    }
    MOOD_TRY(obtain(p, &ptr, cls, size));
    int rc = used_insert(p, ptr, cls);
    if (rc < 0) {
        cudaFree(ptr);
        return rc;
    }
    p->stats.in_use += size;
    note_peak(p);
    if ((rc = resv_add(p, ptr, cls, size)) < 0) {
        mood__cuda_pool_release(p, ptr); /* not recorded: back to the shared list */
        return rc;
    }
    *out = ptr;
    return 0;
}

/* Marks ptr idle when the active reservation holds it; 1 if so. */
static int resv_idle(mood_cuda_pool *p, void *ptr)
{
    mood_cuda_pool_resv *r = p->resv;
    for (size_t i = r ? r->n : 0; i-- > 0;)
        if (r->blocks[i].ptr == ptr) {
            r->blocks[i].idle = 1;
            return 1;
        }
    return 0;
}

int mood__cuda_pool_release(mood_cuda_pool *p, void *ptr)
{
    if (!ptr || resv_idle(p, ptr))
        return 0;
    int cls = used_remove(p, ptr);
    if (cls < 0)
        return mood_error_set(MOOD_EINVAL, "cuda pool: %p was not allocated by this context", ptr);
    size_t size = class_size(cls);
    p->stats.in_use -= size;
    free_list *l = &p->lists[cls];
    if (mood_array_reserve(&l->ptrs, &l->cap, l->n, sizeof *l->ptrs, 16) < 0) {
        cudaFree(ptr); /* no room to cache it: give it back */
        return 0;
    }
    l->ptrs[l->n++] = ptr;
    p->stats.cached += size;
    return 0;
}

void mood__cuda_pool_stats(const mood_cuda_pool *p, mood_cuda_pool_stats *out)
{
    *out = p->stats;
}

int mood__cuda_pool_resv_begin(mood_cuda_pool *p, mood_cuda_pool_resv *r)
{
    if (p->resv)
        return mood_error_set(MOOD_EINVAL, "cuda pool: a CUDA graph is already being recorded");
    p->resv = r;
    return 0;
}

void mood__cuda_pool_resv_end(mood_cuda_pool *p)
{
    p->resv = NULL;
}

void mood__cuda_pool_resv_release(mood_cuda_pool *p, mood_cuda_pool_resv *r)
{
    if (p->resv == r)
        p->resv = NULL;
    for (size_t i = 0; i < r->n; i++)
        mood__cuda_pool_release(p, r->blocks[i].ptr);
    mood_free(r->blocks);
    memset(r, 0, sizeof *r);
}
