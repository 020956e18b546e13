//! Layer norm, per backend: on the CPU its scale and shift live on the host and it runs
//! row by row in place (with a sublayer's bias and residual add folded in, by
//! [`ResidualNorm`]); on a device it is candle's fused kernel.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::rows_per_task;

/// A layer norm's weights as a backend keeps them.
pub trait Norm: Sized {
    /// Reads `weight` and `bias` of width `width` under `vb`.
    fn load(vb: VarBuilder, width: usize, eps: f64) -> Result<Self>;
}

/// A layer norm on the host.
pub struct HostNorm {
    weight: Vec<f32>,
    shift: Vec<f32>,
    eps: f32,
}

impl Norm for HostNorm {
    fn load(vb: VarBuilder, width: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(width, "weight")?.to_vec1()?,
            shift: vb.get(width, "bias")?.to_vec1()?,
            // The kernels take f32; BERT's 1e-12 is representable.
            eps: eps as f32,
        })
    }
}

impl HostNorm {
    /// The width of the rows it normalises.
    pub fn width(&self) -> usize {
        self.weight.len()
    }

    /// Normalises one row in place. The variance is taken around the mean (two passes), as
    /// PyTorch's layer norm does.
    pub fn apply(&self, row: &mut [f32]) {
        let width = row.len() as f32;
        let mean = lane_sum(row, |x| x) / width;
        let var = lane_sum(row, |x| (x - mean) * (x - mean)) / width;
        let inv_std = (var + self.eps).sqrt().recip();
        for ((x, w), s) in row.iter_mut().zip(&self.weight).zip(&self.shift) {
            *x = (*x - mean) * inv_std * w + s;
        }
    }
}

/// `x = norm(x + bias + residual)` row by row, in place on a fresh, contiguous CPU
/// product; rows are split over candle's thread pool.
pub struct ResidualNorm<'a> {
    /// The product's bias.
    pub bias: &'a [f32],
    /// The norm that follows.
    pub norm: &'a HostNorm,
}

impl InplaceOp2 for ResidualNorm<'_> {
    fn name(&self) -> &'static str {
        "residual-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(data), CpuStorage::F32(residual)) = (storage, residual) else {
            candle_core::bail!("residual-norm: f32 only")
        };
        let width = self.norm.width();
        let (Some((start, end)), Some((r_start, r_end))) = (
            layout.contiguous_offsets(),
            residual_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("residual-norm: operands must be contiguous")
        };
        if layout.dims().last() != Some(&width)
            || self.bias.len() != width
            || end - start != r_end - r_start
        {
            candle_core::bail!(
                "residual-norm: product {:?}, residual {:?}, bias {}, width {width}",
                layout.dims(),
                residual_layout.dims(),
                self.bias.len()
            )
        }
        let chunk = rows_per_task(width) * width;
        data[start..end]
            .par_chunks_mut(chunk)
            .zip(residual[r_start..r_end].par_chunks(chunk))
            .for_each(|(rows, residual)| {
                for (row, residual) in rows
                    .chunks_exact_mut(width)
                    .zip(residual.chunks_exact(width))
                {
                    for ((x, b), r) in row.iter_mut().zip(self.bias).zip(residual) {
                        *x += b + r;
                    }
                    self.norm.apply(row);
                }
            });
        Ok(())
    }
}

/// The sum of `f` over `row` in eight interleaved partial sums, so it vectorises.
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// A layer norm as candle tensors on the model's device.
pub struct DeviceNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm for DeviceNorm {
    fn load(vb: VarBuilder, width: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(width, "weight")?,
            bias: vb.get(width, "bias")?,
            eps: eps as f32,
        })
    }
}

impl DeviceNorm {
    /// `norm(xs)` over the last dimension.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}
