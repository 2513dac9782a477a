/*
 * graph.cu: CUDA graphs of work queued on a context's stream (cuda_ops.h, "CUDA graphs"): record
 * once with stream capture, replay with one launch. The pool blocks the recorded code uses are
 * reserved for the graph (pool.cu, mood_cuda_pool_resv) from mood_cuda_graph_new to
 * mood_cuda_graph_free, so that the addresses baked into the graph are nobody else's between
 * replays.
 *
 * Capture mode: cudaStreamCaptureModeThreadLocal. Under it a call of this thread that is unsafe
 * during a capture (a cudaMalloc, a synchronous copy, a wait) fails instead of running outside
 * the graph, so a mistake in the recorded code ends in a failed capture (the caller then runs
 * the code normally) rather than in a graph that silently differs; under Relaxed such calls
 * would run once at capture time and be missing from every replay. Global would add nothing for
 * this thread and would also forbid those calls to other threads (another context's work)
 * while we record. The pool's own cudaMalloc during a capture is safe (an address, not stream
 * work) and relaxes the mode for that one call (pool.cu).
 */
#include <string.h>

#include "engine/cuda/cuda_internal.h"

struct mood_cuda_graph {
    mood_cuda_ctx *ctx;
    mood_cuda_pool_resv resv;
    cudaGraphExec_t exec;     /* NULL until finished successfully */
    unsigned long config_gen; /* the context's settings when recorded */
    int reserving, capturing;
};

int mood_cuda_graph_new(mood_cuda_ctx *ctx, mood_cuda_graph **out)
{
    if (out)
        *out = NULL;
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_graph_new"));
    if (!out)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_graph_new: out is NULL");
    mood_cuda_graph *g = (mood_cuda_graph *)mood_calloc(1, sizeof *g);
    if (!g)
        return mood_error_nomem();
    g->ctx = ctx;
    g->config_gen = ctx->config_gen;
    int rc = mood__cuda_pool_resv_begin(ctx->pool, &g->resv);
    if (rc < 0) {
        mood_free(g);
        return rc;
    }
    g->reserving = 1;
    *out = g;
    return 0;
}

int mood_cuda_graph_capture(mood_cuda_graph *g)
{
    if (!g || !g->reserving || g->capturing || g->exec)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_graph_capture: not a graph being recorded");
    CUDA_TRY(cudaStreamBeginCapture(g->ctx->stream, cudaStreamCaptureModeThreadLocal));
    g->capturing = 1;
    return 0;
}

/* Ends the stream capture; *graph the captured graph (NULL when the capture was invalidated).
 * rc: the recorded code's result; when negative it is returned as it is (its message, naming
 * the call that failed, says more than the invalidated capture's). */
static int end_capture(mood_cuda_graph *g, cudaGraph_t *graph, int rc)
{
    cudaError_t e = cudaStreamEndCapture(g->ctx->stream, graph);
    g->capturing = 0;
    /* a call the capture refused left its error behind (cudaErrorStreamCaptureUnsupported,
     * ...Invalidated): not sticky; clear it so that the uncaptured run after starts clean */
    cudaGetLastError();
    if (rc < 0)
        return rc;
    if (e != cudaSuccess)
        return mood__cuda_fail(e, "cudaStreamEndCapture", __FILE__, __LINE__);
    if (!*graph)
        return mood_error_set(MOOD_EBACKEND, "CUDA graph: the capture was invalidated");
    return 0;
}

static int instantiate(mood_cuda_graph *g, cudaGraph_t graph)
{
    cudaError_t e = cudaGraphInstantiate(&g->exec, graph, 0);
    if (e != cudaSuccess) {
        g->exec = NULL;
        cudaGetLastError();
        return mood__cuda_fail(e, "cudaGraphInstantiate", __FILE__, __LINE__);
    }
    /* the graph's resources go to the device now rather than at the first launch */
    e = cudaGraphUpload(g->exec, g->ctx->stream);
    if (e != cudaSuccess) {
        cudaGraphExecDestroy(g->exec);
        g->exec = NULL;
        cudaGetLastError();
        return mood__cuda_fail(e, "cudaGraphUpload", __FILE__, __LINE__);
    }
    return 0;
}

int mood_cuda_graph_finish(mood_cuda_graph *g, int rc)
{
    cudaGraph_t graph = NULL;
    if (!g)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_graph_finish: no graph");
    if (g->reserving) {
        mood__cuda_pool_resv_end(g->ctx->pool);
        g->reserving = 0;
    }
    if (g->capturing) {
        rc = end_capture(g, &graph, rc);
    } else if (rc == 0) {
        rc = mood_error_set(MOOD_EINVAL, "mood_cuda_graph_finish: nothing was captured");
    }
    if (rc == 0)
        rc = instantiate(g, graph);
    if (graph)
        cudaGraphDestroy(graph); /* the executable graph keeps what it needs */
    return rc;
}

int mood_cuda_graph_launch(mood_cuda_graph *g)
{
    if (!g || !g->exec)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_graph_launch: no recorded graph");
    CUDA_TRY(cudaGraphLaunch(g->exec, g->ctx->stream));
    return 0;
}

int mood_cuda_graph_stale(const mood_cuda_graph *g)
{
    return g && g->config_gen != g->ctx->config_gen;
}

size_t mood_cuda_graph_bytes(const mood_cuda_graph *g)
{
    return g ? g->resv.bytes : 0;
}

void mood_cuda_graph_free(mood_cuda_graph *g)
{
    if (!g)
        return;
    if (g->reserving || g->capturing)
        mood_cuda_graph_finish(g, MOOD_EINVAL); /* abandoned while recording */
    if (g->exec) {
        /* a replay may still be queued: its blocks go back to the pool only after it ran, and
         * the executable graph is destroyed only when no launch of it is pending */
        cudaStreamSynchronize(g->ctx->stream);
        cudaGraphExecDestroy(g->exec);
    }
    mood__cuda_pool_resv_release(g->ctx->pool, &g->resv);
    mood_free(g);
}
