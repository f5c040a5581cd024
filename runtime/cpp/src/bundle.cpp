// bundle.cpp - read and validate vae.json (see bundle.hpp). Every error names the file and the offending field.
#include "bundle.hpp"

#include <sys/stat.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sha256.hpp"
#include "vae/runtime.hpp"

namespace vae::detail {
namespace {

using json = nlohmann::json;

bool is_dir(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join(const std::string& a, const std::string& b) {
    if (a.empty()) return b;
    return a.back() == '/' ? a + b : a + "/" + b;
}

// Field accessors that say which field is wrong: "vae.json: model.latent_dim: expected an integer, got string".
class Reader {
public:
    explicit Reader(std::string source) : source_(std::move(source)) {}

    [[noreturn]] void fail(const std::string& where, const std::string& what) const {
        throw BundleError(source_ + ": " + where + ": " + what);
    }

    const json& get(const json& obj, const std::string& key, const std::string& where) const {
        if (!obj.is_object()) fail(where, std::string("expected an object, got ") + obj.type_name());
        auto it = obj.find(key);
        if (it == obj.end()) fail(where.empty() ? key : where + "." + key, "missing");
        return *it;
    }

    std::int64_t integer(const json& obj, const std::string& key, const std::string& where) const {
        const json& v = get(obj, key, where);
        if (!v.is_number_integer()) fail(where + "." + key, std::string("expected an integer, got ") + v.type_name());
        return v.get<std::int64_t>();
    }

    std::string string(const json& obj, const std::string& key, const std::string& where) const {
        const json& v = get(obj, key, where);
        if (!v.is_string()) fail(where + "." + key, std::string("expected a string, got ") + v.type_name());
        return v.get<std::string>();
    }

    // An integer in [1, max]: the model section's bounds are runtime/bundle.py's (MODEL_BOUNDS, with the reasons).
    int positive(const json& obj, const std::string& key, const std::string& where, std::int64_t max = 1 << 20) const {
        std::int64_t v = integer(obj, key, where);
        if (v < 1 || v > max)
            fail(where + "." + key, "expected an integer in [1, " + std::to_string(max) + "], got " + std::to_string(v));
        return static_cast<int>(v);
    }

    // A graph or variant file's sha256 is required: an empty one would turn the check off (resolve_file).
    std::string sha256(const json& obj, const std::string& where) const {
        std::string s = string(obj, "sha256", where);
        bool hex = s.size() == 64;
        for (char c : s) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
        if (!hex) fail(where + ".sha256", "expected the file's sha256 (64 hex digits), got '" + s + "'");
        return s;
    }

    TensorSpec tensor(const json& t, const std::string& where) const {
        TensorSpec s;
        s.name = string(t, "name", where);
        const json& shape = get(t, "shape", where);
        if (!shape.is_array()) fail(where + ".shape", std::string("expected a list, got ") + shape.type_name());
        for (const json& d : shape) {
            if (d.is_number_integer()) s.shape.push_back(d.get<std::int64_t>());
            else if (d.is_string()) s.shape.push_back(-1);
            else fail(where + ".shape", std::string("axes are integers or names, got ") + d.type_name());
        }
        if (t.contains("dtype")) s.dtype = string(t, "dtype", where);
        return s;
    }

private:
    std::string source_;
};

// "preprocess" (optional; runtime/bundle.py PreprocessSpec): the centre crop training applied before the resize.
// Absent: kTrainCenterCrop, as before vae.json recorded it; null: no crop (kNoCenterCrop, the largest centred square).
int read_center_crop(const Reader& r, const json& doc) {
    const auto it = doc.find("preprocess");
    if (it == doc.end()) return kTrainCenterCrop;
    const json& crop = r.get(*it, "center_crop", "preprocess");
    if (!crop.is_null()) {
        const bool ok = crop.is_number_integer() && crop.get<std::int64_t>() >= 1 &&
                        crop.get<std::int64_t>() <= std::int64_t{kNoCenterCrop};
        if (!ok)
            r.fail("preprocess.center_crop", "expected an integer in [1, " + std::to_string(kNoCenterCrop) +
                                                 "] (training's --center-crop) or null (no crop), got " + crop.dump());
    }
    const auto resize = it->find("resize");
    if (resize != it->end() && *resize != "bilinear")
        r.fail("preprocess.resize", "expected one of [bilinear] (the filter the runtimes reproduce), got " +
                                        resize->dump());
    const auto source = it->find("source");
    if (source != it->end() && !source->is_string())
        r.fail("preprocess.source", std::string("expected a string, got ") + source->type_name());
    return crop.is_null() ? kNoCenterCrop : static_cast<int>(crop.get<std::int64_t>());
}

}  // namespace

std::string shape_str(const std::vector<std::int64_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += shape[i] < 0 ? "N" : std::to_string(shape[i]);
    }
    return s + ")";
}

std::string read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw BundleError(path + ": cannot be opened for reading");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) throw BundleError(path + ": read error");
    return ss.str();
}

const GraphSpec& Manifest::graph(const std::string& name) const {
    auto it = graphs.find(name);
    if (it == graphs.end()) {
        std::string have;
        for (const auto& kv : graphs) have += (have.empty() ? "" : ", ") + kv.first;
        throw UnavailableError("bundle " + root + " has no '" + name + "' graph (it has: " + have + ")");
    }
    return it->second;
}

std::pair<std::string, std::string> Manifest::graph_file(const std::string& graph_name,
                                                         const std::string& precision) const {
    const GraphSpec& g = graph(graph_name);
    if (precision == "fp32") return {g.file, g.sha256};
    auto it = g.variants.find(precision);
    if (it == g.variants.end()) {
        std::string have = "fp32";
        for (const auto& kv : g.variants) have += ", " + kv.first;
        throw UnavailableError("graph '" + graph_name + "' has no '" + precision + "' variant (it has: " + have +
                               "); create it with `python -m export.precision.fp16` or `python -m export.precision.int8`");
    }
    return {it->second.file, it->second.sha256};
}

Manifest read_manifest(const std::string& bundle) {
    Manifest m;
    if (is_dir(bundle)) {
        m.root = bundle;
        m.path = join(bundle, kManifestName);
    } else {
        m.path = bundle;
        auto slash = bundle.find_last_of('/');
        m.root = slash == std::string::npos ? "." : bundle.substr(0, slash == 0 ? 1 : slash);
    }
    if (!is_file(m.path)) {
        if (!is_dir(m.root) && m.path != bundle) throw BundleError(bundle + ": no such bundle folder");
        throw BundleError(m.path + ": no bundle manifest here (expected " + kManifestName +
                          " written by export.to_onnx)");
    }
    json doc;
    try {
        doc = json::parse(read_text_file(m.path));
    } catch (const json::parse_error& e) {
        throw BundleError(m.path + ": not valid JSON: " + e.what());
    }
    Reader r(m.path);
    if (!doc.is_object()) r.fail("top level", std::string("expected a JSON object, got ") + doc.type_name());
    {
        auto it = doc.find("schema");
        std::string schema = (it != doc.end() && it->is_string()) ? it->get<std::string>() : "(missing)";
        if (schema != kSchema) r.fail("schema", "'" + schema + "', expected '" + kSchema + "'");
        auto v = doc.find("schema_version");
        if (v == doc.end() || !v->is_number_integer() || v->get<std::int64_t>() != kSchemaVersion)
            r.fail("schema_version", (v == doc.end() ? std::string("missing") : v->dump()) + ", this runtime reads " +
                                         std::to_string(kSchemaVersion));
    }
    const json& model = r.get(doc, "model", "");
    m.model.in_channels = r.positive(model, "in_channels", "model", 64);
    m.model.out_channels = r.positive(model, "out_channels", "model", 64);
    m.model.image_size = r.positive(model, "image_size", "model", 8192);
    m.model.latent_dim = r.positive(model, "latent_dim", "model", 65536);
    const std::int64_t elements = std::int64_t{m.model.in_channels} * m.model.image_size * m.model.image_size;
    if (elements > (std::int64_t{1} << 28))
        r.fail("model", "in_channels x image_size^2 = " + std::to_string(elements) +
                            " values per image, expected at most " + std::to_string(std::int64_t{1} << 28));
    const json& hd = r.get(model, "hidden_dims", "model");
    if (!hd.is_array()) r.fail("model.hidden_dims", std::string("expected a list, got ") + hd.type_name());
    for (const json& h : hd) {
        if (!h.is_number_integer()) r.fail("model.hidden_dims", "expected integers");
        m.model.hidden_dims.push_back(h.get<int>());
    }
    const json& pr = r.get(doc, "pixel_range", "");
    if (!pr.is_array() || pr.size() != 2 || !pr[0].is_number() || !pr[1].is_number())
        r.fail("pixel_range", "expected [low, high], got " + pr.dump());
    m.pixel_min = pr[0].get<float>();
    m.pixel_max = pr[1].get<float>();
    if (!(m.pixel_min < m.pixel_max)) r.fail("pixel_range", "expected low < high, got " + pr.dump());
    m.center_crop = read_center_crop(r, doc);

    const json& graphs = r.get(doc, "graphs", "");
    if (!graphs.is_object() || graphs.empty()) r.fail("graphs", "expected one or both of [encoder, decoder]");
    const ModelSpec& ms = m.model;
    const std::int64_t S = ms.image_size, D = ms.latent_dim;
    // The tensor each graph must carry, with the shape the model implies (batch axis symbolic).
    const std::map<std::string, std::pair<std::vector<TensorSpec>, std::vector<TensorSpec>>> io = {
        {kEncoder, {{{kImage, {-1, ms.in_channels, S, S}}}, {{kMu, {-1, D}}, {kLogvar, {-1, D}}}}},
        {kDecoder, {{{kZ, {-1, D}}}, {{kImage, {-1, ms.out_channels, S, S}}}}},
    };
    for (auto it = graphs.begin(); it != graphs.end(); ++it) {
        const std::string name = it.key(), where = "graphs." + name;
        auto want = io.find(name);
        if (want == io.end()) r.fail("graphs", "unknown graph '" + name + "'; expected one or both of [encoder, decoder]");
        const json& g = it.value();
        GraphSpec spec;
        spec.name = name;
        spec.file = r.string(g, "file", where);
        spec.sha256 = r.sha256(g, where);
        spec.opset = static_cast<int>(r.integer(g, "opset", where));
        for (const char* side : {"inputs", "outputs"}) {
            const json& list = r.get(g, side, where);
            if (!list.is_array()) r.fail(where + "." + side, "expected a list");
            auto& dst = std::string(side) == "inputs" ? spec.inputs : spec.outputs;
            const auto& expected = std::string(side) == "inputs" ? want->second.first : want->second.second;
            for (std::size_t i = 0; i < list.size(); ++i)
                dst.push_back(r.tensor(list[i], where + "." + side + "[" + std::to_string(i) + "]"));
            std::string got_names, want_names;
            for (const auto& t : dst) got_names += (got_names.empty() ? "" : ", ") + t.name;
            for (const auto& t : expected) want_names += (want_names.empty() ? "" : ", ") + t.name;
            if (got_names != want_names)
                r.fail(where + "." + side, "tensors [" + got_names + "], expected [" + want_names + "]");
            for (std::size_t i = 0; i < dst.size(); ++i) {
                const auto& a = dst[i].shape;
                const auto& e = expected[i].shape;
                bool ok = a.size() == e.size();
                for (std::size_t k = 0; ok && k < a.size(); ++k) ok = (e[k] < 0) ? (a[k] < 0 || a[k] >= 1) : a[k] == e[k];
                if (!ok)
                    r.fail(where + "." + side + " '" + dst[i].name + "'", "shape " + shape_str(a) +
                                                                                ", the model config implies " + shape_str(e));
                if (dst[i].dtype != "float32" && dst[i].dtype != "float16")
                    r.fail(where + "." + side + " '" + dst[i].name + "'", "dtype '" + dst[i].dtype + "', expected float32");
            }
        }
        if (g.contains("variants")) {
            const json& vs = g["variants"];
            if (!vs.is_object()) r.fail(where + ".variants", "expected an object");
            for (auto v = vs.begin(); v != vs.end(); ++v) {
                VariantSpec var;
                var.precision = v.key();
                var.file = r.string(v.value(), "file", where + ".variants." + v.key());
                var.sha256 = r.sha256(v.value(), where + ".variants." + v.key());
                spec.variants[var.precision] = var;
            }
        }
        m.graphs[name] = std::move(spec);
    }
    return m;
}

std::string resolve_file(const Manifest& m, const std::string& name, const std::string& sha256) {
    // Names are relative and stay inside the bundle: a manifest must not make the runtime read elsewhere.
    if (name.empty() || name[0] == '/' || name == ".." || name.rfind("../", 0) == 0 ||
        name.find("/../") != std::string::npos)
        throw BundleError(m.path + ": file name '" + name + "' must be a relative path inside the bundle");
    const std::string path = join(m.root, name);
    if (!is_file(path)) throw BundleError(path + ": listed in " + m.path + " but missing");
    // ... also after symlinks: the file itself must lie inside the bundle folder.
    char real[PATH_MAX], base[PATH_MAX];
    if (!::realpath(path.c_str(), real) || !::realpath(m.root.c_str(), base))
        throw BundleError(path + ": cannot be resolved");
    const std::string r(real), b(base);
    if (r.compare(0, b.size(), b) != 0 || (b != "/" && r.size() > b.size() && r[b.size()] != '/'))
        throw BundleError(path + ": resolves to " + r + ", outside the bundle " + b +
                          "; expected a file inside the bundle (a symlink out of it is refused)");
    if (!sha256.empty()) {
        const std::string actual = sha256_file(path);
        if (actual != sha256)
            throw BundleError(path + ": sha256 " + actual.substr(0, 12) + "..., manifest says " + sha256.substr(0, 12) +
                              "...: the file changed after export; re-export the bundle");
    }
    return path;
}

}  // namespace vae::detail
