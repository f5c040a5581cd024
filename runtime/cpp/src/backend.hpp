// backend.hpp - the engine seam: Runtime validates once (shapes, counts, NaN/Inf, buffer sizes) and then hands
// checked, C-contiguous float32 buffers to one Backend. A backend only runs graphs; it never validates user input.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "vae/runtime.hpp"

namespace vae::detail {

struct InputBuffer {
    const float* data;
    std::vector<std::int64_t> shape;  // full shape, batch included
};

struct OutputBuffer {
    float* data;
    std::vector<std::int64_t> shape;  // full shape, batch included; the buffer holds exactly this many floats
};

class Backend {
public:
    virtual ~Backend() = default;
    // e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    virtual const std::string& description() const noexcept = 0;
    // Inputs and outputs in the manifest's order. May be called from several threads at once: a backend whose
    // engine is not re-entrant serialises internally.
    virtual void run(const GraphSpec& graph, const std::vector<InputBuffer>& inputs,
                     const std::vector<OutputBuffer>& outputs) = 0;
};

// Device string parsed once for every backend: "cpu" -> (cpu, 0), "cuda" -> (cuda, 0), "cuda:N" -> (cuda, N).
struct Device {
    bool cuda = false;
    int index = 0;
    static Device parse(const std::string& text);
    std::string str() const { return cuda ? "cuda:" + std::to_string(index) : "cpu"; }
};

std::unique_ptr<Backend> open_onnxruntime(const Manifest& manifest, const Options& options, const Device& device,
                                          const std::vector<std::string>& graphs);

// Defined in tensorrt_backend.cpp when the build has TensorRT; otherwise throws UnavailableError saying how to build it.
std::unique_ptr<Backend> open_tensorrt(const Manifest& manifest, const Options& options, const Device& device,
                                       const std::vector<std::string>& graphs);

// "onnxruntime 1.32.0 (headers API 29)": the engine versions compiled in and found at run time.
std::string onnxruntime_build_info();
std::string tensorrt_build_info();

}  // namespace vae::detail
