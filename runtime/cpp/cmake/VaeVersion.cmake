# VaeVersion.cmake - the version of vae_runtime is vae-deploy's: pyproject.toml's [project] version, the one source
# (Python reads it from the installed distribution's metadata; tests/test_version.py checks that all agree).
#
#   include(cmake/VaeVersion.cmake)       # before project(): sets VAE_VERSION (MAJOR.MINOR.PATCH)
#   project(vae_runtime VERSION ${VAE_VERSION} ...)
#
# VAE_PYPROJECT names the file (default: the repository's, two folders above runtime/cpp). Also usable in script mode
# (cmake -DVAE_PYPROJECT=... -P VaeVersion.cmake prints "VAE_VERSION=...").

set(VAE_PYPROJECT "${CMAKE_CURRENT_LIST_DIR}/../../../pyproject.toml" CACHE FILEPATH
    "pyproject.toml whose [project] version is the library's version")

function(vae_read_pyproject_version path out_var)
  if(NOT EXISTS "${path}")
    message(FATAL_ERROR "${path}: not found; the version of vae_runtime is vae-deploy's pyproject.toml [project] "
                        "version (configure from the repository, or pass -DVAE_PYPROJECT=/path/to/pyproject.toml)")
  endif()
  file(READ "${path}" toml)
  string(REPLACE "\r" "" toml "\n${toml}")
  # The [project] table: from its header to the next table header (a line starting with '[').
  string(FIND "${toml}" "\n[project]" at)
  if(at LESS 0)
    message(FATAL_ERROR "${path}: no [project] table, so no version for vae_runtime")
  endif()
  math(EXPR at "${at} + 10")
  string(SUBSTRING "${toml}" ${at} -1 table)
  string(FIND "${table}" "\n[" end)
  if(end GREATER -1)
    string(SUBSTRING "${table}" 0 ${end} table)
  endif()
  if(NOT table MATCHES "\nversion[ \t]*=[ \t]*\"([^\"\n]*)\"")
    message(FATAL_ERROR "${path}: [project] has no version = \"...\" line (a dynamic version is not supported here)")
  endif()
  set(version "${CMAKE_MATCH_1}")
  if(NOT version MATCHES "^[0-9]+\\.[0-9]+\\.[0-9]+$")
    message(FATAL_ERROR "${path}: [project] version '${version}' is not MAJOR.MINOR.PATCH (digits only), which "
                        "CMake's project(VERSION) and the library's SOVERSION need")
  endif()
  set(${out_var} "${version}" PARENT_SCOPE)
endfunction()

vae_read_pyproject_version("${VAE_PYPROJECT}" VAE_VERSION)
if(CMAKE_SCRIPT_MODE_FILE)
  message("VAE_VERSION=${VAE_VERSION}")
else()
  # A changed pyproject.toml re-runs the configure step, so the library never carries a stale version.
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${VAE_PYPROJECT}")
endif()
