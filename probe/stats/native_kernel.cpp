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
  const int64_t cells = has_label ? cell_counts->size(2) : 0;
  // region, label, label_rows and cell_of_bin were checked in range by the only caller (native.py)

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
  // loops over the pixels of row (b, c). Labels: when the channel's fine histogram of (label slot,
  // bin) is small (at most one pass over its pixels, or 8k entries), each pixel is one int32
  // increment into it (in the cache), and the label cells, moments and total are read off it once
  // per channel; the regions join it, (region, label slot, bin), when that too is at most two passes
  // over the pixels. Otherwise each pixel goes to the region histogram and to local [1 + P, cells]
  // label arrays directly. Label slot 0 (ignored pixels) is dropped. The rank sums use four partial
  // sums (pixel p into p mod 4), so that runs of one label do not chain on one accumulator.
  const int64_t block = C * bins;  // region_counts[r, c, k] = rc[r * block + c * bins + k]
  const int64_t Q = 1 + P;         // label slots: 0 for an ignored pixel, 1 + l for compact label l
  const bool joint = has_label && Q * bins <= std::max<int64_t>(B * N, 8192);
  const bool with_regions = joint && has_region && R * Q * bins <= 2 * B * N;
  const int64_t RJ = with_regions ? R : 1, QJ = Q;  // the joint fine histogram's [RJ, QJ, K]
  struct Scratch {
    std::vector<int32_t> bin, fine;
    std::vector<int64_t> n_cell, m_cell;
    std::vector<double> r_sum;
  };
  auto count_channel = [&](int64_t c, Scratch& w, int64_t delta) {
    const int32_t* bin = w.bin.data();
    int64_t* rc_c = has_region ? rc + c * bins : nullptr;
    int64_t* tot_c = has_label ? tot + c * bins : nullptr;
    const int64_t* cob_c = has_label ? cob + c * bins : nullptr;
    const int64_t* oob_c = has_label ? oob + c * bins : nullptr;
    const bool moments = has_label && std::any_of(oob_c, oob_c + bins, [](int64_t v) { return v != 0; });
    bool identity = has_label && !moments && cells == bins;  // cell j is fine bin j
    for (int64_t j = 0; identity && j < bins; ++j) identity = cob_c[j] == j;
    const double* rt_c = has_rank ? rt + c * bins : nullptr;
    int32_t* fine = w.fine.data();
    int64_t* n_cell = w.n_cell.data();
    int64_t* m_cell = w.m_cell.data();
    double* r_sum = w.r_sum.data();  // [4, Q]
    std::fill(w.fine.begin(), w.fine.end(), 0);
    if (!joint) std::fill(w.n_cell.begin(), w.n_cell.end(), 0), std::fill(w.m_cell.begin(), w.m_cell.end(), 0);
    const bool ranks = has_rank && delta > 0;  // written once (a take-back leaves the caller's buffer unused)
    for (int64_t b = 0; b < B; ++b) {
      const int32_t* k = bin + b * N;
      const int32_t* reg = has_region ? reg_all + b * N : nullptr;
      const int32_t* lab = has_label ? lab_all + b * N : nullptr;
      if (with_regions) {
        for (int64_t p = 0; p < N; ++p) fine[(reg[p] * QJ + lab[p] + 1) * bins + k[p]] += 1;
      } else {
        if (has_region) {
          for (int64_t p = 0; p < N; ++p) rc_c[reg[p] * block + k[p]] += delta;
        }
        if (joint) {
          for (int64_t p = 0; p < N; ++p) fine[(lab[p] + 1) * bins + k[p]] += 1;
        } else if (has_label) {
          for (int64_t p = 0; p < N; ++p) {
            const int64_t slot = (lab[p] + 1) * cells + cob_c[k[p]];
            n_cell[slot] += 1;
            if (moments) m_cell[slot] += oob_c[k[p]];  // all offsets 0 (cells = fine bins): skipped
            tot_c[k[p]] += delta * (lab[p] >= 0);
          }
        }
      }
      if (ranks) {
        std::fill(w.r_sum.begin(), w.r_sum.end(), 0.0);
        for (int64_t p = 0; p < N; ++p) r_sum[(p & 3) * Q + lab[p] + 1] += rt_c[k[p]];
        for (int64_t l = 0; l < P; ++l) {
          rs[(b * P + l) * C + c] = (r_sum[l + 1] + r_sum[Q + l + 1]) + (r_sum[2 * Q + l + 1] + r_sum[3 * Q + l + 1]);
        }
      }
    }
    if (joint) {  // read the region counts and the label cells off the joint histogram
      for (int64_t r = 0; r < (with_regions ? R : 0); ++r) {
        int64_t* out = rc_c + r * block;
        for (int64_t q = 0; q < QJ; ++q) {
          const int32_t* f = fine + (r * QJ + q) * bins;
          for (int64_t j = 0; j < bins; ++j) out[j] += delta * f[j];
        }
      }
      int64_t* n = w.n_cell.data();  // [K]: one label's fine counts, summed over the regions
      for (int64_t l = 1; l < (has_label ? Q : 0); ++l) {
        std::fill(n, n + bins, 0);
        for (int64_t r = 0; r < RJ; ++r) {
          const int32_t* f = fine + (r * QJ + l) * bins;
          for (int64_t j = 0; j < bins; ++j) n[j] += f[j];
        }
        for (int64_t j = 0; j < bins; ++j) tot_c[j] += delta * n[j];
        cell_t* cc_l = cc + (rows[l - 1] * C + c) * cells;
        if (identity) {  // one cell per fine bin (offsets 0): a plain vector add
          for (int64_t j = 0; j < bins; ++j) cc_l[j] += static_cast<cell_t>(delta * n[j]);
          continue;
        }
        cell_t* cm_l = cm + (rows[l - 1] * C + c) * cells;
        for (int64_t j = 0; j < bins; ++j) {
          cc_l[cob_c[j]] += static_cast<cell_t>(delta * n[j]);
          cm_l[cob_c[j]] += static_cast<cell_t>(delta * n[j] * oob_c[j]);
        }
      }
      return;
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
  auto scratch = [&]() {
    Scratch w;
    w.bin.resize(B * N);
    w.fine.resize(joint ? RJ * QJ * bins : 0);
    w.n_cell.resize(has_label ? (joint ? bins : Q * cells) : 0);
    w.m_cell.resize(has_label && !joint ? Q * cells : 0);
    w.r_sum.resize(has_rank ? 4 * Q : 0);
    return w;
  };

  // A NaN anywhere leaves the counts as they were: the channels counted before it are taken back.
  std::atomic<bool> failed{false};
  std::vector<char> counted(C, 0);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, B * N));  // ~32k pixels a task
  at::parallel_for(0, C, grain, [&](int64_t c_begin, int64_t c_end) {
    Scratch w = scratch();
    for (int64_t c = c_begin; c < c_end && !failed.load(std::memory_order_relaxed); ++c) {
      if (!bin_channel(c, w.bin.data())) { failed = true; return; }
      count_channel(c, w, 1);
      counted[c] = 1;
    }
  });
  if (!failed) return true;
  at::parallel_for(0, C, grain, [&](int64_t c_begin, int64_t c_end) {
    Scratch w = scratch();
    for (int64_t c = c_begin; c < c_end; ++c) {
      if (counted[c] && bin_channel(c, w.bin.data())) count_channel(c, w, -1);
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
