/* A simulated CUDA device for the fake-CUDA test layer (tests/fakecuda), loaded with LD_PRELOAD in a subprocess only.
 *
 * torch's C++ (the autograd engine, stream and event guards, autocast and SDPA kernel choice) asks the CUDA runtime
 * how many devices there are and what they can do before it touches a tensor whose device is "cuda". On a machine
 * without a driver every such query fails, so backward over fake CUDA tensors aborts (pytorch issue 92627). These
 * definitions answer those queries as one sm_90 device (80 GiB) would, and make stream/event bookkeeping no-ops.
 * They never allocate device memory or launch a kernel: the layer runs every op on CPU copies, so a call that would
 * need real device memory (cudaMalloc, cudaMemcpy, kernel launches) still fails as it does without a GPU.
 * The library's soname is libcuda.so.1, so torch's dlopen of the driver finds these driver-API answers too.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <cuda.h>
#include <cuda_runtime_api.h>

#define SIM_TOTAL_MEM (80ULL << 30)

static int sim_current_device = 0;

cudaError_t cudaGetDeviceCount(int *count) { *count = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int *device) { *device = sim_current_device; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { if (device != 0) return cudaErrorInvalidDevice; sim_current_device = 0; return cudaSuccess; }
cudaError_t cudaInitDevice(int device, unsigned int a, unsigned int b) { (void)a; (void)b; return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaDriverGetVersion(int *v) { *v = CUDART_VERSION; return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaPeekAtLastError(void) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaDeviceCanAccessPeer(int *can, int a, int b) { (void)a; (void)b; *can = 0; return cudaSuccess; }
cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest) { if (least) *least = 0; if (greatest) *greatest = -5; return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) { *free_b = SIM_TOTAL_MEM; *total = SIM_TOTAL_MEM; return cudaSuccess; }
cudaError_t cudaDeviceGetPCIBusId(char *id, int len, int device) { (void)device; strncpy(id, "0000:00:00.0", (size_t)len); return cudaSuccess; }

static void sim_fill_props(struct cudaDeviceProp *p) {
    memset(p, 0, sizeof(*p));
    strcpy(p->name, "simulated sm_90 (tests/fakecuda)");
    p->totalGlobalMem = SIM_TOTAL_MEM;
    p->sharedMemPerBlock = 48 << 10;
    p->sharedMemPerBlockOptin = 227 << 10;
    p->sharedMemPerMultiprocessor = 228 << 10;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsPerMultiProcessor = 2048;
    p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    p->l2CacheSize = 50 << 20;
    p->memoryBusWidth = 5120;
    p->unifiedAddressing = 1;
    p->concurrentKernels = 1;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    sim_fill_props(prop);
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    struct cudaDeviceProp p;
    if (device != 0) return cudaErrorInvalidDevice;
    sim_fill_props(&p);
    switch (attr) {
        case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
        case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
        case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)p.sharedMemPerBlockOptin; break;
        case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)p.sharedMemPerBlock; break;
        case cudaDevAttrWarpSize: *value = p.warpSize; break;
        case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
        case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
        default: *value = 0; break;
    }
    return cudaSuccess;
}

/* streams and events: one default stream, events that are always complete */
static int sim_handle_counter = 1;
cudaError_t cudaStreamCreateWithPriority(cudaStream_t *s, unsigned int f, int prio) { (void)f; (void)prio; *s = (cudaStream_t)(size_t)(0x1000 + sim_handle_counter++); return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int f) { return cudaStreamCreateWithPriority(s, f, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) { (void)s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t s) { (void)s; return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t s) { (void)s; return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int f) { (void)s; (void)e; (void)f; return cudaSuccess; }
cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *st) { (void)s; *st = cudaStreamCaptureStatusNone; return cudaSuccess; }
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t s, enum cudaStreamCaptureStatus *st, unsigned long long *id,
                                     cudaGraph_t *g, const cudaGraphNode_t **deps, const cudaGraphEdgeData **edges, size_t *n) {
    (void)s;
    if (st) *st = cudaStreamCaptureStatusNone;
    if (id) *id = 0;
    if (g) *g = 0;
    if (deps) *deps = 0;
    if (edges) *edges = 0;
    if (n) *n = 0;
    return cudaSuccess;
}
cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode) { (void)mode; return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int f) { (void)f; *e = (cudaEvent_t)(size_t)(0x100000 + sim_handle_counter++); return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) { (void)e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) { (void)e; (void)s; return cudaSuccess; }
cudaError_t cudaEventRecordWithFlags(cudaEvent_t e, cudaStream_t s, unsigned int f) { (void)e; (void)s; (void)f; return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t e) { (void)e; return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t e) { (void)e; return cudaSuccess; }

/* driver API: torch dlopens libcuda.so.1 (this library's soname) and asks for entry points through the runtime */
static int sim_context_token;
CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int *count) { *count = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice *dev, int ordinal) { if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE; *dev = 0; return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attr, CUdevice dev) {
    return cudaDeviceGetAttribute(value, (enum cudaDeviceAttr)attr, (int)dev) == cudaSuccess ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active) { (void)dev; *flags = 0; *active = 1; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) { (void)dev; *ctx = (CUcontext)&sim_context_token; return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext *ctx) { *ctx = (CUcontext)&sim_context_token; return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext ctx) { (void)ctx; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult err, const char **str) { (void)err; *str = "simulated CUDA driver (tests/fakecuda)"; return CUDA_SUCCESS; }
CUresult cuGetErrorName(CUresult err, const char **str) { (void)err; *str = "CUDA_ERROR_SIMULATED"; return CUDA_SUCCESS; }

cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **func, unsigned int version, unsigned long long flags,
                                             enum cudaDriverEntryPointQueryResult *status) {
    Dl_info self;
    void *handle;
    (void)version; (void)flags;
    *func = 0;
    if (dladdr((void *)&cuInit, &self) && (handle = dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD))) {
        *func = dlsym(handle, symbol);
        dlclose(handle);
    }
    if (status) *status = *func ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
