//! `x · Wᵀ + b`, the projection every layer is made of, with what may follow it fused in:
//! the exact (erf) GELU, or a residual add and layer norm. `W` is stored as
//! `torch.nn.Linear` stores it, [out, in], and multiplied by its transposed view: the gemm
//! crate is faster that way for the few rows of one text.

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::norm::{DeviceNorm, HostNorm, ResidualNorm};
use super::rows_per_task;

/// A projection's weights as a backend keeps them.
pub trait Linear: Sized {
    /// The norm its residual epilogue applies.
    type Norm;

    /// From `weight` [out, in] and `bias` [out], on the model's device.
    fn new(weight: Tensor, bias: Tensor) -> Result<Self>;

    /// `x · Wᵀ + b`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor>;

    /// `gelu(x · Wᵀ + b)`, the exact (erf) GELU.
    fn forward_gelu(&self, xs: &Tensor) -> Result<Tensor>;

    /// `norm(x · Wᵀ + b + residual)`: a BERT sublayer's output.
    fn forward_residual_norm(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        norm: &Self::Norm,
    ) -> Result<Tensor>;
}

/// Reads `weight` [output, input] and `bias` [output] under `vb`.
pub fn weights(vb: VarBuilder, input: usize, output: usize) -> Result<(Tensor, Tensor)> {
    Ok((vb.get((output, input), "weight")?, vb.get(output, "bias")?))
}

/// A projection on the CPU: the weight stays a candle tensor (for its matrix product), the
/// bias lives on the host, added in place on the product together with what follows it:
/// one pass over the product instead of an allocation and a pass per operation.
pub struct HostLinear {
    weight: Tensor,
    bias: Vec<f32>,
}

impl Linear for HostLinear {
    type Norm = HostNorm;

    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        if !weight.device().is_cpu() {
            candle_core::bail!("the CPU backend needs its weights on the CPU")
        }
        Ok(Self {
            weight,
            bias: bias.to_vec1()?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.epilogue(xs, false)
    }

    fn forward_gelu(&self, xs: &Tensor) -> Result<Tensor> {
        self.epilogue(xs, true)
    }

    fn forward_residual_norm(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        norm: &HostNorm,
    ) -> Result<Tensor> {
        let product = xs.matmul(&self.weight.t()?)?;
        product.inplace_op2(
            residual,
            &ResidualNorm {
                bias: &self.bias,
                norm,
            },
        )?;
        Ok(product)
    }
}

impl HostLinear {
    /// The product with the bias (and the GELU when `gelu`) applied in place.
    fn epilogue(&self, xs: &Tensor, gelu: bool) -> Result<Tensor> {
        let product = xs.matmul(&self.weight.t()?)?;
        product.inplace_op1(&BiasGelu {
            bias: &self.bias,
            gelu,
        })?;
        Ok(product)
    }
}

/// Adds a bias to every row of a fresh, contiguous CPU matrix in place, then optionally
/// applies the exact GELU with [`erf`]; rows are split over candle's thread pool.
struct BiasGelu<'a> {
    bias: &'a [f32],
    gelu: bool,
}

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bias-gelu: f32 only")
        };
        let width = self.bias.len();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias-gelu: the product must be contiguous")
        };
        if layout.dims().last() != Some(&width) {
            candle_core::bail!("bias-gelu: rows of {:?}, bias of {width}", layout.dims())
        }
        data[start..end]
            .par_chunks_mut(rows_per_task(width) * width)
            .for_each(|rows| {
                for row in rows.chunks_exact_mut(width) {
                    for (x, b) in row.iter_mut().zip(self.bias) {
                        *x += b;
                    }
                    if self.gelu {
                        for x in row.iter_mut() {
                            *x *= 0.5 * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
                        }
                    }
                }
            });
        Ok(())
    }
}

/// The error function in f32 to within a few ulp, branch-free so it vectorises: Eigen's
/// rational approximation (odd degree-13 over even degree-8 polynomial in x, input clamped
/// to [-4, 4] where erf is ±1 in f32).
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// A projection as candle tensors on the model's device, with candle's kernels.
pub struct DeviceLinear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear for DeviceLinear {
    type Norm = DeviceNorm;

    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        Ok(Self { weight, bias })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }

    fn forward_gelu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward(xs)?.gelu_erf()
    }

    fn forward_residual_norm(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        norm: &DeviceNorm,
    ) -> Result<Tensor> {
        norm.forward(&(self.forward(xs)? + residual)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm_to_a_few_ulp() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let exact = libm::erf(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - exact).abs() as f32);
        }
        assert!(worst < 1e-6, "max abs error {worst}");
    }
}
