// cli.hpp - what the example programs' command lines share: usage errors, integer options, the output-format check,
// the runtime options every example takes, and main()'s mapping of failures to exit codes (like the Python CLIs:
// 2 bad input or something not available here, 1 a failure while running).
#pragma once

#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>

#include "vae/runtime.hpp"

namespace vae_examples {

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

inline long to_long(const std::string& flag, const std::string& v, long lo, long hi) {
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || x < lo || x > hi)
        throw UsageError(flag + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                         "], got '" + v + "'");
    return x;
}

// --backend / --device / --precision / --threads into `options`; false when `flag` is none of them.
template <class Value>
bool runtime_option(const std::string& flag, Value&& value, vae::Options& options) {
    if (flag == "--backend") options.backend = value();
    else if (flag == "--device") options.device = value();
    else if (flag == "--precision") options.precision = value();
    else if (flag == "--threads") options.threads = static_cast<int>(to_long(flag, value(), 0, 1024));
    else return false;
    return true;
}

inline void check_output_format(const std::string& format, const std::string& out) {
    if (format != "png" && format != "ppm" && format != "none")
        throw UsageError("--format: expected png, ppm or none, got '" + format + "'");
    if (format != "none" && out.empty()) throw UsageError("--out DIR is required unless --format none");
}

// parse(argc, argv) -> Args, then run(args) -> exit code; every failure is one line on stderr.
template <class Parse, class Run>
int run_main(const char* prog, const char* usage, int argc, char** argv, Parse parse, Run run) {
    decltype(parse(argc, argv)) args;
    try {
        args = parse(argc, argv);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "%s: error: %s\n%s", prog, e.what(), usage);
        return 2;
    }
    try {
        return run(args);
    } catch (const vae::Error& e) {
        std::fprintf(stderr, "%s: error: %s\n", prog, e.what());
        const vae_status st = e.status();
        return st == VAE_ERR_BACKEND || st == VAE_ERR_INTERNAL ? 1 : 2;
    } catch (const std::exception& e) {  // writing the outputs
        std::fprintf(stderr, "%s: error: %s\n", prog, e.what());
        return 1;
    }
}

}  // namespace vae_examples
