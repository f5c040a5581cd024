// tensorrt_backend.cpp - native TensorRT backend: BUNDLE/engines/<graph>.<precision>.<gpu-slug>.trt<version>.plan
// plus its .json sidecar, the conventions of runtime/engines.py (read that file alongside this one).
//
// UNTESTED: compiled only when CMake finds TensorRT and CUDA (a Jetson with JetPack, a GPU box with TensorRT); CI
// and the development machines have neither, so this file has never been run by the test suite. Keep it small.
//
// - RAII: IRuntime -> ICudaEngine -> IExecutionContext held in unique_ptr, declared in that order so they are
//   destroyed in reverse; CUDA stream and device buffers are move-only owners. TensorRT 10+ objects are deleted with
//   `delete` (destroy() was removed in TensorRT 10). Destructors never throw.
// - Before an engine is deserialised its sidecar is checked like runtime.engines.require_usable: graph/precision,
//   TensorRT version, CPU architecture, Jetson L4T release, GPU name and compute capability, the ONNX file's sha256
//   against vae.json, and the plan's own sha256. Every mismatch is listed, with the command that rebuilds it here.
// - One execution context per graph, serialised by a mutex (a context is not re-entrant); enqueueV3 on a private
//   stream; batches beyond the optimisation profile's max are split into chunks, as the Python base class does.
#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>
#include <sys/utsname.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "sha256.hpp"

namespace vae::detail {
namespace {

using json = nlohmann::json;

const std::string kTrtVersion = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                                std::to_string(NV_TENSORRT_PATCH) + "." + std::to_string(NV_TENSORRT_BUILD);

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

std::string lower_slug(const std::string& gpu_name) {
    std::string name = std::regex_replace(gpu_name, std::regex("^\\s*nvidia\\s+", std::regex::icase), "");
    std::string out;
    bool dash = false;
    for (char c : name) {
        const char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if ((l >= 'a' && l <= 'z') || (l >= '0' && l <= '9')) {
            if (dash && !out.empty()) out += '-';
            out += l;
            dash = false;
        } else {
            dash = true;
        }
    }
    return out.empty() ? "gpu" : out;
}

std::string read_l4t() {  // "# R36 (release), REVISION: 4.3, ..." -> "36.4.3"; "" when not a Jetson
    std::ifstream f("/etc/nv_tegra_release");
    std::string line;
    if (!f || !std::getline(f, line)) return "";
    std::smatch m;
    if (!std::regex_search(line, m, std::regex("R(\\d+)\\s*\\(release\\),\\s*REVISION:\\s*([\\d.]+)"))) return "";
    std::string rev = m[2].str();
    while (!rev.empty() && rev.back() == '.') rev.pop_back();
    return m[1].str() + "." + rev;
}

std::string str_or(const json& j, const char* key, const std::string& dflt = "") {
    auto it = j.find(key);
    return (it != j.end() && it->is_string()) ? it->get<std::string>() : dflt;
}

struct GraphEngine {
    // Declaration order is destruction order reversed: the context dies before its engine.
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::unique_ptr<Stream> stream;
    std::vector<DeviceBuffer> buffers;  // one per IO tensor, in the manifest's order (inputs then outputs)
    std::int64_t max_batch = 0;
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
        gpu_name_ = prop.name;
        cc_ = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        slug_ = lower_slug(gpu_name_) + "-sm" + std::to_string(prop.major) + std::to_string(prop.minor);
        utsname u{};
        machine_ = ::uname(&u) == 0 ? u.machine : "unknown";
        l4t_ = read_l4t();

        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw UnavailableError("backend 'tensorrt': createInferRuntime failed: " + logger_.last());
        for (const auto& g : graphs) engines_[g] = open_graph(m, opt, m.graph(g));
        description_ = "tensorrt " + kTrtVersion + " (" + gpu_name_ + ", sm " + cc_ + ", " + dev.str() + ", " +
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
            run_chunk(graph, ge, inputs, outputs, start, n);
        }
    }

private:
    static std::size_t item_floats(const std::vector<std::int64_t>& shape) {
        std::size_t k = 1;
        for (std::size_t i = 1; i < shape.size(); ++i) k *= static_cast<std::size_t>(shape[i]);
        return k;
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
            ge.context->setTensorAddress(spec.name.c_str(), d);
        }
        for (std::size_t i = 0; i < outputs.size(); ++i, ++b) {
            const std::size_t bytes = item_floats(outputs[i].shape) * n * sizeof(float);
            ge.context->setTensorAddress(graph.outputs[i].name.c_str(), ge.buffers[b].reserve(bytes));
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
        const std::string stem = spec.name + "." + opt.precision + "." + slug_ + ".trt" + kTrtVersion;
        const std::string dir = m.root + "/engines/";
        const std::string plan = dir + stem + ".plan", sidecar = dir + stem + ".json";
        const std::string rebuild_default = "python -m export.to_tensorrt " + m.root + " --graphs " + spec.name +
                                            " --precision " + opt.precision;
        std::ifstream probe(plan, std::ios::binary);
        if (!probe)
            throw UnavailableError(plan + ": no " + opt.precision + " " + spec.name + " engine for this machine (" +
                                   "TensorRT " + kTrtVersion + ", GPU " + slug_ + ", " + machine_ +
                                   "). Build it here with:\n  " + rebuild_default);
        std::vector<char> bytes((std::istreambuf_iterator<char>(probe)), std::istreambuf_iterator<char>());
        const int dla_core = check_sidecar(m, opt, spec, plan, sidecar, bytes);

        auto ge = std::make_unique<GraphEngine>();
        // A DLA engine is deserialized with the runtime on the DLA core it was built for (trtexec --useDLACore does
        // the same at load); GPU engines leave the runtime's default.
        // export/trt_plan.py plans DLA builds for TensorRT 10.x only.
#if NV_TENSORRT_MAJOR <= 10
        if (dla_core >= 0) runtime_->setDLACore(dla_core);
#else
        if (dla_core >= 0)
            throw UnavailableError(plan + ": a DLA engine (core " + std::to_string(dla_core) + "); this runtime "
                                   "runs DLA engines with TensorRT 10.x (JetPack 6) only");
#endif
        ge->engine.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
        if (!ge->engine) throw BundleError(plan + ": TensorRT cannot deserialize this engine: " + logger_.last());
        ge->context.reset(ge->engine->createExecutionContext());
        if (!ge->context) throw BackendError(plan + ": createExecutionContext failed: " + logger_.last());
        ge->stream = std::make_unique<Stream>();
        std::vector<std::string> names;
        for (const auto& t : spec.inputs) names.push_back(t.name);
        for (const auto& t : spec.outputs) names.push_back(t.name);
        for (const auto& name : names) {
            if (ge->engine->getTensorDataType(name.c_str()) != nvinfer1::DataType::kFLOAT)
                throw UnavailableError(plan + ": tensor '" + name + "' is missing or not float32 in the engine; the "
                                       "C++ runtime feeds float32");
            ge->buffers.emplace_back();
        }
        const nvinfer1::Dims maxd = ge->engine->getProfileShape(spec.inputs[0].name.c_str(), 0,
                                                                nvinfer1::OptProfileSelector::kMAX);
        ge->max_batch = maxd.nbDims > 0 && maxd.d[0] > 0 ? maxd.d[0] : 1;
        return ge;
    }

    // Mirrors runtime.engines.check_sidecar: collect every reason, then refuse with all of them.
    // Returns the DLA core the engine was built for (build_options.dla_core), or -1 for a GPU engine.
    int check_sidecar(const Manifest& m, const Options& opt, const GraphSpec& spec, const std::string& plan,
                       const std::string& path, const std::vector<char>& bytes) {
        json sc;
        try {
            sc = json::parse(read_text_file(path));
        } catch (const json::parse_error& e) {
            throw UnavailableError(path + ": not valid JSON: " + e.what());
        } catch (const BundleError&) {
            throw UnavailableError(path + ": engine sidecar missing; an engine without provenance is never used "
                                   "(rebuild it with python -m export.to_tensorrt)");
        }
        if (!sc.is_object() || str_or(sc, "schema") != "vae-deploy/engine" || sc.value("schema_version", 0) != 1)
            throw UnavailableError(path + ": not a vae-deploy/engine sidecar of schema_version 1");
        std::vector<std::string> bad;
        try {
            if (str_or(sc, "graph") != spec.name || str_or(sc, "precision") != opt.precision)
                bad.push_back("graph/precision: engine is " + str_or(sc, "graph") + "/" + str_or(sc, "precision") +
                              ", asked for " + spec.name + "/" + opt.precision);
            const json& trt = sc.at("tensorrt");
            if (str_or(trt, "flavour") != "trt" || str_or(trt, "version") != kTrtVersion)
                bad.push_back("TensorRT: engine built with " + str_or(trt, "flavour") + " " + str_or(trt, "version") +
                              ", this machine has TensorRT " + kTrtVersion);
            const json& plat = sc.at("platform");
            if (str_or(plat, "machine") != machine_)
                bad.push_back("platform: engine built on " + str_or(plat, "machine") + ", this machine is " + machine_);
            const std::string l4t = str_or(plat, "l4t");
            if (!l4t.empty() && !l4t_.empty() && l4t != l4t_)
                bad.push_back("Jetson L4T: engine built on L4T " + l4t + ", this machine has L4T " + l4t_);
            const json& gpu = sc.at("gpu");
            if (gpu.is_null())
                bad.push_back("GPU: a portable (TensorRT-RTX) engine; the native backend runs TensorRT engines");
            else if (str_or(gpu, "name") != gpu_name_ || str_or(gpu, "compute_capability") != cc_)
                bad.push_back("GPU: engine built for " + str_or(gpu, "name") + " (compute capability " +
                              str_or(gpu, "compute_capability") + "), this machine has " + gpu_name_ + " (" + cc_ + ")");
            const json& src = sc.at("source");
            auto [file, sha] = m.graph_file(spec.name, opt.precision);
            if (str_or(src, "file") != file || str_or(src, "sha256") != sha)
                bad.push_back("ONNX: engine built from " + str_or(src, "file") + " sha256 " +
                              str_or(src, "sha256").substr(0, 12) + "..., the bundle now has " + file + " sha256 " +
                              sha.substr(0, 12) + "... (the graph changed since the build)");
            if (opt.verify_sha256) {
                const std::string actual = sha256_bytes(bytes.data(), bytes.size());
                const std::string want = str_or(sc.at("engine"), "sha256");
                if (actual != want)
                    bad.push_back("engine file: sha256 " + actual.substr(0, 12) + "..., sidecar says " +
                                  want.substr(0, 12) + "... (the plan was replaced or damaged after the build)");
            }
        } catch (const json::exception& e) {
            throw UnavailableError(path + ": malformed engine sidecar: " + e.what());
        }
        if (bad.empty()) {
            const json* bo = sc.contains("build_options") ? &sc["build_options"] : nullptr;
            return bo && bo->is_object() && bo->contains("dla_core") && (*bo)["dla_core"].is_number_integer()
                       ? (*bo)["dla_core"].get<int>() : -1;
        }
        std::string cmd = "python -m export.to_tensorrt " + m.root + " --graphs " + spec.name + " --precision " +
                          opt.precision;
        if (sc.contains("profile") && sc["profile"].contains("min")) {
            const json& p = sc["profile"];
            cmd += " --min-batch " + p["min"][0].dump() + " --opt-batch " + p["opt"][0].dump() + " --max-batch " +
                   p["max"][0].dump();
        }
        std::string msg = plan + ": refusing this engine:";
        for (const auto& b : bad) msg += "\n  - " + b;
        throw EngineMismatchError(msg + "\nrebuild it on this machine with:\n  " + cmd);
    }

    Logger logger_;  // outlives every TensorRT object below (declared first, destroyed last)
    Device device_;
    std::string gpu_name_, cc_, slug_, machine_, l4t_, description_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::map<std::string, std::unique_ptr<GraphEngine>> engines_;  // destroyed before runtime_
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const Manifest& manifest, const Options& options, const Device& device,
                                       const std::vector<std::string>& graphs) {
    return std::make_unique<TrtBackend>(manifest, options, device, graphs);
}

std::string tensorrt_build_info() { return "tensorrt " + kTrtVersion + " (native backend built, untested in CI)"; }

}  // namespace vae::detail
