// engine_contract.cpp - see engine_contract.hpp; read runtime/engines.py alongside (same rules, same messages).
#include "engine_contract.hpp"

#include <algorithm>
#include <cctype>
#include <regex>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "vae/runtime.hpp"

namespace vae::detail {
namespace {

using json = nlohmann::json;

std::string str_or(const json& j, const char* key, const std::string& dflt = "") {
    auto it = j.find(key);
    return (it != j.end() && it->is_string()) ? it->get<std::string>() : dflt;
}

// build_options.dla_core: an integer core, or -1 for null / absent (a GPU engine).
int dla_of(const json& sc) {
    auto bo = sc.find("build_options");
    if (bo == sc.end() || !bo->is_object()) return -1;
    auto d = bo->find("dla_core");
    return (d != bo->end() && d->is_number_integer()) ? d->get<int>() : -1;
}

std::string dla_text(int core) { return core < 0 ? "a GPU engine" : "for DLA core " + std::to_string(core); }

std::string trt_label(const std::string& flavour, const std::string& version) {
    return (flavour == "trt_rtx" ? "TensorRT-RTX " : flavour == "trt" ? "TensorRT " : flavour + " ") + version;
}

struct SidecarGpu {
    std::string name, cc;
    int sm_count = 0, dla_cores = 0;
    std::string describe() const {
        std::string extra = sm_count ? ", " + std::to_string(sm_count) + " SMs" : "";
        if (dla_cores) extra += ", " + std::to_string(dla_cores) + " DLA cores";
        return name + " (compute capability " + cc + extra + ")";
    }
};

std::string quote(const std::string& s) {  // shlex.quote, for the rebuild command
    if (!s.empty() && std::regex_match(s, std::regex("[A-Za-z0-9@%+=:,./_-]+"))) return s;
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
    return out + "'";
}

}  // namespace

std::string normalize_trt_version(const std::string& text) {
    std::smatch m;
    if (!std::regex_search(text, m, std::regex("^\\s*(\\d+(?:\\.\\d+)*)")))
        throw InvalidArgumentError("TensorRT version: expected digits and dots like '10.3.0', got '" + text + "'");
    std::vector<std::string> parts;
    std::string cur;
    for (char c : m[1].str()) {
        if (c == '.') parts.push_back(cur), cur.clear();
        else cur += c;
    }
    parts.push_back(cur);
    while (parts.size() < 3) parts.push_back("0");
    std::string out;
    try {
        for (std::size_t i = 0; i < 3; ++i) out += (i ? "." : "") + std::to_string(std::stoll(parts[i]));
    } catch (const std::out_of_range&) {
        throw InvalidArgumentError("TensorRT version: a component of '" + text + "' is out of range");
    }
    return out;
}

std::string EngineHost::describe_gpu() const {
    return SidecarGpu{gpu_name, cc(), sm_count, dla_cores}.describe();
}

std::string gpu_slug(const EngineHost& host) {
    std::string name = std::regex_replace(host.gpu_name, std::regex("^\\s*nvidia\\s+", std::regex::icase), "");
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
    if (out.empty()) out = "gpu";
    out += "-sm" + std::to_string(host.cc_major) + std::to_string(host.cc_minor);
    if (host.sm_count) out += "-" + std::to_string(host.sm_count) + "sms";
    if (host.dla_cores) out += "-" + std::to_string(host.dla_cores) + "dla";
    return out;
}

std::string engine_stem(const std::string& graph, const std::string& precision, const EngineHost& host,
                        int dla_core) {
    const std::string dla = dla_core < 0 ? "" : ".dla" + std::to_string(dla_core);
    return graph + "." + precision + "." + gpu_slug(host) + dla + ".trt" + host.trt_version;
}

std::string parse_tegra_release(const std::string& line) {
    std::smatch m;
    if (!std::regex_search(line, m, std::regex("R(\\d+)\\s*\\(release\\),\\s*REVISION:\\s*([\\d.]+)"))) return "";
    std::string rev = m[2].str();
    while (!rev.empty() && rev.back() == '.') rev.pop_back();
    return m[1].str() + "." + rev;
}

const std::string* manifest_source_sha256(const Manifest& manifest, const std::string& graph,
                                          const std::string& file) {
    auto g = manifest.graphs.find(graph);
    if (g == manifest.graphs.end()) return nullptr;
    if (g->second.file == file) return &g->second.sha256;
    for (const auto& kv : g->second.variants)
        if (kv.second.file == file) return &kv.second.sha256;
    return nullptr;
}

SidecarVerdict check_sidecar(const Manifest& manifest, const std::string& sidecar_path, const std::string& sidecar_text,
                             const std::string& graph, const std::string& precision, const EngineHost& host,
                             int dla_core, const std::string* engine_sha256) {
    json sc;
    try {
        sc = json::parse(sidecar_text);
    } catch (const json::parse_error& e) {
        throw UnavailableError(sidecar_path + ": not valid JSON: " + e.what());
    }
    if (!sc.is_object() || str_or(sc, "schema") != kSidecarSchema || !sc.contains("schema_version") ||
        !sc["schema_version"].is_number_integer() || sc["schema_version"].get<int>() != kSidecarVersion)
        throw UnavailableError(sidecar_path + ": schema " + (sc.is_object() && sc.contains("schema") ?
                               sc["schema"].dump() : std::string("(none)")) + " version " +
                               (sc.is_object() && sc.contains("schema_version") ? sc["schema_version"].dump() :
                               std::string("(none)")) + ", expected '" + kSidecarSchema + "' version " +
                               std::to_string(kSidecarVersion) + " (rebuild it with python -m export.tensorrt.build)");
    SidecarVerdict v;
    auto& bad = v.problems;
    try {
        if (str_or(sc, "graph") != graph || str_or(sc, "precision") != precision)
            bad.push_back("graph/precision: engine is " + str_or(sc, "graph") + "/" + str_or(sc, "precision") +
                          ", asked for " + graph + "/" + precision);
        const int built_dla = dla_of(sc);
        if (built_dla != dla_core)
            bad.push_back("DLA: engine is " + dla_text(built_dla) + ", asked for " + dla_text(dla_core));
        const json& trt = sc.at("tensorrt");
        const std::string flavour = str_or(trt, "flavour"), version = str_or(trt, "version");
        std::string built_version = version;
        try {
            built_version = normalize_trt_version(version);
        } catch (const InvalidArgumentError&) {
        }
        if (flavour != "trt" || built_version != host.trt_version)
            bad.push_back("TensorRT: engine built with " + trt_label(flavour, built_version) + ", this machine has " +
                          trt_label("trt", host.trt_version));
        const json& plat = sc.at("platform");
        if (str_or(plat, "machine") != host.machine)
            bad.push_back("platform: engine built on " + str_or(plat, "machine") + ", this machine is " + host.machine);
        const std::string l4t = str_or(plat, "l4t");
        if (!l4t.empty() && !host.l4t.empty() && l4t != host.l4t)
            bad.push_back("Jetson L4T: engine built on L4T " + l4t + " (JetPack " + str_or(plat, "jetpack") +
                          "), this machine has L4T " + host.l4t);
        const json& gpu = sc.at("gpu");
        if (gpu.is_null()) {
            std::vector<std::string> ccs;
            if (sc.contains("compute_capabilities") && sc["compute_capabilities"].is_array())
                for (const auto& c : sc["compute_capabilities"])
                    if (c.is_string()) ccs.push_back(c.get<std::string>());
            std::string list = "[";
            for (std::size_t i = 0; i < ccs.size(); ++i) list += (i ? ", '" : "'") + ccs[i] + "'";
            list += "]";
            if (ccs.empty())
                bad.push_back("GPU: portable engine records no target compute capabilities (so nothing says it runs "
                              "on " + host.describe_gpu() + ")");
            else if (std::find(ccs.begin(), ccs.end(), host.cc()) == ccs.end())
                bad.push_back("GPU: portable engine targets compute capabilities " + list + ", this GPU (" +
                              host.gpu_name + ") is " + host.cc());
        } else {
            SidecarGpu built{str_or(gpu, "name"), str_or(gpu, "compute_capability"),
                             gpu.value("sm_count", 0), gpu.value("dla_cores", 0)};
            if (built.name != host.gpu_name || built.cc != host.cc() || built.sm_count != host.sm_count ||
                built.dla_cores != host.dla_cores)
                bad.push_back("GPU: engine built for " + built.describe() + ", this machine has " +
                              host.describe_gpu());
        }
        const json& src = sc.at("source");
        const std::string src_file = str_or(src, "file"), src_sha = str_or(src, "sha256");
        // Any of the graph's files: a TensorRT 10 FP16 engine is built from the FP32 graph, an 11.x one from the
        // FP16 variant (as runtime.engines.manifest_source_sha256).
        const std::string* current = manifest_source_sha256(manifest, graph, src_file);
        const std::string now_file = current ? src_file : "(not in vae.json)";
        const std::string now_sha = current ? *current : "-";
        if (!current || src_sha != *current)
            bad.push_back("ONNX: engine built from " + src_file + " sha256 " + src_sha.substr(0, 12) +
                          "..., the bundle now has " + now_file + " sha256 " + now_sha.substr(0, 12) +
                          "... (the graph changed since the build)");
        if (engine_sha256 != nullptr) {
            const std::string want = str_or(sc.at("engine"), "sha256");
            if (*engine_sha256 != want)
                bad.push_back("engine file: sha256 " + engine_sha256->substr(0, 12) + "..., sidecar says " +
                              want.substr(0, 12) + "... (the plan was replaced or damaged after the build)");
        }
    } catch (const json::exception& e) {
        throw UnavailableError(sidecar_path + ": malformed engine sidecar: " + e.what());
    }
    // As runtime.engines.sidecar_rebuild_command.
    std::string cmd = "python -m export.tensorrt.build " + quote(manifest.root) + " --graphs " + quote(graph) +
                      " --precision " + quote(precision);
    const json& p = sc.contains("profile") ? sc["profile"] : json();
    if (p.is_object() && p.contains("min") && p["min"].is_array() && !p["min"].empty() && p.contains("opt") &&
        p["opt"].is_array() && !p["opt"].empty() && p.contains("max") && p["max"].is_array() && !p["max"].empty())
        cmd += " --min-batch " + p["min"][0].dump() + " --opt-batch " + p["opt"][0].dump() + " --max-batch " +
               p["max"][0].dump();
    const json& bo = sc.contains("build_options") ? sc["build_options"] : json();
    if (bo.is_object() && bo.contains("workspace_mib") && bo["workspace_mib"].is_number_integer())
        cmd += " --workspace " + bo["workspace_mib"].dump();
    if (dla_of(sc) >= 0) cmd += " --dla-core " + std::to_string(dla_of(sc));
    v.rebuild = cmd;
    return v;
}

}  // namespace vae::detail
