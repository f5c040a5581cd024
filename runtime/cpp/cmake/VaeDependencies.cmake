# VaeDependencies.cmake - find (or fetch) ONNX Runtime, nlohmann/json and, optionally, TensorRT.
#
# ONNX Runtime, in this order:
#   1. -DONNXRUNTIME_INCLUDE_DIR=... -DONNXRUNTIME_LIBRARY=... (headers and library from different places)
#   2. -DONNXRUNTIME_ROOT=<dir> or the environment variable ONNXRUNTIME_ROOT: the official release archive layout
#      (<dir>/include/onnxruntime_c_api.h, <dir>/lib/libonnxruntime.so), also a source build's install prefix
#   3. find_package(onnxruntime CONFIG): an ONNX Runtime installed with its CMake package (e.g. under /usr/local)
#   4. VAE_FETCH_DEPS=ON (default): scripts/fetch_deps.py fetches ONNX Runtime 1.32.0 into third_party/: the library
#      from the PyPI wheel onnxruntime==1.32.0 (the Python runtime's release), the C/C++ headers of ONNX Runtime
#      1.29.0 (C API 29) from npm, the newest a reachable registry carries (see that script's docstring)
# Then the ABI check: a probe is compiled with the headers and run against the library. The library must serve the
# headers' C API version: ORT_API_VERSION <= the library's minor version and OrtGetApiBase()->GetApi(ORT_API_VERSION)
# != NULL (ONNX Runtime's C API is versioned and append-only, so code built against API N runs on any release >= 1.N).
# A library older than its headers is refused. VAE_ORT_ALLOW_NEWER_LIBRARY=OFF also refuses a newer library (headers
# and library of one release only).
#
# Results: imported target vae::onnxruntime, VAE_ORT_LIBRARY_VERSION; target vae::nlohmann_json;
#          VAE_HAVE_TENSORRT with targets vae::tensorrt (nvinfer + CUDA runtime) when TensorRT is found.
#          vae::tensorrt_headers (TensorRT + CUDA headers, nothing to link) with VAE_TENSORRT_COMPILE_CHECK.

get_filename_component(_vae_repo_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(VAE_THIRD_PARTY_DIR "${_vae_repo_root}/third_party" CACHE PATH
    "Where scripts/fetch_deps.py puts fetched dependencies (git-ignored)")
set(VAE_FETCH_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/../scripts/fetch_deps.py")

# A relative -DPython3_EXECUTABLE (e.g. `.venv/bin/python`) is not used by FindPython, which silently takes another
# interpreter instead: resolve it against the directory cmake was started in, or stop saying so.
if(Python3_EXECUTABLE AND NOT IS_ABSOLUTE "${Python3_EXECUTABLE}")
  # (a child process starts in cmake's own working directory; $ENV{PWD} can be stale when a parent chdir'ed)
  execute_process(COMMAND pwd OUTPUT_VARIABLE _vae_cwd OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT _vae_cwd)
    set(_vae_cwd "$ENV{PWD}")
  endif()
  get_filename_component(_vae_py "${Python3_EXECUTABLE}" ABSOLUTE BASE_DIR "${_vae_cwd}")
  if(NOT EXISTS "${_vae_py}")
    message(FATAL_ERROR "vae_runtime: Python3_EXECUTABLE='${Python3_EXECUTABLE}' is a relative path and "
                        "'${_vae_py}' (relative to ${_vae_cwd}, where cmake was started) does not exist; pass an "
                        "absolute path")
  endif()
  message(STATUS "vae_runtime: Python3_EXECUTABLE '${Python3_EXECUTABLE}' -> ${_vae_py}")
  set(Python3_EXECUTABLE "${_vae_py}" CACHE FILEPATH "Python for scripts/fetch_deps.py" FORCE)
endif()

function(vae_fetch name out_var)
  find_package(Python3 COMPONENTS Interpreter REQUIRED)
  set(_cmd "${Python3_EXECUTABLE}" "${VAE_FETCH_SCRIPT}" --dest "${VAE_THIRD_PARTY_DIR}" --only ${name} --print-root)
  message(STATUS "vae_runtime: fetching ${name} (scripts/fetch_deps.py -> ${VAE_THIRD_PARTY_DIR})")
  execute_process(COMMAND ${_cmd} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    # rc is an exit code, or a sentence when the interpreter itself could not be started.
    string(REPLACE ";" " " _cmd_line "${_cmd}")
    if(NOT err)
      set(err "(nothing on stderr; stdout: '${out}')")
    endif()
    message(FATAL_ERROR "vae_runtime: fetching ${name} failed (exit: ${rc}):\n  ${err}\n"
                        "Command: ${_cmd_line}\n"
                        "Provide it yourself instead (-DONNXRUNTIME_ROOT=..., see runtime/cpp/README.md), or fix "
                        "the access to the registry named above (PyPI through pip, npm).")
  endif()
  string(REGEX MATCH "${name}=([^\n]+)" _ "${out}")
  set(${out_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
endfunction()

# ---------------------------------------------------------------------------------------------------- ONNX Runtime
set(ONNXRUNTIME_ROOT "$ENV{ONNXRUNTIME_ROOT}" CACHE PATH "ONNX Runtime folder with include/ and lib/ (release archive)")
option(VAE_ORT_ALLOW_NEWER_LIBRARY
       "Accept an ONNX Runtime library newer than its headers when it serves their C API version (append-only API)" ON)

if(NOT (ONNXRUNTIME_INCLUDE_DIR AND ONNXRUNTIME_LIBRARY) AND NOT ONNXRUNTIME_ROOT)
  find_package(onnxruntime CONFIG QUIET)
  if(TARGET onnxruntime::onnxruntime)
    get_target_property(_inc onnxruntime::onnxruntime INTERFACE_INCLUDE_DIRECTORIES)
    foreach(_prop IMPORTED_LOCATION_RELEASE IMPORTED_LOCATION IMPORTED_LOCATION_RELWITHDEBINFO)
      get_target_property(_loc onnxruntime::onnxruntime ${_prop})
      if(_loc)
        break()
      endif()
    endforeach()
    find_path(ONNXRUNTIME_INCLUDE_DIR onnxruntime_c_api.h HINTS ${_inc} PATH_SUFFIXES onnxruntime NO_DEFAULT_PATH)
    set(ONNXRUNTIME_LIBRARY "${_loc}" CACHE FILEPATH "ONNX Runtime shared library")
    message(STATUS "vae_runtime: ONNX Runtime from find_package(onnxruntime): ${onnxruntime_DIR}")
  elseif(VAE_FETCH_DEPS AND CMAKE_CROSSCOMPILING AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
    vae_fetch(onnxruntime_aarch64 _fetched)  # a cross build (toolchains/aarch64-linux-gnu.cmake): the target's library
    set(ONNXRUNTIME_ROOT "${_fetched}" CACHE PATH "ONNX Runtime folder with include/ and lib/ (release archive)" FORCE)
    set(VAE_ORT_FETCHED ON CACHE INTERNAL "")
  elseif(VAE_FETCH_DEPS)
    vae_fetch(onnxruntime _fetched)
    set(ONNXRUNTIME_ROOT "${_fetched}" CACHE PATH "ONNX Runtime folder with include/ and lib/ (release archive)" FORCE)
    set(VAE_ORT_FETCHED ON CACHE INTERNAL "")
  else()
    message(FATAL_ERROR "vae_runtime: ONNX Runtime not found. Pass -DONNXRUNTIME_ROOT=<unpacked "
                        "onnxruntime-linux-<arch>-<version>.tgz release archive>, or -DVAE_FETCH_DEPS=ON.")
  endif()
endif()

if(ONNXRUNTIME_ROOT)
  # An explicit folder of the target's ONNX Runtime: searched as given, also when cross-compiling (a toolchain's
  # CMAKE_FIND_ROOT_PATH would otherwise re-root it under the sysroot).
  find_path(ONNXRUNTIME_INCLUDE_DIR onnxruntime_c_api.h HINTS "${ONNXRUNTIME_ROOT}"
            PATH_SUFFIXES include include/onnxruntime include/onnxruntime/core/session NO_DEFAULT_PATH
            NO_CMAKE_FIND_ROOT_PATH)
  find_library(ONNXRUNTIME_LIBRARY NAMES onnxruntime HINTS "${ONNXRUNTIME_ROOT}" PATH_SUFFIXES lib lib64
               NO_DEFAULT_PATH NO_CMAKE_FIND_ROOT_PATH)
endif()
if(NOT ONNXRUNTIME_INCLUDE_DIR OR NOT ONNXRUNTIME_LIBRARY)
  message(FATAL_ERROR "vae_runtime: ONNX Runtime incomplete under '${ONNXRUNTIME_ROOT}': headers "
                      "'${ONNXRUNTIME_INCLUDE_DIR}', library '${ONNXRUNTIME_LIBRARY}' (expected include/onnxruntime_c_api.h "
                      "and lib/libonnxruntime.so)")
endif()

# A library file named libonnxruntime.so.1.x.y with no libonnxruntime.so.1 beside it (the PyPI wheel's layout) cannot
# be found by the loader under its SONAME: give it one in the build tree, and link through that link.
get_filename_component(_ort_name "${ONNXRUNTIME_LIBRARY}" NAME)
get_filename_component(_ort_dir "${ONNXRUNTIME_LIBRARY}" DIRECTORY)
set(_soname "")
if(_ort_name MATCHES "^(lib[A-Za-z_]+\\.so\\.[0-9]+)\\.[0-9.]+$")
  set(_soname "${CMAKE_MATCH_1}")  # (a separate if: ${CMAKE_MATCH_1} in the same condition would expand too early)
endif()
if(_soname AND NOT EXISTS "${_ort_dir}/${_soname}")
  set(_link_dir "${CMAKE_BINARY_DIR}/onnxruntime-soname")
  file(MAKE_DIRECTORY "${_link_dir}")
  file(CREATE_LINK "${ONNXRUNTIME_LIBRARY}" "${_link_dir}/${_soname}" SYMBOLIC)
  message(STATUS "vae_runtime: ${_ort_name} has no ${_soname} link beside it; linking through ${_link_dir}")
  set(ONNXRUNTIME_LIBRARY "${_link_dir}/${_soname}" CACHE FILEPATH "ONNX Runtime shared library" FORCE)
endif()

# The ABI check: compile the probe with these headers, run it against this library (under the emulator when
# cross-compiling), then compare the headers' C API version with what the library serves.
try_run(_ort_run _ort_compile "${CMAKE_BINARY_DIR}/vae_ort_probe" "${CMAKE_CURRENT_LIST_DIR}/ort_version_probe.cpp"
  CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${ONNXRUNTIME_INCLUDE_DIR}"
  LINK_LIBRARIES "${ONNXRUNTIME_LIBRARY}"
  COMPILE_OUTPUT_VARIABLE _ort_compile_out RUN_OUTPUT_VARIABLE _ort_run_out)
if(NOT _ort_compile)
  message(FATAL_ERROR "vae_runtime: a test program cannot be built against ONNX Runtime (headers "
                      "${ONNXRUNTIME_INCLUDE_DIR}, library ${ONNXRUNTIME_LIBRARY}):\n${_ort_compile_out}")
endif()
if(NOT _ort_run EQUAL 0 OR NOT _ort_run_out MATCHES "VAE_ORT_HEADER_API=([0-9]+);VAE_ORT_LIBRARY_VERSION=([0-9]+)\\.([0-9]+)\\.([0-9]+)[^;]*;VAE_ORT_API_SERVED=([01])")
  message(FATAL_ERROR "vae_runtime: the ONNX Runtime probe did not run against ${ONNXRUNTIME_LIBRARY} "
                      "(exit ${_ort_run}): ${_ort_run_out}")
endif()
set(_hdr_api ${CMAKE_MATCH_1})
set(VAE_ORT_LIBRARY_VERSION "${CMAKE_MATCH_2}.${CMAKE_MATCH_3}.${CMAKE_MATCH_4}")
set(_lib_minor ${CMAKE_MATCH_3})
set(_served ${CMAKE_MATCH_5})
string(CONCAT _ort_pair "headers ${ONNXRUNTIME_INCLUDE_DIR} (C API ${_hdr_api}, release 1.${_hdr_api}), library "
                        "${ONNXRUNTIME_LIBRARY} (${VAE_ORT_LIBRARY_VERSION})")
if(_lib_minor LESS _hdr_api OR NOT _served)
  message(FATAL_ERROR "vae_runtime: ONNX Runtime version mismatch: the library does not serve the headers' C API "
                      "${_hdr_api} (OrtGetApiBase()->GetApi(${_hdr_api}) is NULL in a library older than the "
                      "headers): ${_ort_pair}. Use the library's own headers or older ones (e.g. one release archive "
                      "via -DONNXRUNTIME_ROOT).")
elseif(_lib_minor EQUAL _hdr_api)
  message(STATUS "vae_runtime: ONNX Runtime ${VAE_ORT_LIBRARY_VERSION} (headers API ${_hdr_api}): one release: "
                 "${ONNXRUNTIME_LIBRARY}")
elseif(VAE_ORT_ALLOW_NEWER_LIBRARY)
  message(STATUS "vae_runtime: ONNX Runtime ${VAE_ORT_LIBRARY_VERSION} (headers API ${_hdr_api}): ABI checked: the "
                 "${VAE_ORT_LIBRARY_VERSION} library serves C API ${_hdr_api} (GetApi(${_hdr_api}) != NULL; the C API "
                 "is append-only), so the runtime compiled with the 1.${_hdr_api} headers runs on it: "
                 "${ONNXRUNTIME_LIBRARY}")
else()
  message(FATAL_ERROR "vae_runtime: ONNX Runtime version mismatch: ${_ort_pair}, and VAE_ORT_ALLOW_NEWER_LIBRARY=OFF "
                      "asks for one release. The library serves the headers' C API ${_hdr_api}: "
                      "-DVAE_ORT_ALLOW_NEWER_LIBRARY=ON (the default) accepts it.")
endif()

add_library(vae::onnxruntime SHARED IMPORTED)
set_target_properties(vae::onnxruntime PROPERTIES IMPORTED_LOCATION "${ONNXRUNTIME_LIBRARY}"
                      INTERFACE_INCLUDE_DIRECTORIES "${ONNXRUNTIME_INCLUDE_DIR}")
# The library's SONAME file (libonnxruntime.so.1) and the file it points to, for install().
get_filename_component(VAE_ORT_LIBRARY_REAL "${ONNXRUNTIME_LIBRARY}" REALPATH)

# ---------------------------------------------------------------------------------------------------- nlohmann/json
find_package(nlohmann_json 3.10 CONFIG QUIET)
if(TARGET nlohmann_json::nlohmann_json)
  add_library(vae::nlohmann_json ALIAS nlohmann_json::nlohmann_json)
  message(STATUS "vae_runtime: nlohmann/json ${nlohmann_json_VERSION} from ${nlohmann_json_DIR}")
else()
  if(NOT VAE_NLOHMANN_INCLUDE_DIR)
    if(NOT VAE_FETCH_DEPS)
      message(FATAL_ERROR "vae_runtime: nlohmann/json not found: install nlohmann-json3-dev, pass "
                          "-DVAE_NLOHMANN_INCLUDE_DIR=<dir with nlohmann/json.hpp>, or -DVAE_FETCH_DEPS=ON")
    endif()
    vae_fetch(nlohmann_json _json_root)
    set(VAE_NLOHMANN_INCLUDE_DIR "${_json_root}/include" CACHE PATH "folder holding nlohmann/json.hpp")
  endif()
  add_library(vae_nlohmann_json INTERFACE)
  target_include_directories(vae_nlohmann_json SYSTEM INTERFACE "${VAE_NLOHMANN_INCLUDE_DIR}")
  add_library(vae::nlohmann_json ALIAS vae_nlohmann_json)
  message(STATUS "vae_runtime: nlohmann/json from ${VAE_NLOHMANN_INCLUDE_DIR}")
endif()

# ---------------------------------------------------------------------------------------------------- TensorRT
# AUTO: built when NvInfer.h, libnvinfer and the CUDA runtime are all found (a Jetson with JetPack, an x86 box with
# TensorRT installed). TensorRT_ROOT points at a TensorRT tar package (include/, lib/).
set(VAE_WITH_TENSORRT AUTO CACHE STRING "Build the native TensorRT backend: AUTO, ON or OFF")
set_property(CACHE VAE_WITH_TENSORRT PROPERTY STRINGS AUTO ON OFF)
set(TensorRT_ROOT "$ENV{TensorRT_ROOT}" CACHE PATH "TensorRT folder with include/NvInfer.h and lib/libnvinfer.so")
set(VAE_HAVE_TENSORRT OFF)
if(NOT VAE_WITH_TENSORRT STREQUAL "OFF")
  find_path(TensorRT_INCLUDE_DIR NvInfer.h HINTS "${TensorRT_ROOT}" PATH_SUFFIXES include)
  find_library(TensorRT_LIBRARY nvinfer HINTS "${TensorRT_ROOT}" PATH_SUFFIXES lib lib64)
  find_package(CUDAToolkit QUIET)
  if(TensorRT_INCLUDE_DIR AND TensorRT_LIBRARY AND CUDAToolkit_FOUND)
    set(VAE_HAVE_TENSORRT ON)
    add_library(vae_tensorrt INTERFACE)
    target_include_directories(vae_tensorrt SYSTEM INTERFACE "${TensorRT_INCLUDE_DIR}")
    target_link_libraries(vae_tensorrt INTERFACE "${TensorRT_LIBRARY}" CUDA::cudart)
    add_library(vae::tensorrt ALIAS vae_tensorrt)
    message(STATUS "vae_runtime: TensorRT backend ON (${TensorRT_LIBRARY}, CUDA ${CUDAToolkit_VERSION})")
  elseif(VAE_WITH_TENSORRT STREQUAL "ON")
    message(FATAL_ERROR "vae_runtime: VAE_WITH_TENSORRT=ON but TensorRT is incomplete: NvInfer.h "
                        "'${TensorRT_INCLUDE_DIR}', libnvinfer '${TensorRT_LIBRARY}', CUDA toolkit found: "
                        "${CUDAToolkit_FOUND}. Pass -DTensorRT_ROOT=<TensorRT folder> (JetPack: /usr).")
  else()
    message(STATUS "vae_runtime: TensorRT backend OFF (NvInfer.h / libnvinfer / CUDA toolkit not all found)")
  endif()
endif()

# ---------------------------------------------------------------------------------------------------- TensorRT compile check
# CI has no TensorRT library and no GPU, but it has TensorRT's published headers. With
#   -DVAE_TENSORRT_COMPILE_CHECK=<TensorRT include folder> [-DVAE_CUDA_INCLUDE_DIR=<CUDA runtime headers>]
# CMakeLists.txt adds the OBJECT target vae_runtime_trt_compile_check: every library source compiled, never linked,
# with the TensorRT backend on and -Werror. Independent of VAE_WITH_TENSORRT; needs no libnvinfer, no CUDA toolkit.
# Without VAE_CUDA_INCLUDE_DIR the CUDA 12.6 headers are fetched from PyPI (scripts/fetch_deps.py --only cuda_headers).
set(VAE_TENSORRT_COMPILE_CHECK "" CACHE PATH "TensorRT include folder to compile (not link) the backend with")
set(VAE_CUDA_INCLUDE_DIR "" CACHE PATH "CUDA runtime headers for VAE_TENSORRT_COMPILE_CHECK (empty: fetched)")
if(VAE_TENSORRT_COMPILE_CHECK)
  if(NOT EXISTS "${VAE_TENSORRT_COMPILE_CHECK}/NvInfer.h")
    message(FATAL_ERROR "vae_runtime: VAE_TENSORRT_COMPILE_CHECK='${VAE_TENSORRT_COMPILE_CHECK}' has no NvInfer.h; "
                        "expected TensorRT's include/ folder (e.g. ../shared/third_party/tensorrt/10.3/include)")
  endif()
  set(_vae_cuda_inc "${VAE_CUDA_INCLUDE_DIR}")
  if(NOT _vae_cuda_inc)
    if(NOT VAE_FETCH_DEPS)
      message(FATAL_ERROR "vae_runtime: VAE_TENSORRT_COMPILE_CHECK needs CUDA runtime headers: pass "
                          "-DVAE_CUDA_INCLUDE_DIR=<folder with cuda_runtime_api.h and crt/host_defines.h>, or "
                          "-DVAE_FETCH_DEPS=ON")
    endif()
    vae_fetch(cuda_headers _cuda_root)
    set(_vae_cuda_inc "${_cuda_root}/include")
  endif()
  foreach(_h cuda_runtime_api.h crt/host_defines.h)  # crt/ ships in the nvcc wheel, not the runtime one
    if(NOT EXISTS "${_vae_cuda_inc}/${_h}")
      message(FATAL_ERROR "vae_runtime: CUDA headers '${_vae_cuda_inc}' lack ${_h} (expected the include/ trees "
                          "of nvidia-cuda-runtime-cu12 and nvidia-cuda-nvcc-cu12, or a CUDA toolkit's include/)")
    endif()
  endforeach()
  add_library(vae_tensorrt_headers INTERFACE)
  target_include_directories(vae_tensorrt_headers SYSTEM INTERFACE "${VAE_TENSORRT_COMPILE_CHECK}" "${_vae_cuda_inc}")
  add_library(vae::tensorrt_headers ALIAS vae_tensorrt_headers)
  message(STATUS "vae_runtime: TensorRT compile check against ${VAE_TENSORRT_COMPILE_CHECK} "
                 "(CUDA headers ${_vae_cuda_inc}; target vae_runtime_trt_compile_check, nothing linked)")
endif()
