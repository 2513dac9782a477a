# Third-party libraries, all from Debian packages (DESIGN.md "Dependencies"); one interface
# target so every module links the same set. Start-up time matters (`mood list` and
# `mood inspect` have 50 ms budgets), so the set linked is small:
#  - OpenBLAS, preferably Debian's OpenMP build (libopenblas-openmp-dev): the pthread build starts
#    a thread pool at load time whose idle threads spin for ~0.1 s and steal a core from short
#    commands. LAPACK is called in OpenBLAS itself through its Fortran interface (lora/lapack.c):
#    liblapacke would pull in the system's liblapack and libblas, two more full OpenBLAS copies.
#    The build tree's RUNPATH points at the chosen OpenBLAS.
#  - libcurl and libarchive are loaded with dlopen on first use (registry/curl_api.c,
#    styles/archive_api.c): with their ~40 dependent libraries they cost ~10 ms at start-up.
#    Only their headers are used here.
find_package(PkgConfig REQUIRED)
file(GLOB MOOD_OPENBLAS_OPENMP_PC /usr/lib/*/openblas-openmp/pkgconfig)
if(MOOD_OPENBLAS_OPENMP_PC)
  set(ENV{PKG_CONFIG_PATH} "${MOOD_OPENBLAS_OPENMP_PC}:$ENV{PKG_CONFIG_PATH}")
else()
  message(STATUS "mood: libopenblas-openmp-dev not found; using the default OpenBLAS")
endif()
# OpenBLAS on its own, so that its library is looked up in its own libdir first.
pkg_check_modules(MOOD_BLAS REQUIRED IMPORTED_TARGET openblas)
pkg_check_modules(MOOD_PC REQUIRED IMPORTED_TARGET libcjson zlib libcrypto sqlite3 libpng)
# stb_image (libstb-dev) is header-only here: common/image_stb.c compiles it, nothing is linked.
find_path(MOOD_STB_INCLUDE_DIR stb/stb_image.h)
if(NOT MOOD_STB_INCLUDE_DIR)
  message(FATAL_ERROR "mood: <stb/stb_image.h> not found; install libstb-dev (tools/setup-deps.sh)")
endif()
pkg_check_modules(MOOD_DLOPEN REQUIRED libarchive libcurl)
find_package(OpenMP REQUIRED COMPONENTS C)
find_package(Threads REQUIRED)
add_library(mood_deps INTERFACE)
target_include_directories(mood_deps INTERFACE ${MOOD_DLOPEN_INCLUDE_DIRS} ${MOOD_STB_INCLUDE_DIR})
target_link_libraries(mood_deps INTERFACE PkgConfig::MOOD_BLAS PkgConfig::MOOD_PC OpenMP::OpenMP_C
                                          Threads::Threads ${CMAKE_DL_LIBS} m)
