# SPDX-License-Identifier: BSL-1.0
# Install and export rules: the library of each flavour built (coropipe,
# coropipe_boost) in one export set and one package, a pkg-config file per
# flavour, and the licence.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(COROPIPE_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/coropipe"
  CACHE STRING "Where coropipe's CMake package files are installed")

set(_coropipe_targets)
if("standalone" IN_LIST COROPIPE_FLAVOURS)
  list(APPEND _coropipe_targets coropipe)
endif()
if("boost" IN_LIST COROPIPE_FLAVOURS)
  list(APPEND _coropipe_targets coropipe_boost)
endif()

install(TARGETS ${_coropipe_targets} EXPORT coropipeTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/coropipe"
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT coropipeTargets
  NAMESPACE coropipe::
  DESTINATION ${COROPIPE_INSTALL_CMAKEDIR})
install(FILES "${PROJECT_SOURCE_DIR}/LICENSE" DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/coropipe)

# What the package config needs to find again for its users.
set(COROPIPE_PACKAGE_FLAVOURS ${COROPIPE_FLAVOURS})
get_filename_component(COROPIPE_BUILT_ASIO_PREFIX "${Asio_INCLUDE_DIR}" DIRECTORY)
configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/coropipeConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/coropipeConfig.cmake"
  INSTALL_DESTINATION ${COROPIPE_INSTALL_CMAKEDIR})
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/coropipeConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/coropipeConfig.cmake"
  "${PROJECT_BINARY_DIR}/coropipeConfigVersion.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/FindAsio.cmake"
  "${PROJECT_SOURCE_DIR}/LICENSE"
  DESTINATION ${COROPIPE_INSTALL_CMAKEDIR})

# pkg-config: coropipe.pc (standalone Asio) and coropipe_boost.pc (Boost.Asio).
# Asio and Boost are header-only and ship no .pc file of their own, so their
# include directories and defines go into Cflags.
function(coropipe_pkgconfig target flavour)
  if(flavour STREQUAL "boost")
    set(PC_DESCRIPTION "C++20 coroutines for inter-process communication, on Boost.Asio")
    set(PC_CFLAGS "-DCOROPIPE_ASIO_BOOST=1")
    get_target_property(_inc Boost::headers INTERFACE_INCLUDE_DIRECTORIES)
  else()
    set(PC_DESCRIPTION "C++20 coroutines for inter-process communication, on standalone Asio")
    set(PC_CFLAGS "-DASIO_STANDALONE")
    set(_inc "${Asio_INCLUDE_DIR}")
  endif()
  foreach(dir IN LISTS _inc)
    if(NOT dir STREQUAL "/usr/include")
      string(APPEND PC_CFLAGS " -isystem ${dir}")
    endif()
  endforeach()
  set(PC_NAME ${target})
  configure_file("${PROJECT_SOURCE_DIR}/cmake/coropipe.pc.in" "${PROJECT_BINARY_DIR}/${target}.pc" @ONLY)
  install(FILES "${PROJECT_BINARY_DIR}/${target}.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endfunction()
if("standalone" IN_LIST COROPIPE_FLAVOURS)
  coropipe_pkgconfig(coropipe standalone)
endif()
if("boost" IN_LIST COROPIPE_FLAVOURS)
  coropipe_pkgconfig(coropipe_boost boost)
endif()
