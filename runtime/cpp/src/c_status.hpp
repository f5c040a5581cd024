// c_status.hpp - how every C entry point (c_api.cpp, image_c_api.cpp) reports: a status, plus one thread-local
// message per thread read by vae_last_error(). No exception crosses into C.
#pragma once

#include <new>
#include <exception>
#include <string>

#include "vae/runtime.hpp"
#include "vae_runtime.h"

namespace vae::detail {

// Stores the message of a failed call (cleared on success); never throws.
void set_last_error(const char* prefix, const char* message) noexcept;

inline vae_status fail(vae_status status, const char* prefix, const char* message) noexcept {
    set_last_error(prefix, message);
    return status;
}

// Runs f, turning every exception into a status; clears the last error on success.
template <class F>
vae_status guarded(F&& f) noexcept {
    try {
        f();
        set_last_error("", "");
        return VAE_OK;
    } catch (const vae::Error& e) {
        return fail(e.status(), "", e.what());
    } catch (const std::bad_alloc&) {
        return fail(VAE_ERR_INTERNAL, "", "out of memory");
    } catch (const std::exception& e) {
        return fail(VAE_ERR_INTERNAL, "internal error: ", e.what());
    } catch (...) {
        return fail(VAE_ERR_INTERNAL, "internal error: ", "unknown exception");
    }
}

}  // namespace vae::detail
