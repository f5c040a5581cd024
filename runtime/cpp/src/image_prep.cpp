// image_prep.cpp - any image -> the model's input (vae/image.hpp): Pillow's convert and BILINEAR resize reproduced in
// integer arithmetic, the training loader's centre crop, and the pixel-range mappings of runtime/images.py.
//
// The resize follows Pillow's Resample.c step for step, because the model was trained on Pillow's output and a
// different filter (e.g. 4-tap bilinear interpolation) would show it other pixels: per output pixel, the taps of a
// triangle filter whose support is stretched by the reduction factor, normalised in double precision, rounded to
// 22-bit fixed point, accumulated in integers with half an LSB of rounding, one pass per axis with an 8-bit image in
// between. The double arithmetic is written in the same order as Pillow's, so every weight is the same to the bit;
// tests/runtime/cpp/test_cpp_images.py checks the results against runtime/images.py (itself checked against Pillow).
#include "vae/image.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace vae {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow: 8 bits of result, 2 of headroom
constexpr int kMaxSide = 1 << 16;           // sizes beyond this are a caller's bug, not an image

void check_view(const ImageView& image, const char* what) {
    if (!image.data) throw InvalidArgumentError(std::string(what) + ": pixels are NULL");
    if (image.width < 1 || image.height < 1 || image.width > kMaxSide || image.height > kMaxSide)
        throw InvalidArgumentError(std::string(what) + ": width and height must be in [1, " +
                                   std::to_string(kMaxSide) + "], got " + std::to_string(image.width) + "x" +
                                   std::to_string(image.height));
    if (image.channels < 1 || image.channels > 4)
        throw InvalidArgumentError(std::string(what) + ": channels must be 1 (grey), 2 (grey + alpha), 3 (RGB) or "
                                   "4 (RGBA), got " + std::to_string(image.channels));
}

void check_size(int width, int height, const char* what) {
    if (width < 1 || height < 1 || width > kMaxSide || height > kMaxSide)
        throw InvalidArgumentError(std::string(what) + ": expected a width and height in [1, " +
                                   std::to_string(kMaxSide) + "], got " + std::to_string(width) + "x" +
                                   std::to_string(height));
}

double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

// Pillow's precompute_coeffs (BILINEAR, the whole input as the box) + normalize_coeffs_8bpc.
struct Taps {
    int ksize = 0;
    std::vector<int> first;             // per output pixel: the first input pixel it reads
    std::vector<int> count;             // ... and how many
    std::vector<std::int32_t> weights;  // out_size x ksize, 22-bit fixed point
};

Taps bilinear_taps(int in_size, int out_size) {
    Taps t;
    const double scale = static_cast<double>(static_cast<float>(in_size) - 0.f) / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 1.0 * filterscale;
    t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    t.first.resize(out_size);
    t.count.resize(out_size);
    t.weights.assign(static_cast<std::size_t>(out_size) * t.ksize, 0);
    const double ss = 1.0 / filterscale;
    std::vector<double> k(t.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = 0.0 + (xx + 0.5) * scale;
        int xmin = static_cast<int>(center - support + 0.5);  // truncating casts, as in Pillow
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            const double w = bilinear_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        std::int32_t* out = &t.weights[static_cast<std::size_t>(xx) * t.ksize];
        for (int x = 0; x < xmax; ++x) {
            const double w = ww != 0.0 ? k[x] / ww : k[x];
            out[x] = static_cast<std::int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits)
                                                     : 0.5 + w * (1 << kPrecisionBits));
        }
        t.first[xx] = xmin;
        t.count[xx] = xmax;
    }
    return t;
}

std::uint8_t clip8(std::int64_t v) {
    if (v >= (std::int64_t{1} << kPrecisionBits << 8)) return 255;
    if (v <= 0) return 0;
    return static_cast<std::uint8_t>(v >> kPrecisionBits);
}

// One pass along the rows (horizontal: width -> out_size) or the columns (vertical: height -> out_size).
Pixels resample_axis(const Pixels& in, bool horizontal, int out_size) {
    const int C = in.channels;
    const Taps t = bilinear_taps(horizontal ? in.width : in.height, out_size);
    Pixels out;
    out.width = horizontal ? out_size : in.width;
    out.height = horizontal ? in.height : out_size;
    out.channels = C;
    out.data.resize(static_cast<std::size_t>(out.width) * out.height * C);
    const std::size_t row = static_cast<std::size_t>(in.width) * C;
    for (int y = 0; y < out.height; ++y) {
        for (int x = 0; x < out.width; ++x) {
            const int o = horizontal ? x : y;
            const std::int32_t* k = &t.weights[static_cast<std::size_t>(o) * t.ksize];
            for (int c = 0; c < C; ++c) {
                std::int64_t ss = std::int64_t{1} << (kPrecisionBits - 1);
                for (int i = 0; i < t.count[o]; ++i) {
                    const int src = t.first[o] + i;
                    const std::uint8_t p = horizontal ? in.data[y * row + static_cast<std::size_t>(src) * C + c]
                                                      : in.data[src * row + static_cast<std::size_t>(x) * C + c];
                    ss += static_cast<std::int64_t>(p) * k[i];
                }
                out.data[(static_cast<std::size_t>(y) * out.width + x) * C + c] = clip8(ss);
            }
        }
    }
    return out;
}

Pixels copy_of(const ImageView& image) {
    Pixels p;
    p.width = image.width;
    p.height = image.height;
    p.channels = image.channels;
    p.data.assign(image.data, image.data + static_cast<std::size_t>(image.width) * image.height * image.channels);
    return p;
}

void check_model(const ModelInfo& info, int channels, const char* what) {
    if (info.image_size < 1 || info.image_size > kMaxSide)
        throw InvalidArgumentError(std::string(what) + ": model image_size must be in [1, " +
                                   std::to_string(kMaxSide) + "], got " + std::to_string(info.image_size));
    if (channels != 1 && channels != 3)
        throw InvalidArgumentError(std::string(what) + ": the model's channels must be 1 (grey) or 3 (RGB), got " +
                                   std::to_string(channels));
    if (!(info.pixel_max > info.pixel_min))
        throw InvalidArgumentError(std::string(what) + ": pixel range [" + std::to_string(info.pixel_min) + ", " +
                                   std::to_string(info.pixel_max) + "] is empty");
}

}  // namespace

CropBox center_crop_box(int width, int height, int crop) {
    check_size(width, height, "center_crop_box: image");
    if (crop < 1)
        throw InvalidArgumentError("crop: expected a size >= 1 (training's --center-crop), got " +
                                   std::to_string(crop));
    CropBox box;
    box.size = std::min({crop, width, height});
    box.left = (width - box.size) / 2;
    box.top = (height - box.size) / 2;
    return box;
}

Pixels resize_bilinear(const ImageView& image, int out_width, int out_height) {
    check_view(image, "resize_bilinear: image");
    check_size(out_width, out_height, "resize_bilinear: output size");
    Pixels img = copy_of(image);
    // Pillow >= 13 runs the vertical pass first when the height loses more than twice as many pixels as the width
    // (its ImagingResampleInner); a pass that keeps its size is skipped. runtime/images.py: _vertical_first.
    const bool vertical_first =
        out_height < image.height && image.height - out_height > 2 * (image.width - out_width);
    for (int pass = 0; pass < 2; ++pass) {
        const bool horizontal = (pass == 0) != vertical_first;
        const int target = horizontal ? out_width : out_height;
        if ((horizontal ? img.width : img.height) != target) img = resample_axis(img, horizontal, target);
    }
    return img;
}

Pixels convert_channels(const ImageView& image, int channels) {
    check_view(image, "convert_channels: image");
    if (channels != 1 && channels != 3)
        throw InvalidArgumentError("convert_channels: channels must be 1 (grey) or 3 (RGB), got " +
                                   std::to_string(channels));
    Pixels out;
    out.width = image.width;
    out.height = image.height;
    out.channels = channels;
    const std::size_t n = static_cast<std::size_t>(image.width) * image.height;
    out.data.resize(n * channels);
    const int cin = image.channels;
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint8_t* p = image.data + i * cin;
        std::uint8_t* q = &out.data[i * channels];
        if (cin >= 3) {  // RGB(A): alpha dropped
            if (channels == 3) {
                q[0] = p[0];
                q[1] = p[1];
                q[2] = p[2];
            } else {  // Pillow's L24: ITU-R 601-2 luma with 16-bit weights, rounded
                q[0] = static_cast<std::uint8_t>((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
            }
        } else {  // L(A): alpha dropped, grey repeated
            for (int c = 0; c < channels; ++c) q[c] = p[0];
        }
    }
    return out;
}

Pixels crop_and_resize(const ImageView& image, int size, int crop) {
    check_view(image, "crop_and_resize: image");
    const CropBox box = center_crop_box(image.width, image.height, crop);
    Pixels cropped;
    cropped.width = cropped.height = box.size;
    cropped.channels = image.channels;
    const std::size_t row = static_cast<std::size_t>(image.width) * image.channels;
    const std::size_t crop_row = static_cast<std::size_t>(box.size) * image.channels;
    cropped.data.resize(crop_row * box.size);
    for (int y = 0; y < box.size; ++y)
        std::copy_n(image.data + (box.top + y) * row + static_cast<std::size_t>(box.left) * image.channels, crop_row,
                    &cropped.data[y * crop_row]);
    return resize_bilinear(cropped.view(), size, size);
}

void pixels_to_chw(const ImageView& image, float lo, float hi, float* out) {
    check_view(image, "pixels_to_chw: image");
    if (!out) throw InvalidArgumentError("pixels_to_chw: out is NULL");
    if (!(hi > lo))
        throw InvalidArgumentError("pixel range [" + std::to_string(lo) + ", " + std::to_string(hi) + "] is empty");
    // As runtime.images.from_uint8: float32(p) * float32((hi - lo) / 255) + float32(lo).
    const float scale = static_cast<float>((static_cast<double>(hi) - static_cast<double>(lo)) / 255.0);
    const std::size_t plane = static_cast<std::size_t>(image.width) * image.height;
    for (int c = 0; c < image.channels; ++c)
        for (std::size_t i = 0; i < plane; ++i)
            out[c * plane + i] = static_cast<float>(image.data[i * image.channels + c]) * scale + lo;
}

std::vector<float> prepare_image(const ImageView& image, const ModelInfo& info, int crop) {
    check_view(image, "prepare_image: image");
    check_model(info, info.in_channels, "prepare_image");
    const Pixels converted = convert_channels(image, info.in_channels);
    const Pixels sized = crop_and_resize(converted.view(), info.image_size, crop);
    std::vector<float> out(sized.data.size());
    pixels_to_chw(sized.view(), info.pixel_min, info.pixel_max, out.data());
    return out;
}

Pixels to_pixels(const float* chw, int channels, int height, int width, float lo, float hi) {
    if (!chw) throw InvalidArgumentError("to_pixels: image is NULL");
    check_size(width, height, "to_pixels: image");
    if (channels < 1 || channels > 4)
        throw InvalidArgumentError("to_pixels: channels must be in [1, 4], got " + std::to_string(channels));
    if (!(hi > lo))
        throw InvalidArgumentError("pixel range [" + std::to_string(lo) + ", " + std::to_string(hi) + "] is empty");
    // As runtime.images.to_uint8: (x - lo) * float32(255 / (hi - lo)), rint (half to even), clipped; NaN -> lo.
    const float scale = static_cast<float>(255.0 / (static_cast<double>(hi) - static_cast<double>(lo)));
    Pixels out;
    out.width = width;
    out.height = height;
    out.channels = channels;
    const std::size_t plane = static_cast<std::size_t>(width) * height;
    out.data.resize(plane * channels);
    for (int c = 0; c < channels; ++c)
        for (std::size_t i = 0; i < plane; ++i) {
            float x = chw[c * plane + i];
            if (std::isnan(x)) x = lo;
            const float v = std::nearbyint((x - lo) * scale);
            out.data[i * channels + c] = static_cast<std::uint8_t>(v <= 0.f ? 0.f : v >= 255.f ? 255.f : v);
        }
    return out;
}

Pixels to_pixels(const float* chw, const ModelInfo& info) {
    check_model(info, info.out_channels, "to_pixels");
    return to_pixels(chw, info.out_channels, info.image_size, info.image_size, info.pixel_min, info.pixel_max);
}

}  // namespace vae
