# SPDX-License-Identifier: BSL-1.0
# Per-target warning and sanitizer settings for coropipe's own targets.
# Nothing here touches global flags: a parent project's settings stay its own.

function(coropipe_target_options target)
  if(COROPIPE_WARNINGS)
    if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
      target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic
        -Wshadow -Wconversion -Wsign-conversion -Wnon-virtual-dtor -Wold-style-cast
        -Wcast-align -Woverloaded-virtual -Wimplicit-fallthrough)
      if(COROPIPE_WERROR)
        target_compile_options(${target} PRIVATE -Werror)
      endif()
    endif()
  endif()
  if(COROPIPE_SANITIZERS)
    list(JOIN COROPIPE_SANITIZERS "," _sanitizers)
    target_compile_options(${target} PRIVATE -fsanitize=${_sanitizers} -fno-omit-frame-pointer
      -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${_sanitizers})
    # clang 14 cannot emit -fsanitize=function checks for coroutines ("Cannot
    # represent a difference across sections", llvm/llvm-project#49689).
    if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang" AND "undefined" IN_LIST COROPIPE_SANITIZERS
       AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 15)
      target_compile_options(${target} PRIVATE -fno-sanitize=function)
    endif()
  endif()
endfunction()
