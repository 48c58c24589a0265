# SPDX-License-Identifier: BSL-1.0
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(COROPIPE_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/coropipe"
  CACHE STRING "Where coropipe's CMake package files are installed")

install(TARGETS coropipe EXPORT coropipeTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/coropipe"
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT coropipeTargets
  NAMESPACE coropipe::
  DESTINATION ${COROPIPE_INSTALL_CMAKEDIR})

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
  DESTINATION ${COROPIPE_INSTALL_CMAKEDIR})
