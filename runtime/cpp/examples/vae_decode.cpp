// vae_decode - decode latents with the C++ runtime and write images, timing each stage.
//
//   vae_decode BUNDLE [--latents z.npy | --count N [--seed S]] [--out DIR] [--format png|ppm|none]
//              [--save-npy images.npy] [--save-latents z.npy] [--backend onnxruntime|tensorrt] [--device cpu|cuda:N]
//              [--precision fp32|fp16|int8] [--threads N] [--batch-split N|off] [--dla-core N] [--repeat R]
//              [--overwrite]
//
// Latents: a float32/float64 .npy of shape (N, latent_dim), or N seeded standard-normal draws, S in [0, 2^64) (default
// 0): the portable stream of normal_stream.hpp (SplitMix64 + Box-Muller), the one Python's runtime draws for
// `sample(N, seed=S)`, so both decode the same latents (equal, or rarely 1 ulp apart: runtime/rng.py).
// --save-latents writes the latents used as float32 (N, latent_dim). Images: one file per item, DIR/image_000.png ...
// mapped from the bundle's pixel range to 8 bits like runtime.images.to_uint8. Files that already exist (an image name
// it would write, the --save-npy / --save-latents file) are never replaced without --overwrite: the run stops before
// decoding, naming them (exit 2).
// Timing: load (read vae.json, hash and open the graphs), latents, decode (best and mean of R runs), to_uint8, write,
// first (process start -> first decoded batch) and the process's peak RSS (VmHWM, Linux).
// Exit codes: 0 ok, 1 a failure while running (engine error, writing images), 2 bad input: usage, bundle, latents
// (shape, NaN ...), an unavailable backend/precision. Errors are one line on stderr.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "cli.hpp"
#include "image_write.hpp"
#include "normal_stream.hpp"
#include "npy.hpp"
#include "vae/runtime.hpp"

namespace {

using vae_examples::check_output_format;
using vae_examples::runtime_option;
using vae_examples::to_long;
using vae_examples::UsageError;

struct Args {
    std::string bundle, latents, out, format = "png", save_npy, save_latents;
    long count = 0;
    std::uint64_t seed = 0;
    int repeat = 1;
    bool overwrite = false;
    vae::Options options;
};

const char* kUsage =
    "usage: vae_decode BUNDLE [--latents z.npy | --count N [--seed S]] [--out DIR] [--format png|ppm|none]\n"
    "                  [--save-npy images.npy] [--save-latents z.npy] [--backend onnxruntime|tensorrt]\n"
    "                  [--device cpu|cuda:N] [--precision fp32|fp16|int8] [--threads N] [--batch-split N|off]\n"
    "                  [--dla-core N] [--repeat R] [--overwrite]\n"
    "--seed S: latents of runtime.rng's portable stream, the ones Python's sample(N, seed=S) draws\n";

// A seed in [0, 2^64), decimal digits only (strtoull alone would accept "-1" as 2^64 - 1).
std::uint64_t to_seed(const std::string& flag, const std::string& v) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long x = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || *end != '\0' || errno == ERANGE)
        throw UsageError(flag + ": expected an integer in [0, 18446744073709551615], got '" + v + "'");
    return static_cast<std::uint64_t>(x);
}

Args parse(int argc, char** argv) {
    Args a;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw UsageError(k + ": missing value");
            return argv[++i];
        };
        if (k == "-h" || k == "--help") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        } else if (k == "--latents") a.latents = value();
        else if (k == "--count") a.count = to_long(k, value(), 1, 1 << 20);
        else if (k == "--seed") a.seed = to_seed(k, value());
        else if (k == "--out") a.out = value();
        else if (k == "--format") a.format = value();
        else if (k == "--save-npy") a.save_npy = value();
        else if (k == "--save-latents") a.save_latents = value();
        else if (runtime_option(k, value, a.options)) continue;
        else if (k == "--batch-split") {  // smallest batch cut into one chunk per core; off: never
            const std::string v = value();
            a.options.batch_split = v == "off" ? -1 : static_cast<int>(to_long(k, v, 2, 1 << 20));
        }
        else if (k == "--dla-core") a.options.dla_core = static_cast<int>(to_long(k, value(), 0, 15));
        else if (k == "--repeat") a.repeat = static_cast<int>(to_long(k, value(), 1, 100000));
        else if (k == "--overwrite") a.overwrite = true;
        else if (!k.empty() && k[0] == '-') throw UsageError("unknown option " + k);
        else pos.push_back(k);
    }
    if (pos.size() != 1) throw UsageError("expected one BUNDLE argument");
    a.bundle = pos[0];
    if (a.latents.empty() == (a.count == 0)) throw UsageError("give exactly one of --latents FILE or --count N");
    check_output_format(a.format, a.out);
    a.options.graphs = {"decoder"};  // a decoder-only app never needs the encoder loaded
    return a;
}

using Clock = std::chrono::steady_clock;
// Set during static initialisation, i.e. after the dynamic loader mapped the libraries, just before main().
const Clock::time_point kProcessStart = Clock::now();

// Peak resident set size of this process in KiB (VmHWM), or -1 where /proc is not available.
long peak_rss_kib() {
    std::FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kib = -1;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
    std::fclose(f);
    return kib;
}

std::string image_path(const Args& a, std::int64_t i) {
    char name[32];
    std::snprintf(name, sizeof name, "image_%03lld.%s", static_cast<long long>(i), a.format.c_str());
    return a.out + "/" + name;
}

// Before any decoding: the files this run would write must not exist already (unless --overwrite), and --out must be
// a folder if it exists. Throws InvalidArgumentError (exit 2) naming the files.
void check_outputs(const Args& a, std::int64_t batch) {
    struct stat st;
    std::vector<std::string> existing;
    if (a.format != "none") {
        if (::stat(a.out.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
            throw vae::InvalidArgumentError("--out " + a.out + ": exists and is not a folder");
        for (std::int64_t i = 0; i < batch; ++i)
            if (const std::string p = image_path(a, i); ::stat(p.c_str(), &st) == 0) existing.push_back(p);
    }
    if (!a.save_npy.empty() && ::stat(a.save_npy.c_str(), &st) == 0) existing.push_back(a.save_npy);
    if (!a.save_latents.empty() && ::stat(a.save_latents.c_str(), &st) == 0) existing.push_back(a.save_latents);
    if (existing.empty() || a.overwrite) return;
    std::string names;
    for (std::size_t i = 0; i < existing.size() && i < 3; ++i) names += (i ? ", " : "") + existing[i];
    if (existing.size() > 3) names += " and " + std::to_string(existing.size() - 3) + " more";
    throw vae::InvalidArgumentError("would overwrite " + std::to_string(existing.size()) + " existing file(s): " +
                                    names + "; pass --overwrite to replace them, or choose another --out / --save-npy"
                                    " / --save-latents");
}

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

int run(const Args& a) {
    auto t0 = Clock::now();
    vae::Runtime rt(a.bundle, a.options);
    const double t_load = ms_since(t0);
    const vae::ModelInfo& info = rt.info();

    t0 = Clock::now();
    std::vector<float> z;
    std::int64_t batch;
    if (!a.latents.empty()) {
        npy::Array arr;
        try {
            arr = npy::load(a.latents);
        } catch (const vae::Error&) {
            throw;
        } catch (const std::exception& e) {  // unreadable / malformed .npy: bad input
            throw vae::InvalidArgumentError(e.what());
        }
        if (arr.shape.size() != 2 || arr.shape[1] != info.latent_dim) {
            std::string hint = arr.shape.size() == 1 ? " (a single latent needs a batch axis: z[None])" : "";
            throw vae::ShapeError(a.latents + ": shape " + npy::shape_str(arr.shape) + ", expected (N, " +
                                  std::to_string(info.latent_dim) + ")" + hint);
        }
        batch = arr.shape[0];
        z = std::move(arr.data);
    } else {
        batch = a.count;
        z.resize(rt.latent_elements(batch));
        normal_stream::standard_normal(a.seed, z.data(), z.size());  // = Python's runtime.rng.standard_normal
    }
    const double t_latents = ms_since(t0);
    check_outputs(a, batch);

    std::vector<float> images(rt.image_elements(batch));
    double best = 1e300, total = 0, t_first = 0;
    for (int r = 0; r < a.repeat; ++r) {
        t0 = Clock::now();
        rt.decode(z.data(), batch, z.size(), images.data(), images.size());
        const double t = ms_since(t0);
        if (r == 0) t_first = ms_since(kProcessStart);
        best = std::min(best, t);
        total += t;
    }

    const int C = info.out_channels, S = info.image_size;
    const std::size_t per = static_cast<std::size_t>(C) * S * S;
    t0 = Clock::now();
    std::vector<std::vector<std::uint8_t>> pixels;
    if (a.format != "none")
        for (std::int64_t i = 0; i < batch; ++i)
            pixels.push_back(imgio::to_uint8_hwc(images.data() + i * per, C, S, S, info.pixel_min, info.pixel_max));
    const double t_convert = ms_since(t0);

    t0 = Clock::now();
    if (a.format != "none") {
        ::mkdir(a.out.c_str(), 0755);  // an existing folder is fine; a failure shows up when the first file is written
        for (std::int64_t i = 0; i < batch; ++i) {
            const std::string path = image_path(a, i);
            if (a.format == "png") imgio::write_png(path, pixels[i], S, S, C);
            else imgio::write_pnm(path, pixels[i], S, S, C);
        }
    }
    if (!a.save_npy.empty()) npy::save(a.save_npy, {batch, C, S, S}, images.data());
    if (!a.save_latents.empty()) npy::save(a.save_latents, {batch, info.latent_dim}, z.data());
    const double t_write = ms_since(t0);

    std::printf("vae_decode: %s, %lld latent(s) of %d -> %d x %d x %d images\n", rt.backend_description().c_str(),
                static_cast<long long>(batch), info.latent_dim, C, S, S);
    std::printf("  %-10s %10.3f ms\n", "load", t_load);
    std::printf("  %-10s %10.3f ms  (%s)\n", "latents", t_latents, a.latents.empty() ? "seeded" : a.latents.c_str());
    std::printf("  %-10s %10.3f ms  best of %d, mean %.3f ms, %.3f ms/item\n", "decode", best, a.repeat,
                total / a.repeat, best / static_cast<double>(batch));
    std::printf("  %-10s %10.3f ms\n", "to_uint8", t_convert);
    std::printf("  %-10s %10.3f ms  (%s)\n", "write", t_write,
                a.format == "none" ? (a.save_npy.empty() ? "nothing" : a.save_npy.c_str()) : a.out.c_str());
    std::printf("  %-10s %10.3f ms  (process start -> first decoded batch)\n", "first", t_first);
    if (const long kib = peak_rss_kib(); kib > 0) std::printf("  %-10s %10.1f MiB (VmHWM)\n", "peak_rss", kib / 1024.0);
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return vae_examples::run_main("vae_decode", kUsage, argc, argv, parse, run); }
