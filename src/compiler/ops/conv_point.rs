//! The ONNX form of the convolution family when the convolution has a single output position
//! (ResNet's last stage on 32×32 images, any layer whose window covers its whole input): every
//! member is then one matrix product over the whole batch, on the kernel taps that read the
//! input rather than its padding.
//!
//! ONNX Runtime runs a `Conv` whose weight is a graph input as one product per image; with a
//! single output position each is a matrix-vector product that streams the whole weight again,
//! and eight of the nine taps of a padded 3×3 kernel on a 1×1 input only multiply zeros. One
//! product of the batch by the useful taps' weight reads the weight once.

use crate::compiler::ir::{ConvAttrs, Graph, IrError, ValueId};

/// Which taps of a one-position convolution read the input, and where: per spatial axis, the
/// tap range `[lo, hi)` and the first input position it reads (positions are consecutive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnePosition {
    taps: Vec<(usize, usize)>,
    first_read: Vec<usize>,
}

impl OnePosition {
    /// The geometry of a convolution with these attributes over `input` (spatial extents) and
    /// `kernel`, when it has one group and one output position and each axis's useful taps read
    /// consecutive input positions; `None` otherwise (or when some axis reads only padding,
    /// whose output the general form gives as zeros).
    pub fn of(a: &ConvAttrs, input: &[usize], kernel: &[usize]) -> Option<OnePosition> {
        if a.group != 1 || input.len() != kernel.len() {
            return None;
        }
        let out = super::conv::conv_out(a, input, kernel).ok()?;
        if out.iter().any(|&o| o != 1) {
            return None;
        }
        let (mut taps, mut first_read) = (Vec::new(), Vec::new());
        for (ax, (&extent, &k)) in input.iter().zip(kernel).enumerate() {
            let (d, pb) = (*a.dilations.get(ax)?, *a.pads_begin.get(ax)?);
            // Tap t reads input position t·d − pb.
            let useful: Vec<usize> = (0..k)
                .filter(|&t| t * d >= pb && t * d - pb < extent)
                .collect();
            let (&lo, &last) = (useful.first()?, useful.last()?);
            if d != 1 && lo != last {
                return None;
            }
            taps.push((lo, last + 1));
            first_read.push(lo * d - pb);
        }
        Some(OnePosition { taps, first_read })
    }

    /// Useful taps (and input positions read) along each axis.
    fn counts(&self) -> Vec<usize> {
        self.taps.iter().map(|&(lo, hi)| hi - lo).collect()
    }

    /// `[Rows, C·T]`: the input positions the useful taps read, flattened with the channels
    /// (`x` is \[Rows, C, …\]).
    fn read(&self, g: &mut Graph, x: ValueId) -> Result<ValueId, IrError> {
        let s = g.shape(x).to_vec();
        let win: Vec<(usize, usize)> = self
            .first_read
            .iter()
            .zip(self.counts())
            .map(|(&f, c)| (f, f + c))
            .collect();
        let part = super::conv::window(g, x, 2, &win)?;
        let cols = s[1] * self.counts().iter().product::<usize>();
        g.reshape(part, &[s[0], cols])
    }

    /// `[O, C·T]`: the useful taps of the weight \[O, C, k…\], a slice or gather of its
    /// flattened taps `[O·C, Πk]`. A product with a constant 0/1 matrix `[Πk, T]` is slightly
    /// faster on ONNX Runtime (0.7 against 1.2 ms for one tap of a 512×512×3×3 weight), but
    /// tract packs the whole weight for it (5–20 ms); slicing the four-axis weight itself takes
    /// ONNX Runtime 3 ms.
    fn weight(&self, g: &mut Graph, w: ValueId) -> Result<ValueId, IrError> {
        let s = g.shape(w).to_vec();
        let (o, c) = (s[0], s[1]);
        let kernel = s[2..].to_vec();
        let counts = self.counts();
        let taps: usize = counts.iter().product();
        if counts == kernel {
            return g.reshape(w, &[o, c * taps]);
        }
        let begins: Vec<usize> = self.taps.iter().map(|&(lo, _)| lo).collect();
        let cells: usize = kernel.iter().product();
        let pick = placement(&counts, &begins, &kernel);
        let flat = g.reshape(w, &[o * c, cells])?;
        let picked = g.take(flat, 1, pick)?;
        g.reshape(picked, &[o, c * taps])
    }

    /// `[Rows, C·T]` back to `[Rows, C, extent…]`, zero where no tap reads (`begins`: where the
    /// read range starts on each axis). The zeros are placed by a product with a constant 0/1
    /// matrix `[T, Πextent]`: ONNX Runtime pads rows of one or two elements (a weight gradient's
    /// taps) about 8 times slower than it runs that product.
    fn spread(
        &self,
        g: &mut Graph,
        v: ValueId,
        begins: &[usize],
        extents: &[usize],
    ) -> Result<ValueId, IrError> {
        let (rows, cols) = (g.shape(v)[0], g.shape(v)[1]);
        let counts = self.counts();
        let taps: usize = counts.iter().product();
        let c = cols / taps.max(1);
        let mut shape = vec![rows, c];
        shape.extend(extents);
        if begins.iter().all(|&b| b == 0) && counts == extents {
            return g.reshape(v, &shape);
        }
        let cells: usize = extents.iter().product();
        let mut place = vec![0.0; taps * cells];
        for (t, &cell) in placement(&counts, begins, extents).iter().enumerate() {
            place[t * cells + cell] = 1.0;
        }
        let dtype = g.dtype(v);
        let p = g.const_tensor(dtype, vec![taps, cells], place);
        let flat = g.reshape(v, &[rows * c, taps])?;
        let placed = g.matmul(flat, p)?;
        g.reshape(placed, &shape)
    }

    /// `Conv(x, w) [+ bias]`: `(W · xᵀ)ᵀ`, transposing the activations rather than the weight.
    pub fn conv(
        &self,
        g: &mut Graph,
        x: ValueId,
        w: ValueId,
        bias: Option<ValueId>,
    ) -> Result<ValueId, IrError> {
        let n = g.shape(x)[0];
        let o = g.shape(w)[0];
        let cols = self.read(g, x)?;
        let wr = self.weight(g, w)?;
        let xt = g.transpose(cols, &[1, 0])?;
        let yt = g.matmul(wr, xt)?;
        let mut y = g.transpose(yt, &[1, 0])?;
        if let Some(b) = bias {
            y = g.add(y, b)?;
        }
        let mut shape = vec![n, o];
        shape.extend(std::iter::repeat_n(1, self.taps.len()));
        g.reshape(y, &shape)
    }

    /// The adjoint `Convᵀ(y, w)` onto `out_spatial`, the convolution's input extent.
    pub fn conv_transpose(
        &self,
        g: &mut Graph,
        y: ValueId,
        w: ValueId,
        out_spatial: &[usize],
    ) -> Result<ValueId, IrError> {
        let (n, o) = (g.shape(y)[0], g.shape(y)[1]);
        let yr = g.reshape(y, &[n, o])?;
        let wr = self.weight(g, w)?;
        let cols = g.matmul(yr, wr)?;
        let first = self.first_read.clone();
        self.spread(g, cols, &first, out_spatial)
    }

    /// `∂⟨gy, Conv(x, w)⟩/∂w` for a kernel of extent `kernel`: zero on the taps that read padding.
    pub fn weight_grad(
        &self,
        g: &mut Graph,
        x: ValueId,
        gy: ValueId,
        kernel: &[usize],
    ) -> Result<ValueId, IrError> {
        let (n, o) = (g.shape(gy)[0], g.shape(gy)[1]);
        let cols = self.read(g, x)?;
        let gyr = g.reshape(gy, &[n, o])?;
        let gyt = g.transpose(gyr, &[1, 0])?;
        let dw = g.matmul(gyt, cols)?;
        let lo: Vec<usize> = self.taps.iter().map(|&(lo, _)| lo).collect();
        self.spread(g, dw, &lo, kernel)
    }
}

/// For each index of a row-major block of extent `counts` placed at `begins` inside a grid of
/// extent `extents`, its row-major index in the grid.
fn placement(counts: &[usize], begins: &[usize], extents: &[usize]) -> Vec<usize> {
    let taps: usize = counts.iter().product();
    (0..taps)
        .map(|t| {
            let (mut rest, mut cell, mut stride) = (t, 0, 1);
            for ax in (0..counts.len()).rev() {
                cell += (rest % counts[ax] + begins[ax]) * stride;
                rest /= counts[ax];
                stride *= extents[ax];
            }
            cell
        })
        .collect()
}
