// vae/image.hpp - 8-bit images of any size -> the model's input, and decoded images -> 8-bit pixels.
//
// The same steps, with the same numbers, as the training loader (vae_model.data.ImageFolderDataset) and the Python
// runtime (runtime/images.py): convert to the model's channels like Pillow's convert("RGB") / convert("L"), crop the
// largest centred square of at most `crop` pixels (training's --center-crop, which vae.json records: pass
// Runtime::center_crop(); the default argument here is 148), resize it to image_size x image_size with Pillow's
// BILINEAR filter (a triangle filter widened by the reduction factor, in 22-bit fixed point: bit for bit Pillow's
// result), then map 0..255 to the bundle's pixel range like runtime.images.from_uint8.
// The C ABI of the same functions is vae_image.h.
//
//   vae::Runtime rt("bundle/");
//   vae::Pixels photo = ...;                                  // e.g. 640 x 480 RGB, HWC
//   std::vector<float> x = vae::prepare_image(photo.view(), rt.info(), rt.center_crop());  // in_channels x S^2
//   std::vector<float> mu(rt.latent_elements(1)), logvar(mu.size());
//   rt.encode(x, mu, logvar);
//   vae::Pixels back = vae::to_pixels(rt.decode(mu).data(), rt.info());   // image_size x image_size
//
// Errors throw vae::InvalidArgumentError (sizes, channels, crop) or vae::ShapeError (element counts).
#ifndef VAE_IMAGE_HPP
#define VAE_IMAGE_HPP

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "vae/runtime.hpp"  // VAE_API, ModelInfo, the error types

namespace vae {

// vae_model.train's --center-crop default (PyTorch-VAE: CenterCrop(148) on CelebA's 178 x 218 images).
inline constexpr int kTrainCenterCrop = 148;
// No crop limit: the largest centred square of any image (a model trained on images that were never cropped, e.g.
// vae_model.train's embedded dataset: vae.json's preprocess.center_crop null). VAE_IMAGE_NO_CENTER_CROP in C.
inline constexpr int kNoCenterCrop = std::numeric_limits<std::int32_t>::max();

// Borrowed 8-bit pixels, HWC: height rows of width pixels of `channels` bytes, no padding. Channels: 1 grey,
// 2 grey + alpha, 3 RGB, 4 RGBA.
struct ImageView {
    const std::uint8_t* data = nullptr;
    int width = 0;
    int height = 0;
    int channels = 0;
};

// Owned 8-bit pixels, HWC.
struct Pixels {
    int width = 0;
    int height = 0;
    int channels = 0;
    std::vector<std::uint8_t> data;  // height * width * channels bytes
    ImageView view() const noexcept { return {data.data(), width, height, channels}; }
};

// The largest centred square of at most `crop` pixels: x from left, y from top, `size` pixels each way. Odd margins
// put the extra pixel right / below, as training does ((width - size) / 2 rounded down).
struct CropBox {
    int left = 0;
    int top = 0;
    int size = 0;
};
VAE_API CropBox center_crop_box(int width, int height, int crop = kTrainCenterCrop);

// Pillow's Image.resize((out_width, out_height), BILINEAR) on 8-bit pixels, bit for bit (pass order included: Pillow
// 13 starts vertically when the height loses more than twice as many pixels as the width).
VAE_API Pixels resize_bilinear(const ImageView& image, int out_width, int out_height);

// To 1 (grey) or 3 (RGB) channels like Pillow's convert("L") / convert("RGB"): alpha dropped, grey repeated,
// RGB -> grey as ITU-R 601-2 luma in Pillow's fixed point.
VAE_API Pixels convert_channels(const ImageView& image, int channels);

// The training geometry: center_crop_box, then resize_bilinear to size x size (channels unchanged).
VAE_API Pixels crop_and_resize(const ImageView& image, int size, int crop = kTrainCenterCrop);

// The whole way from any image to the encoder's input for one image: convert_channels to info.in_channels,
// crop_and_resize to info.image_size, then (p / 255) mapped to [pixel_min, pixel_max]. CHW floats, in_channels x
// image_size x image_size of them (append several for a batch).
VAE_API std::vector<float> prepare_image(const ImageView& image, const ModelInfo& info, int crop = kTrainCenterCrop);

// uint8 HWC pixels -> CHW floats in [lo, hi] (runtime.images.from_uint8): `out` has room for width * height *
// channels floats.
VAE_API void pixels_to_chw(const ImageView& image, float lo, float hi, float* out);

// One CHW float image in [lo, hi] -> 8-bit HWC pixels (runtime.images.to_uint8): (x - lo) * 255 / (hi - lo), rounded
// half to even, clipped to 0..255; NaN -> 0.
VAE_API Pixels to_pixels(const float* chw, int channels, int height, int width, float lo, float hi);
// One decoded image of this model (out_channels x image_size^2 floats).
VAE_API Pixels to_pixels(const float* chw, const ModelInfo& info);

}  // namespace vae

#endif  // VAE_IMAGE_HPP
