// npy.hpp - read and write NumPy .npy files (float32/float64, C order), enough for latents in and images out.
// Errors throw std::runtime_error naming the file and what is wrong (dtype, order, shape, truncated data).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace npy {

struct Array {
    std::vector<std::int64_t> shape;
    std::vector<float> data;  // float64 files are converted (as the Python runtime does); values beyond float32 -> Inf
};

Array load(const std::string& path);
// Writes '<f4' C-order data atomically (temp file in the same folder, then rename).
void save(const std::string& path, const std::vector<std::int64_t>& shape, const float* data);
std::string shape_str(const std::vector<std::int64_t>& shape);

}  // namespace npy
