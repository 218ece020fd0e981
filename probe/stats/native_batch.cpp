// The per-batch work around the counting kernel (native_kernel.cpp), in C++ because in torch it is
// dozens of small operations, each costing more in dispatch and memory traffic than in arithmetic
// (13% of the statistics' time at two threads on `scenes-gated`, benchmarks/README.md):
//
// * cell_conditions: a batch's regions and labels brought to one layer resolution, with their pixel
//   counts and one-hot rows (torch reference: probe.stats.layer_stats._torch_conditions over
//   probe.recording.context.BatchContext);
// * trivial_features: the colour, texture and position features at one resolution (torch reference:
//   probe.recording.context.BatchContext.trivial_features);
// * joint_counts: the dense counts of (image group, joint trivial cell, label)
//   (torch reference: probe.stats.joint.JointTrivialCounts.add).
//
// Shapes: B images, H x W pixels, h x w cells (N = h * w), P present labels, G groups; every
// tensor is contiguous unless said otherwise. The results are those of the torch references, bit
// for bit (tests/test_native_batch.py).
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// Along one axis of `size` pixels brought to n cells: each cell's window [start, end) of adaptive
// pooling (floor(i * size / n), ceil((i + 1) * size / n)) and its centre pixel, whose label it takes
// (((i + 0.5) * size / n) in float32, truncated: BatchContext.labels_at's float32 operations; when
// size == n they give the pixel itself).
struct Axis {
  std::vector<int64_t> start, end, centre;
  Axis(int64_t size, int64_t n) : start(n), end(n), centre(n) {
    for (int64_t i = 0; i < n; ++i) {
      start[i] = (i * size) / n;
      end[i] = ((i + 1) * size + n - 1) / n;
      const float scaled = (static_cast<float>(i) + 0.5f) * static_cast<float>(size);
      centre[i] = size == n ? i : static_cast<int64_t>(scaled / static_cast<float>(n));
    }
  }
};

// Whether every value of x is 0 or 1 (the area mean of such a mask is >= 0.5 exactly when at least
// half of the window is 1, whatever the order of the sum).
bool binary(const at::Tensor& x) {
  const float* p = x.data_ptr<float>();
  bool ok = true;
  for (int64_t i = 0; i < x.numel(); ++i) ok &= (p[i] == 0.0f) | (p[i] == 1.0f);
  return ok;
}

// true within `radius` cells (Chebyshev distance) of a true cell of m [h, w]: shifted ORs along the
// rows, then along the columns (whole rows at a time).
std::vector<uint8_t> dilate(const std::vector<uint8_t>& m, int64_t h, int64_t w, int64_t radius) {
  std::vector<uint8_t> rows(m), out;
  for (int64_t y = 0; y < h; ++y) {
    const uint8_t* __restrict src = m.data() + y * w;
    uint8_t* __restrict dst = rows.data() + y * w;
    for (int64_t d = 1; d <= std::min(radius, w - 1); ++d) {
      for (int64_t x = 0; x + d < w; ++x) dst[x] |= src[x + d];
      for (int64_t x = 0; x + d < w; ++x) dst[x + d] |= src[x];
    }
  }
  out = rows;
  for (int64_t d = 1; d <= std::min(radius, h - 1); ++d) {
    for (int64_t y = 0; y + d < h; ++y) {
      const uint8_t* __restrict below = rows.data() + (y + d) * w;
      const uint8_t* __restrict above = rows.data() + y * w;
      uint8_t* __restrict up = out.data() + y * w;
      uint8_t* __restrict down = out.data() + (y + d) * w;
      for (int64_t x = 0; x < w; ++x) up[x] |= below[x];
      for (int64_t x = 0; x < w; ++x) down[x] |= above[x];
    }
  }
  return out;
}

// row[i] = (id[i] == want), as 1.0f or 0.0f.
void one_where(float* __restrict row, const int32_t* __restrict id, int32_t want, int64_t n) {
  for (int64_t i = 0; i < n; ++i) row[i] = id[i] == want ? 1.0f : 0.0f;
}

// Region ids (HOLE_SKETCH 0, HOLE_PLAIN 1, BORDER 2, FAR 3), compact labels, their per-image pixel
// counts and the one-hot rows of one batch at h x w, or an empty list when the hole or sketch is not
// a 0/1 mask (the caller then uses the torch reference, whose area means it would have to follow).
std::vector<at::Tensor> cell_conditions(const at::Tensor& hole,    // float32 [B, 1, H, W]
                                        const at::Tensor& sketch,  // float32 [B, 1, H, W]
                                        const at::Tensor& labels,  // int64 [B, H, W], negative: ignored
                                        int64_t h, int64_t w, int64_t border,
                                        const at::Tensor& remap,   // int64 [n + 1]: label + 1 -> compact or -1
                                        int64_t n_present) {
  TORCH_CHECK(hole.scalar_type() == at::kFloat && sketch.scalar_type() == at::kFloat && labels.scalar_type() == at::kLong &&
              remap.scalar_type() == at::kLong, "hole and sketch float32, labels and remap int64");
  TORCH_CHECK(hole.is_contiguous() && sketch.is_contiguous() && labels.is_contiguous() && remap.is_contiguous(),
              "every tensor must be contiguous");
  TORCH_CHECK(hole.dim() == 4 && hole.size(1) == 1 && sketch.sizes() == hole.sizes() && labels.dim() == 3 &&
              labels.size(0) == hole.size(0) && labels.size(1) == hole.size(2) && labels.size(2) == hole.size(3) &&
              h > 0 && w > 0, "hole and sketch [B, 1, H, W], labels [B, H, W], h and w positive");
  if (!binary(hole) || !binary(sketch)) return {};
  const int64_t B = hole.size(0), H = hole.size(2), W = hole.size(3), N = h * w, K = 4 + n_present;
  const int64_t n_remap = remap.numel();
  const int64_t* rm = remap.data_ptr<int64_t>();
  for (int64_t i = 0; i < n_remap; ++i) TORCH_CHECK(rm[i] >= -1 && rm[i] < n_present, "remap must map into [-1, P)");
  auto i32 = hole.options().dtype(at::kInt), i64 = hole.options().dtype(at::kLong);
  at::Tensor region = at::empty({B, N}, i32), compact = at::empty({B, N}, i32);
  at::Tensor region_pixels = at::zeros({B, 4}, i64), label_pixels = at::zeros({B, n_present}, i64);
  at::Tensor onehot = at::empty({B, K, N}, hole.options());
  const float* hp = hole.data_ptr<float>();
  const float* sp = sketch.data_ptr<float>();
  const int64_t* lp = labels.data_ptr<int64_t>();
  int32_t* rp = region.data_ptr<int32_t>();
  int32_t* cp = compact.data_ptr<int32_t>();
  int64_t* rpix = region_pixels.data_ptr<int64_t>();
  int64_t* lpix = label_pixels.data_ptr<int64_t>();
  float* oh = onehot.data_ptr<float>();
  const Axis rows(H, h), columns(W, w);
  const bool same = H == h && W == w;
  std::vector<uint8_t> in_hole(N), on_sketch(N);
  int64_t past = -1;  // a label id past the classes, if any
  for (int64_t b = 0; b < B; ++b) {
    const float* hb = hp + b * H * W;
    const float* sb = sp + b * H * W;
    if (same) {
      for (int64_t i = 0; i < N; ++i) {
        in_hole[i] = hb[i] != 0.0f;
        on_sketch[i] = in_hole[i] & (sb[i] != 0.0f);
      }
    } else {
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
          int64_t ones = 0;
          bool stroke = false;
          for (int64_t yy = rows.start[y]; yy < rows.end[y]; ++yy) {
            for (int64_t xx = columns.start[x]; xx < columns.end[x]; ++xx) {
              ones += hb[yy * W + xx] != 0.0f;
              stroke |= sb[yy * W + xx] != 0.0f;
            }
          }
          const bool is_hole = 2 * ones >= (rows.end[y] - rows.start[y]) * (columns.end[x] - columns.start[x]);  // mean >= 0.5
          in_hole[y * w + x] = is_hole;
          on_sketch[y * w + x] = is_hole && stroke;
        }
      }
    }
    const std::vector<uint8_t> near = dilate(in_hole, h, w, border);
    int32_t* rb = rp + b * N;
    int32_t* cb = cp + b * N;
    for (int64_t y = 0; y < h; ++y) {
      const int64_t* lrow = lp + (b * H + rows.centre[y]) * W;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t i = y * w + x;
        const int64_t label = lrow[columns.centre[x]];
        const int64_t slot = label < 0 ? 0 : label + 1;
        if (slot >= n_remap) past = label;
        rb[i] = 3 - near[i] - in_hole[i] - on_sketch[i];
        cb[i] = slot < n_remap ? static_cast<int32_t>(rm[slot]) : -1;
      }
    }
    for (int64_t i = 0; i < N; ++i) {
      rpix[b * 4 + rb[i]] += 1;
      if (cb[i] >= 0) lpix[b * n_present + cb[i]] += 1;
    }
    // every entry written: row r is 1 at the cells of region r, row 4 + l at those of present label l
    for (int32_t k = 0; k < K; ++k) one_where(oh + (b * K + k) * N, k < 4 ? rb : cb, k < 4 ? k : k - 4, N);
  }
  TORCH_CHECK(past < 0, "label id ", past, " is past the ", n_remap - 1, " classes of the run");
  return {region, compact, region_pixels, label_pixels, onehot};
}

// The six trivial features of each cell at h x w (BatchContext.trivial_features: the cell's mean R,
// G and B (adaptive average pooling: the window's float32 sum in row order, / kh / kw; the image
// itself at its own size; torch's 1 x 1 pooling is a mean summed in another order: the caller keeps
// that size), the variance of the luminance ((R + G + B) / 3) over the cell's 3 x 3
// neighbourhood inside the map (E[lum^2] - E[lum]^2, clamped at 0; each mean a sum along the
// columns, then along the rows, over the cells inside, / their count), its row and its column
// ((i + 0.5) / n)), with the float32 operations of the torch code in the same order.
at::Tensor trivial_features(const at::Tensor& image, int64_t h, int64_t w) {  // float32 [B, 3, H, W] -> [B, 6, h, w]
  TORCH_CHECK(image.scalar_type() == at::kFloat && image.is_contiguous() && image.dim() == 4 && image.size(1) == 3 &&
              h > 0 && w > 0, "image must be a contiguous float32 [B, 3, H, W], h and w positive");
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3), N = h * w;
  at::Tensor out = at::empty({B, 6, h, w}, image.options());
  const float* ip = image.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const Axis rows(H, h), columns(W, w);
  const bool same = H == h && W == w;
  std::vector<float> lum(2 * N), along(2 * N), inside_h(h), inside_w(w);
  for (int64_t i = 0; i < h; ++i) inside_h[i] = 3.0f - (i == 0) - (i == h - 1);
  for (int64_t i = 0; i < w; ++i) inside_w[i] = 3.0f - (i == 0) - (i == w - 1);
  for (int64_t b = 0; b < B; ++b) {
    float* f = op + b * 6 * N;
    for (int64_t c = 0; c < 3; ++c) {
      const float* x = ip + (b * 3 + c) * H * W;
      float* colour = f + c * N;
      if (same) {
        std::copy(x, x + N, colour);
        continue;
      }
      for (int64_t y = 0; y < h; ++y) {
        const float kh = static_cast<float>(rows.end[y] - rows.start[y]);
        for (int64_t xx = 0; xx < w; ++xx) {
          float sum = 0.0f;
          for (int64_t i = rows.start[y]; i < rows.end[y]; ++i) {
            for (int64_t j = columns.start[xx]; j < columns.end[xx]; ++j) sum += x[i * W + j];
          }
          colour[y * w + xx] = sum / kh / static_cast<float>(columns.end[xx] - columns.start[xx]);
        }
      }
    }
    for (int64_t i = 0; i < N; ++i) {
      const float l = ((f[i] + f[N + i]) + f[2 * N + i]) / 3.0f;
      lum[i] = l;
      lum[N + i] = l * l;
    }
    for (int64_t m = 0; m < 2; ++m) {  // the 3 x 3 sums: along each column (over the rows), then along each row
      const float* src = lum.data() + m * N;
      float* dst = along.data() + m * N;
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
          float v = src[y * w + x];
          if (y > 0) v += src[(y - 1) * w + x];
          if (y + 1 < h) v += src[(y + 1) * w + x];
          dst[y * w + x] = v;
        }
      }
    }
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        float mean[2];
        for (int64_t m = 0; m < 2; ++m) {
          const float* t = along.data() + m * N + y * w;
          float v = t[x];
          if (x > 0) v += t[x - 1];
          if (x + 1 < w) v += t[x + 1];
          mean[m] = v / (inside_h[y] * inside_w[x]);
        }
        const float variance = mean[1] - mean[0] * mean[0];
        f[3 * N + y * w + x] = variance < 0.0f ? 0.0f : variance;
        f[4 * N + y * w + x] = (static_cast<float>(y) + 0.5f) / static_cast<float>(h);
        f[5 * N + y * w + x] = (static_cast<float>(x) + 0.5f) / static_cast<float>(w);
      }
    }
  }
  return out;
}

// dense[(group[b] * cells + cell) * L + label] += 1 for every labelled pixel, where cell is the
// joint cell of the pixel's six trivial features (each cut into `levels`: floor(x * levels) clamped
// for colours and position, the number of `variance_edges` <= x for the variance; the digits read
// as a number in base `levels`, feature 0 first) and label present[compact] (compact < 0: ignored).
void joint_counts(at::Tensor& dense,              // int64 [G * cells * L]
                  const at::Tensor& features,     // float32 [B, 6, N]
                  const at::Tensor& compact,      // int32 [B, N]
                  const at::Tensor& present,      // int64 [P]
                  const at::Tensor& group,        // int64 [B]
                  const at::Tensor& variance_edges,  // float32 [E]
                  int64_t levels, int64_t labels) {
  TORCH_CHECK(dense.scalar_type() == at::kLong && features.scalar_type() == at::kFloat && compact.scalar_type() == at::kInt &&
              present.scalar_type() == at::kLong && group.scalar_type() == at::kLong &&
              variance_edges.scalar_type() == at::kFloat, "dtypes: int64 dense, float32 features, int32 compact");
  TORCH_CHECK(dense.is_contiguous() && features.is_contiguous() && compact.is_contiguous() && present.is_contiguous() &&
              group.is_contiguous() && variance_edges.is_contiguous(), "every tensor must be contiguous");
  TORCH_CHECK(features.dim() == 3 && features.size(1) == 6 && compact.numel() == features.size(0) * features.size(2),
              "features must be [B, 6, N] and compact [B, N]");
  const int64_t B = features.size(0), N = features.size(2), P = present.numel(), E = variance_edges.numel();
  int64_t cells = 1;
  for (int f = 0; f < 6; ++f) cells *= levels;
  const int64_t size = dense.numel();
  const float* fp = features.data_ptr<float>();
  const int32_t* cp = compact.data_ptr<int32_t>();
  const int64_t* pp = present.data_ptr<int64_t>();
  const int64_t* gp = group.data_ptr<int64_t>();
  const float* ep = variance_edges.data_ptr<float>();
  int64_t* out = dense.data_ptr<int64_t>();
  const float top = static_cast<float>(levels - 1), scale = static_cast<float>(levels);
  const int32_t top_digit = static_cast<int32_t>(levels - 1), base = static_cast<int32_t>(levels);
  // every id in range before anything is counted: a bad one changes nothing
  const int64_t groups = size / (cells * labels);
  bool in_range = size == groups * cells * labels;
  for (int64_t b = 0; b < B; ++b) in_range &= gp[b] >= 0 && gp[b] < groups;
  for (int64_t l = 0; l < P; ++l) in_range &= pp[l] >= 0 && pp[l] < labels;
  for (int64_t i = 0; i < B * N; ++i) in_range &= cp[i] < P;
  TORCH_CHECK(in_range, "a group, label or compact label is past the joint counts' [groups, cells, labels]");
  std::vector<int32_t> cell(N);
  for (int64_t b = 0; b < B; ++b) {
    // the cell of every pixel, one feature at a time (loops the compiler vectorises)
    std::fill(cell.begin(), cell.end(), 0);
    for (int f = 0; f < 6; ++f) {
      const float* x = fp + (b * 6 + f) * N;
      if (f == 3) {  // the variance: the edges at or below it
        for (int64_t p = 0; p < N; ++p) {
          int32_t digit = 0;
          for (int64_t e = 0; e < E; ++e) digit += ep[e] <= x[p] ? 1 : 0;
          cell[p] = cell[p] * base + digit;
        }
        continue;
      }
      for (int64_t p = 0; p < N; ++p) {  // floor(x * levels) clamped to [0, levels - 1]; NaN: 0
        const float v = x[p] * scale;
        const int32_t digit = !(v >= 0.0f) ? 0 : v >= top ? top_digit : static_cast<int32_t>(v);
        cell[p] = cell[p] * base + digit;
      }
    }
    const int64_t first = gp[b] * cells;
    for (int64_t p = 0; p < N; ++p) {
      const int32_t c = cp[b * N + p];
      if (c >= 0) out[(first + cell[p]) * labels + pp[c]] += 1;
    }
  }
}

}  // namespace

void register_batch_functions(pybind11::module_& m) {
  m.def("cell_conditions", &cell_conditions,
        "regions, compact labels, pixel counts and one-hot rows of a batch at one resolution (empty if a mask is not 0/1)",
        py::call_guard<py::gil_scoped_release>());
  m.def("trivial_features", &trivial_features, "the six trivial features [B, 6, h, w] of an image batch at h x w",
        py::call_guard<py::gil_scoped_release>());
  m.def("joint_counts", &joint_counts, "dense joint trivial counts of one batch", py::call_guard<py::gil_scoped_release>());
}
