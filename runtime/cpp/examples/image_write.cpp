// image_write.cpp - PNG (stored deflate), PPM/PGM writers and the float -> uint8 mapping; see image_write.hpp.
#include "image_write.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace imgio {
namespace {

std::uint32_t crc32(const std::uint8_t* p, std::size_t n, std::uint32_t crc = 0) {
    static std::uint32_t table[256];
    static bool ready = false;
    if (!ready) {
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = true;
    }
    crc = ~crc;
    for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

void put32(std::vector<std::uint8_t>& v, std::uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<std::uint8_t>(x >> s));
}

void chunk(std::vector<std::uint8_t>& out, const char* type, const std::vector<std::uint8_t>& data) {
    put32(out, static_cast<std::uint32_t>(data.size()));
    std::vector<std::uint8_t> body(type, type + 4);
    body.insert(body.end(), data.begin(), data.end());
    out.insert(out.end(), body.begin(), body.end());
    put32(out, crc32(body.data(), body.size()));
}

void write_atomic(const std::string& path, const std::vector<std::uint8_t>& bytes) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw std::runtime_error(tmp + ": cannot be opened for writing");
        f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        if (!f.flush()) throw std::runtime_error(tmp + ": write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw std::runtime_error(path + ": cannot rename the temporary file into place");
    }
}

void check(const std::vector<std::uint8_t>& pixels, int width, int height, int channels) {
    if ((channels != 1 && channels != 3) || width < 1 || height < 1 ||
        pixels.size() != static_cast<std::size_t>(width) * height * channels)
        throw std::runtime_error("image: expected height x width x (1 or 3) bytes");
}

}  // namespace

void write_png(const std::string& path, const std::vector<std::uint8_t>& pixels, int width, int height, int channels) {
    check(pixels, width, height, channels);
    // Raw scanlines, each prefixed by filter type 0.
    const std::size_t row = static_cast<std::size_t>(width) * channels;
    std::vector<std::uint8_t> raw;
    raw.reserve((row + 1) * height);
    for (int y = 0; y < height; ++y) {
        raw.push_back(0);
        raw.insert(raw.end(), pixels.begin() + y * row, pixels.begin() + (y + 1) * row);
    }
    // zlib stream: header, stored blocks of at most 65535 bytes, Adler-32.
    std::vector<std::uint8_t> z = {0x78, 0x01};
    for (std::size_t pos = 0; pos < raw.size() || raw.empty();) {
        const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
        const bool last = pos + n == raw.size();
        z.push_back(last ? 1 : 0);
        z.push_back(static_cast<std::uint8_t>(n & 0xff));
        z.push_back(static_cast<std::uint8_t>(n >> 8));
        z.push_back(static_cast<std::uint8_t>(~n & 0xff));
        z.push_back(static_cast<std::uint8_t>((~n >> 8) & 0xff));
        z.insert(z.end(), raw.begin() + pos, raw.begin() + pos + n);
        pos += n;
        if (last) break;
    }
    std::uint32_t a = 1, b = 0;
    for (std::uint8_t c : raw) {
        a = (a + c) % 65521;
        b = (b + a) % 65521;
    }
    put32(z, (b << 16) | a);

    std::vector<std::uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<std::uint8_t> ihdr;
    put32(ihdr, static_cast<std::uint32_t>(width));
    put32(ihdr, static_cast<std::uint32_t>(height));
    ihdr.insert(ihdr.end(), {8, static_cast<std::uint8_t>(channels == 3 ? 2 : 0), 0, 0, 0});
    chunk(out, "IHDR", ihdr);
    chunk(out, "IDAT", z);
    chunk(out, "IEND", {});
    write_atomic(path, out);
}

void write_pnm(const std::string& path, const std::vector<std::uint8_t>& pixels, int width, int height, int channels) {
    check(pixels, width, height, channels);
    const std::string head = std::string(channels == 3 ? "P6" : "P5") + "\n" + std::to_string(width) + " " +
                             std::to_string(height) + "\n255\n";
    std::vector<std::uint8_t> out(head.begin(), head.end());
    out.insert(out.end(), pixels.begin(), pixels.end());
    write_atomic(path, out);
}

std::vector<std::uint8_t> to_uint8_hwc(const float* chw, int channels, int height, int width, float lo, float hi) {
    std::vector<std::uint8_t> out(static_cast<std::size_t>(channels) * height * width);
    const float scale = static_cast<float>(255.0 / (static_cast<double>(hi) - static_cast<double>(lo)));
    for (int c = 0; c < channels; ++c)
        for (int y = 0; y < height; ++y)
            for (int x = 0; x < width; ++x) {
                float v = chw[(static_cast<std::size_t>(c) * height + y) * width + x];
                if (std::isnan(v)) v = lo;
                float s = std::nearbyint((v - lo) * scale);  // default rounding mode: half to even, like np.rint
                s = s < 0.f ? 0.f : (s > 255.f ? 255.f : s);
                out[(static_cast<std::size_t>(y) * width + x) * channels + c] = static_cast<std::uint8_t>(s);
            }
    return out;
}

}  // namespace imgio
