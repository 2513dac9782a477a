# Third-party libraries, all from Debian packages (DESIGN.md "Dependencies"); one interface
# target so every module links the same set.
find_package(PkgConfig REQUIRED)
pkg_check_modules(MOOD_PC REQUIRED IMPORTED_TARGET libcjson openblas lapacke zlib libcrypto)
find_package(OpenMP REQUIRED COMPONENTS C)
find_package(Threads REQUIRED)
add_library(mood_deps INTERFACE)
target_link_libraries(mood_deps INTERFACE PkgConfig::MOOD_PC OpenMP::OpenMP_C Threads::Threads m)
