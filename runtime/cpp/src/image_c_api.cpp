// image_c_api.cpp - the C ABI of vae/image.hpp (vae_image.h). Every entry point catches everything and returns a
// status; the message goes to the thread-local string read by vae_last_error() (c_status.hpp).
#include <algorithm>
#include <cstddef>
#include <new>
#include <string>
#include <vector>

#include "c_status.hpp"
#include "vae/image.hpp"
#include "vae_image.h"

namespace {

using vae::detail::guarded;

std::size_t elements(std::int64_t a, std::int64_t b, std::int64_t c) {
    return static_cast<std::size_t>(a) * static_cast<std::size_t>(b) * static_cast<std::size_t>(c);
}

const std::size_t kInfoNeeds = offsetof(vae_model_info, pixel_max) + sizeof(float);

vae::ModelInfo model_info(const vae_model_info* info, const char* fn) {
    if (!info) throw vae::InvalidArgumentError(std::string(fn) + ": info is NULL");
    if (info->struct_size < kInfoNeeds)
        throw vae::InvalidArgumentError(std::string(fn) + ": info->struct_size is " +
                                        std::to_string(info->struct_size) + ", expected at least " +
                                        std::to_string(kInfoNeeds) + " (set it to sizeof(vae_model_info))");
    vae::ModelInfo m;
    m.in_channels = info->in_channels;
    m.out_channels = info->out_channels;
    m.image_size = info->image_size;
    m.latent_dim = info->latent_dim;
    m.pixel_min = info->pixel_min;
    m.pixel_max = info->pixel_max;
    return m;
}

vae::ImageView view(const std::uint8_t* pixels, std::int32_t width, std::int32_t height, std::int32_t channels,
                    std::size_t count, const char* fn) {
    if (!pixels) throw vae::InvalidArgumentError(std::string(fn) + ": pixels is NULL");
    if (width < 1 || height < 1 || channels < 1 || channels > 4)
        throw vae::InvalidArgumentError(std::string(fn) + ": expected width, height >= 1 and channels 1-4, got " +
                                        std::to_string(width) + "x" + std::to_string(height) + "x" +
                                        std::to_string(channels));
    const std::size_t need = elements(width, height, channels);
    if (count != need)
        throw vae::ShapeError(std::string(fn) + ": pixels_count is " + std::to_string(count) + ", expected " +
                              std::to_string(need) + " (" + std::to_string(width) + " x " + std::to_string(height) +
                              " x " + std::to_string(channels) + ")");
    return {pixels, width, height, channels};
}

void check_capacity(std::size_t capacity, std::size_t need, const char* fn, const char* what) {
    if (capacity < need)
        throw vae::ShapeError(std::string(fn) + ": " + what + " holds " + std::to_string(capacity) +
                              " elements, needs " + std::to_string(need));
}

}  // namespace

extern "C" {

vae_status vae_image_prepare(const uint8_t* pixels, int32_t width, int32_t height, int32_t channels,
                             size_t pixels_count, const vae_model_info* info, int32_t center_crop, float* image,
                             size_t image_capacity) {
    return guarded([&] {
        const char* fn = "vae_image_prepare";
        const vae::ImageView in = view(pixels, width, height, channels, pixels_count, fn);
        const vae::ModelInfo m = model_info(info, fn);
        if (!image) throw vae::InvalidArgumentError(std::string(fn) + ": image is NULL");
        const std::vector<float> out = vae::prepare_image(in, m, center_crop);  // checks the model's side of info
        check_capacity(image_capacity, out.size(), fn, "image");
        std::copy(out.begin(), out.end(), image);
    });
}

vae_status vae_image_to_pixels(const float* image, size_t image_count, const vae_model_info* info, uint8_t* pixels,
                               size_t pixels_capacity) {
    return guarded([&] {
        const char* fn = "vae_image_to_pixels";
        if (!image) throw vae::InvalidArgumentError(std::string(fn) + ": image is NULL");
        if (!pixels) throw vae::InvalidArgumentError(std::string(fn) + ": pixels is NULL");
        const vae::ModelInfo m = model_info(info, fn);
        if (m.out_channels < 1 || m.image_size < 1)
            throw vae::InvalidArgumentError(std::string(fn) + ": info has out_channels " +
                                            std::to_string(m.out_channels) + ", image_size " +
                                            std::to_string(m.image_size) + " (from vae_runtime_info?)");
        const std::size_t need = elements(m.out_channels, m.image_size, m.image_size);
        if (image_count != need)
            throw vae::ShapeError(std::string(fn) + ": image_count is " + std::to_string(image_count) +
                                  ", expected " + std::to_string(need) + " (one decoded image: " +
                                  std::to_string(m.out_channels) + " x " + std::to_string(m.image_size) + " x " +
                                  std::to_string(m.image_size) + ")");
        check_capacity(pixels_capacity, need, fn, "pixels");
        const vae::Pixels out = vae::to_pixels(image, m);
        std::copy(out.data.begin(), out.data.end(), pixels);
    });
}

vae_status vae_image_resize(const uint8_t* pixels, int32_t width, int32_t height, int32_t channels,
                            size_t pixels_count, uint8_t* out, int32_t out_width, int32_t out_height,
                            size_t out_capacity) {
    return guarded([&] {
        const char* fn = "vae_image_resize";
        const vae::ImageView in = view(pixels, width, height, channels, pixels_count, fn);
        if (!out) throw vae::InvalidArgumentError(std::string(fn) + ": out is NULL");
        if (out_width < 1 || out_height < 1)
            throw vae::InvalidArgumentError(std::string(fn) + ": expected an output size >= 1, got " +
                                            std::to_string(out_width) + "x" + std::to_string(out_height));
        check_capacity(out_capacity, elements(out_width, out_height, channels), fn, "out");
        const vae::Pixels r = vae::resize_bilinear(in, out_width, out_height);
        std::copy(r.data.begin(), r.data.end(), out);
    });
}


}  // extern "C"
