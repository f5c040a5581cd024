// c_api.cpp - the C ABI (vae_runtime.h) over vae::Runtime. Every entry point catches everything: a C++ exception
// never crosses into C, and nothing here calls exit or abort. Errors become a status plus a thread-local message.
#include <new>
#include <sstream>
#include <cstddef>
#include <cstring>
#include <string>

#include "c_status.hpp"
#include "vae/image.hpp"
#include "vae/runtime.hpp"
#include "vae_image.h"
#include "vae_runtime.h"

static_assert(vae::kNoCenterCrop == VAE_IMAGE_NO_CENTER_CROP && vae::kTrainCenterCrop == VAE_IMAGE_TRAIN_CENTER_CROP,
              "vae/image.hpp and vae_image.h must agree");

struct vae_runtime {
    vae::Runtime rt;
};

namespace {

using vae::detail::guarded;

thread_local std::string g_last_error;

}  // namespace

// The one thread-local message of every C entry point (vae_runtime.h and vae_image.h), read by vae_last_error().
void vae::detail::set_last_error(const char* prefix, const char* message) noexcept {
    try {
        g_last_error.assign(prefix).append(message);
    } catch (...) {
        g_last_error.clear();  // out of memory while storing the message: the status still says what happened
    }
}

namespace {

std::vector<std::string> split_graphs(const char* s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        auto b = item.find_first_not_of(' '), e = item.find_last_not_of(' ');
        if (b == std::string::npos) throw vae::InvalidArgumentError(std::string("graphs: empty entry in '") + s + "'");
        out.push_back(item.substr(b, e - b + 1));
    }
    return out;
}

}  // namespace

extern "C" {

namespace {
// vae_options as first published (ABI 1): what a caller compiled against that header passes.
struct vae_options_v1 {
    uint32_t struct_size;
    const char* backend;
    const char* device;
    const char* precision;
    const char* execution_provider;
    const char* graphs;
    int32_t threads;
    int32_t check_finite;
    int32_t verify_sha256;
};
static_assert(offsetof(vae_options_v1, verify_sha256) == offsetof(vae_options, verify_sha256) &&
                  offsetof(vae_options_v1, graphs) == offsetof(vae_options, graphs),
              "vae_options must extend the first layout");
// The second layout (batch_split and reserved appended, before dla_core): its size is where dla_core starts,
// rounded up to the struct's alignment, as the compiler of a caller with that header laid it out.
constexpr size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
constexpr size_t kV2Size = round_up(offsetof(vae_options, dla_core), alignof(vae_options));
static_assert(sizeof(vae_options_v1) != sizeof(vae_options) && kV2Size != sizeof(vae_options) &&
                  kV2Size != sizeof(vae_options_v1),
              "the three layouts must be told apart by struct_size");
}  // namespace

void vae_options_init_sized(vae_options* options, size_t size) {
    if (!options) return;
    vae_options d{};
    d.check_finite = 1;
    d.verify_sha256 = 1;
    d.dla_core = -1;
    const size_t n = size < sizeof d ? size : sizeof d;  // never past the caller's struct
    d.struct_size = static_cast<uint32_t>(n);
    std::memcpy(options, &d, n);
}

// The first layout's entry point (a binary built against the first header calls this symbol with its smaller
// struct); the parentheses keep the header's vae_options_init macro from expanding here.
void(vae_options_init)(vae_options* options) {
    vae_options_init_sized(options, sizeof(vae_options_v1));
}

vae_status vae_runtime_create(const char* bundle, const vae_options* options, vae_runtime** out) {
    if (out) *out = nullptr;
    return guarded([&] {
        if (!out) throw vae::InvalidArgumentError("vae_runtime_create: out is NULL");
        if (!bundle) throw vae::InvalidArgumentError("vae_runtime_create: bundle is NULL");
        vae::Options opt;
        if (options) {
            // Three layouts of ABI version 1, told apart by struct_size: the first one (up to verify_sha256,
            // vae_options_v1 above), the second (batch_split, reserved appended) and the current one (dla_core,
            // reserved2). Any other size is an uninitialised struct or a header mismatch. Nothing past the caller's
            // layout is read.
            const size_t size = options->struct_size;
            if (size != sizeof(vae_options) && size != kV2Size && size != sizeof(vae_options_v1))
                throw vae::InvalidArgumentError("vae_options.struct_size is " + std::to_string(size) + ", expected " +
                                                std::to_string(sizeof(vae_options)) + " (or " +
                                                std::to_string(kV2Size) + " for the layout without dla_core, " +
                                                std::to_string(sizeof(vae_options_v1)) +
                                                " for the layout without batch_split; call vae_options_init first)");
            if (options->backend) opt.backend = options->backend;
            if (options->device) opt.device = options->device;
            if (options->precision) opt.precision = options->precision;
            if (options->execution_provider) opt.execution_provider = options->execution_provider;
            if (options->graphs) opt.graphs = split_graphs(options->graphs);
            opt.threads = options->threads;
            opt.check_finite = options->check_finite != 0;
            opt.verify_sha256 = options->verify_sha256 != 0;
            if (size >= kV2Size) opt.batch_split = options->batch_split;
            if (size == sizeof(vae_options)) opt.dla_core = options->dla_core;
        }
        *out = new vae_runtime{vae::Runtime(bundle, opt)};
    });
}

void vae_runtime_destroy(vae_runtime* runtime) {
    // Destructors of the engines do not throw; the guard is for the impossible case only.
    try {
        delete runtime;
    } catch (...) {
    }
}

vae_status vae_runtime_info(const vae_runtime* runtime, vae_model_info* info) {
    return guarded([&] {
        if (!runtime || !info) throw vae::InvalidArgumentError("vae_runtime_info: runtime or info is NULL");
        if (info->struct_size != sizeof(vae_model_info))
            throw vae::InvalidArgumentError("vae_model_info.struct_size is " + std::to_string(info->struct_size) +
                                            ", expected " + std::to_string(sizeof(vae_model_info)));
        const vae::ModelInfo& m = runtime->rt.info();
        info->in_channels = m.in_channels;
        info->out_channels = m.out_channels;
        info->image_size = m.image_size;
        info->latent_dim = m.latent_dim;
        info->pixel_min = m.pixel_min;
        info->pixel_max = m.pixel_max;
        info->has_encoder = m.has_encoder;
        info->has_decoder = m.has_decoder;
    });
}

// Declared in vae_image.h (it feeds vae_image_prepare); defined here, where the handle's layout is known.
vae_status vae_runtime_center_crop(const vae_runtime* runtime, int32_t* center_crop) {
    return guarded([&] {
        if (!runtime || !center_crop)
            throw vae::InvalidArgumentError("vae_runtime_center_crop: runtime or center_crop is NULL");
        *center_crop = runtime->rt.center_crop();
    });
}

const char* vae_runtime_backend(const vae_runtime* runtime) {
    return runtime ? runtime->rt.backend_description().c_str() : "";
}

vae_status vae_decode(vae_runtime* runtime, const float* z, int64_t batch, size_t z_count, float* image,
                      size_t image_capacity) {
    return guarded([&] {
        if (!runtime) throw vae::InvalidArgumentError("vae_decode: runtime is NULL");
        runtime->rt.decode(z, batch, z_count, image, image_capacity);
    });
}

vae_status vae_encode(vae_runtime* runtime, const float* image, int64_t batch, size_t image_count, float* mu,
                      size_t mu_capacity, float* logvar, size_t logvar_capacity) {
    return guarded([&] {
        if (!runtime) throw vae::InvalidArgumentError("vae_encode: runtime is NULL");
        runtime->rt.encode(image, batch, image_count, mu, mu_capacity, logvar, logvar_capacity);
    });
}

const char* vae_last_error(void) { return g_last_error.c_str(); }

const char* vae_status_name(vae_status status) {
    switch (status) {
        case VAE_OK: return "VAE_OK";
        case VAE_ERR_INVALID_ARGUMENT: return "VAE_ERR_INVALID_ARGUMENT";
        case VAE_ERR_BUNDLE: return "VAE_ERR_BUNDLE";
        case VAE_ERR_SHAPE: return "VAE_ERR_SHAPE";
        case VAE_ERR_NON_FINITE: return "VAE_ERR_NON_FINITE";
        case VAE_ERR_BACKEND: return "VAE_ERR_BACKEND";
        case VAE_ERR_UNAVAILABLE: return "VAE_ERR_UNAVAILABLE";
        case VAE_ERR_ENGINE_MISMATCH: return "VAE_ERR_ENGINE_MISMATCH";
        case VAE_ERR_INTERNAL: return "VAE_ERR_INTERNAL";
    }
    return "VAE_ERR_UNKNOWN";
}

const char* vae_version(void) { return vae::version(); }

int32_t vae_abi_version(void) { return VAE_RUNTIME_ABI_VERSION; }

}  // extern "C"
