//! The preference loss `L = mean softplus(−m)` over margins `m = r⁺ − r⁻` (MATH.md §2), stable
//! for any sign of `m`.

use candle_core::Tensor;

/// `ℓ(m) = softplus(−m) = −ln σ(m)` (MATH.md §1), stable: with `x = −m`,
/// `relu(x) + ln(1 + e^{−|x|})`. `relu` and `abs` take the *same* argument `x`: candle gives both
/// the derivative 1 at 0, so `relu'(x) − abs'(x)·σ(−|x|)` is `1 − ½ = σ(0)` there and `σ(x)`
/// elsewhere, and `dℓ/dm = −σ(−m)` everywhere, `−½` exactly at the first step of an IM-RM
/// (policy = reference). Mixing `relu(−m)` with `|m|` gave `−1.5` at `m = 0`.
pub fn softplus_neg(m: &Tensor) -> candle_core::Result<Tensor> {
    let x = m.neg()?;
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}
