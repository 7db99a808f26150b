//! Graph passes: functions from a graph to a graph.

use super::ir::{Graph, Node, Op, ValueId};
use crate::compiler::ops::{Cast, Expand, Reshape, Upsample};
use std::collections::HashMap;

/// Removes the nodes no output needs and renumbers values. Graph inputs are kept even when unused
/// (the artifact contract fixes them).
pub fn prune(g: &Graph) -> Graph {
    let mut live = vec![false; g.values.len()];
    for &o in &g.outputs {
        live[o] = true;
    }
    let mut keep = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|&o| live[o]) {
            keep[i] = true;
            for &x in &n.inputs {
                live[x] = true;
            }
        }
    }
    for &i in &g.inputs {
        live[i] = true;
    }
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut out = Graph::new();
    for (old, info) in g.values.iter().enumerate() {
        if live[old] {
            map.insert(old, out.values.len());
            out.values.push(info.clone());
        }
    }
    // Node outputs that are not needed are still produced (multi-output nodes): keep their values.
    for (i, n) in g.nodes.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        for &o in &n.outputs {
            map.entry(o).or_insert_with(|| {
                out.values.push(g.values[o].clone());
                out.values.len() - 1
            });
        }
        out.nodes.push(Node {
            name: n.name.clone(),
            op: n.op.clone(),
            inputs: n.inputs.iter().map(|x| map[x]).collect(),
            outputs: n.outputs.iter().map(|x| map[x]).collect(),
        });
    }
    out.inputs = g.inputs.iter().map(|x| map[x]).collect();
    out.outputs = g.outputs.iter().map(|x| map[x]).collect();
    out
}

/// Copies `src`'s nodes into `dst` with `src`'s inputs bound to `args` (in order); returns the
/// `dst` values of `src`'s outputs. Shapes are re-inferred, so a mismatch is reported here.
pub fn inline(
    dst: &mut Graph,
    src: &Graph,
    args: &[ValueId],
) -> Result<Vec<ValueId>, super::ir::IrError> {
    let mut map: HashMap<ValueId, ValueId> = src
        .inputs
        .iter()
        .copied()
        .zip(args.iter().copied())
        .collect();
    for n in &src.nodes {
        let ins: Vec<ValueId> = n.inputs.iter().map(|x| map[x]).collect();
        let outs = dst.push(&n.name, n.op.clone(), &ins)?;
        for (o, d) in n.outputs.iter().zip(outs) {
            map.insert(*o, d);
        }
    }
    Ok(src.outputs.iter().map(|o| map[o]).collect())
}

/// Makes `named` the graph outputs under the given names, adding an `Identity` where a value is a
/// graph input or is named twice (ONNX needs distinct input and output names).
pub fn set_outputs(g: &mut Graph, named: &[(ValueId, &str)]) -> Result<(), super::ir::IrError> {
    let mut outs = Vec::with_capacity(named.len());
    for &(v, name) in named {
        let v = if g.inputs.contains(&v) || outs.contains(&v) {
            g.push1("", Op::Identity, &[v])?
        } else {
            v
        };
        g.rename(v, name);
        outs.push(v);
    }
    g.outputs = outs;
    Ok(())
}

/// Removes work the derivative rules leave behind for the backends (after [`fast_forms`]):
/// - an `Expand` feeding a broadcasting elementwise op is dropped when broadcasting the
///   un-expanded operand gives the same result shape (the backends then broadcast on the fly
///   instead of materialising a full tensor);
/// - `Reshape` of a `Reshape` reads the first one's input.
pub fn simplify(g: &Graph) -> Graph {
    let mut out = merge_duplicates(&fast_forms(g));
    let mut producer: HashMap<ValueId, usize> = HashMap::new();
    for (i, n) in out.nodes.iter().enumerate() {
        for &o in &n.outputs {
            producer.insert(o, i);
        }
    }
    for i in 0..out.nodes.len() {
        let op = out.nodes[i].op.clone();
        let broadcasting = op.broadcasts();
        for k in 0..out.nodes[i].inputs.len() {
            let v = out.nodes[i].inputs[k];
            let Some(&p) = producer.get(&v) else { continue };
            let pn = &out.nodes[p];
            match (&pn.op, &op) {
                (Op::Expand(Expand { .. }), _) if broadcasting => {
                    let src = pn.inputs[0];
                    let mut shapes: Vec<Vec<usize>> = out.nodes[i]
                        .inputs
                        .iter()
                        .map(|&x| out.shape(x).to_vec())
                        .collect();
                    shapes[k] = out.shape(src).to_vec();
                    let b = shapes
                        .iter()
                        .try_fold(Vec::new(), |acc, s| super::ops::broadcast_shapes(&acc, s));
                    if b.as_deref().ok() == Some(out.shape(out.nodes[i].outputs[0])) {
                        out.nodes[i].inputs[k] = src;
                    }
                }
                (Op::Reshape(Reshape { .. }), Op::Reshape(Reshape { .. })) => {
                    let src = pn.inputs[0];
                    out.nodes[i].inputs[k] = src;
                }
                _ => {}
            }
        }
    }
    prune(&out)
}

/// Merges nodes that compute the same values: the same primitive with the same attributes on the
/// same operands (after earlier merges), and constants of the same type, shape and elements. The
/// derivative rules emit such twins where a second derivative rebuilds what the first built (a
/// ReLU's mask, a norm's statistics): 57 of the 411 nodes of ConvNet-D3's pass 2, dx, 12 M of the
/// 60 M values its elementwise ops write per call of 8 images. ONNX Runtime merges them when it
/// loads a graph; tract does not. A node that produces a graph output is kept, so every output
/// keeps a value (and a name) of its own.
pub fn merge_duplicates(g: &Graph) -> Graph {
    let declared: std::collections::HashSet<ValueId> = g.outputs.iter().copied().collect();
    // The nodes kept so far, by primitive name, operands and (for constants) a digest of the
    // value: only nodes under one key are compared in full.
    let mut kept: HashMap<(&'static str, Vec<ValueId>, u64), Vec<usize>> = HashMap::new();
    let mut subst: HashMap<ValueId, ValueId> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let mut node = n.clone();
        for x in node.inputs.iter_mut() {
            if let Some(&s) = subst.get(x) {
                *x = s;
            }
        }
        let digest = match &node.op {
            Op::Constant(t) => constant_digest(t),
            _ => 0,
        };
        let key = (node.op.rules().name(), node.inputs.clone(), digest);
        let twin = kept.get(&key).and_then(|candidates| {
            candidates.iter().copied().find(|&i| {
                nodes
                    .get(i)
                    .is_some_and(|k| k.op == node.op && k.outputs.len() == node.outputs.len())
            })
        });
        match twin {
            Some(i) if !node.outputs.iter().any(|o| declared.contains(o)) => {
                for (&o, &k) in node.outputs.iter().zip(&nodes[i].outputs) {
                    subst.insert(o, k);
                }
            }
            _ => {
                kept.entry(key).or_default().push(nodes.len());
                nodes.push(node);
            }
        }
    }
    let out = Graph {
        values: g.values.clone(),
        nodes,
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
    };
    prune(&out)
}

/// A digest of a constant's type, shape and element bits, to bucket constants before comparing
/// them.
fn constant_digest(t: &super::ir::Tensor) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", t.dtype).hash(&mut h);
    t.shape.hash(&mut h);
    for v in &t.data {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

/// Rewrites two forms the derivative rules emit into equivalent ones that both backends run several
/// times faster on large activations; each gives the same values (a masked-out zero may become −0,
/// and a non-finite value under a mask stays non-finite):
/// - a mask `Where(c, a, 0)` (ReLU's and max's backward) becomes `a · float(c)`, and
///   `Where(c, 0, b)` becomes `b · (1 − float(c))` (ONNX Runtime's `Where` with a broadcast scalar
///   is about 4× slower than a `Mul`);
/// - the nearest-neighbour upsampling that non-overlapping pooling's backward emits
///   (`Reshape` to \[N,C,h,1,w,1\], `Expand` to \[N,C,h,k,w,k\], `Reshape` to \[N,C,hk,wk\]) becomes
///   the one [`Upsample`] primitive (an `Expand` over inner axes of size k is about 5× slower).
///
/// Values are renumbered by [`prune`] afterwards, so the replaced nodes disappear.
pub fn fast_forms(g: &Graph) -> Graph {
    let mut out = Graph {
        values: g.values.clone(),
        nodes: Vec::with_capacity(g.nodes.len()),
        inputs: g.inputs.clone(),
        outputs: vec![],
    };
    let mut producer: HashMap<ValueId, usize> = HashMap::new();
    // Old value → the value that replaces it.
    let mut subst: HashMap<ValueId, ValueId> = HashMap::new();
    for n in &g.nodes {
        let mut node = n.clone();
        for x in node.inputs.iter_mut() {
            if let Some(&s) = subst.get(x) {
                *x = s;
            }
        }
        let replaced = match &node.op {
            Op::Where => where_as_mul(&mut out, &producer, &node),
            Op::Reshape(Reshape { .. }) => upsample_as_one_op(&mut out, &producer, &node),
            _ => None,
        };
        match replaced {
            Some(v) => {
                subst.insert(n.outputs[0], v);
            }
            None => {
                for &o in &node.outputs {
                    producer.insert(o, out.nodes.len());
                }
                out.nodes.push(node);
            }
        }
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|o| subst.get(o).copied().unwrap_or(*o))
        .collect();
    // A replaced graph output keeps its name on export.
    for (&old, &new) in g.outputs.iter().zip(out.outputs.clone().iter()) {
        if old != new {
            let name = g.values[old].name.clone();
            out.rename(new, &name);
        }
    }
    prune(&out)
}

/// Whether `v` is produced by a constant whose every element is zero.
fn is_zero_constant(g: &Graph, producer: &HashMap<ValueId, usize>, v: ValueId) -> bool {
    producer
        .get(&v)
        .and_then(|&p| g.nodes.get(p))
        .is_some_and(|n| matches!(&n.op, Op::Constant(t) if t.data.iter().all(|&x| x == 0.0)))
}

fn where_as_mul(g: &mut Graph, producer: &HashMap<ValueId, usize>, n: &Node) -> Option<ValueId> {
    let &[c, a, b] = n.inputs.as_slice() else {
        return None;
    };
    let out_shape = g.shape(n.outputs[0]).to_vec();
    let dt = g.dtype(n.outputs[0]);
    if !dt.is_float() {
        return None;
    }
    let (kept, keep_where_true) = if is_zero_constant(g, producer, b) {
        (a, true)
    } else if is_zero_constant(g, producer, a) {
        (b, false)
    } else {
        return None;
    };
    let name = |s: &str| format!("{}_{s}", n.name);
    let m = g
        .push1(&name("mask"), Op::Cast(Cast { to: dt }), &[c])
        .ok()?;
    let m = if keep_where_true {
        m
    } else {
        let one = g.scalar(dt, 1.0);
        g.push1(&name("not"), Op::Sub, &[one, m]).ok()?
    };
    let y = g.push1(&name("masked"), Op::Mul, &[kept, m]).ok()?;
    (g.shape(y) == out_shape.as_slice()).then_some(y)
}

fn upsample_as_one_op(
    g: &mut Graph,
    producer: &HashMap<ValueId, usize>,
    n: &Node,
) -> Option<ValueId> {
    let out_shape = g.shape(n.outputs[0]).to_vec();
    let &[e] = n.inputs.as_slice() else {
        return None;
    };
    let en = g.nodes.get(*producer.get(&e)?)?;
    let (Op::Expand(Expand { shape: big }), &[src]) = (&en.op, en.inputs.as_slice()) else {
        return None;
    };
    let small = g.shape(src).to_vec();
    let (&[nb, c, h, 1, w, 1], &[nb2, c2, h2, kh, w2, kw], &[nb3, c3, hh, ww]) =
        (small.as_slice(), big.as_slice(), out_shape.as_slice())
    else {
        return None;
    };
    if (nb, c, h, w) != (nb2, c2, h2, w2) || (nb, c) != (nb3, c3) || (hh, ww) != (h * kh, w * kw) {
        return None;
    }
    let dt = g.dtype(src);
    if !dt.is_float() {
        return None;
    }
    let name = |s: &str| format!("{}_{s}", n.name);
    let flat = g
        .push1(
            &name("grid"),
            Op::Reshape(Reshape {
                shape: vec![nb, c, h, w],
            }),
            &[src],
        )
        .ok()?;
    let y = g
        .push1(
            &name("upsample"),
            Op::Upsample(Upsample { kh, kw }),
            &[flat],
        )
        .ok()?;
    Some(y)
}
