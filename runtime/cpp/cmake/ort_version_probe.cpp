// Configure-time probe (CMake try_run): compiled with the ONNX Runtime headers, linked and run against the library.
// Prints what CMake compares: the headers' C API version, the library's version string, and whether the library
// serves the headers' API version (a library older than the headers returns NULL from GetApi).
#include <cstdio>

#include <onnxruntime_c_api.h>

int main() {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* api = base->GetApi(ORT_API_VERSION);
    std::printf("VAE_ORT_HEADER_API=%d;VAE_ORT_LIBRARY_VERSION=%s;VAE_ORT_API_SERVED=%d\n", ORT_API_VERSION,
                base->GetVersionString(), api != nullptr ? 1 : 0);
    return 0;
}
