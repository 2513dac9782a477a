/*
 * image_decode.h: what mood_image_load (common/image.c) needs beyond stb_image (internal):
 * WebP decoding through libwebp, loaded on first use (common/image_webp.c), and the EXIF
 * orientation of JPEG, PNG and WebP files applied to the decoded pixels as Pillow's
 * ImageOps.exif_transpose does (common/image_exif.c).
 */
#ifndef MOOD_COMMON_IMAGE_DECODE_H
#define MOOD_COMMON_IMAGE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "mood/image.h"

/* The MIME type of an image file by what it holds, not by its name: "image/png" and
 * "image/jpeg" when stb_image parses the header, "image/webp" when its first chunk is one
 * libwebp decodes; NULL otherwise, with *why saying what it is ("an empty file", "a damaged PNG
 * image: ...", "outofmem" when out of memory; valid until the thread's next call). */
const char *mood__image_media_type(const uint8_t *data, size_t size, const char **why);
/* True when data starts like a WebP file ("RIFF" size "WEBP"). */
int mood__webp_is(const uint8_t *data, size_t size);
/* Decodes a still WebP image (lossy or lossless, with or without alpha) into a new image: 4
 * channels when the file declares alpha, else 3. `path` names the file in messages.
 * Errors: MOOD_EBACKEND (libwebp cannot be loaded: the message says which package),
 * MOOD_EUNSUPPORTED (animated WebP), MOOD_EFORMAT (undecodable), MOOD_ENOMEM. */
int mood__webp_decode(mood_image **out, const uint8_t *data, size_t size, const char *path);

/* The EXIF orientation (1..8) stored in a JPEG (APP1 "Exif"), PNG (eXIf chunk) or WebP (EXIF
 * chunk) file; 1 when there is none or the EXIF data is malformed (as Pillow, which then leaves
 * the image alone). */
int mood__exif_orientation(const uint8_t *data, size_t size);
/* The EXIF UserComment of a JPEG, PNG or WebP file (where AUTOMATIC1111 stores the parameters of
 * the JPEG and WebP images it saves, through piexif: "UNICODE\0" then UTF-16BE), as UTF-8 in
 * *text_out (mood_free); *text_out NULL when there is none. 0 or MOOD_ENOMEM. */
int mood__exif_user_comment(const uint8_t *data, size_t size, char **text_out);
/* Transforms img in place into the upright image for EXIF orientation o (2..8; 1 and values
 * out of range do nothing), as ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip,
 * 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
 * MOOD_ENOMEM leaves img unchanged. */
int mood__image_orient(mood_image *img, int o);

#endif /* MOOD_COMMON_IMAGE_DECODE_H */
