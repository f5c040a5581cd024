/*
 * vae_image.h - the C ABI of the runtime's image preparation (vae/image.hpp): any 8-bit image -> the model's input,
 * a decoded image -> 8-bit pixels. Part of libvae_runtime; the rules of vae_runtime.h hold (caller-owned buffers
 * with their element counts, a status from every call, no exception or abort crosses this boundary; the message of
 * the last failed call on this thread, from either header, is vae_last_error()).
 *
 * The steps and numbers are the training loader's (vae_model.data.ImageFolderDataset) and runtime/images.py's:
 * convert to the model's channels like Pillow's convert("RGB"/"L"), crop the largest centred square of at most
 * center_crop pixels (training's --center-crop, which the bundle's vae.json records: vae_runtime_center_crop),
 * resize it to image_size x image_size with Pillow's BILINEAR filter (bit for bit), map 0..255 to the pixel range.
 *
 * Pixels are 8-bit HWC (rows of pixels of `channels` interleaved bytes, no padding): channels 1 grey, 2 grey + alpha,
 * 3 RGB, 4 RGBA. Model images are float32 CHW (one item of vae_encode's input / vae_decode's output).
 *
 * Example (one photo of any size through the model):
 *   vae_model_info info; info.struct_size = sizeof info; vae_runtime_info(rt, &info);
 *   int32_t crop; vae_runtime_center_crop(rt, &crop);                          (the crop training used)
 *   size_t n = (size_t)info.in_channels * info.image_size * info.image_size;   (room for the prepared image)
 *   vae_image_prepare(rgb, width, height, 3, (size_t)width * height * 3, &info, crop, x, n);
 *   ... vae_encode(rt, x, 1, n, mu, ...); vae_decode(rt, mu, 1, ..., y, ...);
 *   vae_image_to_pixels(y, out_count, &info, out_rgb, out_capacity);       (image_size^2 x out_channels bytes)
 */
#ifndef VAE_IMAGE_H
#define VAE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "vae_runtime.h" /* VAE_API, vae_status, vae_model_info */

#ifdef __cplusplus
extern "C" {
#endif

/* vae_model.train's --center-crop default (PyTorch-VAE's CenterCrop(148) for CelebA). */
#define VAE_IMAGE_TRAIN_CENTER_CROP 148
/* No crop limit: the largest centred square of any image (vae.json's preprocess.center_crop null: training cropped
 * nothing, e.g. vae_model.train's embedded dataset, generated at image_size). */
#define VAE_IMAGE_NO_CENTER_CROP INT32_MAX

/* The centre crop the runtime's model was trained with, for vae_image_prepare: vae.json's preprocess.center_crop,
 * written to *center_crop. VAE_IMAGE_NO_CENTER_CROP when training cropped nothing; VAE_IMAGE_TRAIN_CENTER_CROP (148)
 * when the bundle records none (exported before vae.json carried it). VAE_ERR_INVALID_ARGUMENT for NULL pointers
 * (*center_crop is then left alone). An addition to ABI 1 (no struct or existing function changed): a library built
 * before it lacks this symbol. */
VAE_API vae_status vae_runtime_center_crop(const vae_runtime* runtime, int32_t* center_crop);

/* pixels (width x height x channels bytes, pixels_count of them) -> one model input: info->in_channels x
 * info->image_size x info->image_size floats in [info->pixel_min, info->pixel_max] written to image (room for
 * image_capacity floats). info: from vae_runtime_info (struct_size set). center_crop: from vae_runtime_center_crop
 * (or any size >= 1; VAE_IMAGE_NO_CENTER_CROP for none). VAE_ERR_SHAPE when a count does not match,
 * VAE_ERR_INVALID_ARGUMENT for NULL pointers, sizes < 1, channels outside 1..4, center_crop < 1. */
VAE_API vae_status vae_image_prepare(const uint8_t* pixels, int32_t width, int32_t height, int32_t channels,
                                     size_t pixels_count, const vae_model_info* info, int32_t center_crop,
                                     float* image, size_t image_capacity);

/* One decoded image (info->out_channels x image_size^2 floats, image_count of them) -> image_size x image_size x
 * out_channels bytes (HWC) in pixels (room for pixels_capacity bytes): (x - pixel_min) * 255 / (pixel_max -
 * pixel_min), rounded half to even, clipped to 0..255, NaN -> 0 (runtime.images.to_uint8). */
VAE_API vae_status vae_image_to_pixels(const float* image, size_t image_count, const vae_model_info* info,
                                       uint8_t* pixels, size_t pixels_capacity);

/* Pillow's Image.resize((out_width, out_height), BILINEAR) of 8-bit HWC pixels, bit for bit: out has room for
 * out_capacity bytes (out_width x out_height x channels needed). */
VAE_API vae_status vae_image_resize(const uint8_t* pixels, int32_t width, int32_t height, int32_t channels,
                                    size_t pixels_count, uint8_t* out, int32_t out_width, int32_t out_height,
                                    size_t out_capacity);


#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VAE_IMAGE_H */
