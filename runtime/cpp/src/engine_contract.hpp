// engine_contract.hpp - TensorRT engine file names and the sidecar check, the C++ half of runtime/engines.py.
//
// Pure: no TensorRT and no CUDA, so it is compiled into every build and tested against the Python half on the same
// golden sidecars (tests/runtime/cpp/test_engine_contract.py drives tests/engine_contract_check.cpp). The TensorRT
// backend supplies the facts of this machine (EngineHost) and calls these functions; nothing here probes a device.
#pragma once

#include <string>
#include <vector>

#include "bundle.hpp"

namespace vae::detail {

inline constexpr const char* kSidecarSchema = "vae-deploy/engine";
inline constexpr int kSidecarVersion = 2;

// "10.3.0.30" (NV_TENSORRT_* in the headers), "10.3.0" (tensorrt.__version__) -> "10.3.0": the one form of a
// TensorRT version in engine names and sidecars. InvalidArgumentError for text that is not a version.
std::string normalize_trt_version(const std::string& text);

// What an engine is tied to, as this machine reports it.
struct EngineHost {
    std::string trt_version;  // normalised, e.g. "10.3.0"
    std::string gpu_name;     // cudaDeviceProp::name, e.g. "Orin"
    int cc_major = 0, cc_minor = 0;
    int sm_count = 0;         // cudaDeviceProp::multiProcessorCount
    int dla_cores = 0;        // IRuntime::getNbDLACores()
    std::string machine;      // uname -m: "aarch64", "x86_64"
    std::string l4t;          // "36.4.3" on a Jetson, "" elsewhere

    std::string cc() const { return std::to_string(cc_major) + "." + std::to_string(cc_minor); }
    // "Orin (compute capability 8.7, 16 SMs, 2 DLA cores)", as GpuInfo.describe() writes it.
    std::string describe_gpu() const;
};

// "orin-sm87-16sms-2dla", as runtime.engines.gpu_slug.
std::string gpu_slug(const EngineHost& host);

// "<graph>.<precision>.<gpu-slug>[.dla<N>].trt<version>", as runtime.engines.engine_stem; dla_core < 0: a GPU engine.
std::string engine_stem(const std::string& graph, const std::string& precision, const EngineHost& host,
                        int dla_core);

// "(/etc/nv_tegra_release line)" -> "36.4.3"; "" when the text is not an L4T release line.
std::string parse_tegra_release(const std::string& line);

struct SidecarVerdict {
    std::vector<std::string> problems;  // empty: usable here
    std::string rebuild;                // the python -m export.tensorrt.build command that rebuilds it here
};

// Every reason the engine described by `sidecar_text` (read from `sidecar_path`) must not run here, as
// runtime.engines.check_sidecar + require_usable: graph/precision, DLA core, TensorRT version, CPU architecture,
// Jetson L4T, GPU identity (name, compute capability, SM and DLA counts), the source ONNX file's sha256 against
// any of the graph's files in vae.json, and (engine_sha256 non-null) the plan's own sha256.
// UnavailableError when the sidecar is not valid JSON, not schema vae-deploy/engine version 2, or malformed.
SidecarVerdict check_sidecar(const Manifest& manifest, const std::string& sidecar_path, const std::string& sidecar_text,
                             const std::string& graph, const std::string& precision, const EngineHost& host,
                             int dla_core, const std::string* engine_sha256);

// The sha256 vae.json lists for `file` as one of `graph`'s files (FP32 graph or a variant); nullptr if none.
const std::string* manifest_source_sha256(const Manifest& manifest, const std::string& graph, const std::string& file);

}  // namespace vae::detail
