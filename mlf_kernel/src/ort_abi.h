// The part of ONNX Runtime's C ABI that the MLF kernel library uses, declared by this
// project (the onnxruntime wheels ship no C headers).
//
// ONNX Runtime's C API is a table of function pointers (OrtApi) that only ever grows at
// the end; a library asks the runtime for the table of a given version (GetApi) and
// calls entries by position. `OrtApiTable` below names the entries this library calls at
// their positions in the table (0-based) and keeps the others as opaque slots, so it is
// ABI-compatible with every runtime that serves `kRequestedApiVersion` (the pinned
// onnxruntime 1.31.1 serves versions 1..31). The positions are checked at load time:
// CreateStatus / GetErrorCode / GetErrorMessage / ReleaseStatus must round-trip a status
// (see RegisterCustomOps), and the tests run every other entry.
//
// OrtCustomOp is the struct a library fills in to describe an operator; the runtime reads
// only the fields that exist at the `version` the library puts in it.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

// The runtime version this library needs: KernelContext_ParallelFor is in the table
// from API version 17 (onnxruntime 1.17) on; 18 leaves a margin.
constexpr uint32_t kRequestedApiVersion = 18;
// The OrtCustomOp layout this library fills in: fields up to GetEndVersion (version 17).
constexpr uint32_t kCustomOpVersion = 17;

struct OrtStatus;
struct OrtValue;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtTensorTypeAndShapeInfo;
struct OrtShapeInferContext;

enum OrtErrorCode : int {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_INVALID_GRAPH = 10,
};

enum ONNXTensorElementDataType : int {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
};

enum OrtCustomOpInputOutputCharacteristic : int {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2,
};

enum OrtMemType : int {
  OrtMemTypeDefault = 0,
};

using OrtStatusPtr = OrtStatus*;
using Slot = void*;  // an entry of the table this library does not call

// One typed entry per function the library calls; `Slot` fills the gaps. The number after
// each name is its position in ONNX Runtime's table.
struct OrtApiTable {
  OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* msg);               // 0
  OrtErrorCode (*GetErrorCode)(const OrtStatus* status);                        // 1
  const char* (*GetErrorMessage)(const OrtStatus* status);                      // 2
  Slot slots_3_25[23];                                                          // 3..25
  OrtStatusPtr (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out);  // 26
  OrtStatusPtr (*CustomOpDomain_Add)(OrtCustomOpDomain* domain, const void* op);      // 27
  OrtStatusPtr (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain);  // 28
  Slot slots_29_50[22];                                                         // 29..50
  OrtStatusPtr (*GetTensorMutableData)(OrtValue* value, void** out);            // 51
  Slot slots_52_60[9];                                                          // 52..60
  OrtStatusPtr (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);  // 61
  OrtStatusPtr (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims,
                                size_t count);                                  // 62
  Slot slots_63_64[2];                                                          // 63..64
  OrtStatusPtr (*GetTensorTypeAndShape)(const OrtValue* value,
                                        OrtTensorTypeAndShapeInfo** out);       // 65
  Slot slots_66_84[19];                                                         // 66..84
  OrtStatusPtr (*KernelInfoGetAttribute_float)(const OrtKernelInfo* info, const char* name,
                                               float* out);                     // 85
  OrtStatusPtr (*KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name,
                                               int64_t* out);                   // 86
  Slot slot_87;                                                                 // 87
  Slot slots_88_89[2];                                                          // 88..89
  OrtStatusPtr (*KernelContext_GetInput)(const OrtKernelContext* context, size_t index,
                                         const OrtValue** out);                 // 90
  OrtStatusPtr (*KernelContext_GetOutput)(OrtKernelContext* context, size_t index,
                                          const int64_t* dims, size_t count,
                                          OrtValue** out);                      // 91
  Slot slot_92;                                                                 // 92
  void (*ReleaseStatus)(OrtStatus* status);                                     // 93
  Slot slots_94_98[5];                                                          // 94..98
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info);       // 99
  Slot slot_100;                                                                // 100
  void (*ReleaseCustomOpDomain)(OrtCustomOpDomain* domain);                     // 101
  Slot slots_102_161[60];                                                       // 102..161
  OrtStatusPtr (*KernelInfoGetAttributeArray_float)(const OrtKernelInfo* info,
                                                    const char* name, float* out,
                                                    size_t* size);              // 162
  Slot slots_163_273[111];                                                      // 163..273
  OrtStatusPtr (*KernelContext_ParallelFor)(const OrtKernelContext* context,
                                            void (*fn)(void*, size_t), size_t total,
                                            size_t num_batch, void* user_data);  // 274
};

static_assert(offsetof(OrtApiTable, CustomOpDomain_Add) / sizeof(void*) == 27, "OrtApi layout");
static_assert(offsetof(OrtApiTable, GetTensorTypeAndShape) / sizeof(void*) == 65, "OrtApi layout");
static_assert(offsetof(OrtApiTable, KernelContext_GetOutput) / sizeof(void*) == 91, "OrtApi layout");
static_assert(offsetof(OrtApiTable, ReleaseCustomOpDomain) / sizeof(void*) == 101, "OrtApi layout");
static_assert(offsetof(OrtApiTable, KernelInfoGetAttributeArray_float) / sizeof(void*) == 162,
              "OrtApi layout");
static_assert(offsetof(OrtApiTable, KernelContext_ParallelFor) / sizeof(void*) == 274,
              "OrtApi layout");

struct OrtApiBase {
  const OrtApiTable* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// Operator description, fields in the runtime's order up to version 17.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApiTable* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op,
                                                                 size_t index);
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op,
                                                                  size_t index);
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatusPtr (*CreateKernelV2)(const OrtCustomOp* op, const OrtApiTable* api,
                                 const OrtKernelInfo* info, void** kernel);
  OrtStatusPtr (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
  OrtStatusPtr (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
};

}  // extern "C"
