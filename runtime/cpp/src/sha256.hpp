// sha256.hpp - SHA-256 of a file, to check graph and engine files against the hashes vae.json and sidecars record
// (the same check runtime/bundle.py's resolve_file does). A file changed after export is refused before loading.
#pragma once

#include <cstddef>
#include <string>

namespace vae::detail {

// Lower-case hex digest of the file's bytes. Throws vae::BundleError naming the file when it cannot be read.
std::string sha256_file(const std::string& path);
// Lower-case hex digest of bytes in memory (the TensorRT backend hashes the plan it has already read).
std::string sha256_bytes(const void* data, std::size_t size);

}  // namespace vae::detail
