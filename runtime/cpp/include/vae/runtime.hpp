// vae/runtime.hpp - the C++17 API of the vae-deploy runtime: load a bundle, encode images, decode latents.
//
//     vae::Options opt;                       // backend "onnxruntime", device "cpu", precision "fp32"
//     vae::Runtime rt("bundle/", opt);        // reads vae.json, checks sha256, opens the engines
//     std::vector<float> img(rt.image_elements(n));
//     rt.decode(z.data(), n, z.size(), img.data(), img.size());
//     rt.encode(img.data(), n, img.size(), mu.data(), mu.size(), logvar.data(), logvar.size());
//
// Every failure throws a vae::Error subclass whose what() names the file or tensor, the expected and the actual
// value; the C ABI (vae_runtime.h) maps these to status codes. Shapes come from the bundle (info()), never literals.
// A Runtime is movable, not copyable, and may be shared between threads for concurrent encode/decode calls.
#ifndef VAE_RUNTIME_HPP
#define VAE_RUNTIME_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "vae_runtime.h"  // VAE_API, vae_status

namespace vae {

// One error type per status code; all carry the status so the C boundary needs no string matching. They are
// exported (VAE_API) so that an application can catch them by type across the shared-library boundary.
class VAE_API Error : public std::runtime_error {
public:
    Error(vae_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
    vae_status status() const noexcept { return status_; }

private:
    vae_status status_;
};

struct VAE_API InvalidArgumentError : Error {
    explicit InvalidArgumentError(const std::string& m) : Error(VAE_ERR_INVALID_ARGUMENT, m) {}
};
struct VAE_API BundleError : Error {
    explicit BundleError(const std::string& m) : Error(VAE_ERR_BUNDLE, m) {}
};
struct VAE_API ShapeError : Error {
    explicit ShapeError(const std::string& m) : Error(VAE_ERR_SHAPE, m) {}
};
struct VAE_API NonFiniteError : Error {
    explicit NonFiniteError(const std::string& m) : Error(VAE_ERR_NON_FINITE, m) {}
};
struct VAE_API BackendError : Error {
    explicit BackendError(const std::string& m) : Error(VAE_ERR_BACKEND, m) {}
};
struct VAE_API UnavailableError : Error {
    explicit UnavailableError(const std::string& m) : Error(VAE_ERR_UNAVAILABLE, m) {}
};
struct VAE_API EngineMismatchError : Error {
    explicit EngineMismatchError(const std::string& m) : Error(VAE_ERR_ENGINE_MISMATCH, m) {}
};

struct Options {
    std::string backend = "onnxruntime";  // or "tensorrt" (builds with VAE_RUNTIME_HAS_TENSORRT)
    std::string device = "cpu";           // "cpu", "cuda", "cuda:N"
    std::string precision = "fp32";       // "fp32", "fp16", "int8" (a variant listed in vae.json)
    std::string execution_provider;       // onnxruntime: "" (from the device), "cpu", "cuda", "tensorrt"
    std::vector<std::string> graphs;      // empty: every graph in the bundle; e.g. {"decoder"}
    int threads = 0;                      // intra-op threads; 0: the engine's default
    bool check_finite = true;             // refuse NaN / Inf inputs
    bool verify_sha256 = true;            // check graph / engine files against vae.json before loading
    int batch_split = 0;                  // onnxruntime on the CPU: smallest batch cut into one chunk per core, each
                                          // on its own single-threaded session; 0: default (decoder from 32,
                                          // encoder never), -1: never, N >= 2: every graph from N
    int dla_core = -1;                    // tensorrt on a Jetson: run the engines built for this DLA core
                                          // (python -m export.tensorrt.build --dla-core N); -1: the GPU engines
};

struct ModelInfo {
    int in_channels = 0;
    int out_channels = 0;
    int image_size = 0;
    int latent_dim = 0;
    float pixel_min = 0.f;
    float pixel_max = 0.f;
    bool has_encoder = false;
    bool has_decoder = false;
};

class VAE_API Runtime {
public:
    explicit Runtime(const std::string& bundle, const Options& options = Options());
    ~Runtime();
    Runtime(Runtime&&) noexcept;
    Runtime& operator=(Runtime&&) noexcept;
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    const ModelInfo& info() const noexcept;
    const std::string& backend_description() const noexcept;  // e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    const std::string& bundle_dir() const noexcept;
    // The centre crop the model was trained with (vae.json's preprocess.center_crop), for vae::prepare_image
    // (vae/image.hpp): kNoCenterCrop when training cropped nothing, kTrainCenterCrop (148) when the bundle records
    // none (exported before vae.json carried it). Not part of ModelInfo, whose layout is fixed.
    int center_crop() const noexcept;

    std::size_t latent_elements(std::int64_t batch) const;  // batch * latent_dim
    std::size_t image_elements(std::int64_t batch) const;   // batch * out_channels * image_size^2 (decoder output)
    std::size_t input_image_elements(std::int64_t batch) const;  // batch * in_channels * image_size^2 (encoder input)

    // The arguments come in the C ABI's order (vae_decode / vae_encode in vae_runtime.h): the input, the batch, then
    // the input's element count; each output with its capacity. Pass the batch as std::int64_t.
    // z: batch x latent_dim floats (z_count of them); image: room for image_elements(batch) floats. Counts are checked.
    void decode(const float* z, std::int64_t batch, std::size_t z_count, float* image, std::size_t image_capacity);
    // image: input_image_elements(batch) floats; mu, logvar: room for latent_elements(batch) floats each.
    void encode(const float* image, std::int64_t batch, std::size_t image_count, float* mu, std::size_t mu_capacity,
                float* logvar, std::size_t logvar_capacity);

    // vae-deploy 0.1.0 took the count before the batch here, the opposite of the C ABI. Both are integers, so a call
    // written for that order would still compile against the order above, with batch and count silently swapped.
    // These deleted overloads make such a call a compile error instead ("use of deleted function"): swap the two
    // arguments. A call whose batch and count have the same type (two ints, two size_t) is ambiguous, also an
    // error: pass the batch as std::int64_t. A binary built against 0.1.0's C++ API stops with an undefined symbol
    // (the parameter types are in the mangled name) instead of swapping them; the C ABI did not change.
    void decode(const float* z, std::size_t z_count, std::int64_t batch, float* image,
                std::size_t image_capacity) = delete;
    void encode(const float* image, std::size_t image_count, std::int64_t batch, float* mu, std::size_t mu_capacity,
                float* logvar, std::size_t logvar_capacity) = delete;

    // Conveniences: the batch is the vector's size divided by one item's size (which must divide it exactly).
    std::vector<float> decode(const std::vector<float>& z);
    void encode(const std::vector<float>& images, std::vector<float>& mu, std::vector<float>& logvar);

    class Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// The library version (pyproject.toml's [project] version, MAJOR.MINOR.PATCH) and a description of the engines
// compiled in, e.g. "onnxruntime 1.32.0 (headers API 29); tensorrt: not built".
VAE_API const char* version() noexcept;
VAE_API std::string build_info();

}  // namespace vae

#endif  // VAE_RUNTIME_HPP
