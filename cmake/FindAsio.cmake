# SPDX-License-Identifier: BSL-1.0
# FindAsio: standalone (non-Boost) Asio, e.g. Debian's libasio-dev.
#
# Asio is header-only and ships no CMake package, so this module provides the
# imported target Asio::asio. It is installed with coropipe's package config so
# that find_package(coropipe CONFIG) can find Asio for its users too.
#
# Result variables: Asio_FOUND, Asio_VERSION, Asio_INCLUDE_DIR.
# Hints: Asio_ROOT or ASIO_ROOT (a prefix with include/asio.hpp).

find_path(Asio_INCLUDE_DIR NAMES asio.hpp
  HINTS ${ASIO_ROOT} ENV ASIO_ROOT
  PATH_SUFFIXES include)
mark_as_advanced(Asio_INCLUDE_DIR)

if(Asio_INCLUDE_DIR AND EXISTS "${Asio_INCLUDE_DIR}/asio/version.hpp")
  file(STRINGS "${Asio_INCLUDE_DIR}/asio/version.hpp" _asio_version_line
    REGEX "^#define ASIO_VERSION [0-9]+")
  string(REGEX REPLACE "^#define ASIO_VERSION ([0-9]+).*" "\\1" _asio_v "${_asio_version_line}")
  math(EXPR _asio_major "${_asio_v} / 100000")
  math(EXPR _asio_minor "${_asio_v} / 100 % 1000")
  math(EXPR _asio_patch "${_asio_v} % 100")
  set(Asio_VERSION "${_asio_major}.${_asio_minor}.${_asio_patch}")
  unset(_asio_version_line)
  unset(_asio_v)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Asio
  REQUIRED_VARS Asio_INCLUDE_DIR
  VERSION_VAR Asio_VERSION)

if(Asio_FOUND AND NOT TARGET Asio::asio)
  if(NOT TARGET Threads::Threads)
    find_package(Threads REQUIRED)
  endif()
  add_library(Asio::asio INTERFACE IMPORTED)
  set_target_properties(Asio::asio PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${Asio_INCLUDE_DIR}"
    # Standalone Asio: never look for Boost. Asio 1.22 enables co_await on
    # clang only where <experimental/coroutine> exists, which libstdc++ 12
    # lacks although clang 14 supports C++20 coroutines with <coroutine>.
    INTERFACE_COMPILE_DEFINITIONS "ASIO_STANDALONE;$<$<COMPILE_LANG_AND_ID:CXX,Clang>:ASIO_HAS_CO_AWAIT=1>"
    INTERFACE_LINK_LIBRARIES Threads::Threads)
endif()
