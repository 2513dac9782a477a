/*
 * mood.h: the umbrella header of libmood. Include this and link with -lmood.
 *
 *   core.h         errors, logging, progress callbacks, version and build information
 *   device.h       choosing the CPU or a CUDA GPU; the CUDA backend and GPUs of this machine
 *   safetensors.h  reading (validated, zero-copy) and writing (atomic, reference layout)
 *   hash.h         AutoV1/V2/V3, SHA-256 and CRC32 of model files
 *   lora.h         every LoRA flavour: parsing, base families, ΔW, bake, stack, merge, resize,
 *                  extract
 *   registry.h     the style registry in $MOOD_HOME: import, styles, previews, search
 *   civitai.h      the Civitai client: look-ups by hash, records, checked downloads
 *   pack.h         style packs (.moodpack): export and import styles with their files
 *   tokenizer.h    the CLIP BPE tokenizer, A1111 emphasis and 75-token chunks
 *   rng.h          torch-identical random numbers (CPU mt19937, CUDA Philox)
 *   clip.h, unet.h, vae.h   the models' forward passes on the CPU
 *   sampler.h      noise schedules and samplers (diffusers' schedulers)
 *   gen.h          base models, adapters applied to them, txt2img
 *   image.h        PNG/JPEG/BMP images, PNG text chunks
 *   params.h       AUTOMATIC1111's generation parameters text
 *   styles.h       from prompt tags, --style and --lora to adapters and prompts
 *   train.h        mood boards and training a style LoRA (or a whole base model) from one
 */
#ifndef MOOD_MOOD_H
#define MOOD_MOOD_H

#include "mood/core.h"
#include "mood/device.h"
#include "mood/safetensors.h"
#include "mood/hash.h"
#include "mood/lora.h"
#include "mood/registry.h"
#include "mood/civitai.h"
#include "mood/pack.h"
#include "mood/tokenizer.h"
#include "mood/rng.h"
#include "mood/clip.h"
#include "mood/unet.h"
#include "mood/vae.h"
#include "mood/sampler.h"
#include "mood/gen.h"
#include "mood/image.h"
#include "mood/params.h"
#include "mood/styles.h"
#include "mood/train.h"

#endif /* MOOD_MOOD_H */
