# Cross-compile runtime/cpp for Linux aarch64 (Jetson: JetPack is Ubuntu on aarch64) with Debian's cross toolchain,
# and run configure-time probes under user-mode QEMU. Debian 12's toolchain makes binaries that need glibc 2.34 and
# GLIBCXX_3.4.29: JetPack 6 (Ubuntu 22.04) runs them, JetPack 5 (Ubuntu 20.04) does not.
#
#   apt-get install g++-aarch64-linux-gnu qemu-user          # .ci/apt-packages.txt (make apt-deps)
#   cmake -S runtime/cpp -B runtime/cpp/build-aarch64 \
#         -DCMAKE_TOOLCHAIN_FILE=runtime/cpp/cmake/toolchains/aarch64-linux-gnu.cmake \
#         -DONNXRUNTIME_ROOT=<ONNX Runtime for aarch64: include/ and lib/>     # make cpp-aarch64 does all of this
#
# ONNX Runtime: give an aarch64 one (ONNXRUNTIME_ROOT, or ONNXRUNTIME_INCLUDE_DIR + ONNXRUNTIME_LIBRARY), e.g.
# `python3 runtime/cpp/scripts/fetch_deps.py --only onnxruntime_aarch64 --print-root` or the official
# onnxruntime-linux-aarch64-<version>.tgz. The default fetch (VAE_FETCH_DEPS) brings the x86_64 library, which the
# cross linker rejects.
#
# The ONNX Runtime version probe (try_run in VaeDependencies.cmake) runs through CMAKE_CROSSCOMPILING_EMULATOR:
# toolchains/qemu-aarch64-run (qemu-aarch64 -L <sysroot + an aarch64 /proc/cpuinfo>), so the same header/library
# release check as a native build holds. Without qemu-aarch64, configure stops at that probe (CMake cannot run an
# aarch64 program): install qemu-user, or point VAE_AARCH64_EMULATOR at another runner.
#
# Overrides (cache/-D or environment): VAE_AARCH64_TRIPLE (default aarch64-linux-gnu), VAE_AARCH64_SYSROOT (default
# /usr/<triple>, Debian's libc6-dev-arm64-cross), VAE_AARCH64_EMULATOR (default: qemu-aarch64 on PATH).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

# This file is read again for every try_compile/try_run project: keep it free of side effects, and forward the
# settings those projects need.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES VAE_AARCH64_TRIPLE VAE_AARCH64_SYSROOT VAE_AARCH64_EMULATOR)

if(NOT VAE_AARCH64_TRIPLE)
  set(VAE_AARCH64_TRIPLE "$ENV{VAE_AARCH64_TRIPLE}")
  if(NOT VAE_AARCH64_TRIPLE)
    set(VAE_AARCH64_TRIPLE aarch64-linux-gnu)
  endif()
endif()
if(NOT VAE_AARCH64_SYSROOT)
  set(VAE_AARCH64_SYSROOT "$ENV{VAE_AARCH64_SYSROOT}")
  if(NOT VAE_AARCH64_SYSROOT)
    set(VAE_AARCH64_SYSROOT "/usr/${VAE_AARCH64_TRIPLE}")
  endif()
endif()

set(CMAKE_C_COMPILER "${VAE_AARCH64_TRIPLE}-gcc")
set(CMAKE_CXX_COMPILER "${VAE_AARCH64_TRIPLE}-g++")

# Libraries, headers and CMake packages come from the aarch64 sysroot only (never the host's x86_64 ones); programs
# (python3 for fetch_deps.py, npm) from the host. Debian's cross gcc already links against that sysroot, so no
# --sysroot is passed.
set(CMAKE_FIND_ROOT_PATH "${VAE_AARCH64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# A user-given ONNX Runtime folder is an aarch64 tree outside the sysroot: make it a search root too (a path already
# below a root is searched as is), so VaeDependencies.cmake's find_path/find_library under ONNXRUNTIME_ROOT work.
if(NOT ONNXRUNTIME_ROOT AND DEFINED ENV{ONNXRUNTIME_ROOT})
  set(_vae_ort_root "$ENV{ONNXRUNTIME_ROOT}")
else()
  set(_vae_ort_root "${ONNXRUNTIME_ROOT}")
endif()
if(_vae_ort_root)
  list(APPEND CMAKE_FIND_ROOT_PATH "${_vae_ort_root}")
endif()

# try_run (the ONNX Runtime probe) runs aarch64 programs through this emulator: qemu-aarch64-run (next to this file)
# runs QEMU with the sysroot as -L prefix plus an aarch64 /proc/cpuinfo, without which ONNX Runtime crashes under
# QEMU 7.2 (see that script). VAE_AARCH64_EMULATOR replaces it (a list: command;args...).
if(NOT VAE_AARCH64_EMULATOR)
  find_program(_vae_qemu qemu-aarch64)
  if(_vae_qemu)
    # (through bash: works even where a checkout lost the script's executable bit)
    set(VAE_AARCH64_EMULATOR "/bin/bash;${CMAKE_CURRENT_LIST_DIR}/qemu-aarch64-run;--sysroot;${VAE_AARCH64_SYSROOT}")
  endif()
  unset(_vae_qemu CACHE)
endif()
if(VAE_AARCH64_EMULATOR)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${VAE_AARCH64_EMULATOR}")
endif()
