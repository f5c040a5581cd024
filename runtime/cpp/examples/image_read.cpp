// image_read.cpp - binary PPM / PGM reader; see image_read.hpp.
#include "image_read.hpp"

#include <cctype>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

namespace imgio {
namespace {

// The next header token: skips whitespace and '#' comments (to the end of the line).
std::string token(const std::vector<char>& bytes, std::size_t& pos) {
    while (pos < bytes.size()) {
        const unsigned char c = static_cast<unsigned char>(bytes[pos]);
        if (c == '#') {
            while (pos < bytes.size() && bytes[pos] != '\n') ++pos;
        } else if (std::isspace(c)) {
            ++pos;
        } else {
            break;
        }
    }
    std::string t;
    while (pos < bytes.size() && !std::isspace(static_cast<unsigned char>(bytes[pos])) && bytes[pos] != '#')
        t += bytes[pos++];
    return t;
}

int number(const std::string& path, const std::string& t, const char* what, int lo, int hi) {
    std::size_t used = 0;
    int v = 0;
    try {
        v = std::stoi(t, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (t.empty() || used != t.size() || v < lo || v > hi)
        throw std::runtime_error(path + ": PNM header: " + what + " '" + t + "', expected an integer in [" +
                                 std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
}

}  // namespace

vae::Pixels read_pnm(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": cannot be opened");
    const std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::size_t pos = 0;
    const std::string magic = token(bytes, pos);
    if (magic != "P6" && magic != "P5") {
        std::string shown;  // printable ASCII only: the message must stay valid text (a PNG starts with byte 0x89)
        for (const char ch : magic.substr(0, 8)) {
            const auto u = static_cast<unsigned char>(ch);
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", u);
            shown += (u >= 0x20 && u < 0x7f) ? std::string(1, ch) : std::string(hex);
        }
        throw std::runtime_error(path + ": not a binary PPM (P6) or PGM (P5) file (starts with '" + shown +
                                 "'); convert PNG / JPEG files to PPM first (see image_read.hpp)");
    }
    vae::Pixels img;
    img.channels = magic == "P6" ? 3 : 1;
    img.width = number(path, token(bytes, pos), "width", 1, 1 << 16);
    img.height = number(path, token(bytes, pos), "height", 1, 1 << 16);
    const int maxval = number(path, token(bytes, pos), "maxval", 1, 65535);
    if (maxval != 255)  // other scales would need Pillow's own rescaling to match training: not worth guessing
        throw std::runtime_error(path + ": maxval " + std::to_string(maxval) + ", expected 255 (8-bit samples)");
    ++pos;  // exactly one whitespace byte ends the header
    const std::size_t need = static_cast<std::size_t>(img.width) * img.height * img.channels;
    if (pos > bytes.size() || bytes.size() - pos < need)
        throw std::runtime_error(path + ": truncated: " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                                 "x" + std::to_string(img.channels) + " needs " + std::to_string(need) +
                                 " bytes of pixels, the file has " +
                                 std::to_string(pos > bytes.size() ? 0 : bytes.size() - pos));
    img.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(pos),
                    bytes.begin() + static_cast<std::ptrdiff_t>(pos + need));
    return img;
}

}  // namespace imgio
