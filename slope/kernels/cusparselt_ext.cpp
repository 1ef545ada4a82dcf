// Cached cuSPARSELt 2:4 SpMM for SLoPe, registered as torch custom ops `slope_cslt::*`.
//
// Why this exists: torch._cslt_sparse_mm builds descriptors and a plan on every call (~1 ms of host time on an
// H100), which erases the kernel's gain below a few thousand tokens. Here descriptors, plans and the chosen
// algorithm are built once per (device, m, k, n, dtype, layout, alg_id, bias pointer) and reused.
//
// Shapes (a linear layer y = x·Wᵀ, W: (m = d_out, k = d_in), 2:4 along k; x: (n tokens, k) row-major):
//   layout 0, "sparse A":  D(m, n) = W · xᵀ; W row-major structured, x read as (n, k) row-major with op=T,
//                          D column-major with ld = m, which is y (n, m) row-major in memory.
//   layout 1, "sparse B":  D(n, m) = x · Wᵀ; x dense row-major, Wᵀ structured: (m, k) row-major with op=T,
//                          D row-major (n, m).
// The compressed buffer is [values (m, k/2) row-major | metadata], as torch's own cuSPARSELt tensors are; the
// Python side relies on the values prefix (checked by the GPU tests) to update weights in place.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cusparseLt.h>

#include <list>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

namespace {

#define SLOPE_CHECK(expr)                                                                          \
  do {                                                                                             \
    cusparseStatus_t status_ = (expr);                                                             \
    TORCH_CHECK(status_ == CUSPARSE_STATUS_SUCCESS, "cuSPARSELt call failed: ", #expr,            \
                " -> status ", static_cast<int>(status_));                                         \
  } while (0)

constexpr uint32_t kAlignment = 16;

cusparseLtHandle_t& handle() {
  static cusparseLtHandle_t h;
  static std::once_flag once;
  std::call_once(once, [] { SLOPE_CHECK(cusparseLtInit(&h)); });
  return h;
}

cudaDataType cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "slope cuSPARSELt: dtype ", t, " is not supported; use float16 or bfloat16");
  }
  return CUDA_R_16F;
}

// The structured (sparse) operand's descriptor for a (m, k) row-major weight, 2:4 along k.
void init_sparse_descr(cusparseLtMatDescriptor_t* d, int64_t m, int64_t k, cudaDataType type) {
  SLOPE_CHECK(cusparseLtStructuredDescriptorInit(&handle(), d, m, k, k, kAlignment, type, CUSPARSE_ORDER_ROW,
                                                 CUSPARSELT_SPARSITY_50_PERCENT));
}

struct PlanKey {
  int device; int64_t m, k, n; int dtype, layout, alg_id; uintptr_t bias; int64_t ldc;  // ldc: D's leading dim
  bool operator==(const PlanKey& o) const {
    return std::tie(device, m, k, n, dtype, layout, alg_id, bias, ldc) ==
           std::tie(o.device, o.m, o.k, o.n, o.dtype, o.layout, o.alg_id, o.bias, o.ldc);
  }
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& p) const {
    size_t h = std::hash<int64_t>()(p.m);
    for (int64_t v : {p.k, p.n, (int64_t)p.dtype, (int64_t)p.layout, (int64_t)p.alg_id, (int64_t)p.device,
                      (int64_t)p.bias, p.ldc})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

struct Plan {
  cusparseLtMatDescriptor_t a, b, c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg_sel;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  int max_alg_id = 0;
  ~Plan() {
    cusparseLtMatmulPlanDestroy(&plan);
    cusparseLtMatDescriptorDestroy(&a);
    cusparseLtMatDescriptorDestroy(&b);
    cusparseLtMatDescriptorDestroy(&c);
  }
};

// LRU-bounded: distinct token counts or bias pointers add entries; a long run with varying n stays bounded.
constexpr size_t kMaxPlans = 512;
std::mutex cache_mutex;
std::list<PlanKey> lru;
std::unordered_map<PlanKey, std::pair<std::unique_ptr<Plan>, std::list<PlanKey>::iterator>, PlanKeyHash> plans;
int64_t plan_builds = 0;

Plan* get_plan(const PlanKey& key, cudaDataType type) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = plans.find(key);
  if (it != plans.end()) {
    lru.splice(lru.begin(), lru, it->second.second);
    return it->second.first.get();
  }
  auto p = std::make_unique<Plan>();
  auto& h = handle();
  const int64_t m = key.m, k = key.k, n = key.n;
  cusparseOperation_t op_a, op_b;
  if (key.layout == 0) {  // D(m,n) col-major = W(m,k) · x(n,k)ᵀ
    init_sparse_descr(&p->a, m, k, type);
    SLOPE_CHECK(cusparseLtDenseDescriptorInit(&h, &p->b, n, k, k, kAlignment, type, CUSPARSE_ORDER_ROW));
    SLOPE_CHECK(cusparseLtDenseDescriptorInit(&h, &p->c, m, n, key.ldc, kAlignment, type, CUSPARSE_ORDER_COL));
    op_a = CUSPARSE_OPERATION_NON_TRANSPOSE; op_b = CUSPARSE_OPERATION_TRANSPOSE;
  } else {  // D(n,m) row-major = x(n,k) · W(m,k)ᵀ, W structured
    SLOPE_CHECK(cusparseLtDenseDescriptorInit(&h, &p->a, n, k, k, kAlignment, type, CUSPARSE_ORDER_ROW));
    init_sparse_descr(&p->b, m, k, type);
    SLOPE_CHECK(cusparseLtDenseDescriptorInit(&h, &p->c, n, m, key.ldc, kAlignment, type, CUSPARSE_ORDER_ROW));
    op_a = CUSPARSE_OPERATION_NON_TRANSPOSE; op_b = CUSPARSE_OPERATION_TRANSPOSE;
  }
  SLOPE_CHECK(cusparseLtMatmulDescriptorInit(&h, &p->matmul, op_a, op_b, &p->a, &p->b, &p->c, &p->c,
                                             CUSPARSE_COMPUTE_32F));
  if (key.bias) {
    void* bias_ptr = reinterpret_cast<void*>(key.bias);
    SLOPE_CHECK(cusparseLtMatmulDescSetAttribute(&h, &p->matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias_ptr,
                                                 sizeof(bias_ptr)));
  }
  SLOPE_CHECK(cusparseLtMatmulAlgSelectionInit(&h, &p->alg_sel, &p->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
  SLOPE_CHECK(cusparseLtMatmulAlgGetAttribute(&h, &p->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID,
                                              &p->max_alg_id, sizeof(p->max_alg_id)));
  // Valid ids are [0, MAX_ID): an id past the end can fault inside the kernel instead of failing the call.
  TORCH_CHECK(key.alg_id >= 0 && key.alg_id < std::max(p->max_alg_id, 1), "slope cuSPARSELt: alg_id ", key.alg_id,
              " out of range [0, ", p->max_alg_id, ") for this shape");
  int alg = key.alg_id;
  SLOPE_CHECK(cusparseLtMatmulAlgSetAttribute(&h, &p->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &alg, sizeof(alg)));
  SLOPE_CHECK(cusparseLtMatmulPlanInit(&h, &p->plan, &p->matmul, &p->alg_sel));
  SLOPE_CHECK(cusparseLtMatmulGetWorkspace(&h, &p->plan, &p->workspace));
  ++plan_builds;
  lru.push_front(key);
  Plan* raw = p.get();
  plans.emplace(key, std::make_pair(std::move(p), lru.begin()));
  if (plans.size() > kMaxPlans) {
    plans.erase(lru.back());
    lru.pop_back();
  }
  return raw;
}

void check_weight_shape(int64_t m, int64_t k, const char* what) {
  TORCH_CHECK(m % 32 == 0 && k % 32 == 0 && m >= 32 && k >= 32, "slope cuSPARSELt: ", what, " shape (", m, ", ",
              k, ") must have both dims multiples of 32 (>= 32); keep such layers dense or pad them");
}

// Compressed size in bytes (values + metadata) of a (m, k) 2:4 weight.
int64_t compressed_bytes(int64_t m, int64_t k, at::ScalarType dtype) {
  check_weight_shape(m, k, "weight");
  cusparseLtMatDescriptor_t d;
  init_sparse_descr(&d, m, k, cuda_type(dtype));
  size_t size = 0, buffer = 0;
  SLOPE_CHECK(cusparseLtSpMMACompressedSize2(&handle(), &d, &size, &buffer));
  cusparseLtMatDescriptorDestroy(&d);
  return static_cast<int64_t>(size);
}

// layout 0: the weight is operand A; layout 1: operand B read transposed (see the header).
at::Tensor compress(const at::Tensor& dense, int64_t layout) {
  TORCH_CHECK(dense.is_cuda() && dense.dim() == 2 && dense.is_contiguous(),
              "slope cuSPARSELt compress: expects a contiguous 2-D CUDA tensor");
  c10::cuda::CUDAGuard guard(dense.device());
  const int64_t m = dense.size(0), k = dense.size(1);
  check_weight_shape(m, k, "weight");
  cusparseLtMatDescriptor_t d;
  init_sparse_descr(&d, m, k, cuda_type(dense.scalar_type()));
  size_t size = 0, buffer_size = 0;
  SLOPE_CHECK(cusparseLtSpMMACompressedSize2(&handle(), &d, &size, &buffer_size));
  auto out = at::empty({(int64_t)size}, dense.options().dtype(at::kByte));
  auto buffer = at::empty({(int64_t)std::max<size_t>(buffer_size, 1)}, dense.options().dtype(at::kByte));
  TORCH_CHECK(layout == 0 || layout == 1, "slope cuSPARSELt compress: layout must be 0 or 1");
  SLOPE_CHECK(cusparseLtSpMMACompress2(&handle(), &d, layout == 0 ? 1 : 0,
                                       layout == 0 ? CUSPARSE_OPERATION_NON_TRANSPOSE : CUSPARSE_OPERATION_TRANSPOSE,
                                       dense.data_ptr(),
                                       out.data_ptr(), buffer.data_ptr(), at::cuda::getCurrentCUDAStream()));
  cusparseLtMatDescriptorDestroy(&d);
  return out;
}

// D = x·Wᵀ (+ bias) written into columns [offset, offset + m) of `out` (n, ldc) row-major: the tiled path runs
// one SpMM per tile of W's rows into one output buffer, and the plain op is the case offset = 0, ldc = m.
void spmm_into(const at::Tensor& packed, int64_t m, int64_t k, const at::Tensor& x, const std::optional<at::Tensor>& bias,
               int64_t alg_id, int64_t layout, at::Tensor& out, int64_t offset) {
  TORCH_CHECK(x.is_cuda() && packed.is_cuda() && out.is_cuda(), "slope cuSPARSELt spmm: tensors must be on a CUDA device");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k && x.is_contiguous(), "slope cuSPARSELt spmm: x must be a contiguous (n, ",
              k, ") matrix, got ", x.sizes());
  TORCH_CHECK(layout == 0 || layout == 1, "slope cuSPARSELt spmm: layout must be 0 or 1");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  TORCH_CHECK(n % 8 == 0, "slope cuSPARSELt spmm: the token count ", n, " must be a multiple of 8");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == n && out.stride(1) == 1 && out.stride(0) == out.size(1) &&
              out.scalar_type() == x.scalar_type() && offset >= 0 && offset % 8 == 0 && offset + m <= out.size(1),
              "slope cuSPARSELt spmm: out must be a contiguous (", n, ", >= ", offset + m, ") matrix of x's dtype ",
              "and the column offset a multiple of 8; got ", out.sizes(), " offset ", offset);
  const auto type = cuda_type(x.scalar_type());
  uintptr_t bias_ptr = 0;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->numel() == m && bias->is_contiguous(),
                "slope cuSPARSELt spmm: bias must be a contiguous (", m, ",) vector of x's dtype");
    // cuSPARSELt adds the bias per row of D: that is per output feature only in layout 0.
    TORCH_CHECK(layout == 0, "slope cuSPARSELt spmm: a fused bias needs layout 0");
    bias_ptr = reinterpret_cast<uintptr_t>(bias->data_ptr());
  }
  PlanKey key{x.get_device(), m, k, n, static_cast<int>(x.scalar_type()), static_cast<int>(layout),
              static_cast<int>(alg_id), bias_ptr, out.size(1)};
  Plan* p = get_plan(key, type);
  auto workspace = at::empty({(int64_t)std::max<size_t>(p->workspace, 1)}, x.options().dtype(at::kByte));
  float alpha = 1.0f, beta = 0.0f;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const void* a = layout == 0 ? packed.data_ptr() : x.data_ptr();
  const void* b = layout == 0 ? x.data_ptr() : packed.data_ptr();
  void* d = static_cast<char*>(out.data_ptr()) + offset * out.element_size();
  SLOPE_CHECK(cusparseLtMatmul(&handle(), &p->plan, &alpha, a, b, &beta, d, d, workspace.data_ptr(), &stream, 1));
}

at::Tensor spmm(const at::Tensor& packed, int64_t m, int64_t k, const at::Tensor& x,
                const std::optional<at::Tensor>& bias, int64_t alg_id, int64_t layout) {
  auto out = at::empty({x.size(0), m}, x.options());
  spmm_into(packed, m, k, x, bias, alg_id, layout, out, 0);
  return out;
}

void spmm_out(const at::Tensor& packed, int64_t m, int64_t k, const at::Tensor& x,
              const std::optional<at::Tensor>& bias, int64_t alg_id, int64_t layout, at::Tensor out, int64_t offset) {
  spmm_into(packed, m, k, x, bias, alg_id, layout, out, offset);
}

int64_t max_alg_id(int64_t m, int64_t k, int64_t n, at::ScalarType dtype, int64_t layout, int64_t device) {
  PlanKey key{(int)device, m, k, n, static_cast<int>(dtype), static_cast<int>(layout), 0, 0, m};
  return get_plan(key, cuda_type(dtype))->max_alg_id;
}

int64_t num_plan_builds() { std::lock_guard<std::mutex> lock(cache_mutex); return plan_builds; }
int64_t version() { return CUSPARSELT_VERSION; }

}  // namespace

TORCH_LIBRARY(slope_cslt, lib) {
  lib.def("compress(Tensor dense, int layout) -> Tensor");
  lib.def("spmm(Tensor packed, int m, int k, Tensor x, Tensor? bias, int alg_id, int layout) -> Tensor");
  lib.def("spmm_out(Tensor packed, int m, int k, Tensor x, Tensor? bias, int alg_id, int layout, Tensor(a!) out, "
          "int offset) -> ()");
}

TORCH_LIBRARY_IMPL(slope_cslt, CUDA, lib) {
  lib.impl("compress", &compress);
  lib.impl("spmm", &spmm);
  lib.impl("spmm_out", &spmm_out);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compressed_bytes", &compressed_bytes);
  m.def("max_alg_id", &max_alg_id);
  m.def("num_plan_builds", &num_plan_builds);
  m.def("version", &version);
}
