// image_read.hpp - read one binary PPM (P6, RGB) or PGM (P5, grey) file with 8-bit samples, with no image library.
//
// PNG and JPEG need a decoder (zlib / libjpeg), which the device-side library does not depend on: convert such files
// first, e.g. `python -c "from PIL import Image; Image.open('in.png').convert('RGB').save('in.ppm')"` or ImageMagick's
// `convert in.png in.ppm`. Errors throw std::runtime_error naming the file and what is wrong.
#pragma once

#include <string>

#include "vae/image.hpp"

namespace imgio {

vae::Pixels read_pnm(const std::string& path);

}  // namespace imgio
