// One pass over a gated layer's logit map: bin every logit and count it into the region histogram
// and the label cells, and sum a per-bin rank by image and label (the gate sums by region and label
// are a matrix product, in Python). Also, at the end, the centred Gram matrix of a batch of channel
// maps (`centred_gram`: the channel covariance). The reference with the
// same semantics, the argument checks and the build flags (-O3 -ffp-contract=off -fopenmp) are in
// probe/stats/native.py. Shapes: B images, C channels, N pixels, K bins, R regions, P present labels,
// L label rows, `cells` cells per channel; every tensor is contiguous.
//
// Parallel over channels with at::parallel_for (torch's intra-op threads): a thread owns the
// [.., c, ..] slices of every output of its channels, so there are no atomics and the counts do not
// depend on the number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>  // the Gram's tiles; elsewhere fast_gram() is false and the torch product runs
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <type_traits>
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
inline int bin_row_body(const float* __restrict x, int64_t n, const float* __restrict inner, int64_t segments,
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

// The same code compiled twice: for AVX2 (8-wide compares and gathers, chosen at run time where the
// CPU has it) and for the baseline. The operations and their rounding are the same, so are the bins.
using BinRow = int (*)(const float*, int64_t, const float*, int64_t, const float*, const float*, const float*, float,
                       int32_t*);
int bin_row_baseline(const float* x, int64_t n, const float* inner, int64_t segments, const float* base,
                     const float* scale, const float* start, float hi, int32_t* out) {
  return bin_row_body(x, n, inner, segments, base, scale, start, hi, out);
}
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) int bin_row_avx2(const float* x, int64_t n, const float* inner, int64_t segments,
                                                 const float* base, const float* scale, const float* start, float hi,
                                                 int32_t* out) {
  return bin_row_body(x, n, inner, segments, base, scale, start, hi, out);
}
BinRow pick_bin_row() {
  __builtin_cpu_init();  // this runs as a static initialiser, possibly before libgcc's own
  return __builtin_cpu_supports("avx2") ? bin_row_avx2 : bin_row_baseline;
}
#else
BinRow pick_bin_row() { return bin_row_baseline; }
#endif
const BinRow bin_row = pick_bin_row();

// The pixels of one row in chunks of at most ROW_CHUNK, so that a chunk's bins stay in the L1 cache
// between binning and counting.
constexpr int64_t ROW_CHUNK = 4096;

template <typename cell_t, typename region_t>
bool accumulate(const at::Tensor& logits,                          // float32 [B, C, N]
                const at::Tensor& inner,                            // float32 [C, S - 1] inner knots
                const at::Tensor& base, const at::Tensor& scale,    // float32 [C, S] per segment
                const at::Tensor& start,                            // float32 [C, S]
                int64_t bins,                                       // K
                const std::optional<at::Tensor>& region,            // int32 [B, N] in [0, R)
                const std::optional<at::Tensor>& region_counts,     // region_t [R, C, K] += 1
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
  region_t* rc = has_region ? region_counts->data_ptr<region_t>() : nullptr;
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

  // Channel c is counted into per-channel scratch counts, row by row (each chunk binned into `bin`,
  // then one loop over its pixels), and the scratch is added to the outputs (delta +1, or -1 to take
  // a channel back) only once every row binned: a NaN leaves the outputs as they were. Labels: when
  // the channel's fine histogram of (label slot, bin) is small (at most one pass over its pixels, or
  // 8k entries), each pixel is one int32 increment into it, and the label cells, moments and total
  // are read off it; the regions join it, (region, label slot, bin), when that too is at most two
  // passes over the pixels, else they have their own [R, K]. Otherwise each pixel goes to local
  // [1 + P, cells] label arrays and a local total. Label slot 0 (ignored pixels) is dropped. The rank
  // sums use four partial sums (pixel p into p mod 4), so that runs of one label do not chain on one
  // accumulator.
  const int64_t block = C * bins;  // region_counts[r, c, k] = rc[r * block + c * bins + k]
  const int64_t Q = 1 + P;         // label slots: 0 for an ignored pixel, 1 + l for compact label l
  const bool joint = has_label && Q * bins <= std::max<int64_t>(B * N, 8192);
  const bool with_regions = joint && has_region && R * Q * bins <= 2 * B * N;
  const int64_t RJ = with_regions ? R : 1, QJ = Q;  // the joint fine histogram's [RJ, QJ, K]
  const bool own_regions = has_region && !with_regions;  // the regions' own scratch [R, K]
  const int64_t chunk = std::min<int64_t>(N, ROW_CHUNK);
  // Per pixel, once for every channel: its label slot, and the offset of its (region, label slot)
  // block in the joint fine histogram (with the count and the rank sum in one loop below: 0.86 of
  // the kernel's time of computing them per channel, in two loops).
  std::vector<int32_t> pixel_slot(has_label ? B * N : 0), joint_offset(joint ? B * N : 0);
  for (int64_t i = 0; i < (has_label ? B * N : 0); ++i) pixel_slot[i] = lab_all[i] + 1;
  for (int64_t i = 0; i < (joint ? B * N : 0); ++i) {
    joint_offset[i] = static_cast<int32_t>(((with_regions ? reg_all[i] * QJ : 0) + pixel_slot[i]) * bins);
  }
  struct Scratch {
    std::vector<int32_t> bin, fine, regions, fine_sum;
    std::vector<int64_t> n_cell, m_cell, total;
    std::vector<double> r_sum;
  };
  // Bin and count the pixels of channel c; false (outputs untouched) if a bin position is NaN.
  // `sign` is std::integral_constant<int64_t, +1 or -1>: a compile-time delta, so that the read-off
  // loops below vectorise (an int64 multiply by a run-time delta kept them scalar: 10% of the kernel).
  auto count_channel = [&](int64_t c, Scratch& w, auto sign) {
    constexpr int64_t delta = decltype(sign)::value;
    int32_t* bin = w.bin.data();
    region_t* rc_c = has_region ? rc + c * bins : nullptr;
    int64_t* tot_c = has_label ? tot + c * bins : nullptr;
    const int64_t* cob_c = has_label ? cob + c * bins : nullptr;
    const int64_t* oob_c = has_label ? oob + c * bins : nullptr;
    const bool moments = has_label && std::any_of(oob_c, oob_c + bins, [](int64_t v) { return v != 0; });
    bool identity = has_label && !moments && cells == bins;  // cell j is fine bin j
    for (int64_t j = 0; identity && j < bins; ++j) identity = cob_c[j] == j;
    const double* rt_c = has_rank ? rt + c * bins : nullptr;
    int32_t* fine = w.fine.data();
    int32_t* own = w.regions.data();
    int64_t* n_cell = w.n_cell.data();
    int64_t* m_cell = w.m_cell.data();
    int64_t* lab_total = w.total.data();
    double* r_sum = w.r_sum.data();  // [4, Q]
    std::fill(w.fine.begin(), w.fine.end(), 0);
    std::fill(w.regions.begin(), w.regions.end(), 0);
    std::fill(w.n_cell.begin(), w.n_cell.end(), 0);
    std::fill(w.m_cell.begin(), w.m_cell.end(), 0);
    std::fill(w.total.begin(), w.total.end(), 0);
    const bool ranks = has_rank && delta > 0;  // written once (a take-back leaves the caller's buffer unused)
    for (int64_t b = 0; b < B; ++b) {
      if (ranks) std::fill(w.r_sum.begin(), w.r_sum.end(), 0.0);
      for (int64_t from = 0; from < N; from += chunk) {
        const int64_t n = std::min(chunk, N - from);
        if (bin_row(x_all + (b * C + c) * N + from, n, kn + c * (S - 1), S, ba + c * S, sc + c * S, st + c * S, hi,
                    bin)) {
          return false;
        }
        const int32_t* reg = has_region ? reg_all + b * N + from : nullptr;
        const int32_t* lab = has_label ? lab_all + b * N + from : nullptr;
        const int32_t* slot = has_label ? pixel_slot.data() + b * N + from : nullptr;
        const int32_t* js = joint ? joint_offset.data() + b * N + from : nullptr;
        if (own_regions) {
          for (int64_t p = 0; p < n; ++p) own[reg[p] * bins + bin[p]] += 1;
        }
        if (joint && ranks) {  // one loop: each pixel's bin read once for its count and its rank
          for (int64_t p = 0; p < n; ++p) {
            const int32_t k = bin[p];
            fine[js[p] + k] += 1;
            r_sum[(p & 3) * Q + slot[p]] += rt_c[k];
          }
          continue;
        }
        if (joint) {
          for (int64_t p = 0; p < n; ++p) fine[js[p] + bin[p]] += 1;
        } else if (has_label) {
          for (int64_t p = 0; p < n; ++p) {
            const int64_t cell = slot[p] * cells + cob_c[bin[p]];
            n_cell[cell] += 1;
            if (moments) m_cell[cell] += oob_c[bin[p]];  // all offsets 0 (cells = fine bins): skipped
            lab_total[bin[p]] += lab[p] >= 0;
          }
        }
        if (ranks) {
          for (int64_t p = 0; p < n; ++p) r_sum[(p & 3) * Q + slot[p]] += rt_c[bin[p]];
        }
      }
      if (ranks) {
        for (int64_t l = 0; l < P; ++l) {
          rs[(b * P + l) * C + c] = (r_sum[l + 1] + r_sum[Q + l + 1]) + (r_sum[2 * Q + l + 1] + r_sum[3 * Q + l + 1]);
        }
      }
    }
    // add the scratch to the outputs
    for (int64_t r = 0; r < (own_regions ? R : 0); ++r) {
      region_t* out = rc_c + r * block;
      const int32_t* f = own + r * bins;
      for (int64_t j = 0; j < bins; ++j) out[j] += static_cast<region_t>(delta * f[j]);
    }
    if (!joint) {
      for (int64_t l = 1; l < (has_label ? Q : 0); ++l) {
        cell_t* cc_l = cc + (rows[l - 1] * C + c) * cells;
        cell_t* cm_l = cm + (rows[l - 1] * C + c) * cells;
        for (int64_t j = 0; j < cells; ++j) {
          cc_l[j] += static_cast<cell_t>(delta * n_cell[l * cells + j]);
          cm_l[j] += static_cast<cell_t>(delta * m_cell[l * cells + j]);
        }
      }
      for (int64_t j = 0; j < (has_label ? bins : 0); ++j) tot_c[j] += delta * lab_total[j];
      return true;
    }
    for (int64_t r = 0; r < (with_regions ? R : 0); ++r) {
      region_t* out = rc_c + r * block;
      for (int64_t q = 0; q < QJ; ++q) {
        const int32_t* f = fine + (r * QJ + q) * bins;
        for (int64_t j = 0; j < bins; ++j) out[j] += static_cast<region_t>(delta * f[j]);
      }
    }
    // int32 sums of this batch's counts (at most B * N each), widened into the int64 outputs once
    int32_t* __restrict n = w.fine_sum.data();  // [K]: one label's fine counts, summed over the regions
    int32_t* __restrict labelled = w.fine_sum.data() + bins;  // [K]: every label's, for `total`
    std::fill(labelled, labelled + bins, 0);
    for (int64_t l = 1; l < Q; ++l) {
      cell_t* __restrict cc_l = cc + (rows[l - 1] * C + c) * cells;
      const int32_t* __restrict f = fine + l * bins;
      if (RJ == 1 && identity) {  // one cell per fine bin (offsets 0), one region block: plain vector adds
        for (int64_t j = 0; j < bins; ++j) cc_l[j] += static_cast<cell_t>(delta * f[j]);
        for (int64_t j = 0; j < bins; ++j) labelled[j] += f[j];
        continue;
      }
      std::copy(f, f + bins, n);
      for (int64_t r = 1; r < RJ; ++r) {
        const int32_t* __restrict g = fine + (r * QJ + l) * bins;
        for (int64_t j = 0; j < bins; ++j) n[j] += g[j];
      }
      for (int64_t j = 0; j < bins; ++j) labelled[j] += n[j];
      if (identity) {
        for (int64_t j = 0; j < bins; ++j) cc_l[j] += static_cast<cell_t>(delta * n[j]);
        continue;
      }
      cell_t* cm_l = cm + (rows[l - 1] * C + c) * cells;
      for (int64_t j = 0; j < bins; ++j) {
        cc_l[cob_c[j]] += static_cast<cell_t>(delta * n[j]);
        cm_l[cob_c[j]] += static_cast<cell_t>(delta * n[j] * oob_c[j]);
      }
    }
    for (int64_t j = 0; j < bins; ++j) tot_c[j] += delta * labelled[j];
    return true;
  };
  auto scratch = [&]() {
    Scratch w;
    w.bin.resize(chunk);
    w.fine.resize(joint ? RJ * QJ * bins : 0);
    w.fine_sum.resize(joint ? 2 * bins : 0);
    w.regions.resize(own_regions ? R * bins : 0);
    w.n_cell.resize(has_label && !joint ? Q * cells : 0);
    w.m_cell.resize(has_label && !joint ? Q * cells : 0);
    w.total.resize(has_label && !joint ? bins : 0);
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
      if (!count_channel(c, w, std::integral_constant<int64_t, 1>{})) { failed = true; return; }
      counted[c] = 1;
    }
  });
  if (!failed) return true;
  at::parallel_for(0, C, grain, [&](int64_t c_begin, int64_t c_end) {
    Scratch w = scratch();
    for (int64_t c = c_begin; c < c_end; ++c) {
      if (counted[c]) count_channel(c, w, std::integral_constant<int64_t, -1>{});
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
  // int32 or int64 cell arrays (both the same) and region counts: the caller keeps them int32 while no
  // count can overflow one (half the memory traffic of the read-off), int64 after
  const bool cells32 = cell_counts.has_value() && cell_counts->scalar_type() == at::kInt;
  const bool regions32 = region_counts.has_value() && region_counts->scalar_type() == at::kInt;
  auto run = [&](auto cell_type, auto region_type) {
    return accumulate<decltype(cell_type), decltype(region_type)>(
        logits, inner, base, scale, start, bins, region, region_counts, label, label_rows, cell_of_bin, offset_of_bin,
        cell_counts, cell_moments, total, rank_table, rank_sums);
  };
  if (cells32) return regions32 ? run(int32_t{}, int32_t{}) : run(int32_t{}, int64_t{});
  return regions32 ? run(int64_t{}, int32_t{}) : run(int64_t{}, int64_t{});
}


// ---------------------------------------------------------------------------------------------- Gram
// out[i, j] = sum over images b and pixels p of (x[b, i, p] - mean[i]) (x[b, j, p] - mean[j]), float64
// [C, C], for x float32 [B, C, N] (the channel covariance; torch reference:
// probe.stats.layer_stats._gram). Only the tiles on and below the diagonal: about half the
// multiply-adds of a full product. Below PACKED_CHANNELS a tile is 3 x 3 channels, 9 accumulators
// of 8 pixels each, fed by 6 loads and 6 centring subtractions per 9 multiply-adds; from there on
// each block is first copied centred and a tile is 3 x 4 channels (packed_tile_products). The pixels are taken in blocks of about
// BLOCK_FLOATS floats of every channel row, from one or more images, so that the rows stay in the
// cache while each tile reads them; summed in float32 within a block (fewer than 2 * SPAN_MAX
// pixels, 512 a lane) and in float64 across blocks. AVX2 and FMA only: `fast_gram()` says
// whether this CPU has them (else the caller uses its torch product).
constexpr int64_t TILE = 3;
constexpr int64_t PACKED_CHANNELS = 48;
constexpr int64_t BLOCK_FLOATS = 32768;
constexpr int64_t SPAN_MAX = 2048;

struct Segment {
  int64_t offset, n;  // pixels [offset, offset + n) of the tile's rows
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// acc[u * 3 + v][lane] (float64 [9][8]) += sum over the segments of (a[u][p] - ma[u]) (b[v][p] - mb[v]).
__attribute__((target("avx2,fma"))) void tile_products(const float* const a[3], const float* const b[3],
                                                       const float ma[3], const float mb[3], const Segment* segments,
                                                       int64_t n_segments, double* acc) {
  const __m256 ma0 = _mm256_set1_ps(ma[0]), ma1 = _mm256_set1_ps(ma[1]), ma2 = _mm256_set1_ps(ma[2]);
  const __m256 mb0 = _mm256_set1_ps(mb[0]), mb1 = _mm256_set1_ps(mb[1]), mb2 = _mm256_set1_ps(mb[2]);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00, c20 = c00, c21 = c00,
         c22 = c00;
  float tail[9] = {0};
  for (int64_t s = 0; s < n_segments; ++s) {
    const int64_t o = segments[s].offset, n = segments[s].n, n8 = n / 8 * 8;
    const float *a0 = a[0] + o, *a1 = a[1] + o, *a2 = a[2] + o, *b0 = b[0] + o, *b1 = b[1] + o, *b2 = b[2] + o;
    for (int64_t p = 0; p < n8; p += 8) {
      const __m256 x0 = _mm256_sub_ps(_mm256_loadu_ps(a0 + p), ma0);
      const __m256 x1 = _mm256_sub_ps(_mm256_loadu_ps(a1 + p), ma1);
      const __m256 x2 = _mm256_sub_ps(_mm256_loadu_ps(a2 + p), ma2);
      __m256 y = _mm256_sub_ps(_mm256_loadu_ps(b0 + p), mb0);
      c00 = _mm256_fmadd_ps(x0, y, c00);
      c10 = _mm256_fmadd_ps(x1, y, c10);
      c20 = _mm256_fmadd_ps(x2, y, c20);
      y = _mm256_sub_ps(_mm256_loadu_ps(b1 + p), mb1);
      c01 = _mm256_fmadd_ps(x0, y, c01);
      c11 = _mm256_fmadd_ps(x1, y, c11);
      c21 = _mm256_fmadd_ps(x2, y, c21);
      y = _mm256_sub_ps(_mm256_loadu_ps(b2 + p), mb2);
      c02 = _mm256_fmadd_ps(x0, y, c02);
      c12 = _mm256_fmadd_ps(x1, y, c12);
      c22 = _mm256_fmadd_ps(x2, y, c22);
    }
    for (int64_t p = n8; p < n; ++p) {
      for (int u = 0; u < 3; ++u) {
        for (int v = 0; v < 3; ++v) tail[u * 3 + v] += (a[u][o + p] - ma[u]) * (b[v][o + p] - mb[v]);
      }
    }
  }
  const __m256 c[9] = {c00, c01, c02, c10, c11, c12, c20, c21, c22};
  for (int e = 0; e < 9; ++e) {
    double* lanes = acc + e * 8;
    const __m256d low = _mm256_cvtps_pd(_mm256_castps256_ps128(c[e]));
    const __m256d high = _mm256_cvtps_pd(_mm256_extractf128_ps(c[e], 1));
    _mm256_storeu_pd(lanes, _mm256_add_pd(_mm256_loadu_pd(lanes), low));
    _mm256_storeu_pd(lanes + 4, _mm256_add_pd(_mm256_loadu_pd(lanes + 4), high));
    lanes[0] += tail[e];
  }
}

// acc[u * 4 + v][lane] (float64 [12][8]) += sum over p in [0, n) of a[u * stride + p] * b[v * stride + p]:
// 3 x 4 channel rows of a packed block (centred already, n a multiple of 8, 32-byte aligned rows).
// 12 accumulators, 7 loads per 12 multiply-adds, nothing else in the loop.
__attribute__((target("avx2,fma"))) void packed_tile_products(const float* a, const float* b, int64_t stride, int64_t n,
                                                              double* acc) {
  __m256 c[3][4];
  for (auto& row : c) {
    for (auto& entry : row) entry = _mm256_setzero_ps();
  }
  for (int64_t p = 0; p < n; p += 8) {
    const __m256 x0 = _mm256_load_ps(a + p), x1 = _mm256_load_ps(a + stride + p), x2 = _mm256_load_ps(a + 2 * stride + p);
    for (int v = 0; v < 4; ++v) {
      const __m256 y = _mm256_load_ps(b + v * stride + p);
      c[0][v] = _mm256_fmadd_ps(x0, y, c[0][v]);
      c[1][v] = _mm256_fmadd_ps(x1, y, c[1][v]);
      c[2][v] = _mm256_fmadd_ps(x2, y, c[2][v]);
    }
  }
  for (int e = 0; e < 12; ++e) {
    double* lanes = acc + e * 8;
    const __m256 sum = c[e / 4][e % 4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(_mm256_loadu_pd(lanes), _mm256_cvtps_pd(_mm256_castps256_ps128(sum))));
    _mm256_storeu_pd(lanes + 4, _mm256_add_pd(_mm256_loadu_pd(lanes + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(sum, 1))));
  }
}

bool fast_gram() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
void tile_products(const float* const*, const float* const*, const float*, const float*, const Segment*, int64_t,
                   double*) {}
void packed_tile_products(const float*, const float*, int64_t, int64_t, double*) {}
bool fast_gram() { return false; }
#endif

// The sum of a tile entry's 8 float64 lanes.
inline double lanes_sum(const double* a) { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); }

at::Tensor centred_gram(const at::Tensor& x, const at::Tensor& mean) {
  TORCH_CHECK(fast_gram(), "centred_gram needs a CPU with AVX2 and FMA (see fast_gram)");
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(),
              "x must be a contiguous float32 CPU tensor [B, C, N]");
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  TORCH_CHECK(mean.scalar_type() == at::kFloat && mean.is_contiguous() && mean.numel() == C,
              "mean must be a contiguous float32 tensor of the C channels");
  auto out = torch::zeros({C, C}, x.options().dtype(at::kDouble));
  if (C == 0 || B * N == 0) return out;
  // From PACKED_CHANNELS on, each block is first copied centred into a thread's aligned buffer and
  // the tiles are 3 x 4 channels of plain products (0.6-0.9 of the time of the 3 x 3 tiles that
  // centre as they read, at 48 and 96 channels); below, the copy costs more than it saves.
  const bool packed = C >= PACKED_CHANNELS;
  const int64_t U = TILE, V = packed ? 4 : TILE, E = U * V;  // a tile's rows, columns, entries
  const int64_t ti = (C + U - 1) / U, tj = (C + V - 1) / V;
  std::vector<int32_t> tile_i, tile_j;  // the tiles with an entry on or below the diagonal
  for (int32_t i = 0; i < ti; ++i) {
    for (int32_t j = 0; j < tj && j * V <= i * U + U - 1; ++j) {
      tile_i.push_back(i);
      tile_j.push_back(j);
    }
  }
  const int64_t T = static_cast<int64_t>(tile_i.size());
  // blocks of segments of one or more images (offsets from image 0's rows): at least `span` pixels a
  // block (but the last), fewer than 2 * span
  const int64_t span = std::clamp<int64_t>(BLOCK_FLOATS / C / 8 * 8, 64, SPAN_MAX);
  std::vector<std::vector<Segment>> blocks(1);
  int64_t filled = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t from = 0; from < N; from += span) {
      if (filled >= span) {
        blocks.emplace_back();
        filled = 0;
      }
      const int64_t n = std::min(span, N - from);
      blocks.back().push_back({b * C * N + from, n});
      filled += n;
    }
  }
  std::vector<double> acc(T * E * 8, 0.0);
  const float* xp = x.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  // each thread owns a range of tiles and their accumulators; at least ~32k multiply-adds a task
  const int64_t grain = std::max<int64_t>(1, 32768 / (E * B * N));
  at::parallel_for(0, T, grain, [&](int64_t first, int64_t last) {
    if (packed) {
      // the block's rows centred, each padded with zeros to whole lanes; rows past C stay zero
      const int64_t width = (2 * span + 7) / 8 * 8, rows = std::max(ti * U, tj * V);
      std::vector<float> storage(rows * width + 8, 0.0f);  // 8 floats of slack: the rows start 32-byte aligned
      float* const aligned = storage.data() + (8 - reinterpret_cast<uintptr_t>(storage.data()) / sizeof(float) % 8) % 8;
      for (const auto& block : blocks) {
        int64_t n = 0;
        for (const auto& segment : block) {
          for (int64_t c = 0; c < C; ++c) {
            const float* src = xp + segment.offset + c * N;
            float* dst = aligned + c * width + n;
            for (int64_t p = 0; p < segment.n; ++p) dst[p] = src[p] - mp[c];
          }
          n += segment.n;
        }
        const int64_t lanes = (n + 7) / 8 * 8;
        for (int64_t c = 0; c < C; ++c) std::fill(aligned + c * width + n, aligned + c * width + lanes, 0.0f);
        for (int64_t t = first; t < last; ++t) {
          packed_tile_products(aligned + tile_i[t] * U * width, aligned + tile_j[t] * V * width, width, lanes,
                               acc.data() + t * E * 8);
        }
      }
      return;
    }
    for (const auto& block : blocks) {
      for (int64_t t = first; t < last; ++t) {
        const float* a[3];
        const float* b[3];
        float ma[3], mb[3];
        for (int u = 0; u < 3; ++u) {  // rows past the last channel repeat it; their entries are not read off
          const int64_t i = std::min<int64_t>(tile_i[t] * TILE + u, C - 1), j = std::min<int64_t>(tile_j[t] * TILE + u, C - 1);
          a[u] = xp + i * N;
          b[u] = xp + j * N;
          ma[u] = mp[i];
          mb[u] = mp[j];
        }
        tile_products(a, b, ma, mb, block.data(), static_cast<int64_t>(block.size()), acc.data() + t * E * 8);
      }
    }
  });
  double* o = out.data_ptr<double>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t u = 0; u < U; ++u) {
      for (int64_t v = 0; v < V; ++v) {
        const int64_t i = tile_i[t] * U + u, j = tile_j[t] * V + v;
        if (i >= C || j > i) continue;
        o[i * C + j] = o[j * C + i] = lanes_sum(acc.data() + (t * E + u * V + v) * 8);
      }
    }
  }
  return out;
}

}  // namespace

void register_batch_functions(pybind11::module_& m);  // native_batch.cpp: the per-batch work around the kernel

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_batch_functions(m);
  m.def("accumulate_gate_batch", &accumulate_gate_batch, "fused binning and counts of one batch",
        py::call_guard<py::gil_scoped_release>());  // like torch's own operators: other Python threads run
  m.def("centred_gram", &centred_gram, "the centred Gram matrix of float32 [B, C, N] maps about mean [C], float64 [C, C]",
        py::call_guard<py::gil_scoped_release>());
  m.def("fast_gram", &fast_gram, "whether this CPU has AVX2 and FMA (centred_gram needs them)");
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
