//! Reverse-mode automatic differentiation over the IR: walk the nodes backwards and apply each
//! op's derivative rule (`ops::vjp`). The rules emit primitives that have rules of their own, so
//! a gradient graph can be differentiated again (pass 2 is reverse-over-reverse).

use super::ir::{Graph, IrError, ValueId};
use super::ops;
use std::collections::HashMap;

/// Emits into `g` the gradient of the scalar `y` with respect to each of `wrt`, seeded with
/// `seed` (a scalar value; 1 when `None`). Values that `y` does not depend on get zeros.
pub fn grad(
    g: &mut Graph,
    y: ValueId,
    wrt: &[ValueId],
    seed: Option<ValueId>,
) -> Result<Vec<ValueId>, IrError> {
    let n_nodes = g.nodes.len();
    // Forward: which values depend on a `wrt` value through float data.
    let mut depends = vec![false; g.values.len()];
    for &w in wrt {
        depends[w] = true;
    }
    for node in &g.nodes[..n_nodes] {
        if node.inputs.iter().any(|&i| depends[i]) {
            for &o in &node.outputs {
                depends[o] = g.dtype(o).is_float();
            }
        }
    }
    let mut cot: HashMap<ValueId, ValueId> = HashMap::new();
    let seed = match seed {
        Some(s) => s,
        None => g.scalar_like(y, 1.0),
    };
    let ys = g.shape(y).to_vec();
    let seed = g.reshape(seed, &ys)?;
    cot.insert(y, seed);
    for idx in (0..n_nodes).rev() {
        let node = &g.nodes[idx];
        if !node.outputs.iter().any(|o| cot.contains_key(o))
            || !node.inputs.iter().any(|&i| depends[i])
        {
            continue;
        }
        let node = node.clone();
        let cots: Vec<Option<ValueId>> = node.outputs.iter().map(|o| cot.get(o).copied()).collect();
        let din = ops::vjp(g, &node, &cots)?;
        for (&i, d) in node.inputs.iter().zip(din) {
            if let Some(d) = d {
                if depends[i] {
                    let acc = g.accumulate(cot.get(&i).copied(), d)?;
                    cot.insert(i, acc);
                }
            }
        }
    }
    wrt.iter()
        .map(|&w| match cot.get(&w) {
            Some(&c) => Ok(c),
            None => g.zeros_like(w),
        })
        .collect()
}
