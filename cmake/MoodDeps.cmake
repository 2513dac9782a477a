# Third-party libraries, all from Debian packages (DESIGN.md "Dependencies"); one interface
# target so every module links the same set.
find_package(PkgConfig REQUIRED)
# Prefer Debian's OpenMP build of OpenBLAS (libopenblas-openmp-dev): the pthread build starts a
# thread pool when the library loads whose idle threads spin (sched_yield) for about 0.1 s and
# steal a core from every short command (`mood hash` ran at half speed). Its libblas/liblapack
# are linked too, so that liblapacke's dependency resolves to them rather than to the system's
# default (pthread) alternative; the build tree's RUNPATH points at that directory.
file(GLOB MOOD_OPENBLAS_OPENMP_DIR /usr/lib/*/openblas-openmp)
if(MOOD_OPENBLAS_OPENMP_DIR AND EXISTS ${MOOD_OPENBLAS_OPENMP_DIR}/pkgconfig/openblas.pc
   AND EXISTS ${MOOD_OPENBLAS_OPENMP_DIR}/liblapack.so)
  set(ENV{PKG_CONFIG_PATH} "${MOOD_OPENBLAS_OPENMP_DIR}/pkgconfig:$ENV{PKG_CONFIG_PATH}")
  set(MOOD_OPENBLAS_EXTRA -Wl,--push-state,--no-as-needed ${MOOD_OPENBLAS_OPENMP_DIR}/liblapack.so
      ${MOOD_OPENBLAS_OPENMP_DIR}/libblas.so -Wl,--pop-state)
else()
  message(STATUS "mood: libopenblas-openmp-dev not found; using the default OpenBLAS")
  set(MOOD_OPENBLAS_EXTRA "")
endif()
# OpenBLAS on its own, so that its library is looked up in its own libdir first.
pkg_check_modules(MOOD_BLAS REQUIRED IMPORTED_TARGET openblas)
pkg_check_modules(MOOD_PC REQUIRED IMPORTED_TARGET libcjson lapacke zlib libcrypto sqlite3)
# libcurl and libarchive are loaded with dlopen on first use (registry/curl_api.c,
# styles/archive_api.c), not linked: with their ~40 dependent libraries they cost every command
# about 10 ms at start-up. Only their headers are used here (types and constants).
pkg_check_modules(MOOD_DLOPEN REQUIRED libarchive libcurl)
find_package(OpenMP REQUIRED COMPONENTS C)
find_package(Threads REQUIRED)
add_library(mood_deps INTERFACE)
target_include_directories(mood_deps INTERFACE ${MOOD_DLOPEN_INCLUDE_DIRS})
target_link_libraries(mood_deps INTERFACE PkgConfig::MOOD_BLAS ${MOOD_OPENBLAS_EXTRA} PkgConfig::MOOD_PC OpenMP::OpenMP_C Threads::Threads ${CMAKE_DL_LIBS} m)
