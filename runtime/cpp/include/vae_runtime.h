/*
 * vae_runtime.h - the stable C ABI of the vae-deploy C++ runtime, for C, Rust, C#, Go and any FFI.
 *
 * Rules of this boundary:
 *   - Handles are opaque. Every create has a destroy (vae_runtime_create / vae_runtime_destroy); destroy accepts NULL.
 *   - Every call that can fail returns a vae_status. On failure, vae_last_error() returns a one-line message naming
 *     the file or tensor, the expected and the actual value. The message is per thread and stays valid until the
 *     next vae_* call on the same thread; a successful call clears it to "".
 *   - No C++ exception ever crosses this boundary, and the library never calls exit() or abort().
 *   - Buffers are caller-owned, C-contiguous float32. Each array comes with its element count, so a wrong size is an
 *     error (VAE_ERR_SHAPE) and never a read or write past the end.
 *   - Layouts: images (N, C, H, W) with values in the bundle's pixel range; latents, mu, logvar (N, D).
 *     C, H, W, D and the pixel range come from the bundle (vae_runtime_info), never from constants.
 *   - A vae_runtime may be used from several threads at once (the TensorRT backend serialises its calls).
 *   - ABI evolution: structs start with struct_size; new fields are only appended; status values are never renumbered;
 *     a released function's parameters never change order or type (another order would be a new function).
 *     vae_options gained batch_split (and a reserved field) at the end. A binary compiled against the first header
 *     keeps working: its vae_options_init symbol fills only the first layout (up to verify_sha256) and sets that
 *     struct_size, and vae_runtime_create reads nothing past verify_sha256 from such a struct (default batch_split).
 *     Code compiled against this header calls vae_options_init_sized through the vae_options_init macro, which
 *     passes sizeof the caller's struct, so the library never writes past the end of a struct it does not know.
 *
 * Example:
 *   vae_options opt; vae_options_init(&opt);
 *   vae_runtime* rt = NULL;
 *   if (vae_runtime_create("bundle/", &opt, &rt) != VAE_OK) { fprintf(stderr, "%s\n", vae_last_error()); return 1; }
 *   vae_model_info info; info.struct_size = sizeof info; vae_runtime_info(rt, &info);
 *   ... vae_decode(rt, z, n, (size_t)n * info.latent_dim, out, (size_t)n * info.out_channels * ...);
 *   vae_runtime_destroy(rt);
 */
#ifndef VAE_RUNTIME_H
#define VAE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(VAE_RUNTIME_BUILDING)
#    define VAE_API __declspec(dllexport)
#  else
#    define VAE_API __declspec(dllimport)
#  endif
#else
#  define VAE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define VAE_RUNTIME_ABI_VERSION 1

typedef enum vae_status {
    VAE_OK = 0,
    VAE_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, an unknown option value, batch < 1 */
    VAE_ERR_BUNDLE = 2,           /* bundle folder, vae.json, a graph file missing, malformed or changed (sha256) */
    VAE_ERR_SHAPE = 3,            /* an array's element count does not match batch and the bundle's shapes */
    VAE_ERR_NON_FINITE = 4,       /* NaN or Inf in an input (with check_finite on) */
    VAE_ERR_BACKEND = 5,          /* the engine refused the model or failed a call */
    VAE_ERR_UNAVAILABLE = 6,      /* backend, device, graph or precision not available in this build / bundle */
    VAE_ERR_ENGINE_MISMATCH = 7,  /* a TensorRT engine built for another GPU / TensorRT / ONNX file */
    VAE_ERR_INTERNAL = 8          /* out of memory or a bug: the message says which */
} vae_status;

typedef struct vae_runtime vae_runtime;

typedef struct vae_options {
    uint32_t struct_size;    /* sizeof(vae_options); set by vae_options_init (the macro) */
    const char* backend;     /* "onnxruntime" (default) or "tensorrt" (native TensorRT engines; builds that have it) */
    const char* device;      /* "cpu" (default), "cuda" or "cuda:N" */
    const char* precision;   /* "fp32" (default), "fp16" or "int8": a variant listed in vae.json */
    const char* execution_provider; /* onnxruntime on cuda: "cuda" (default) or "tensorrt"; NULL = from the device */
    const char* graphs;      /* "encoder,decoder" (default: every graph in the bundle), "decoder", "encoder" */
    int32_t threads;         /* intra-op threads; 0 = the engine's default */
    int32_t check_finite;    /* 1 (default): refuse NaN / Inf inputs; 0: skip the scan */
    int32_t verify_sha256;   /* 1 (default): check graph files against vae.json's sha256 before loading */
    int32_t batch_split;     /* onnxruntime on the CPU: smallest batch cut into one chunk per core (threads, default
                                one per physical core), each chunk run by its own single-threaded session in
                                parallel, written straight into the caller's buffer. 0 = default (the decoder from
                                32, the encoder never), -1 = never, >= 2 = that batch for every graph. The per-core
                                sessions are built on the first split call. */
    int32_t reserved;        /* 0; keeps the struct's size different from the earlier layout's on 64-bit targets */
    int32_t dla_core;        /* backend "tensorrt" on a Jetson: run the engines built for this DLA core (python -m
                                export.tensorrt.build --dla-core N); -1 (default) = the GPU engines */
    int32_t reserved2;       /* 0; keeps this layout's size apart from the previous one's */
} vae_options;

typedef struct vae_model_info {
    uint32_t struct_size;    /* the caller sets sizeof(vae_model_info) before calling vae_runtime_info */
    int32_t in_channels;
    int32_t out_channels;
    int32_t image_size;      /* images are image_size x image_size */
    int32_t latent_dim;
    float pixel_min;         /* the pixel range the model's images live in, e.g. -1 and 1 */
    float pixel_max;
    int32_t has_encoder;     /* graphs loaded by this runtime */
    int32_t has_decoder;
} vae_model_info;

/* Fills defaults (every pointer NULL = default, threads 0, check_finite 1, verify_sha256 1, batch_split 0,
 * dla_core -1) into a
 * struct of `size` bytes (sizeof the caller's vae_options): only the fields that fit are written, and struct_size is
 * set to the size written. */
VAE_API void vae_options_init_sized(vae_options* options, size_t size);

/* The first ABI-1 entry point, kept for binaries built against the first header: fills the first layout only (up
 * to verify_sha256) and sets that struct_size, so vae_runtime_create then ignores batch_split. In code compiled
 * against this header, vae_options_init(&opt) is the macro below. FFI bindings (Rust, C#, Go...) and function
 * pointers do not see the macro: call vae_options_init_sized(&opt, sizeof opt) there, or batch_split is ignored
 * (vae_runtime_backend() shows the batch_split in effect). */
VAE_API void vae_options_init(vae_options* options);
#define vae_options_init(options) vae_options_init_sized((options), sizeof(vae_options))

/* Loads BUNDLE (a folder with vae.json, or the vae.json itself). options may be NULL (defaults).
 * On success *out is a new handle; on failure *out is NULL. */
VAE_API vae_status vae_runtime_create(const char* bundle, const vae_options* options, vae_runtime** out);

/* Releases everything the handle holds. NULL is accepted. */
VAE_API void vae_runtime_destroy(vae_runtime* runtime);

VAE_API vae_status vae_runtime_info(const vae_runtime* runtime, vae_model_info* info);

/* A short human-readable description of the engine in use, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)".
 * Valid until the handle is destroyed; "" for a NULL handle. */
VAE_API const char* vae_runtime_backend(const vae_runtime* runtime);

/* z: batch x latent_dim floats (z_count of them); image: room for batch x out_channels x image_size^2 floats.
 * The order (input, batch, input count, then each output with its capacity) is fixed for ABI 1: batch and z_count
 * are both integers, so a reordered declaration would still link and bind, and swap them without a word.
 * vae::Runtime::decode / encode (vae/runtime.hpp) take the same order. */
VAE_API vae_status vae_decode(vae_runtime* runtime, const float* z, int64_t batch, size_t z_count,
                              float* image, size_t image_capacity);

/* image: batch x in_channels x image_size^2 floats; mu and logvar: room for batch x latent_dim floats each. */
VAE_API vae_status vae_encode(vae_runtime* runtime, const float* image, int64_t batch, size_t image_count,
                              float* mu, size_t mu_capacity, float* logvar, size_t logvar_capacity);

/* The message of the last failed call on this thread ("" after a successful call). Never NULL. */
VAE_API const char* vae_last_error(void);

/* "VAE_OK", "VAE_ERR_SHAPE", ...; "VAE_ERR_UNKNOWN" for a value outside the enum. Never NULL. */
VAE_API const char* vae_status_name(vae_status status);

/* The library version (vae-deploy's: pyproject.toml's [project] version, MAJOR.MINOR.PATCH) and the ABI version it
 * implements. */
VAE_API const char* vae_version(void);
VAE_API int32_t vae_abi_version(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VAE_RUNTIME_H */
