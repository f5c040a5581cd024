// tensorrt_backend.cpp - native TensorRT backend: BUNDLE/engines/<stem>.plan plus its .json sidecar, named and
// checked by engine_contract.cpp (the C++ half of runtime/engines.py, tested against it on golden sidecars).
//
// Compiled against the published TensorRT 10.3 and 11.1 headers in CI (tests/runtime/cpp/test_cpp_tensorrt_compile.py);
// never RUN there: that needs a Jetson or a GPU box with TensorRT. Keep it small.
//
// - RAII: IRuntime -> ICudaEngine -> IExecutionContext held in unique_ptr, declared in that order so they are
//   destroyed in reverse; CUDA stream and device buffers are move-only owners. TensorRT 10+ objects are deleted with
//   `delete` (destroy() was removed in TensorRT 10). Destructors never throw.
// - Before an engine is deserialised its sidecar is checked (engine_contract.cpp): graph/precision, DLA core,
//   TensorRT version, CPU architecture, Jetson L4T release, GPU identity, the ONNX file's sha256 against vae.json,
//   and the plan's own sha256. Every mismatch is listed, with the command that rebuilds it here.
// - One execution context per graph, serialised by a mutex (a context is not re-entrant); enqueueV3 on a private
//   stream; batches beyond the optimisation profile's max are split into chunks, as the Python base class does, and
//   a chunk below a fixed-shape (DLA) engine's min batch is padded with zero rows that are computed and dropped.
#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>
#include <sys/utsname.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "backend.hpp"
#include "engine_contract.hpp"
#include "sha256.hpp"

namespace vae::detail {
namespace {

// The headers say 10.3.0.30; engine names and sidecars carry the normalised 10.3.0 (what tensorrt.__version__ says).
const std::string kTrtVersion = normalize_trt_version(
    std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
    std::to_string(NV_TENSORRT_PATCH) + "." + std::to_string(NV_TENSORRT_BUILD));

void cuda_check(cudaError_t e, const std::string& what) {
    if (e != cudaSuccess) throw BackendError("CUDA: " + what + ": " + cudaGetErrorString(e));
}

class Logger final : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity > Severity::kWARNING) return;
        try {
            std::lock_guard<std::mutex> lock(mutex_);
            last_ = msg;
        } catch (...) {
        }
    }
    std::string last() {
        std::lock_guard<std::mutex> lock(mutex_);
        return last_;
    }

private:
    std::mutex mutex_;
    std::string last_;
};

class Stream {
public:
    Stream() { cuda_check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreate"); }
    ~Stream() {
        if (s_) cudaStreamDestroy(s_);
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    cudaStream_t get() const { return s_; }

private:
    cudaStream_t s_ = nullptr;
};

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    ~DeviceBuffer() {
        if (p_) cudaFree(p_);
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    void* reserve(std::size_t bytes) {
        if (bytes > bytes_) {
            if (p_) cudaFree(p_);
            p_ = nullptr;
            bytes_ = 0;
            cuda_check(cudaMalloc(&p_, bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes)");
            bytes_ = bytes;
        }
        return p_;
    }

private:
    void* p_ = nullptr;
    std::size_t bytes_ = 0;
};

std::string read_l4t() {  // "" when not a Jetson
    std::ifstream f("/etc/nv_tegra_release");
    std::string line;
    return f && std::getline(f, line) ? parse_tegra_release(line) : "";
}

struct GraphEngine {
    // Declaration order is destruction order reversed: the context dies before its engine.
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::unique_ptr<Stream> stream;
    std::vector<DeviceBuffer> buffers;  // one per IO tensor, in the manifest's order (inputs then outputs)
    std::int64_t min_batch = 1, max_batch = 0;
    std::vector<std::vector<float>> padded;  // host staging of a chunk padded up to min_batch (DLA engines)
    std::mutex mutex;
};

class TrtBackend final : public Backend {
public:
    TrtBackend(const Manifest& m, const Options& opt, const Device& dev, const std::vector<std::string>& graphs)
        : device_(dev) {
        const int lib = getInferLibVersion();
        const int hdr = NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
        if (lib != hdr)
            throw UnavailableError("backend 'tensorrt': libnvinfer is version " + std::to_string(lib) +
                                   ", this runtime was compiled with TensorRT " + kTrtVersion + " headers (" +
                                   std::to_string(hdr) + ")");
        cuda_check(cudaSetDevice(dev.index), "cudaSetDevice(" + std::to_string(dev.index) + ")");
        cudaDeviceProp prop{};
        cuda_check(cudaGetDeviceProperties(&prop, dev.index), "cudaGetDeviceProperties");
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw UnavailableError("backend 'tensorrt': createInferRuntime failed: " + logger_.last());
        host_.trt_version = kTrtVersion;
        host_.gpu_name = prop.name;  // trimmed as runtime/backends/tensorrt.py does, so both name the same GPU
        host_.gpu_name.erase(0, host_.gpu_name.find_first_not_of(" \t"));
        host_.gpu_name.erase(host_.gpu_name.find_last_not_of(" \t") + 1);
        host_.cc_major = prop.major;
        host_.cc_minor = prop.minor;
        host_.sm_count = prop.multiProcessorCount;
        host_.dla_cores = runtime_->getNbDLACores();
        utsname u{};
        host_.machine = ::uname(&u) == 0 ? u.machine : "unknown";
        host_.l4t = read_l4t();
        dla_core_ = opt.dla_core;
        if (dla_core_ >= 0) {
            if (dla_core_ >= host_.dla_cores)
                throw UnavailableError("backend 'tensorrt': dla_core " + std::to_string(dla_core_) + " asked for, " +
                                       "this device has " + std::to_string(host_.dla_cores) + " DLA core(s)");
            // DLA engines are deserialized with the runtime on the core asked for (trtexec --useDLACore does the
            // same at load). TensorRT 11.0-11.3 have no DLA at all; 11.4.1 brings it back on AGX Orin.
            runtime_->setDLACore(dla_core_);
        }
        for (const auto& g : graphs) engines_[g] = open_graph(m, opt, m.graph(g));
        description_ = "tensorrt " + kTrtVersion + " (" + host_.describe_gpu() + ", " + dev.str() +
                       (dla_core_ >= 0 ? ", DLA core " + std::to_string(dla_core_) : std::string()) + ", " +
                       opt.precision + ")";
    }

    const std::string& description() const noexcept override { return description_; }

    void run(const GraphSpec& graph, const std::vector<InputBuffer>& inputs,
             const std::vector<OutputBuffer>& outputs) override {
        auto it = engines_.find(graph.name);
        if (it == engines_.end()) throw UnavailableError("graph '" + graph.name + "' was not loaded");
        GraphEngine& ge = *it->second;
        std::lock_guard<std::mutex> lock(ge.mutex);
        cuda_check(cudaSetDevice(device_.index), "cudaSetDevice");
        const std::int64_t batch = inputs[0].shape[0];
        for (std::int64_t start = 0; start < batch; start += ge.max_batch) {
            const std::int64_t n = std::min(ge.max_batch, batch - start);
            if (n >= ge.min_batch) {
                run_chunk(graph, ge, inputs, outputs, start, n);
            } else {
                run_padded(graph, ge, inputs, outputs, start, n);
            }
        }
    }

private:
    static std::size_t item_floats(const std::vector<std::int64_t>& shape) {
        std::size_t k = 1;
        for (std::size_t i = 1; i < shape.size(); ++i) k *= static_cast<std::size_t>(shape[i]);
        return k;
    }

    // A chunk smaller than a fixed-shape (DLA) engine's batch: copied into zero-padded host buffers of min_batch
    // rows, run, and only its own rows copied out. The model's rows are independent, so the real rows are exact.
    void run_padded(const GraphSpec& graph, GraphEngine& ge, const std::vector<InputBuffer>& inputs,
                    const std::vector<OutputBuffer>& outputs, std::int64_t start, std::int64_t n) {
        const std::int64_t m = ge.min_batch;
        ge.padded.resize(inputs.size() + outputs.size());
        std::vector<InputBuffer> pin;
        std::vector<OutputBuffer> pout;
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            const std::size_t per = item_floats(inputs[i].shape);
            auto& buf = ge.padded[i];
            buf.assign(per * static_cast<std::size_t>(m), 0.f);
            std::copy(inputs[i].data + start * per, inputs[i].data + (start + n) * per, buf.begin());
            auto shape = inputs[i].shape;
            shape[0] = m;
            pin.push_back({buf.data(), shape});
        }
        for (std::size_t i = 0; i < outputs.size(); ++i) {
            auto& buf = ge.padded[inputs.size() + i];
            buf.assign(item_floats(outputs[i].shape) * static_cast<std::size_t>(m), 0.f);
            auto shape = outputs[i].shape;
            shape[0] = m;
            pout.push_back({buf.data(), shape});
        }
        run_chunk(graph, ge, pin, pout, 0, m);
        for (std::size_t i = 0; i < outputs.size(); ++i) {
            const std::size_t per = item_floats(outputs[i].shape);
            const auto& buf = ge.padded[inputs.size() + i];
            std::copy(buf.begin(), buf.begin() + n * per, outputs[i].data + start * per);
        }
    }

    void run_chunk(const GraphSpec& graph, GraphEngine& ge, const std::vector<InputBuffer>& inputs,
                   const std::vector<OutputBuffer>& outputs, std::int64_t start, std::int64_t n) {
        cudaStream_t s = ge.stream->get();
        std::size_t b = 0;
        for (std::size_t i = 0; i < inputs.size(); ++i, ++b) {
            const auto& spec = graph.inputs[i];
            const std::size_t per = item_floats(inputs[i].shape), bytes = per * n * sizeof(float);
            void* d = ge.buffers[b].reserve(bytes);
            nvinfer1::Dims dims{};
            dims.nbDims = static_cast<std::int32_t>(inputs[i].shape.size());
            dims.d[0] = n;
            for (int k = 1; k < dims.nbDims; ++k) dims.d[k] = inputs[i].shape[k];
            if (!ge.context->setInputShape(spec.name.c_str(), dims))
                throw BackendError("tensorrt: graph '" + graph.name + "': setInputShape('" + spec.name + "', batch " +
                                   std::to_string(n) + ") refused: " + logger_.last());
            cuda_check(cudaMemcpyAsync(d, inputs[i].data + start * per, bytes, cudaMemcpyHostToDevice, s), "copy in");
            if (!ge.context->setTensorAddress(spec.name.c_str(), d))
                throw BackendError("tensorrt: graph '" + graph.name + "': setTensorAddress('" + spec.name +
                                   "') refused: " + logger_.last());
        }
        for (std::size_t i = 0; i < outputs.size(); ++i, ++b) {
            const std::size_t bytes = item_floats(outputs[i].shape) * n * sizeof(float);
            const std::string& name = graph.outputs[i].name;
            if (!ge.context->setTensorAddress(name.c_str(), ge.buffers[b].reserve(bytes)))
                throw BackendError("tensorrt: graph '" + graph.name + "': setTensorAddress('" + name +
                                   "') refused: " + logger_.last());
        }
        if (!ge.context->enqueueV3(s))
            throw BackendError("tensorrt: graph '" + graph.name + "': enqueueV3 failed: " + logger_.last());
        b = inputs.size();
        for (std::size_t i = 0; i < outputs.size(); ++i, ++b) {
            const std::size_t per = item_floats(outputs[i].shape), bytes = per * n * sizeof(float);
            const void* d = ge.buffers[b].reserve(bytes);  // already large enough: returns the same pointer
            cuda_check(cudaMemcpyAsync(outputs[i].data + start * per, d, bytes, cudaMemcpyDeviceToHost, s), "copy out");
        }
        cuda_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    }

    std::unique_ptr<GraphEngine> open_graph(const Manifest& m, const Options& opt, const GraphSpec& spec) {
        const std::string stem = engine_stem(spec.name, opt.precision, host_, dla_core_);
        const std::string dir = m.root + "/engines/";
        const std::string plan = dir + stem + ".plan", sidecar = dir + stem + ".json";
        std::ifstream probe(plan, std::ios::binary);
        if (!probe)
            throw UnavailableError(plan + ": no " + opt.precision + " " + spec.name + " engine for this machine (" +
                                   "TensorRT " + kTrtVersion + ", GPU " + gpu_slug(host_) +
                                   (dla_core_ >= 0 ? ", DLA core " + std::to_string(dla_core_) : std::string()) +
                                   ", " + host_.machine + "). Build it here with:\n  python -m export.tensorrt.build " +
                                   m.root + " --graphs " + spec.name + " --precision " + opt.precision +
                                   (dla_core_ >= 0 ? " --dla-core " + std::to_string(dla_core_) : std::string()));
        // Plan and sidecar must lie inside the bundle after symlinks, like every file the manifest names.
        resolve_file(m, "engines/" + stem + ".plan", "");
        std::vector<char> bytes((std::istreambuf_iterator<char>(probe)), std::istreambuf_iterator<char>());
        std::string text;
        try {
            text = read_text_file(resolve_file(m, "engines/" + stem + ".json", ""));
        } catch (const BundleError&) {
            if (std::ifstream(sidecar)) throw;  // there, but outside the bundle or unreadable: say so
            throw UnavailableError(sidecar + ": engine sidecar missing; an engine without provenance is never used "
                                   "(rebuild it with python -m export.tensorrt.build)");
        }
        const std::string actual = opt.verify_sha256 ? sha256_bytes(bytes.data(), bytes.size()) : std::string();
        const SidecarVerdict verdict = check_sidecar(m, sidecar, text, spec.name, opt.precision, host_, dla_core_,
                                                     opt.verify_sha256 ? &actual : nullptr);
        if (!verdict.problems.empty()) {
            std::string msg = plan + ": refusing this engine:";
            for (const auto& p : verdict.problems) msg += "\n  - " + p;
            throw EngineMismatchError(msg + "\nrebuild it on this machine with:\n  " + verdict.rebuild);
        }

        auto ge = std::make_unique<GraphEngine>();
        ge->engine.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
        if (!ge->engine) throw BundleError(plan + ": TensorRT cannot deserialize this engine: " + logger_.last());
        ge->context.reset(ge->engine->createExecutionContext());
        if (!ge->context) throw BackendError(plan + ": createExecutionContext failed: " + logger_.last());
        ge->stream = std::make_unique<Stream>();
        std::vector<std::pair<std::string, nvinfer1::TensorIOMode>> names;
        for (const auto& t : spec.inputs) names.emplace_back(t.name, nvinfer1::TensorIOMode::kINPUT);
        for (const auto& t : spec.outputs) names.emplace_back(t.name, nvinfer1::TensorIOMode::kOUTPUT);
        for (const auto& [name, mode] : names) {
            // getTensorDataType says kFLOAT for a name the engine does not have: ask for the I/O mode first.
            const nvinfer1::TensorIOMode have = ge->engine->getTensorIOMode(name.c_str());
            if (have == nvinfer1::TensorIOMode::kNONE)
                throw UnavailableError(plan + ": the engine has no tensor '" + name + "' (graph '" + spec.name +
                                       "' in vae.json has it): built from another graph?");
            if (have != mode)
                throw UnavailableError(plan + ": tensor '" + name + "' is an " +
                                       (have == nvinfer1::TensorIOMode::kINPUT ? "input" : "output") +
                                       " of the engine, vae.json says " +
                                       (mode == nvinfer1::TensorIOMode::kINPUT ? "input" : "output"));
            if (ge->engine->getTensorDataType(name.c_str()) != nvinfer1::DataType::kFLOAT)
                throw UnavailableError(plan + ": tensor '" + name + "' is not float32 in the engine; the C++ "
                                       "runtime feeds float32");
            ge->buffers.emplace_back();
        }
        const char* in0 = spec.inputs[0].name.c_str();
        const nvinfer1::Dims mind = ge->engine->getProfileShape(in0, 0, nvinfer1::OptProfileSelector::kMIN);
        const nvinfer1::Dims maxd = ge->engine->getProfileShape(in0, 0, nvinfer1::OptProfileSelector::kMAX);
        ge->min_batch = mind.nbDims > 0 && mind.d[0] > 0 ? mind.d[0] : 1;
        ge->max_batch = maxd.nbDims > 0 && maxd.d[0] > 0 ? maxd.d[0] : 1;
        if (ge->min_batch > ge->max_batch)
            throw UnavailableError(plan + ": profile min batch " + std::to_string(ge->min_batch) + " > max batch " +
                                   std::to_string(ge->max_batch));
        return ge;
    }

    Logger logger_;  // outlives every TensorRT object below (declared first, destroyed last)
    Device device_;
    EngineHost host_;
    int dla_core_ = -1;
    std::string description_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::map<std::string, std::unique_ptr<GraphEngine>> engines_;  // destroyed before runtime_
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const Manifest& manifest, const Options& options, const Device& device,
                                       const std::vector<std::string>& graphs) {
    return std::make_unique<TrtBackend>(manifest, options, device, graphs);
}

std::string tensorrt_build_info() { return "tensorrt " + kTrtVersion + " (native backend; compiled in CI, run only on a GPU)"; }

}  // namespace vae::detail
