// vae_roundtrip - images of any size through the encoder and the decoder with the C++ runtime, timing each stage.
//
//   vae_roundtrip BUNDLE IMAGE.ppm [IMAGE.pgm ...] [--out DIR] [--format png|ppm|none] [--crop N]
//                 [--save-input x.npy] [--save-npy recon.npy] [--backend ...] [--device ...] [--precision ...]
//                 [--threads N] [--overwrite]
//
// Each image (binary PPM / PGM, any size: convert PNG / JPEG first, see image_read.hpp) is prepared as the training
// data was (vae/image.hpp: the model's channels, the largest centred square of at most --crop pixels - by default
// the crop the bundle's vae.json records, Runtime::center_crop(): training's --center-crop, 148 for bundles that
// record none, no limit for a model trained on uncropped images - Pillow's bilinear resize to image_size), encoded
// to its posterior mean, decoded, and written as DIR/recon_000.png
// ... (8-bit, like runtime.images.to_uint8). --save-input writes the prepared batch (N, C, S, S) float32,
// --save-npy the decoded one. Existing files are never replaced without --overwrite (exit 2, nothing written).
// Timing: load, read, prepare, encode, decode, to_pixels, write. Exit codes: 0 ok, 1 a failure while running,
// 2 bad input (usage, bundle, an unreadable image file, an unavailable backend). Errors are one line on stderr.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "cli.hpp"
#include "image_read.hpp"
#include "image_write.hpp"
#include "npy.hpp"
#include "vae/image.hpp"
#include "vae/runtime.hpp"

namespace {

using vae_examples::check_output_format;
using vae_examples::runtime_option;
using vae_examples::to_long;
using vae_examples::UsageError;

struct Args {
    std::string bundle, out, format = "png", save_input, save_npy;
    std::vector<std::string> images;
    std::optional<int> crop;  // --crop; unset: the bundle's (Runtime::center_crop)
    bool overwrite = false;
    vae::Options options;
};

const char* kUsage =
    "usage: vae_roundtrip BUNDLE IMAGE.ppm [IMAGE.pgm ...] [--out DIR] [--format png|ppm|none] [--crop N]\n"
    "                     [--save-input x.npy] [--save-npy recon.npy] [--backend onnxruntime|tensorrt]\n"
    "                     [--device cpu|cuda:N] [--precision fp32|fp16|int8] [--threads N] [--overwrite]\n";

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
        } else if (k == "--out") a.out = value();
        else if (k == "--format") a.format = value();
        else if (k == "--crop") a.crop = static_cast<int>(to_long(k, value(), 1, 1 << 16));
        else if (k == "--save-input") a.save_input = value();
        else if (k == "--save-npy") a.save_npy = value();
        else if (runtime_option(k, value, a.options)) continue;
        else if (k == "--overwrite") a.overwrite = true;
        else if (!k.empty() && k[0] == '-') throw UsageError("unknown option " + k);
        else pos.push_back(k);
    }
    if (pos.size() < 2) throw UsageError("expected a BUNDLE and at least one IMAGE");
    a.bundle = pos[0];
    a.images.assign(pos.begin() + 1, pos.end());
    check_output_format(a.format, a.out);
    return a;
}

std::string out_path(const Args& a, std::size_t i, int channels) {
    char name[40];
    const char* ext = a.format == "png" ? "png" : channels == 1 ? "pgm" : "ppm";
    std::snprintf(name, sizeof name, "recon_%03zu.%s", i, ext);
    return a.out + "/" + name;
}

// Before any work: nothing this run would write may exist already (unless --overwrite).
void check_outputs(const Args& a, int channels) {
    std::vector<std::string> paths;
    if (a.format != "none")
        for (std::size_t i = 0; i < a.images.size(); ++i) paths.push_back(out_path(a, i, channels));
    for (const std::string* p : {&a.save_input, &a.save_npy})
        if (!p->empty()) paths.push_back(*p);
    std::string existing;
    std::size_t n = 0;
    struct stat st;
    for (const std::string& p : paths)
        if (::stat(p.c_str(), &st) == 0 && n++ < 3) existing += (existing.empty() ? "" : ", ") + p;
    if (n && !a.overwrite)
        throw vae::InvalidArgumentError("would overwrite " + std::to_string(n) + " existing file(s): " + existing +
                                        (n > 3 ? " ..." : "") + "; pass --overwrite to replace them");
}

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

int run(const Args& a) {
    auto t0 = Clock::now();
    vae::Runtime rt(a.bundle, a.options);
    const double t_load = ms_since(t0);
    const vae::ModelInfo& info = rt.info();
    const int crop = a.crop.value_or(rt.center_crop());
    check_outputs(a, info.out_channels);

    t0 = Clock::now();
    std::vector<vae::Pixels> inputs;
    for (const std::string& path : a.images) {
        try {
            inputs.push_back(imgio::read_pnm(path));
        } catch (const std::runtime_error& e) {  // an unreadable or unsupported file: bad input
            throw vae::InvalidArgumentError(e.what());
        }
    }
    const double t_read = ms_since(t0);

    t0 = Clock::now();
    std::vector<float> x;
    for (const vae::Pixels& p : inputs) {
        const std::vector<float> one = vae::prepare_image(p.view(), info, crop);
        x.insert(x.end(), one.begin(), one.end());
    }
    const double t_prepare = ms_since(t0);
    const auto n = static_cast<std::int64_t>(inputs.size());

    t0 = Clock::now();
    std::vector<float> mu(rt.latent_elements(n)), logvar(mu.size());
    rt.encode(x, mu, logvar);
    const double t_encode = ms_since(t0);
    t0 = Clock::now();
    const std::vector<float> y = rt.decode(mu);
    const double t_decode = ms_since(t0);

    t0 = Clock::now();
    const std::size_t per = y.size() / inputs.size();
    std::vector<vae::Pixels> outputs;
    for (std::size_t i = 0; i < inputs.size(); ++i) outputs.push_back(vae::to_pixels(y.data() + i * per, info));
    const double t_convert = ms_since(t0);

    t0 = Clock::now();
    const int S = info.image_size;
    if (a.format != "none") {
        ::mkdir(a.out.c_str(), 0755);  // an existing folder is fine; a failure shows when the first file is written
        for (std::size_t i = 0; i < outputs.size(); ++i) {
            const std::string path = out_path(a, i, info.out_channels);
            if (a.format == "png") imgio::write_png(path, outputs[i].data, S, S, info.out_channels);
            else imgio::write_pnm(path, outputs[i].data, S, S, info.out_channels);
        }
    }
    if (!a.save_input.empty()) npy::save(a.save_input, {n, info.in_channels, S, S}, x.data());
    if (!a.save_npy.empty()) npy::save(a.save_npy, {n, info.out_channels, S, S}, y.data());
    const double t_write = ms_since(t0);

    const std::string crop_text = (crop == vae::kNoCenterCrop ? std::string("none") : "<= " + std::to_string(crop)) +
                                  (a.crop ? " from --crop" : " from the bundle");
    std::printf("vae_roundtrip: %s, %lld image(s) -> %d x %d x %d (centre crop %s, Pillow bilinear) -> latent %d\n",
                rt.backend_description().c_str(), static_cast<long long>(n), info.in_channels, S, S,
                crop_text.c_str(), info.latent_dim);
    for (std::size_t i = 0; i < inputs.size() && i < 8; ++i)
        std::printf("  %s: %d x %d x %d\n", a.images[i].c_str(), inputs[i].width, inputs[i].height,
                    inputs[i].channels);
    const struct { const char* name; double ms; } stages[] = {
        {"load", t_load}, {"read", t_read}, {"prepare", t_prepare}, {"encode", t_encode},
        {"decode", t_decode}, {"to_pixels", t_convert}, {"write", t_write}};
    for (const auto& s : stages) std::printf("  %-10s %10.3f ms\n", s.name, s.ms);
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return vae_examples::run_main("vae_roundtrip", kUsage, argc, argv, parse, run); }
