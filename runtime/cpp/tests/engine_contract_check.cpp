// engine_contract_check.cpp - drives engine_contract.cpp (engine names, sidecar check) from the command line, so a
// Python test can put the C++ half of the engine contract next to runtime/engines.py on the same files and facts.
// No TensorRT or CUDA: the machine's facts are arguments, given as the libraries report them.
//
//   vae_engine_contract_check name  trt=10.3.0.30 gpu=Orin cc=8.7 sms=16 dla=2 graph=decoder precision=fp16 [dla_core=N]
//   vae_engine_contract_check check bundle=B sidecar=S.json <the facts above> machine=aarch64 [l4t=36.4.3] [engine=P]
//
// Prints key=value lines: stem=...; or problem=... (one per mismatch), rebuild=..., usable=0|1. A thrown vae::Error
// prints error=<status>:<message> and exits 1; bad arguments exit 2.
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <string>

#include "bundle.hpp"
#include "engine_contract.hpp"
#include "sha256.hpp"
#include "vae/runtime.hpp"

namespace {

using namespace vae::detail;

std::map<std::string, std::string> parse(int argc, char** argv) {
    std::map<std::string, std::string> kv;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        const auto eq = a.find('=');
        if (eq == std::string::npos) throw std::invalid_argument("expected key=value, got '" + a + "'");
        kv[a.substr(0, eq)] = a.substr(eq + 1);
    }
    return kv;
}

std::string need(const std::map<std::string, std::string>& kv, const std::string& key) {
    auto it = kv.find(key);
    if (it == kv.end()) throw std::invalid_argument("missing " + key + "=...");
    return it->second;
}

EngineHost host_from(const std::map<std::string, std::string>& kv) {
    EngineHost h;
    h.trt_version = normalize_trt_version(need(kv, "trt"));
    h.gpu_name = need(kv, "gpu");
    const std::string cc = need(kv, "cc");
    const auto dot = cc.find('.');
    if (dot == std::string::npos) throw std::invalid_argument("cc: expected MAJOR.MINOR, got '" + cc + "'");
    h.cc_major = std::stoi(cc.substr(0, dot));
    h.cc_minor = std::stoi(cc.substr(dot + 1));
    h.sm_count = std::stoi(need(kv, "sms"));
    h.dla_cores = std::stoi(need(kv, "dla"));
    h.machine = kv.count("machine") ? kv.at("machine") : "";
    h.l4t = kv.count("l4t") ? kv.at("l4t") : "";
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s name|check key=value...\n", argv[0]);
        return 2;
    }
    const std::string cmd = argv[1];
    try {
        const auto kv = parse(argc, argv);
        const EngineHost host = host_from(kv);
        const int dla_core = kv.count("dla_core") ? std::stoi(kv.at("dla_core")) : -1;
        if (cmd == "name") {
            std::cout << "stem=" << engine_stem(need(kv, "graph"), need(kv, "precision"), host, dla_core) << "\n";
            return 0;
        }
        if (cmd != "check") throw std::invalid_argument("unknown command '" + cmd + "'");
        const Manifest m = read_manifest(need(kv, "bundle"));
        const std::string sidecar = need(kv, "sidecar");
        std::string engine_sha;
        if (kv.count("engine")) engine_sha = sha256_file(kv.at("engine"));
        const SidecarVerdict v = check_sidecar(m, sidecar, read_text_file(sidecar), need(kv, "graph"),
                                               need(kv, "precision"), host, dla_core,
                                               kv.count("engine") ? &engine_sha : nullptr);
        for (const auto& p : v.problems) std::cout << "problem=" << p << "\n";
        std::cout << "rebuild=" << v.rebuild << "\n" << "usable=" << (v.problems.empty() ? 1 : 0) << "\n";
        return 0;
    } catch (const vae::Error& e) {
        std::cout << "error=" << static_cast<int>(e.status()) << ":" << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
        return 2;
    }
}
