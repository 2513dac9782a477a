/*
 * plot.c: the loss curve of a run, as a CSV table (step, loss, its moving average, the learning
 * rate the step ran at) and as a PNG line plot: each step's loss in light blue, the exponential
 * moving average (0.9, what the progress bar shows) in dark blue, on a white field with a frame and
 * four grid lines. There is no font: the PNG's text chunks carry the title and the range of the
 * axes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mood/image.h"
#include "train/train_internal.h"

#define PW     800
#define PH     400
#define MARGIN 24

int mood__loss_csv(const char *path, const float *losses, const float *lrs, int64_t n)
{
    mood_atomic_file af;
    mood_buf b;
    double avg = 0;
    int err;
    mood_buf_init(&b);
    err = mood_buf_puts(&b, "step,loss,loss_avg,lr\n");
    for (int64_t i = 0; !err && i < n; i++) {
        double lr = lrs[i]; /* as run: a resumed run may have changed the rate */
        avg = i == 0 ? losses[i] : 0.9 * avg + 0.1 * losses[i];
        /* the rate was kept as a float: 7 digits give 0.0001 back, not 9.99999975e-05 */
        err = mood_buf_printf(&b, "%lld,%.9g,%.9g,%.7g\n", (long long)i + 1, (double)losses[i], avg,
                              lr);
    }
    if (!err && (err = mood_atomic_open(&af, path)) == 0) {
        err = mood_atomic_write(&af, b.data, b.len);
        if (!err)
            err = mood_atomic_commit(&af);
        else
            mood_atomic_abort(&af);
    }
    mood_buf_dispose(&b);
    return err;
}

static void put(mood_image *img, int x, int y, const uint8_t rgb[3])
{
    if (x < 0 || y < 0 || x >= img->width || y >= img->height)
        return;
    memcpy(img->pixels + ((size_t)y * img->width + x) * 3, rgb, 3);
}

static void line(mood_image *img, int x0, int y0, int x1, int y1, const uint8_t rgb[3], int thick)
{
    int steps = abs(x1 - x0) > abs(y1 - y0) ? abs(x1 - x0) : abs(y1 - y0);
    for (int i = 0; i <= steps; i++) {
        int x = steps ? x0 + (x1 - x0) * i / steps : x0,
            y = steps ? y0 + (y1 - y0) * i / steps : y0;
        for (int d = 0; d < thick; d++)
            put(img, x, y + d, rgb);
    }
}

int mood__loss_png(const char *path, const float *losses, int64_t n, const char *title)
{
    static const uint8_t light[3] = {170, 200, 235}, dark[3] = {20, 60, 150},
                         grid[3] = {225, 225, 225}, frame[3] = {0, 0, 0};
    mood_image *img = NULL;
    double lo = INFINITY, hi = -INFINITY, avg = 0;
    char range[160];
    const char *keys[2] = {"Title", "Comment"}, *values[2];
    int err, pw = PW - 2 * MARGIN, ph = PH - 2 * MARGIN, px = 0, py = 0, ax = 0, ay = 0;
    if ((err = mood_image_new(&img, PW, PH, 3)) != 0)
        return err;
    memset(img->pixels, 255, (size_t)PW * PH * 3);
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(losses[i])) {
            lo = fmin(lo, losses[i]);
            hi = fmax(hi, losses[i]);
        }
    }
    if (!(hi > lo))
        lo = isfinite(lo) ? lo - 0.5 : 0, hi = lo + 1;
    for (int k = 1; k < 5; k++)
        line(img, MARGIN, MARGIN + ph * k / 5, MARGIN + pw, MARGIN + ph * k / 5, grid, 1);
    for (int64_t i = 0; i < n; i++) {
        double v = isfinite(losses[i]) ? losses[i] : hi;
        int x = MARGIN + (int)(n > 1 ? (double)pw * i / (n - 1) : pw / 2);
        int y = MARGIN + (int)((hi - v) / (hi - lo) * ph);
        int yy;
        avg = i == 0 ? v : 0.9 * avg + 0.1 * v;
        yy = MARGIN + (int)((hi - avg) / (hi - lo) * ph);
        if (i > 0) {
            line(img, px, py, x, y, light, 1);
            line(img, ax, ay, x, yy, dark, 2);
        }
        px = x, py = y, ax = x, ay = yy;
    }
    line(img, MARGIN, MARGIN, MARGIN + pw, MARGIN, frame, 1);
    line(img, MARGIN, MARGIN + ph, MARGIN + pw, MARGIN + ph, frame, 1);
    line(img, MARGIN, MARGIN, MARGIN, MARGIN + ph, frame, 1);
    line(img, MARGIN + pw, MARGIN, MARGIN + pw, MARGIN + ph, frame, 1);
    snprintf(range, sizeof range,
             "training loss per step: x from 1 to %lld, y from %.6g (bottom) "
             "to %.6g (top); dark: moving average (0.9)",
             (long long)n, lo, hi);
    values[0] = title ? title : "loss";
    values[1] = range;
    err = mood_image_write_png(path, img, keys, values, 2);
    mood_image_free(img);
    return err;
}
