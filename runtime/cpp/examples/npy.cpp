// npy.cpp - a strict reader/writer for the .npy format (versions 1-3): little-endian float32 / float64, C order.
#include "npy.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

namespace npy {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
    throw std::runtime_error(path + ": " + what);
}

std::string dict_value(const std::string& header, const std::string& key) {
    std::smatch m;
    const std::regex re("'" + key + "'\\s*:\\s*('[^']*'|True|False|\\([^)]*\\))");
    return std::regex_search(header, m, re) ? m[1].str() : std::string();
}

}  // namespace

std::string shape_str(const std::vector<std::int64_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

Array load(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(path, "cannot be opened (missing or unreadable)");
    char magic[8];
    if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail(path, "not a .npy file (bad magic)");
    const int major = static_cast<unsigned char>(magic[6]);
    std::uint32_t hlen = 0;
    if (major == 1) {
        unsigned char b[2];
        if (!f.read(reinterpret_cast<char*>(b), 2)) fail(path, "truncated header");
        hlen = b[0] | (b[1] << 8);
    } else if (major == 2 || major == 3) {
        unsigned char b[4];
        if (!f.read(reinterpret_cast<char*>(b), 4)) fail(path, "truncated header");
        hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (std::uint32_t(b[3]) << 24);
    } else {
        fail(path, "unsupported .npy version " + std::to_string(major));
    }
    if (hlen > (1u << 20)) fail(path, "header too large");
    std::string header(hlen, '\0');
    if (!f.read(&header[0], hlen)) fail(path, "truncated header");

    const std::string descr = dict_value(header, "descr"), order = dict_value(header, "fortran_order"),
                      shape_txt = dict_value(header, "shape");
    if (descr.empty() || order.empty() || shape_txt.empty()) fail(path, "malformed header: " + header);
    int itemsize;
    if (descr == "'<f4'") itemsize = 4;
    else if (descr == "'<f8'") itemsize = 8;
    else fail(path, "dtype " + descr + ", expected float32 ('<f4') or float64 ('<f8')");
    if (order != "False") fail(path, "Fortran-ordered array; save it C-contiguous (np.ascontiguousarray)");
    Array a;
    std::string dims = shape_txt.substr(1, shape_txt.size() - 2);
    std::stringstream ss(dims);
    std::string item;
    std::size_t count = 1;
    while (std::getline(ss, item, ',')) {
        if (item.find_first_not_of(" ") == std::string::npos) continue;
        try {
            a.shape.push_back(std::stoll(item));
        } catch (const std::exception&) {
            fail(path, "malformed shape " + shape_txt);
        }
        if (a.shape.back() < 0 || a.shape.back() > (std::int64_t(1) << 32)) fail(path, "malformed shape " + shape_txt);
        count *= static_cast<std::size_t>(a.shape.back());
    }
    a.data.resize(count);
    if (itemsize == 4) {
        if (count && !f.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(count * 4)))
            fail(path, "truncated data: shape " + shape_str(a.shape) + " needs " + std::to_string(count * 4) + " bytes");
    } else {
        std::vector<double> tmp(count);
        if (count && !f.read(reinterpret_cast<char*>(tmp.data()), static_cast<std::streamsize>(count * 8)))
            fail(path, "truncated data: shape " + shape_str(a.shape) + " needs " + std::to_string(count * 8) + " bytes");
        for (std::size_t i = 0; i < count; ++i) a.data[i] = static_cast<float>(tmp[i]);
    }
    return a;
}

void save(const std::string& path, const std::vector<std::int64_t>& shape, const float* data) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_str(shape) + ", }";
    // Total header (magic 6 + version 2 + length 2 + dict + newline) padded to a multiple of 64, as NumPy does.
    const std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header.push_back('\n');
    std::size_t count = 1;
    for (auto d : shape) count *= static_cast<std::size_t>(d);
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) fail(tmp, "cannot be opened for writing");
        const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                       static_cast<unsigned char>(header.size() & 0xff),
                                       static_cast<unsigned char>(header.size() >> 8)};
        f.write(reinterpret_cast<const char*>(pre), 10);
        f.write(header.data(), static_cast<std::streamsize>(header.size()));
        f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
        if (!f.flush()) fail(tmp, "write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        fail(path, "cannot rename the temporary file into place");
    }
}

}  // namespace npy
