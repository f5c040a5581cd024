// onnxruntime_backend.cpp - ONNX Runtime backend: one Ort::Session per graph, execution provider chosen by the device
// (cpu -> CPU; cuda -> CUDA then CPU; execution_provider "tensorrt" -> TensorRT, CUDA, CPU), the same choice the
// Python backend (runtime/backends/onnxruntime.py) makes. Inputs and outputs are bound to the caller's buffers
// without copies. A provider this ONNX Runtime build lacks is refused, never silently replaced by the CPU.
//
// batch_split (CPU only, the Python backend's option of the same name): a batch >= the threshold is cut into one
// contiguous chunk per core, each run by its own single-threaded session on its own thread, inputs and outputs bound
// at the chunk's offset in the caller's buffers. ONNX Runtime parallelises one call op by op, and the decoder's
// ConvTranspose (per-image GEMM + col2im) scales poorly over threads; whole images per core share nothing. The
// per-core sessions are built on the first split call, so a cold start that decodes one image never pays for them.
//
// Every ONNX Runtime call gets at most kMaxChunk rows (the Python runtime's DEFAULT_MAX_CHUNK in
// runtime/backends/base.py): a bigger batch runs chunk by chunk, bound at each chunk's offset in the caller's buffers,
// batch_split applying to each chunk. ORT's intermediate buffers (kept by its arena) grow with one call's batch:
// 10,000 tiny latents in one call took ~530 MiB beyond their output, so memory is now bounded by the chunk (issue 16).
//
// ORT_API_MANUAL_INIT is defined for this target (CMake), so the C++ wrapper does not fetch the API table in a static
// initializer: we fetch it here, and a library older than the headers gives an UnavailableError instead of a crash.
#include <algorithm>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include <sched.h>

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

// Cores this process may run on, SMT siblings counted once (ONNX Runtime's default intra-op thread count): the
// (physical id, core id) pairs of /proc/cpuinfo within the affinity mask; where those are missing (ARM kernels, e.g.
// Jetson, which has no SMT), the number of usable CPUs. Mirrors runtime/backends/onnxruntime.py physical_cores().
int physical_cores() {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    const bool have_mask = sched_getaffinity(0, sizeof mask, &mask) == 0;
    const int allowed = have_mask ? CPU_COUNT(&mask) : static_cast<int>(std::thread::hardware_concurrency());
    std::ifstream f("/proc/cpuinfo");
    std::set<std::pair<std::string, std::string>> cores;
    std::string line, processor, physical = "0", core;
    auto flush = [&] {
        if (!processor.empty() && !core.empty()) {
            const int cpu = std::atoi(processor.c_str());
            if (!have_mask || (cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &mask))) cores.emplace(physical, core);
        }
        processor.clear();
        core.clear();
        physical = "0";
    };
    while (std::getline(f, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            flush();
            continue;
        }
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string key = line.substr(0, colon), value = line.substr(colon + 1);
        key.erase(key.find_last_not_of(" \t") + 1);
        value.erase(0, value.find_first_not_of(" \t"));
        if (key == "processor") processor = value;
        else if (key == "physical id") physical = value;
        else if (key == "core id") core = value;
    }
    flush();
    const int n = cores.empty() ? allowed : static_cast<int>(cores.size());
    return std::max(1, n);
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
        : env_(ORT_LOGGING_LEVEL_ERROR, "vae_runtime"), manifest_(m) {
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
        // batch_split: one single-threaded session per core, CPU provider only (there the cores are the device).
        // Default: the decoder from kDefaultBatchSplit; the encoder (all Conv) is 2-9% slower split.
        if (ep == "cpu" && opt.batch_split != -1)
            for (const auto& g : graphs) {
                const int n = opt.batch_split > 0 ? opt.batch_split : (g == "decoder" ? kDefaultBatchSplit : 0);
                if (n > 0) split_min_[g] = n;
            }
        split_workers_ = split_min_.empty() ? 1 : (opt.threads > 0 ? opt.threads : physical_cores());
        if (split_workers_ < 2) split_min_.clear();  // one core: nothing to split across
        std::string split_text;
        for (const auto& [g, n] : split_min_)
            split_text += (split_text.empty() ? ", batch_split " : ", ") + g + " >= " + std::to_string(n);
        if (!split_min_.empty()) {
            split_text += " over " + std::to_string(split_workers_) + " cores";
            worker_so_ = so.Clone();  // the main session's settings (CPU: no providers appended), one thread
            worker_so_.SetIntraOpNumThreads(1);
            worker_so_.SetInterOpNumThreads(1);
        }
        description_ = std::string("onnxruntime ") + OrtGetApiBase()->GetVersionString() + " (" + first + ", " +
                       dev.str() + ", " + opt.precision + split_text + ", max_chunk " + std::to_string(kMaxChunk) +
                       ")";

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
            files_.emplace(g, std::make_pair(file, opt.verify_sha256 ? sha : std::string()));
            workers_[g];  // the slot exists before any thread reads the map
        }
    }

    const std::string& description() const noexcept override { return description_; }

    void run(const GraphSpec& graph, const std::vector<InputBuffer>& inputs,
             const std::vector<OutputBuffer>& outputs) override {
        auto it = sessions_.find(graph.name);
        if (it == sessions_.end()) throw UnavailableError("graph '" + graph.name + "' was not loaded");
        const std::int64_t n = inputs.empty() ? 0 : inputs[0].shape[0];
        if (n <= kMaxChunk) {
            run_chunk(*it->second, graph, inputs, outputs, n);
            return;
        }
        for (std::int64_t begin = 0; begin < n; begin += kMaxChunk) {
            const std::int64_t end = std::min(n, begin + kMaxChunk);
            run_chunk(*it->second, graph, rows(inputs, begin, end), rows(outputs, begin, end), end - begin);
        }
    }

private:
    static constexpr int kDefaultBatchSplit = 32;
    static constexpr std::int64_t kMaxChunk = 256;

    void run_chunk(Ort::Session& session, const GraphSpec& graph, const std::vector<InputBuffer>& inputs,
                   const std::vector<OutputBuffer>& outputs, std::int64_t n) {
        const auto split = split_min_.find(graph.name);
        if (split != split_min_.end() && n >= split->second) {
            run_split(graph, inputs, outputs, n);
            return;
        }
        run_on(session, graph, inputs, outputs);
    }

    struct Workers {
        std::mutex mutex;  // guards sessions: built once, by the first split call, never changed afterwards
        std::vector<std::unique_ptr<Ort::Session>> sessions;
    };

    // Rows [begin, end) of every buffer: the same memory, offset by whole images.
    template <typename Buffer>
    static std::vector<Buffer> rows(const std::vector<Buffer>& all, std::int64_t begin, std::int64_t end) {
        std::vector<Buffer> out;
        for (const auto& b : all) {
            std::int64_t per_row = 1;
            for (std::size_t k = 1; k < b.shape.size(); ++k) per_row *= b.shape[k];
            Buffer c = b;
            c.data = b.data + begin * per_row;
            c.shape[0] = end - begin;
            out.push_back(std::move(c));
        }
        return out;
    }

    // The per-core sessions of a graph, built by the first split call. The file is checked again as at load
    // (sha256 when verify_sha256, then the graph's inputs/outputs): it may have changed since, and a split batch must
    // never run another model than an unsplit one.
    std::vector<Ort::Session*> worker_sessions(const GraphSpec& graph) {
        Workers& w = workers_.at(graph.name);
        std::lock_guard<std::mutex> lock(w.mutex);
        if (w.sessions.empty()) {
            const auto& [file, sha] = files_.at(graph.name);
            const std::string path = resolve_file(manifest_, file, sha);
            std::vector<std::unique_ptr<Ort::Session>> made;
            for (int i = 0; i < split_workers_; ++i) {
                try {
                    made.push_back(std::make_unique<Ort::Session>(env_, path.c_str(), worker_so_));
                } catch (const Ort::Exception& e) {
                    rethrow_load_error(path, e);
                }
                check_io(path, *made.back(), graph);
            }
            w.sessions = std::move(made);
        }
        std::vector<Ort::Session*> out;
        for (auto& p : w.sessions) out.push_back(p.get());
        return out;
    }

    void run_split(const GraphSpec& graph, const std::vector<InputBuffer>& inputs,
                   const std::vector<OutputBuffer>& outputs, std::int64_t n) {
        const std::vector<Ort::Session*> sessions = worker_sessions(graph);
        const std::int64_t k = std::min<std::int64_t>(static_cast<std::int64_t>(sessions.size()), n);
        std::vector<std::exception_ptr> errors(static_cast<std::size_t>(k));
        auto chunk = [&](std::int64_t i) {
            try {
                const std::int64_t begin = n * i / k, end = n * (i + 1) / k;
                run_on(*sessions[static_cast<std::size_t>(i)], graph, rows(inputs, begin, end),
                       rows(outputs, begin, end));
            } catch (...) {
                errors[static_cast<std::size_t>(i)] = std::current_exception();
            }
        };
        std::vector<std::thread> threads;
        threads.reserve(static_cast<std::size_t>(k));  // before any thread starts: only emplace_back's own start can fail
        std::int64_t started = 0;
        try {
            for (; started + 1 < k; ++started) threads.emplace_back(chunk, started);
        } catch (...) {
            // no thread to be had (std::system_error: thread limit, pids cgroup; std::bad_alloc for its state): the
            // chunks not started run here, in order. Untested: no test here can make thread creation fail.
        }
        for (std::int64_t i = started; i < k; ++i) chunk(i);  // at least the last chunk, on the calling thread
        for (auto& t : threads) t.join();
        for (auto& e : errors)
            if (e) std::rethrow_exception(e);
    }

    static void run_on(Ort::Session& session, const GraphSpec& graph, const std::vector<InputBuffer>& inputs,
                       const std::vector<OutputBuffer>& outputs) {
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
            session.Run(Ort::RunOptions{nullptr}, in_names.data(), in_values.data(), in_values.size(),
                        out_names.data(), out_values.data(), out_values.size());
        } catch (const Ort::Exception& e) {
            throw BackendError("onnxruntime: graph '" + graph.name + "' failed to run: " + e.what());
        }
    }

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
    Manifest manifest_;
    std::map<std::string, std::pair<std::string, std::string>> files_;  // graph -> (file, sha256 to check or "")
    std::map<std::string, Workers> workers_;  // filled in the constructor; sessions built on first split call
    Ort::SessionOptions worker_so_;
    std::map<std::string, int> split_min_;    // graph -> smallest batch split across the cores (absent: never)
    int split_workers_ = 1;
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
