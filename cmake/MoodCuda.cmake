# The CUDA backend (engine/cuda): built wherever nvcc, the toolkit and cuDNN are found
# (MOOD_CUDA=AUTO), required with MOOD_CUDA=ON, skipped with OFF. Only engine/cuda includes CUDA
# headers. cuBLAS, cuBLASLt and cuDNN are not linked but loaded with dlopen when the first CUDA
# context opens (engine/cuda/cuda_libs.h: linked, they cost every command ~0.1 s of start-up);
# the CUDA runtime is linked statically.
set(MOOD_HAVE_CUDA 0)
set(MOOD_CUDA_ARCHS "")
if(NOT MOOD_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit)
  endif()
  if(CUDAToolkit_FOUND)
    find_path(MOOD_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(MOOD_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
  endif()
  if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND AND MOOD_CUDNN_INCLUDE_DIR AND MOOD_CUDNN_LIBRARY)
    set(MOOD_HAVE_CUDA 1)
    string(REPLACE ";" "," MOOD_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}")
  elseif(MOOD_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MOOD_CUDA=ON but nvcc, the CUDA toolkit or cuDNN was not found")
  else()
    message(STATUS "mood: CUDA (nvcc, toolkit and cuDNN) not found, building the CPU backend only")
  endif()
endif()

function(mood_add_cuda target)
  if(MOOD_HAVE_CUDA)
    file(GLOB cuda_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/engine/cuda/*.cu)
    # unet_cuda.c, unet_cuda_train.c, unet_cuda_backward.c: plain C over the backend's functions
    # (the GPU UNet forward; its training passes: the recording forward, the backward)
    target_sources(${target} PRIVATE ${cuda_sources} ${CMAKE_SOURCE_DIR}/engine/cuda/unet_cuda.c
                                     ${CMAKE_SOURCE_DIR}/engine/cuda/unet_cuda_train.c
                                     ${CMAKE_SOURCE_DIR}/engine/cuda/unet_cuda_backward.c)
    target_include_directories(${target} PRIVATE ${MOOD_CUDNN_INCLUDE_DIR})
    target_link_libraries(${target} PUBLIC CUDA::cudart_static ${CMAKE_DL_LIBS})
    set_target_properties(${target} PROPERTIES CUDA_STANDARD 17)
    # where libs.cu looks for the libraries when the loader's path does not find them
    get_filename_component(cudnn_dir ${MOOD_CUDNN_LIBRARY} DIRECTORY)
    set_source_files_properties(${CMAKE_SOURCE_DIR}/engine/cuda/libs.cu PROPERTIES
      COMPILE_DEFINITIONS "MOOD_CUBLAS_DIR=\"${CUDAToolkit_LIBRARY_DIR}\";MOOD_CUDNN_DIR=\"${cudnn_dir}\"")
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
    if(MOOD_WERROR)
      target_compile_options(${target} PRIVATE
        $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
    endif()
  else()
    target_sources(${target} PRIVATE ${CMAKE_SOURCE_DIR}/engine/cuda/device_stub.c
                                      ${CMAKE_SOURCE_DIR}/engine/cuda/cuda_ops_stub.c
                                      ${CMAKE_SOURCE_DIR}/engine/cuda/unet_cuda_stub.c)
  endif()
endfunction()
