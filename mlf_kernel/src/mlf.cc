// ai.spikeguard::MLF for ONNX Runtime's CPU execution provider: one multi-level-firing
// neuron (eq. 6 of the paper) over all T steps and all K units in one pass.
//
//   input  X      float [T, B, ...]  the neuron's input current, time-major
//   output Y      float [T, B, ...]  spikes per step: the number of the K units that fired
//   output Count  float [B]          spikes per image, summed over steps, units and positions
//   attributes    thresholds (floats, K values), decay (float), timesteps (int, = T)
//
// The arithmetic is the exported graph's, operation for operation, in float32 (built with
// -ffp-contract=off: no fused multiply-add), per unit k and position:
//
//   d = u * decay;  d = fired ? 0 : d;  u = d + x[t];  fired = (u - V_th[k]) >= 0
//
// starting from u = 0 and nothing fired; Y[t] counts the units that fired at step t. This
// is what the model-local function that the exporter ships with the node computes (its
// `Where` form of the reset), so a session with this library and one without it give
// identical outputs (tests/kernel/).
//
// The loop runs on 16 lanes at a time (GCC vector extensions), compiled three times for
// AVX-512F, AVX2 and baseline x86-64, and picked when the library is registered
// (`SPIKEGUARD_MLF_ISA=generic|avx2|avx512` forces a variant, for tests). Work is split
// over images and chunks of positions with ONNX Runtime's intra-op thread pool.
//
// The library talks to ONNX Runtime only through the C API table the runtime passes to
// RegisterCustomOps (no link to libonnxruntime); see ort_abi.h.

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ort_abi.h"

namespace {

constexpr int kMaxUnits = 16;   // thresholds per neuron
constexpr int kMaxRank = 16;
constexpr int kLanes = 16;
constexpr int64_t kChunk = 2048;  // positions per work item (a multiple of kLanes)
constexpr const char* kDomain = "ai.spikeguard";
constexpr const char* kOpName = "MLF";

typedef float vfloat __attribute__((vector_size(sizeof(float) * kLanes)));
typedef int32_t vint __attribute__((vector_size(sizeof(int32_t) * kLanes)));

struct Job {
  const float* x;
  float* y;
  int64_t* partial;  // spikes per work item
  int64_t steps, batch, positions, chunks_per_image;
  int units;
  float decay;
  float thresholds[kMaxUnits];
};

// One work item: image `item / chunks_per_image`, positions of chunk `item % ...`.
static inline __attribute__((always_inline)) void run_item(const Job& job, size_t item) {
  const int64_t image = static_cast<int64_t>(item) / job.chunks_per_image;
  const int64_t begin = (static_cast<int64_t>(item) % job.chunks_per_image) * kChunk;
  const int64_t end = begin + kChunk < job.positions ? begin + kChunk : job.positions;
  const int64_t stride = job.batch * job.positions;  // elements per time step
  const float* x = job.x + image * job.positions;
  float* y = job.y + image * job.positions;
  const int units = job.units;
  const float decay = job.decay;
  vint lane_total = {};
  int64_t j = begin;
  for (; j + kLanes <= end; j += kLanes) {
    vfloat u[kMaxUnits];
    vint fired[kMaxUnits];
    for (int k = 0; k < units; ++k) {
      u[k] = vfloat{};
      fired[k] = vint{};
    }
    for (int64_t t = 0; t < job.steps; ++t) {
      vfloat current;
      memcpy(&current, x + t * stride + j, sizeof current);
      vint spikes = {};
      for (int k = 0; k < units; ++k) {
        vfloat d = u[k] * decay;
        d = (vfloat)((vint)d & ~fired[k]);  // Where(fired, +0.0, d)
        u[k] = d + current;
        fired[k] = (u[k] - job.thresholds[k]) >= 0.0f;  // -1 where it fires
        spikes -= fired[k];
      }
      const vfloat out = __builtin_convertvector(spikes, vfloat);
      memcpy(y + t * stride + j, &out, sizeof out);
      lane_total += spikes;
    }
  }
  int64_t total = 0;
  for (int lane = 0; lane < kLanes; ++lane) total += lane_total[lane];
  for (; j < end; ++j) {  // the positions that do not fill a vector
    float u[kMaxUnits];
    bool fired[kMaxUnits];
    for (int k = 0; k < units; ++k) {
      u[k] = 0.0f;
      fired[k] = false;
    }
    for (int64_t t = 0; t < job.steps; ++t) {
      const float current = x[t * stride + j];
      int spikes = 0;
      for (int k = 0; k < units; ++k) {
        float d = u[k] * decay;
        d = fired[k] ? 0.0f : d;
        u[k] = d + current;
        fired[k] = (u[k] - job.thresholds[k]) >= 0.0f;
        spikes += fired[k];
      }
      y[t * stride + j] = static_cast<float>(spikes);
      total += spikes;
    }
  }
  job.partial[item] = total;
}

__attribute__((target("avx512f"))) void item_avx512(void* job, size_t item) {
  run_item(*static_cast<const Job*>(job), item);
}
__attribute__((target("avx2"))) void item_avx2(void* job, size_t item) {
  run_item(*static_cast<const Job*>(job), item);
}
void item_generic(void* job, size_t item) { run_item(*static_cast<const Job*>(job), item); }

struct Variant {
  const char* name;
  void (*fn)(void*, size_t);
};
const Variant kVariants[] = {{"avx512", item_avx512}, {"avx2", item_avx2}, {"generic", item_generic}};

bool supported(const char* name) {
  __builtin_cpu_init();
  if (strcmp(name, "avx512") == 0) return __builtin_cpu_supports("avx512f");
  if (strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2");
  return strcmp(name, "generic") == 0;
}

const Variant* g_variant = nullptr;

// --------------------------------------------------------------------------- the operator

struct Kernel {
  const OrtApiTable* api;
  const Variant* variant;
  int64_t timesteps;
  int units;
  float decay;
  float thresholds[kMaxUnits];
};

OrtStatusPtr fail(const OrtApiTable* api, OrtErrorCode code, const char* message) {
  return api->CreateStatus(code, message);
}

#define RETURN_IF_ERROR(expr)            \
  do {                                   \
    OrtStatusPtr status_ = (expr);       \
    if (status_ != nullptr) return status_; \
  } while (0)

OrtStatusPtr create_kernel(const OrtCustomOp*, const OrtApiTable* api, const OrtKernelInfo* info,
                           void** out) {
  Kernel kernel{};
  kernel.api = api;
  kernel.variant = g_variant;
  size_t units = kMaxUnits;
  OrtStatusPtr status =
      api->KernelInfoGetAttributeArray_float(info, "thresholds", kernel.thresholds, &units);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return fail(api, ORT_INVALID_ARGUMENT,
                "MLF: attribute 'thresholds' must hold 1 to 16 floats");
  }
  if (units < 1 || units > static_cast<size_t>(kMaxUnits)) {
    return fail(api, ORT_INVALID_ARGUMENT, "MLF: attribute 'thresholds' must hold 1 to 16 floats");
  }
  kernel.units = static_cast<int>(units);
  RETURN_IF_ERROR(api->KernelInfoGetAttribute_float(info, "decay", &kernel.decay));
  RETURN_IF_ERROR(api->KernelInfoGetAttribute_int64(info, "timesteps", &kernel.timesteps));
  if (kernel.timesteps < 1) return fail(api, ORT_INVALID_ARGUMENT, "MLF: timesteps must be >= 1");
  Kernel* copy = static_cast<Kernel*>(malloc(sizeof(Kernel)));
  if (copy == nullptr) return fail(api, ORT_FAIL, "MLF: out of memory");
  *copy = kernel;
  *out = copy;
  return nullptr;
}

OrtStatusPtr input_shape(const OrtApiTable* api, const OrtValue* input, int64_t* dims,
                         size_t* rank) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  RETURN_IF_ERROR(api->GetTensorTypeAndShape(input, &info));
  OrtStatusPtr status = api->GetDimensionsCount(info, rank);
  if (status == nullptr && (*rank < 2 || *rank > static_cast<size_t>(kMaxRank))) {
    status = fail(api, ORT_INVALID_ARGUMENT, "MLF: input must be [T, B, ...] (rank 2 to 16)");
  }
  if (status == nullptr) status = api->GetDimensions(info, dims, *rank);
  api->ReleaseTensorTypeAndShapeInfo(info);  // ours: GetTensorTypeAndShape made it
  return status;
}

OrtStatusPtr compute(void* opaque, OrtKernelContext* context) {
  const Kernel& kernel = *static_cast<const Kernel*>(opaque);
  const OrtApiTable* api = kernel.api;
  const OrtValue* input = nullptr;
  RETURN_IF_ERROR(api->KernelContext_GetInput(context, 0, &input));
  int64_t dims[kMaxRank];
  size_t rank = 0;
  RETURN_IF_ERROR(input_shape(api, input, dims, &rank));
  if (dims[0] != kernel.timesteps) {
    return fail(api, ORT_INVALID_ARGUMENT, "MLF: the input's first axis is not 'timesteps'");
  }
  int64_t positions = 1;
  for (size_t i = 2; i < rank; ++i) positions *= dims[i];
  OrtValue* spikes = nullptr;
  OrtValue* counts = nullptr;
  RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 0, dims, rank, &spikes));
  RETURN_IF_ERROR(api->KernelContext_GetOutput(context, 1, &dims[1], 1, &counts));
  void* x = nullptr;
  void* y = nullptr;
  void* count = nullptr;
  RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(input), &x));
  RETURN_IF_ERROR(api->GetTensorMutableData(spikes, &y));
  RETURN_IF_ERROR(api->GetTensorMutableData(counts, &count));
  const int64_t batch = dims[1];
  float* per_image = static_cast<float*>(count);
  for (int64_t b = 0; b < batch; ++b) per_image[b] = 0.0f;
  if (batch == 0 || positions == 0) return nullptr;

  Job job{};
  job.x = static_cast<const float*>(x);
  job.y = static_cast<float*>(y);
  job.steps = kernel.timesteps;
  job.batch = batch;
  job.positions = positions;
  job.chunks_per_image = (positions + kChunk - 1) / kChunk;
  job.units = kernel.units;
  job.decay = kernel.decay;
  memcpy(job.thresholds, kernel.thresholds, sizeof job.thresholds);
  const size_t items = static_cast<size_t>(batch * job.chunks_per_image);
  job.partial = static_cast<int64_t*>(malloc(items * sizeof(int64_t)));
  if (job.partial == nullptr) return fail(api, ORT_FAIL, "MLF: out of memory");
  OrtStatusPtr status =
      api->KernelContext_ParallelFor(context, kernel.variant->fn, items, 0, &job);
  if (status == nullptr) {
    for (int64_t b = 0; b < batch; ++b) {
      int64_t total = 0;
      for (int64_t c = 0; c < job.chunks_per_image; ++c) {
        total += job.partial[b * job.chunks_per_image + c];
      }
      per_image[b] = static_cast<float>(total);
    }
  }
  free(job.partial);
  return status;
}

// The runtime calls the V2 entries (OrtCustomOp version >= 16); the V1 ones are there for
// the layout and report failures only through a null kernel.
void* create_kernel_v1(const OrtCustomOp* op, const OrtApiTable* api, const OrtKernelInfo* info) {
  void* kernel = nullptr;
  OrtStatusPtr status = create_kernel(op, api, info, &kernel);
  if (status != nullptr) api->ReleaseStatus(status);
  return kernel;
}
void compute_v1(void* kernel, OrtKernelContext* context) {
  OrtStatusPtr status = compute(kernel, context);
  if (status != nullptr) static_cast<const Kernel*>(kernel)->api->ReleaseStatus(status);
}
void destroy_kernel(void* kernel) { free(kernel); }
const char* op_name(const OrtCustomOp*) { return kOpName; }
const char* op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
ONNXTensorElementDataType float_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t one(const OrtCustomOp*) { return 1; }
size_t two(const OrtCustomOp*) { return 2; }
OrtCustomOpInputOutputCharacteristic required(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType default_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int min_arity(const OrtCustomOp*) { return 1; }
int homogeneous(const OrtCustomOp*) { return 1; }
int start_version(const OrtCustomOp*) { return 1; }
int end_version(const OrtCustomOp*) { return INT_MAX; }

OrtCustomOp make_op() {
  OrtCustomOp op{};
  op.version = kCustomOpVersion;
  op.CreateKernel = create_kernel_v1;
  op.GetName = op_name;
  op.GetExecutionProviderType = op_provider;  // CPU only: never claims a CUDA/TensorRT node
  op.GetInputType = float_type;
  op.GetInputTypeCount = one;
  op.GetOutputType = float_type;
  op.GetOutputTypeCount = two;
  op.KernelCompute = compute_v1;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = default_memory;
  op.GetVariadicInputMinArity = min_arity;
  op.GetVariadicInputHomogeneity = homogeneous;
  op.GetVariadicOutputMinArity = min_arity;
  op.GetVariadicOutputHomogeneity = homogeneous;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  // No shape-inference hook: the runtime then leaves the outputs' shapes to the graph
  // (a hook's partial answer once misled a downstream Reshape).
  op.InferOutputShapeFn = nullptr;
  op.GetStartVersion = start_version;
  op.GetEndVersion = end_version;
  return op;
}

const OrtCustomOp g_op = make_op();
pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
OrtCustomOpDomain* g_domain = nullptr;  // shared by every session that registers the library

const Variant* choose_variant(const char* forced) {
  for (const Variant& v : kVariants) {
    if (forced != nullptr && forced[0] != '\0') {
      if (strcmp(forced, v.name) == 0) return supported(v.name) ? &v : nullptr;
    } else if (supported(v.name)) {
      return &v;
    }
  }
  return nullptr;
}

}  // namespace

extern "C" {

// The variant this CPU runs (or SPIKEGUARD_MLF_ISA names): "avx512", "avx2", "generic";
// "unsupported" when the forced one is not available.
__attribute__((visibility("default"))) const char* SpikeguardMlfIsa(void) {
  const Variant* v = choose_variant(getenv("SPIKEGUARD_MLF_ISA"));
  return v == nullptr ? "unsupported" : v->name;
}

__attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                     const OrtApiBase* base) {
  const OrtApiTable* api = base->GetApi(kRequestedApiVersion);
  if (api == nullptr) {
    const OrtApiTable* oldest = base->GetApi(1);
    return oldest == nullptr ? nullptr
                             : oldest->CreateStatus(ORT_FAIL,
                                                    "spikeguard MLF kernel: this onnxruntime is "
                                                    "older than 1.18");
  }
  // The table positions this file relies on first: a status must round-trip.
  OrtStatus* probe = api->CreateStatus(ORT_INVALID_GRAPH, "probe");
  const bool layout_ok = api->GetErrorCode(probe) == ORT_INVALID_GRAPH &&
                         strcmp(api->GetErrorMessage(probe), "probe") == 0;
  api->ReleaseStatus(probe);
  if (!layout_ok) return api->CreateStatus(ORT_FAIL, "spikeguard MLF kernel: C API mismatch");
  const Variant* variant = choose_variant(getenv("SPIKEGUARD_MLF_ISA"));
  if (variant == nullptr) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT,
                             "spikeguard MLF kernel: SPIKEGUARD_MLF_ISA names a variant this CPU "
                             "cannot run (avx512, avx2, generic)");
  }
  pthread_mutex_lock(&g_lock);
  g_variant = variant;
  OrtStatusPtr status = nullptr;
  if (g_domain == nullptr) {
    status = api->CreateCustomOpDomain(kDomain, &g_domain);
    if (status == nullptr) status = api->CustomOpDomain_Add(g_domain, &g_op);
    if (status != nullptr && g_domain != nullptr) {
      api->ReleaseCustomOpDomain(g_domain);
      g_domain = nullptr;
    }
  }
  if (status == nullptr) status = api->AddCustomOpDomain(options, g_domain);
  pthread_mutex_unlock(&g_lock);
  return status;
}

}  // extern "C"
