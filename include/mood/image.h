/*
 * image.h: 8-bit images in memory, the float-to-pixel conversion diffusers applies to a VAE's
 * output, PNG files with text chunks (how A1111, Civitai and ComfyUI keep the generation
 * parameters: ecosystem.md §4), decoding PNG/JPEG/BMP files, and contact-sheet grids.
 *
 * Pixels are interleaved, row-major, top row first, 3 (RGB) or 4 (RGBA) bytes per pixel and no
 * padding between rows. Text values are UTF-8 in and out: the PNG writer stores a value as tEXt
 * (Latin-1) when every character fits, else as iTXt (UTF-8), as Pillow's PngInfo.add_text does,
 * so A1111 and Civitai read it back unchanged.
 */
#ifndef MOOD_IMAGE_H
#define MOOD_IMAGE_H

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mood_image {
    int width;
    int height;
    int channels;    /* 3 (RGB) or 4 (RGBA) */
    uint8_t *pixels; /* width * height * channels bytes, owned by the image */
} mood_image;

/* A new image with every byte 0 (black; transparent for RGBA). channels is 3 or 4; width and
 * height are 1 .. 65536 with width * height <= 2^28. */
MOOD_WARN_UNUSED int mood_image_new(mood_image **out, int width, int height, int channels);
/* Frees an image; NULL is a no-op. */
void mood_image_free(mood_image *img);

/* An image from a (channels x height x width) float buffer in [-1, 1], the layout of one image of
 * a VAE decoder's output, converted as diffusers' VaeImageProcessor.postprocess(output_type="pil")
 * does: (x * 0.5 + 0.5).clamp(0, 1) in float32, then (v * 255).round() with round-half-to-even
 * (numpy), as uint8. NaN becomes 0. channels is 3 or 4. */
MOOD_WARN_UNUSED int mood_image_from_float(mood_image **out, const float *chw, int channels,
                                           int width, int height);

/* Writes img as a PNG at path with n_text text chunks (keys[i], values[i]) before the image data,
 * atomically: a temporary file beside path is renamed over it only when complete and synced, so
 * a failure (full disk, unwritable directory) leaves nothing behind. Keys are 1-79 printable
 * ASCII characters without leading, trailing or double spaces (PNG keywords); values are UTF-8.
 * zlib level 6 (Pillow's default). MOOD_EINVAL for a bad key or a value that is not UTF-8,
 * MOOD_EIO/MOOD_ENOTFOUND for the file. */
MOOD_WARN_UNUSED int mood_image_write_png(const char *path, const mood_image *img,
                                          const char *const *text_keys,
                                          const char *const *text_values, size_t n_text);

/* The text stored under `key` in the PNG at path (tEXt and zTXt are Latin-1 and converted, iTXt
 * is UTF-8; chunks before and after the image data; when several have the key, the last one, as
 * Pillow's Image.text). *value_out is UTF-8, freed with mood_image_free_string. MOOD_ENOTFOUND
 * when the file or the key does not exist; MOOD_EFORMAT, naming the file, when it is not a PNG or
 * is truncated or corrupt (bad signature, chunk lengths, CRC of a text chunk, compressed text);
 * MOOD_EUNSUPPORTED for JPEG and WebP files (their generation parameters live in EXIF
 * UserComment: mood_image_read_parameters). An iTXt chunk whose text is not UTF-8 is skipped, as
 * Pillow does. */
MOOD_WARN_UNUSED int mood_image_read_png_text(char **value_out, const char *path, const char *key);
/* The generation parameters of an image as AUTOMATIC1111 reads them (read_info_from_image): the
 * EXIF UserComment of a JPEG, WebP or PNG (where A1111 stores them for JPEG and WebP, through
 * piexif: UTF-16 after "UNICODE\0"), when not empty, else a PNG's "parameters" text. UTF-8 in
 * *value_out (mood_image_free_string). MOOD_ENOTFOUND when the file or the text does not exist;
 * MOOD_EFORMAT when it is not a PNG, JPEG or WebP file, or a damaged PNG. */
MOOD_WARN_UNUSED int mood_image_read_parameters(char **value_out, const char *path);
void mood_image_free_string(char *s);

/* Decodes a PNG, JPEG or BMP file (stb_image) or a still WebP file (libwebp, loaded on first
 * use), and turns the pixels upright by the file's EXIF orientation (JPEG, PNG eXIf, WebP EXIF) as
 * Pillow's ImageOps.exif_transpose does. Gray and RGB files give 3 channels, files with alpha 4;
 * 16-bit PNGs are reduced to 8 bits. MOOD_ENOTFOUND for a missing file, MOOD_EFORMAT for an
 * undecodable one, MOOD_EUNSUPPORTED for other formats, animated WebP and images over 2^28
 * pixels, MOOD_EBACKEND for a WebP file when libwebp (libwebp7) is not installed. */
MOOD_WARN_UNUSED int mood_image_load(mood_image **out, const char *path);

/* Tiles n images of equal size and channel count into a grid, left to right then top to
 * bottom; empty cells are black. rows <= 0 picks A1111's default, round(sqrt(n)) rows; there
 * are ceil(n / rows) columns (rows is lowered to n when larger). MOOD_EINVAL for n == 0 or
 * images of different sizes. */
MOOD_WARN_UNUSED int mood_image_grid(mood_image **out, const mood_image *const *images, size_t n,
                                     int rows);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_IMAGE_H */
