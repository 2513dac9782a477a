/*
 * lapack.h: the few LAPACK routines libmood uses, called in OpenBLAS's own LAPACK (Fortran
 * interface) rather than through LAPACKE: liblapacke would load the system's default liblapack
 * and libblas, each a full OpenBLAS copy whose relocations and thread pool cost every `mood`
 * command milliseconds at start-up. Column-major unless the name says otherwise; each returns
 * LAPACK's info (0 ok, < 0 bad argument, > 0 no convergence / singular), or MOOD_LAPACK_NOMEM.
 */
#ifndef MOOD_LORA_LAPACK_H
#define MOOD_LORA_LAPACK_H

#define MOOD_LAPACK_NOMEM (-10000)

/* Solves A·X = B for n×n A and n×nrhs B, both row-major; X replaces B, A is overwritten. */
int mood__sgesv_rowmajor(int n, int nrhs, float *a, float *b);
/* SVD A = U·diag(S)·Vᵀ of the m×n matrix a (destroyed); jobz 'S' (min(m,n) vectors) or 'A'. */
int mood__dgesdd(char jobz, int m, int n, double *a, int lda, double *s, double *u, int ldu,
                 double *vt, int ldvt);
/* The singular triplets il..iu (1-based, largest first) of the m×n matrix a; *ns gets their
 * number. */
int mood__dgesvdx(int m, int n, double *a, int lda, int il, int iu, int *ns, double *s, double *u,
                  int ldu, double *vt, int ldvt);
/* QR factorisation of the m×n matrix a (R in the upper triangle, reflectors below), and Q. */
int mood__dgeqrf(int m, int n, double *a, int lda, double *tau);
int mood__dorgqr(int m, int n, int k, double *a, int lda, const double *tau);

#endif /* MOOD_LORA_LAPACK_H */
