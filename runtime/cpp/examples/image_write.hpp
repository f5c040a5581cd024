// image_write.hpp - write one 8-bit RGB or grey image as PNG or binary PPM/PGM, with no image library.
//
// PNG uses stored (uncompressed) deflate blocks: a valid PNG every viewer opens, bigger than a compressed one, and
// free of a zlib/libpng dependency on the device. Files are written to a temp name and renamed into place.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imgio {

// pixels: height x width x channels bytes (HWC), channels 1 (grey) or 3 (RGB).
void write_png(const std::string& path, const std::vector<std::uint8_t>& pixels, int width, int height, int channels);
void write_pnm(const std::string& path, const std::vector<std::uint8_t>& pixels, int width, int height, int channels);

// One CHW float image in [lo, hi] -> HWC bytes: (x - lo) * 255 / (hi - lo), rounded half to even, clipped; NaN -> lo.
// The same mapping as runtime.images.to_uint8.
std::vector<std::uint8_t> to_uint8_hwc(const float* chw, int channels, int height, int width, float lo, float hi);

}  // namespace imgio
