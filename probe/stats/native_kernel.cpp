// One pass over a gated layer's logit map: bin every logit and count it into the region histogram
// and the label cells, and sum a per-bin rank by image and label (the gate sums are a matrix
// product, in Python). The reference with the
// same semantics, the argument checks and the build flags (-O3 -ffp-contract=off -fopenmp) are in
// probe/stats/native.py. Shapes: B images, C channels, N pixels, K bins, R regions, P present labels,
// L label rows, `cells` cells per channel; every tensor is contiguous.
//
// Parallel over channels with at::parallel_for (torch's intra-op threads): a thread owns the
// [.., c, ..] slices of every output of its channels, so there are no atomics and the counts do not
// depend on the number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

// out[p] = the number of the nk knots <= x[p]. With nk known at compile time the compares of one
// value stay in registers and GCC vectorises the loop over the values (the calibrated binnings
// have 17 inner knots); otherwise one pass over the row per knot.
template <int NK>
inline void count_fixed(const float* __restrict x, int64_t n, const float* __restrict knots, int32_t* __restrict out) {
  float k[NK];
  for (int j = 0; j < NK; ++j) k[j] = knots[j];
  for (int64_t p = 0; p < n; ++p) {
    int32_t s = 0;
    for (int j = 0; j < NK; ++j) s += x[p] >= k[j] ? 1 : 0;
    out[p] = s;
  }
}

inline void count_knots(const float* __restrict x, int64_t n, const float* __restrict knots, int64_t nk,
                        int32_t* __restrict out) {
  switch (nk) {
    case 17: return count_fixed<17>(x, n, knots, out);
    case 16: return count_fixed<16>(x, n, knots, out);
    case 15: return count_fixed<15>(x, n, knots, out);
    default:
      std::fill(out, out + n, 0);
      for (int64_t j = 0; j < nk; ++j) {
        const float knot = knots[j];
        for (int64_t p = 0; p < n; ++p) out[p] += x[p] >= knot ? 1 : 0;
      }
  }
}

// The bins of one row of n logits of one channel, binned in K segments: the segment s of x is the
// number of the K - 1 inner knots <= x (compares vectorised over the row, the counts kept in `out`),
// then v = ((x - base[s]) * scale[s]) + start[s], each step rounded on its own (no FMA), clamped to
// [0, hi] and truncated toward zero. Returns whether any v is NaN (`out` holds garbage there). An int
// reduction and ternary clamps, so that GCC vectorises the loops.
inline int bin_row(const float* __restrict x, int64_t n, const float* __restrict inner, int64_t segments,
                   const float* __restrict base, const float* __restrict scale, const float* __restrict start,
                   float hi, int32_t* __restrict out) {
  int nan = 0;
  if (segments == 1) {
    const float b0 = base[0], s0 = scale[0], t0 = start[0];
    for (int64_t p = 0; p < n; ++p) {
      const float d = x[p] - b0;
      const float t = d * s0;
      const float v = t + t0;
      nan |= (v != v);
      const float low = v < 0.0f ? 0.0f : v;
      out[p] = static_cast<int32_t>(low > hi ? hi : low);
    }
    return nan;
  }
  count_knots(x, n, inner, segments - 1, out);
  for (int64_t p = 0; p < n; ++p) {
    const int32_t k = out[p];
    const float d = x[p] - base[k];
    const float t = d * scale[k];
    const float v = t + start[k];
    nan |= (v != v);
    const float low = v < 0.0f ? 0.0f : v;
    out[p] = static_cast<int32_t>(low > hi ? hi : low);
  }
  return nan;
}

void check_range(const std::optional<at::Tensor>& t, int64_t lo, int64_t hi, const char* name) {
  // A guard for memory safety (Python has checked already, with a better message).
  if (!t.has_value() || t->numel() == 0) return;
  auto [low, high] = at::aminmax(*t);
  TORCH_CHECK(low.item<int64_t>() >= lo && high.item<int64_t>() < hi, name, " out of range");
}

template <typename cell_t>
bool accumulate(const at::Tensor& logits,                          // float32 [B, C, N]
                const at::Tensor& inner,                            // float32 [C, S - 1] inner knots
                const at::Tensor& base, const at::Tensor& scale,    // float32 [C, S] per segment
                const at::Tensor& start,                            // float32 [C, S]
                int64_t bins,                                       // K
                const std::optional<at::Tensor>& region,            // int32 [B, N] in [0, R)
                const std::optional<at::Tensor>& region_counts,     // int64 [R, C, K] += 1
                const std::optional<at::Tensor>& label,             // int32 [B, N] in [-1, P)
                const std::optional<at::Tensor>& label_rows,        // int64 [P] in [0, L)
                const std::optional<at::Tensor>& cell_of_bin,       // int64 [C, K] in [0, cells)
                const std::optional<at::Tensor>& offset_of_bin,     // int64 [C, K]
                const std::optional<at::Tensor>& cell_counts,       // cell_t [L, C, cells] += 1
                const std::optional<at::Tensor>& cell_moments,      // cell_t [L, C, cells] += offset
                const std::optional<at::Tensor>& total,             // int64 [C, K] += 1
                const std::optional<at::Tensor>& rank_table,        // float64 [C, K] a rank per bin
                const std::optional<at::Tensor>& rank_sums) {       // float64 [B, P, C] = sums of ranks
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const bool has_region = region.has_value(), has_label = label.has_value();
  const int64_t R = has_region ? region_counts->size(0) : 0;
  const int64_t P = has_label ? label_rows->size(0) : 0;
  const int64_t L = has_label ? cell_counts->size(0) : 0;
  const int64_t cells = has_label ? cell_counts->size(2) : 0;
  check_range(region, 0, R, "region");
  check_range(label, -1, P, "label");
  check_range(label_rows, 0, L, "label_rows");
  check_range(cell_of_bin, 0, cells, "cell_of_bin");

  const float* x_all = logits.data_ptr<float>();
  const int64_t S = base.size(1);  // segments per channel
  const float* kn = inner.data_ptr<float>();
  const float* ba = base.data_ptr<float>();
  const float* sc = scale.data_ptr<float>();
  const float* st = start.data_ptr<float>();
  const int32_t* reg_all = has_region ? region->data_ptr<int32_t>() : nullptr;
  const int32_t* lab_all = has_label ? label->data_ptr<int32_t>() : nullptr;
  int64_t* rc = has_region ? region_counts->data_ptr<int64_t>() : nullptr;
  const int64_t* rows = has_label ? label_rows->data_ptr<int64_t>() : nullptr;
  const int64_t* cob = has_label ? cell_of_bin->data_ptr<int64_t>() : nullptr;
  const int64_t* oob = has_label ? offset_of_bin->data_ptr<int64_t>() : nullptr;
  cell_t* cc = has_label ? cell_counts->data_ptr<cell_t>() : nullptr;
  cell_t* cm = has_label ? cell_moments->data_ptr<cell_t>() : nullptr;
  int64_t* tot = has_label ? total->data_ptr<int64_t>() : nullptr;
  const bool has_rank = has_label && rank_table.has_value();
  const double* rt = has_rank ? rank_table->data_ptr<double>() : nullptr;
  double* rs = has_rank ? rank_sums->data_ptr<double>() : nullptr;
  const float hi = static_cast<float>(bins - 1);

  // The bins of channel c in every image, bin [B * N]; false if a bin position is NaN.
  auto bin_channel = [&](int64_t c, int32_t* bin) {
    int nan = 0;
    for (int64_t b = 0; b < B; ++b) {
      nan |= bin_row(x_all + (b * C + c) * N, N, kn + c * (S - 1), S, ba + c * S, sc + c * S, st + c * S, hi,
                     bin + b * N);
    }
    return nan == 0;
  };
  // Count channel c's binned pixels (delta +1, or -1 to take them back), image by image, in simple
  // loops over the pixels of row (b, c). The label cells are first counted in local [1 + P, cells]
  // arrays (slot 0: ignored pixels, dropped), then added to their rows [label_rows[l], c].
  const int64_t block = C * bins;  // region_counts[r, c, k] = rc[r * block + c * bins + k]
  const int64_t Q = 1 + P;         // label slots: 0 for an ignored pixel, 1 + l for compact label l
  auto count_channel = [&](int64_t c, const int32_t* bin, int64_t delta) {
    std::vector<int64_t> n_cell(has_label ? Q * cells : 0), m_cell(n_cell.size());
    int64_t* rc_c = has_region ? rc + c * bins : nullptr;
    int64_t* tot_c = has_label ? tot + c * bins : nullptr;
    const int64_t* cob_c = has_label ? cob + c * bins : nullptr;
    const int64_t* oob_c = has_label ? oob + c * bins : nullptr;
    const bool moments = has_label && std::any_of(oob_c, oob_c + bins, [](int64_t v) { return v != 0; });
    const double* rt_c = has_rank ? rt + c * bins : nullptr;
    std::vector<double> r_sum(has_rank ? Q : 0);
    for (int64_t b = 0; b < B; ++b) {
      const int32_t* k = bin + b * N;
      if (has_region) {
        const int32_t* reg = reg_all + b * N;
        for (int64_t p = 0; p < N; ++p) rc_c[reg[p] * block + k[p]] += delta;
      }
      if (has_label) {
        const int32_t* lab = lab_all + b * N;
        for (int64_t p = 0; p < N; ++p) {
          const int64_t slot = (lab[p] + 1) * cells + cob_c[k[p]];
          n_cell[slot] += 1;
          if (moments) m_cell[slot] += oob_c[k[p]];  // all offsets 0 (cells = fine bins): skipped
          tot_c[k[p]] += delta * (lab[p] >= 0);
        }
        if (has_rank && delta > 0) {  // written once (a take-back leaves the caller's fresh buffer unused)
          std::fill(r_sum.begin(), r_sum.end(), 0.0);
          for (int64_t p = 0; p < N; ++p) r_sum[lab[p] + 1] += rt_c[k[p]];
          for (int64_t l = 0; l < P; ++l) rs[(b * P + l) * C + c] = r_sum[l + 1];
        }
      }
    }
    for (int64_t l = 1; l < (has_label ? Q : 0); ++l) {
      cell_t* cc_l = cc + (rows[l - 1] * C + c) * cells;
      cell_t* cm_l = cm + (rows[l - 1] * C + c) * cells;
      for (int64_t j = 0; j < cells; ++j) {
        cc_l[j] += static_cast<cell_t>(delta * n_cell[l * cells + j]);
        cm_l[j] += static_cast<cell_t>(delta * m_cell[l * cells + j]);
      }
    }
  };

  // A NaN anywhere leaves the counts as they were: the channels counted before it are taken back.
  std::atomic<bool> failed{false};
  std::vector<char> counted(C, 0);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, B * N));  // ~32k pixels a task
  at::parallel_for(0, C, grain, [&](int64_t c_begin, int64_t c_end) {
    std::vector<int32_t> bin(B * N);
    for (int64_t c = c_begin; c < c_end && !failed.load(std::memory_order_relaxed); ++c) {
      if (!bin_channel(c, bin.data())) { failed = true; return; }
      count_channel(c, bin.data(), 1);
      counted[c] = 1;
    }
  });
  if (!failed) return true;
  at::parallel_for(0, C, grain, [&](int64_t c_begin, int64_t c_end) {
    std::vector<int32_t> bin(B * N);
    for (int64_t c = c_begin; c < c_end; ++c) {
      if (counted[c] && bin_channel(c, bin.data())) count_channel(c, bin.data(), -1);
    }
  });
  return false;
}

// Returns false (and changes nothing) if a bin position is NaN.
bool accumulate_gate_batch(const at::Tensor& logits, const at::Tensor& inner, const at::Tensor& base,
                           const at::Tensor& scale, const at::Tensor& start, int64_t bins, const std::optional<at::Tensor>& region,
                           const std::optional<at::Tensor>& region_counts, const std::optional<at::Tensor>& label,
                           const std::optional<at::Tensor>& label_rows, const std::optional<at::Tensor>& cell_of_bin,
                           const std::optional<at::Tensor>& offset_of_bin,
                           const std::optional<at::Tensor>& cell_counts,
                           const std::optional<at::Tensor>& cell_moments, const std::optional<at::Tensor>& total,
                           const std::optional<at::Tensor>& rank_table, const std::optional<at::Tensor>& rank_sums) {
  // Shapes and dtypes are checked in Python (data_ptr<T> checks the dtypes again); the cell arrays are
  // both int32 or both int64.
  for (const auto* t : {&region, &region_counts, &label, &label_rows, &cell_of_bin, &offset_of_bin, &cell_counts,
                        &cell_moments, &total, &rank_table, &rank_sums}) {
    TORCH_CHECK(!t->has_value() || (*t)->is_contiguous(), "every tensor must be contiguous");
  }
  TORCH_CHECK(logits.is_contiguous() && inner.is_contiguous() && base.is_contiguous() && scale.is_contiguous() &&
              start.is_contiguous(), "every tensor must be contiguous");
  if (cell_counts.has_value() && cell_counts->scalar_type() == at::kInt) {
    return accumulate<int32_t>(logits, inner, base, scale, start, bins, region, region_counts, label, label_rows,
                               cell_of_bin, offset_of_bin, cell_counts, cell_moments, total, rank_table, rank_sums);
  }
  return accumulate<int64_t>(logits, inner, base, scale, start, bins, region, region_counts, label, label_rows,
                             cell_of_bin, offset_of_bin, cell_counts, cell_moments, total, rank_table, rank_sums);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("accumulate_gate_batch", &accumulate_gate_batch, "fused binning and counts of one batch",
        py::call_guard<py::gil_scoped_release>());  // like torch's own operators: other Python threads run
  m.def("openmp", []() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "whether the kernel was compiled with OpenMP (at::parallel_for runs serially without it)");
  m.def("parallel_threads", [](int64_t n) {
    std::vector<int64_t> thread(n, 0);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) thread[i] = at::get_thread_num();
    });
    return n ? 1 + *std::max_element(thread.begin(), thread.end()) : 0;
  }, "the threads at::parallel_for spreads n one-item tasks over, as the kernel's own loop does");
}
