// CUDA runtime queries. Compiled only when CMake finds a CUDA compiler; the
// module then links the static CUDA runtime, which loads the driver lazily,
// so a machine without a GPU or driver imports it fine and reports 0 devices.
#include <cuda_runtime.h>

namespace ssl_core::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return count;
}

}  // namespace ssl_core::cuda
