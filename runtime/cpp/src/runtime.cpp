// runtime.cpp - vae::Runtime: options checked once, inputs validated once (as runtime/validation.py does: sizes,
// empty batch, NaN/Inf with the first bad index), then one backend runs the graph on the caller's buffers.
#include <cmath>
#include <limits>
#include <set>
#include <type_traits>
#include <utility>

#include "backend.hpp"
#include "bundle.hpp"
#include "vae/runtime.hpp"

#ifndef VAE_RUNTIME_VERSION
#error "VAE_RUNTIME_VERSION is defined by CMakeLists.txt from pyproject.toml's [project] version"
#endif

namespace vae {

namespace detail {

Device Device::parse(const std::string& text) {
    Device d;
    if (text == "cpu") return d;
    if (text == "cuda") return Device{true, 0};
    if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() <= 8 &&
        text.find_first_not_of("0123456789", 5) == std::string::npos)
        return Device{true, std::stoi(text.substr(5))};
    throw InvalidArgumentError("device: expected 'cpu', 'cuda' or 'cuda:N', got '" + text + "'");
}

#ifndef VAE_RUNTIME_HAS_TENSORRT
std::unique_ptr<Backend> open_tensorrt(const Manifest&, const Options&, const Device&, const std::vector<std::string>&) {
    throw UnavailableError("backend 'tensorrt': this build of vae_runtime has no TensorRT (configure on a machine with "
                           "TensorRT, e.g. JetPack, or pass -DTensorRT_ROOT=...; or use backend 'onnxruntime')");
}
std::string tensorrt_build_info() { return "tensorrt: not built"; }
#endif

namespace {

std::size_t product(const std::vector<std::int64_t>& dims) {
    std::size_t n = 1;
    for (auto d : dims) n *= static_cast<std::size_t>(d);
    return n;
}

// "4 x 3 x 64 x 64"
std::string dims_str(const std::vector<std::int64_t>& dims) {
    std::string s;
    for (auto d : dims) s += (s.empty() ? "" : " x ") + std::to_string(d);
    return s;
}

std::vector<std::int64_t> with_batch(const TensorSpec& spec, std::int64_t batch) {
    std::vector<std::int64_t> s = spec.shape;
    s[0] = batch;
    return s;
}

std::size_t item_size(const TensorSpec& spec) {
    std::size_t n = 1;
    for (std::size_t i = 1; i < spec.shape.size(); ++i) n *= static_cast<std::size_t>(spec.shape[i]);
    return n;
}

void check_batch(std::int64_t batch, const TensorSpec& spec) {
    if (batch < 0)
        throw InvalidArgumentError("tensor '" + spec.name + "': batch " + std::to_string(batch) + " is negative");
    if (batch == 0)
        throw ShapeError("tensor '" + spec.name + "': empty batch (batch 0); expected at least 1 item");
    // The product must fit in size_t and in what one engine call can address.
    if (static_cast<std::uint64_t>(batch) > std::numeric_limits<std::uint32_t>::max() / item_size(spec))
        throw ShapeError("tensor '" + spec.name + "': batch " + std::to_string(batch) + " is too large");
}

void check_input(const TensorSpec& spec, const float* data, std::size_t count, std::int64_t batch, bool check_finite) {
    if (data == nullptr) throw InvalidArgumentError("tensor '" + spec.name + "': data pointer is NULL");
    const auto shape = with_batch(spec, batch);
    const std::size_t want = product(shape), item = item_size(spec);
    if (count != want) {
        std::string hint;
        if (count % item == 0 && count > 0)
            hint = " (that is a batch of " + std::to_string(count / item) + ", not " + std::to_string(batch) + ")";
        else
            hint = " (not a whole number of items of " + std::to_string(item) + ")";
        throw ShapeError("tensor '" + spec.name + "': expected shape " + shape_str(spec.shape) + " with N = " +
                         std::to_string(batch) + ", i.e. " + dims_str(shape) + " = " + std::to_string(want) +
                         " floats, got " + std::to_string(count) + hint);
    }
    if (!check_finite) return;
    std::size_t nan = 0, inf = 0, first = count;
    for (std::size_t i = 0; i < count; ++i) {
        const float v = data[i];
        if (std::isfinite(v)) continue;
        if (std::isnan(v)) ++nan; else ++inf;
        if (first == count) first = i;
    }
    if (nan + inf == 0) return;
    // The flat index of the first bad value, unravelled into the tensor's axes: "(0, 3)".
    std::vector<std::int64_t> idx(shape.size());
    std::size_t rest = first;
    for (std::size_t k = shape.size(); k-- > 0;) {
        idx[k] = static_cast<std::int64_t>(rest % static_cast<std::size_t>(shape[k]));
        rest /= static_cast<std::size_t>(shape[k]);
    }
    std::string at = "(";
    for (std::size_t k = 0; k < idx.size(); ++k) at += (k ? ", " : "") + std::to_string(idx[k]);
    throw NonFiniteError("tensor '" + spec.name + "': " + std::to_string(nan) + " NaN and " + std::to_string(inf) +
                         " Inf value(s), first at index " + at + "); expected finite values");
}

void check_output(const TensorSpec& spec, const float* data, std::size_t capacity, std::int64_t batch) {
    if (data == nullptr) throw InvalidArgumentError("output '" + spec.name + "': buffer pointer is NULL");
    const auto shape = with_batch(spec, batch);
    if (capacity < product(shape))
        throw ShapeError("output '" + spec.name + "': buffer holds " + std::to_string(capacity) + " floats, batch " +
                         std::to_string(batch) + " needs " + dims_str(shape) + " = " + std::to_string(product(shape)));
}

}  // namespace
}  // namespace detail

class Runtime::Impl {
public:
    Impl(const std::string& bundle, const Options& opt) : options(opt) {
        using namespace detail;
        if (opt.backend != "onnxruntime" && opt.backend != "tensorrt")
            throw InvalidArgumentError("backend: expected 'onnxruntime' or 'tensorrt', got '" + opt.backend + "'");
        if (opt.precision != "fp32" && opt.precision != "fp16" && opt.precision != "int8")
            throw InvalidArgumentError("precision: expected one of [fp32, fp16, int8], got '" + opt.precision + "'");
        if (opt.batch_split < -1 || opt.batch_split == 1)
            throw InvalidArgumentError("option batch_split: expected 0 (default), -1 (never) or a batch size >= 2, got " +
                                       std::to_string(opt.batch_split));
        if (opt.dla_core < -1)
            throw InvalidArgumentError("option dla_core: expected -1 (the GPU engines) or a DLA core index >= 0, got " +
                                       std::to_string(opt.dla_core));
        if (opt.dla_core >= 0 && opt.backend != "tensorrt")
            throw InvalidArgumentError("option dla_core: DLA engines run on backend 'tensorrt', got backend '" +
                                       opt.backend + "' (leave dla_core at -1)");
        if (opt.threads < 0)
            throw InvalidArgumentError("option threads: expected 0 (default) or a positive integer, got " +
                                       std::to_string(opt.threads));
        const Device device = Device::parse(opt.device);
        if (opt.backend == "tensorrt" && !device.cuda)
            throw InvalidArgumentError("backend 'tensorrt' runs on 'cuda' or 'cuda:N', got device '" + opt.device + "'");
        manifest = read_manifest(bundle);
        std::vector<std::string> graphs = opt.graphs;
        if (graphs.empty())
            for (const auto& kv : manifest.graphs) graphs.push_back(kv.first);
        std::set<std::string> seen;
        for (const auto& g : graphs) {
            if (!seen.insert(g).second) throw InvalidArgumentError("graphs: '" + g + "' is listed twice");
            manifest.graph(g);  // UnavailableError naming what the bundle has
        }
        backend = opt.backend == "tensorrt" ? open_tensorrt(manifest, opt, device, graphs)
                                            : open_onnxruntime(manifest, opt, device, graphs);
        const auto& ms = manifest.model;
        info = ModelInfo{ms.in_channels, ms.out_channels, ms.image_size, ms.latent_dim, manifest.pixel_min,
                         manifest.pixel_max, seen.count(kEncoder) > 0, seen.count(kDecoder) > 0};
        loaded = seen;
    }

    const detail::GraphSpec& graph(const char* name) const {
        if (!loaded.count(name))
            throw UnavailableError(std::string("graph '") + name + "' is not loaded by this runtime (loaded: " +
                                   (info.has_encoder ? "encoder " : "") + (info.has_decoder ? "decoder" : "") + ")");
        return manifest.graph(name);
    }

    Options options;
    detail::Manifest manifest;
    std::unique_ptr<detail::Backend> backend;
    ModelInfo info;
    std::set<std::string> loaded;
};

Runtime::Runtime(const std::string& bundle, const Options& options) : impl_(std::make_unique<Impl>(bundle, options)) {}
Runtime::~Runtime() = default;
Runtime::Runtime(Runtime&&) noexcept = default;
Runtime& Runtime::operator=(Runtime&&) noexcept = default;

const ModelInfo& Runtime::info() const noexcept { return impl_->info; }
const std::string& Runtime::backend_description() const noexcept { return impl_->backend->description(); }
const std::string& Runtime::bundle_dir() const noexcept { return impl_->manifest.root; }
int Runtime::center_crop() const noexcept { return impl_->manifest.center_crop; }

std::size_t Runtime::latent_elements(std::int64_t batch) const {
    return static_cast<std::size_t>(batch < 0 ? 0 : batch) * static_cast<std::size_t>(impl_->info.latent_dim);
}
std::size_t Runtime::image_elements(std::int64_t batch) const {
    const auto& i = impl_->info;
    return static_cast<std::size_t>(batch < 0 ? 0 : batch) * i.out_channels * i.image_size * i.image_size;
}
std::size_t Runtime::input_image_elements(std::int64_t batch) const {
    const auto& i = impl_->info;
    return static_cast<std::size_t>(batch < 0 ? 0 : batch) * i.in_channels * i.image_size * i.image_size;
}

// decode / encode take (input, batch, count) as vae_decode / vae_encode do; a call in 0.1.0's (input, count, batch)
// order must not compile, or it would swap the two silently (runtime.hpp deletes that overload). Checked here too.
namespace {
// Whether rt.decode(a...) / rt.encode(a...) compiles for arguments of exactly these types.
template <class Void, class... A>
struct can_decode : std::false_type {};
template <class... A>
struct can_decode<std::void_t<decltype(std::declval<Runtime&>().decode(std::declval<A>()...))>, A...>
    : std::true_type {};
template <class Void, class... A>
struct can_encode : std::false_type {};
template <class... A>
struct can_encode<std::void_t<decltype(std::declval<Runtime&>().encode(std::declval<A>()...))>, A...>
    : std::true_type {};
using In = const float*;
using Out = float*;
using Batch = std::int64_t;
using Count = std::size_t;
static_assert(can_decode<void, In, Batch, Count, Out, Count>::value, "decode(z, batch, z_count, image, capacity)");
static_assert(!can_decode<void, In, Count, Batch, Out, Count>::value, "0.1.0's decode(z, z_count, batch) compiles");
static_assert(can_encode<void, In, Batch, Count, Out, Count, Out, Count>::value, "encode(image, batch, count, ...)");
static_assert(!can_encode<void, In, Count, Batch, Out, Count, Out, Count>::value, "0.1.0's encode order compiles");
}  // namespace

void Runtime::decode(const float* z, std::int64_t batch, std::size_t z_count, float* image,
                     std::size_t image_capacity) {
    using namespace detail;
    const GraphSpec& g = impl_->graph(kDecoder);
    check_batch(batch, g.inputs[0]);
    check_input(g.inputs[0], z, z_count, batch, impl_->options.check_finite);
    check_output(g.outputs[0], image, image_capacity, batch);
    impl_->backend->run(g, {{z, with_batch(g.inputs[0], batch)}}, {{image, with_batch(g.outputs[0], batch)}});
}

void Runtime::encode(const float* image, std::int64_t batch, std::size_t image_count, float* mu,
                     std::size_t mu_capacity, float* logvar, std::size_t logvar_capacity) {
    using namespace detail;
    const GraphSpec& g = impl_->graph(kEncoder);
    check_batch(batch, g.inputs[0]);
    check_input(g.inputs[0], image, image_count, batch, impl_->options.check_finite);
    check_output(g.outputs[0], mu, mu_capacity, batch);
    check_output(g.outputs[1], logvar, logvar_capacity, batch);
    impl_->backend->run(g, {{image, with_batch(g.inputs[0], batch)}},
                        {{mu, with_batch(g.outputs[0], batch)}, {logvar, with_batch(g.outputs[1], batch)}});
}

std::vector<float> Runtime::decode(const std::vector<float>& z) {
    const std::size_t item = latent_elements(1);
    const std::int64_t batch = static_cast<std::int64_t>(z.size() / item);
    if (z.size() % item != 0)
        throw ShapeError("tensor 'z': " + std::to_string(z.size()) + " floats is not a whole number of latents of " +
                         std::to_string(item));
    std::vector<float> out(image_elements(batch));
    decode(z.data(), batch, z.size(), out.data(), out.size());
    return out;
}

void Runtime::encode(const std::vector<float>& images, std::vector<float>& mu, std::vector<float>& logvar) {
    const std::size_t item = input_image_elements(1);
    if (images.size() % item != 0)
        throw ShapeError("tensor 'image': " + std::to_string(images.size()) +
                         " floats is not a whole number of images of " + std::to_string(item));
    const std::int64_t batch = static_cast<std::int64_t>(images.size() / item);
    mu.assign(latent_elements(batch), 0.f);
    logvar.assign(latent_elements(batch), 0.f);
    encode(images.data(), batch, images.size(), mu.data(), mu.size(), logvar.data(), logvar.size());
}

const char* version() noexcept { return VAE_RUNTIME_VERSION; }

std::string build_info() {
    return std::string("vae_runtime ") + VAE_RUNTIME_VERSION + "; " + detail::onnxruntime_build_info() + "; " +
           detail::tensorrt_build_info();
}

}  // namespace vae
