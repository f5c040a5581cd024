// bundle.hpp - the C++ reading of the bundle contract (vae.json), mirroring runtime/bundle.py field for field.
// The Python module is the definition; this file reads what it writes and refuses anything else with a BundleError.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "vae/image.hpp"  // kTrainCenterCrop, kNoCenterCrop

namespace vae::detail {

inline constexpr const char* kSchema = "vae-deploy/bundle";
inline constexpr int kSchemaVersion = 1;
inline constexpr const char* kManifestName = "vae.json";
inline constexpr const char* kEncoder = "encoder";
inline constexpr const char* kDecoder = "decoder";
inline constexpr const char* kImage = "image";
inline constexpr const char* kMu = "mu";
inline constexpr const char* kLogvar = "logvar";
inline constexpr const char* kZ = "z";

struct TensorSpec {
    std::string name;
    std::vector<std::int64_t> shape;  // -1 for a symbolic axis ("batch")
    std::string dtype = "float32";
};

struct VariantSpec {
    std::string precision, file, sha256;
};

struct GraphSpec {
    std::string name, file, sha256;
    int opset = 0;
    std::vector<TensorSpec> inputs, outputs;
    std::map<std::string, VariantSpec> variants;
};

struct ModelSpec {
    int in_channels = 0, out_channels = 0, image_size = 0, latent_dim = 0;
    std::vector<int> hidden_dims;
};

struct Manifest {
    std::string root;  // the bundle folder
    std::string path;  // its vae.json
    ModelSpec model;
    float pixel_min = 0.f, pixel_max = 0.f;
    // "preprocess".center_crop: the centre crop training applied; kNoCenterCrop for null (none), kTrainCenterCrop
    // when vae.json has no "preprocess" (bundles exported before it was recorded).
    int center_crop = kTrainCenterCrop;
    std::map<std::string, GraphSpec> graphs;

    const GraphSpec& graph(const std::string& name) const;
    // (file relative to the bundle, expected sha256) of a graph at a precision, or BundleError listing what exists.
    std::pair<std::string, std::string> graph_file(const std::string& graph, const std::string& precision) const;
};

// BUNDLE is a folder holding vae.json, or the path of a vae.json. Validates schema, model, preprocess, graph names and
// tensor shapes against the model (the same checks runtime/bundle.py makes, plus shape consistency).
Manifest read_manifest(const std::string& bundle);

// The absolute path of a file the manifest names; checks it exists, stays inside the bundle, and (sha256 non-empty)
// is unchanged since export.
std::string resolve_file(const Manifest& m, const std::string& name, const std::string& sha256);

// "(N, 3, 64, 64)": how shapes are written in every message (the batch axis as N), as runtime/validation.py does.
std::string shape_str(const std::vector<std::int64_t>& shape);

// Reads a whole small file (manifest, sidecar); BundleError naming it when it cannot.
std::string read_text_file(const std::string& path);

}  // namespace vae::detail
