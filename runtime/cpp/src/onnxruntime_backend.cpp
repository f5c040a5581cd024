// onnxruntime_backend.cpp - ONNX Runtime backend: one Ort::Session per graph, execution provider chosen by the device
// (cpu -> CPU; cuda -> CUDA then CPU; execution_provider "tensorrt" -> TensorRT, CUDA, CPU), the same choice the
// Python backend (runtime/backends/onnxruntime.py) makes. Inputs and outputs are bound to the caller's buffers
// without copies. A provider this ONNX Runtime build lacks is refused, never silently replaced by the CPU.
//
// ORT_API_MANUAL_INIT is defined for this target (CMake), so the C++ wrapper does not fetch the API table in a static
// initializer: we fetch it here, and a library older than the headers gives an UnavailableError instead of a crash.
#include <algorithm>
#include <mutex>
#include <string>

#include <onnxruntime_cxx_api.h>

#include "backend.hpp"

namespace vae::detail {
namespace {

const char* kCpuEP = "CPUExecutionProvider";
const char* kCudaEP = "CUDAExecutionProvider";
const char* kTrtEP = "TensorrtExecutionProvider";

// Fetch the C API table of exactly the version our headers describe, once per process.
void init_ort_api() {
    static std::once_flag once;
    static const OrtApi* api = nullptr;
    std::call_once(once, [] {
        api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
        if (api) Ort::InitApi(api);
    });
    if (!api)
        throw UnavailableError(std::string("onnxruntime: the loaded library is version ") +
                               OrtGetApiBase()->GetVersionString() + " and does not provide C API version " +
                               std::to_string(ORT_API_VERSION) +
                               " (the headers this runtime was compiled with): it is older than the headers; "
                               "run with the library the build was configured with");
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

// Errors that mean "this file is not a usable model" are the bundle's fault; others are the engine's.
[[noreturn]] void rethrow_load_error(const std::string& path, const Ort::Exception& e) {
    switch (e.GetOrtErrorCode()) {
        case ORT_NO_SUCHFILE:
        case ORT_NO_MODEL:
        case ORT_INVALID_PROTOBUF:
        case ORT_INVALID_GRAPH:
        case ORT_MODEL_LOADED:
        case ORT_INVALID_ARGUMENT:
            throw BundleError(path + ": ONNX Runtime cannot load this graph (is the file complete and an ONNX model?): " +
                              e.what());
        default:
            throw BackendError(path + ": ONNX Runtime failed to create a session: " + e.what());
    }
}

class OrtBackend final : public Backend {
public:
    OrtBackend(const Manifest& m, const Options& opt, const Device& dev, const std::vector<std::string>& graphs)
        : env_(ORT_LOGGING_LEVEL_ERROR, "vae_runtime") {
        std::string ep = opt.execution_provider.empty() ? (dev.cuda ? "cuda" : "cpu") : opt.execution_provider;
        if (ep != "cpu" && ep != "cuda" && ep != "tensorrt")
            throw InvalidArgumentError("option execution_provider: expected one of [cpu, cuda, tensorrt], got '" + ep + "'");
        if ((ep == "cpu") != !dev.cuda)
            throw InvalidArgumentError("option execution_provider='" + ep + "' does not run on device '" + dev.str() + "'");
        const std::vector<std::string> available = Ort::GetAvailableProviders();
        auto has = [&](const char* p) { return std::find(available.begin(), available.end(), p) != available.end(); };
        const char* first = ep == "cpu" ? kCpuEP : ep == "cuda" ? kCudaEP : kTrtEP;
        if (!has(first))
            throw UnavailableError(std::string("backend 'onnxruntime' on ") + dev.str() + ": " + first +
                                   " is not in this ONNX Runtime build (available: " + join(available) +
                                   "); build against a GPU release of ONNX Runtime (-DONNXRUNTIME_ROOT=...)");

        Ort::SessionOptions so;
        so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        so.SetLogSeverityLevel(ORT_LOGGING_LEVEL_ERROR);
        if (opt.threads > 0) so.SetIntraOpNumThreads(opt.threads);
        const std::string device_id = std::to_string(dev.index);
        const OrtApi& api = Ort::GetApi();
        // Providers in priority order; the CPU provider stays implicitly last for ops the GPU providers lack.
        if (ep == "tensorrt") {
            OrtTensorRTProviderOptionsV2* trt = nullptr;
            Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
            std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2*)> guard(
                trt, api.ReleaseTensorRTProviderOptions);
            const char* keys[] = {"device_id"};
            const char* values[] = {device_id.c_str()};
            Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, keys, values, 1));
            so.AppendExecutionProvider_TensorRT_V2(*trt);
        }
        if (ep == "tensorrt" || ep == "cuda") {
            OrtCUDAProviderOptionsV2* cuda = nullptr;
            Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
            std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> guard(
                cuda, api.ReleaseCUDAProviderOptions);
            const char* keys[] = {"device_id"};
            const char* values[] = {device_id.c_str()};
            Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys, values, 1));
            so.AppendExecutionProvider_CUDA_V2(*cuda);
        }
        description_ = std::string("onnxruntime ") + OrtGetApiBase()->GetVersionString() + " (" + first + ", " +
                       dev.str() + ", " + opt.precision + ")";

        for (const auto& g : graphs) {
            auto [file, sha] = m.graph_file(g, opt.precision);
            const std::string path = resolve_file(m, file, opt.verify_sha256 ? sha : std::string());
            std::unique_ptr<Ort::Session> session;
            try {
                session = std::make_unique<Ort::Session>(env_, path.c_str(), so);
            } catch (const Ort::Exception& e) {
                rethrow_load_error(path, e);
            }
            check_io(path, *session, m.graph(g));
            sessions_.emplace(g, std::move(session));
        }
    }

    const std::string& description() const noexcept override { return description_; }

    void run(const GraphSpec& graph, const std::vector<InputBuffer>& inputs,
             const std::vector<OutputBuffer>& outputs) override {
        auto it = sessions_.find(graph.name);
        if (it == sessions_.end()) throw UnavailableError("graph '" + graph.name + "' was not loaded");
        const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        std::vector<const char*> in_names, out_names;
        std::vector<Ort::Value> in_values, out_values;
        auto count = [](const std::vector<std::int64_t>& s) {
            std::size_t n = 1;
            for (auto d : s) n *= static_cast<std::size_t>(d);
            return n;
        };
        try {
            for (std::size_t i = 0; i < inputs.size(); ++i) {
                in_names.push_back(graph.inputs[i].name.c_str());
                // ORT takes a non-const pointer for inputs and only reads it.
                in_values.push_back(Ort::Value::CreateTensor<float>(cpu, const_cast<float*>(inputs[i].data),
                                                                    count(inputs[i].shape), inputs[i].shape.data(),
                                                                    inputs[i].shape.size()));
            }
            for (std::size_t i = 0; i < outputs.size(); ++i) {
                out_names.push_back(graph.outputs[i].name.c_str());
                out_values.push_back(Ort::Value::CreateTensor<float>(cpu, outputs[i].data, count(outputs[i].shape),
                                                                     outputs[i].shape.data(), outputs[i].shape.size()));
            }
            // Session::Run is thread-safe; each call has its own bound values, so no lock is needed.
            it->second->Run(Ort::RunOptions{nullptr}, in_names.data(), in_values.data(), in_values.size(),
                            out_names.data(), out_values.data(), out_values.size());
        } catch (const Ort::Exception& e) {
            throw BackendError("onnxruntime: graph '" + graph.name + "' failed to run: " + e.what());
        }
    }

private:
    // The graph must have exactly the manifest's tensors, float32, with matching static dimensions.
    static void check_io(const std::string& path, Ort::Session& s, const GraphSpec& spec) {
        Ort::AllocatorWithDefaultOptions alloc;
        auto check_side = [&](const char* side, std::size_t n, auto name_at, auto info_at,
                              const std::vector<TensorSpec>& want) {
            std::vector<std::string> names;
            for (std::size_t i = 0; i < n; ++i) names.push_back(name_at(i).get());
            std::vector<std::string> want_names;
            for (const auto& t : want) want_names.push_back(t.name);
            if (names != want_names)
                throw BundleError(path + ": graph " + side + " are [" + join(names) + "], vae.json says [" +
                                  join(want_names) + "]");
            for (std::size_t i = 0; i < n; ++i) {
                Ort::TypeInfo ti = info_at(i);
                auto tinfo = ti.GetTensorTypeAndShapeInfo();
                if (tinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
                    throw UnavailableError(path + ": tensor '" + names[i] + "' has element type " +
                                           std::to_string(tinfo.GetElementType()) +
                                           "; the C++ runtime feeds float32 (use a variant with float32 inputs/outputs)");
                std::vector<std::int64_t> dims = tinfo.GetShape();
                const auto& w = want[i].shape;
                bool ok = dims.size() == w.size();
                for (std::size_t k = 0; ok && k < dims.size(); ++k)
                    ok = dims[k] < 0 || w[k] < 0 || dims[k] == w[k];
                if (!ok)
                    throw BundleError(path + ": tensor '" + names[i] + "' has shape " + shape_str(dims) +
                                      " in the graph, vae.json says " + shape_str(w));
            }
        };
        check_side("inputs", s.GetInputCount(), [&](std::size_t i) { return s.GetInputNameAllocated(i, alloc); },
                   [&](std::size_t i) { return s.GetInputTypeInfo(i); }, spec.inputs);
        check_side("outputs", s.GetOutputCount(), [&](std::size_t i) { return s.GetOutputNameAllocated(i, alloc); },
                   [&](std::size_t i) { return s.GetOutputTypeInfo(i); }, spec.outputs);
    }

    Ort::Env env_;
    std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
    std::string description_;
};

}  // namespace

std::unique_ptr<Backend> open_onnxruntime(const Manifest& manifest, const Options& options, const Device& device,
                                          const std::vector<std::string>& graphs) {
    init_ort_api();
    try {
        return std::make_unique<OrtBackend>(manifest, options, device, graphs);
    } catch (const Ort::Exception& e) {
        // Provider setup (e.g. the CUDA provider library failing to load) ends here.
        throw UnavailableError(std::string("backend 'onnxruntime' on ") + device.str() + ": " + e.what());
    }
}

std::string onnxruntime_build_info() {
    const char* lib = OrtGetApiBase()->GetVersionString();
    return std::string("onnxruntime ") + lib + " (headers API " + std::to_string(ORT_API_VERSION) + ")";
}

}  // namespace vae::detail
