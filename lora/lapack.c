/*
 * lapack.c: thin C wrappers over the Fortran LAPACK routines OpenBLAS exports (see lapack.h for
 * why not LAPACKE): workspace queries and allocation, row-major handling for sgesv, and the
 * gfortran calling convention (arguments by reference, a hidden length per character argument).
 */
#include <stddef.h>
#include <stdlib.h>

#include "common/common.h"
#include "lora/lapack.h"

void sgesv_(const int *n, const int *nrhs, float *a, const int *lda, int *ipiv, float *b,
            const int *ldb, int *info);
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork,
             int *iwork, int *info, size_t jobz_len);
void dgesvdx_(const char *jobu, const char *jobvt, const char *range, const int *m, const int *n,
              double *a, const int *lda, const double *vl, const double *vu, const int *il,
              const int *iu, int *ns, double *s, double *u, const int *ldu, double *vt,
              const int *ldvt, double *work, const int *lwork, int *iwork, int *info,
              size_t jobu_len, size_t jobvt_len, size_t range_len);
void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work,
             const int *lwork, int *info);
void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau,
             double *work, const int *lwork, int *info);

static int imin(int a, int b)
{
    return a < b ? a : b;
}

int mood__sgesv_rowmajor(int n, int nrhs, float *a, float *b)
{
    /* Row-major A is column-major Aᵀ: transpose both into column-major copies. */
    float *ac = mood_malloc((size_t)n * (size_t)n * sizeof *ac);
    float *bc = mood_malloc((size_t)n * (size_t)nrhs * sizeof *bc);
    int *piv = mood_malloc((size_t)n * sizeof *piv);
    int info = MOOD_LAPACK_NOMEM;
    if (ac && bc && piv) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                ac[i + j * n] = a[i * n + j];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < nrhs; j++)
                bc[i + j * n] = b[i * nrhs + j];
        sgesv_(&n, &nrhs, ac, &n, piv, bc, &n, &info);
        for (int i = 0; info == 0 && i < n; i++)
            for (int j = 0; j < nrhs; j++)
                b[i * nrhs + j] = bc[i + j * n];
    }
    mood_free(ac);
    mood_free(bc);
    mood_free(piv);
    return info;
}

int mood__dgesdd(char jobz, int m, int n, double *a, int lda, double *s, double *u, int ldu,
                 double *vt, int ldvt)
{
    int info = 0, lwork = -1, *iwork = mood_malloc((size_t)(8 * imin(m, n) + 1) * sizeof *iwork);
    double query = 0, *work = NULL;
    if (!iwork)
        return MOOD_LAPACK_NOMEM;
    dgesdd_(&jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, &query, &lwork, iwork, &info, 1);
    lwork = (int)query + 1;
    if (info == 0 && !(work = mood_malloc((size_t)lwork * sizeof *work)))
        info = MOOD_LAPACK_NOMEM;
    if (info == 0)
        dgesdd_(&jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, &info, 1);
    mood_free(work);
    mood_free(iwork);
    return info;
}

int mood__dgesvdx(int m, int n, double *a, int lda, int il, int iu, int *ns, double *s, double *u,
                  int ldu, double *vt, int ldvt)
{
    const double vl = 0, vu = 0;
    int info = 0, lwork = -1, *iwork = mood_malloc((size_t)(12 * imin(m, n) + 1) * sizeof *iwork);
    /* S is documented as min(m, n) long, but dbdsvdx hands it to dstevx as the eigenvalues of its
     * 2·min(m, n) matrix, which with clustered values (a zero difference) writes past min(m, n)
     * (seen with OpenBLAS's LAPACK: a heap overwrite, then an abort in free): a buffer of twice
     * that, copied out. */
    double query = 0, *work = NULL, *sw = mood_malloc((size_t)(2 * imin(m, n) + 1) * sizeof *sw);
    if (!iwork || !sw) {
        mood_free(iwork);
        mood_free(sw);
        return MOOD_LAPACK_NOMEM;
    }
    dgesvdx_("V", "V", "I", &m, &n, a, &lda, &vl, &vu, &il, &iu, ns, sw, u, &ldu, vt, &ldvt, &query,
             &lwork, iwork, &info, 1, 1, 1);
    lwork = (int)query + 1;
    if (info == 0 && !(work = mood_malloc((size_t)lwork * sizeof *work)))
        info = MOOD_LAPACK_NOMEM;
    if (info == 0)
        dgesvdx_("V", "V", "I", &m, &n, a, &lda, &vl, &vu, &il, &iu, ns, sw, u, &ldu, vt, &ldvt,
                 work, &lwork, iwork, &info, 1, 1, 1);
    for (int i = 0; info == 0 && i < *ns && i < iu - il + 1; i++)
        s[i] = sw[i];
    mood_free(sw);
    mood_free(work);
    mood_free(iwork);
    return info;
}

int mood__dgeqrf(int m, int n, double *a, int lda, double *tau)
{
    int info = 0, lwork = -1;
    double query = 0, *work = NULL;
    dgeqrf_(&m, &n, a, &lda, tau, &query, &lwork, &info);
    lwork = (int)query + 1;
    if (info == 0 && !(work = mood_malloc((size_t)lwork * sizeof *work)))
        return MOOD_LAPACK_NOMEM;
    if (info == 0)
        dgeqrf_(&m, &n, a, &lda, tau, work, &lwork, &info);
    mood_free(work);
    return info;
}

int mood__dorgqr(int m, int n, int k, double *a, int lda, const double *tau)
{
    int info = 0, lwork = -1;
    double query = 0, *work = NULL;
    dorgqr_(&m, &n, &k, a, &lda, tau, &query, &lwork, &info);
    lwork = (int)query + 1;
    if (info == 0 && !(work = mood_malloc((size_t)lwork * sizeof *work)))
        return MOOD_LAPACK_NOMEM;
    if (info == 0)
        dorgqr_(&m, &n, &k, a, &lda, tau, work, &lwork, &info);
    mood_free(work);
    return info;
}
