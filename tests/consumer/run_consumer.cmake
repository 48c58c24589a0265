# SPDX-License-Identifier: BSL-1.0
# cmake -DMODE=package|subdirectory -DSOURCE_DIR=<coropipe> -DBUILD_DIR=<coropipe build>
#       -DWORK_DIR=<scratch> -DCXX=<compiler> [-DSANITIZE=<list>] -P run_consumer.cmake
# Installs coropipe from BUILD_DIR (package mode), then configures, builds and
# runs tests/consumer against it.
foreach(v MODE SOURCE_DIR BUILD_DIR WORK_DIR CXX)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_consumer.cmake: ${v} is not set")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "failed (${rc}): ${cmd}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(args -S "${SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/build" -G Ninja
  -DCMAKE_CXX_COMPILER=${CXX} -DCOROPIPE_CONSUMER_MODE=${MODE})
if(SANITIZE)
  string(REPLACE ";" "," sanitize "${SANITIZE}")
  list(APPEND args "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${sanitize}")
endif()
if(MODE STREQUAL "package")
  run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
  foreach(f include/coropipe/coropipe.hpp lib/libcoropipe.a lib/cmake/coropipe/coropipeConfig.cmake
            lib/cmake/coropipe/FindAsio.cmake)
    if(NOT EXISTS "${WORK_DIR}/prefix/${f}")
      message(FATAL_ERROR "not installed: ${f}")
    endif()
  endforeach()
  list(APPEND args "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
else()
  list(APPEND args "-DCOROPIPE_SOURCE_DIR=${SOURCE_DIR}")
endif()
run(${CMAKE_COMMAND} ${args})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
