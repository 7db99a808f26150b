//! Graph passes: functions from a graph to a graph.

use super::ir::{Graph, Node, Op, ValueId};
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

/// Removes work the derivative rules leave behind for the backends:
/// - an `Expand` feeding a broadcasting elementwise op is dropped when broadcasting the
///   un-expanded operand gives the same result shape (the backends then broadcast on the fly
///   instead of materialising a full tensor);
/// - `Reshape` of a `Reshape` reads the first one's input.
pub fn simplify(g: &Graph) -> Graph {
    let mut out = g.clone();
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
                (Op::Expand { .. }, _) if broadcasting => {
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
                (Op::Reshape { .. }, Op::Reshape { .. }) => {
                    let src = pn.inputs[0];
                    out.nodes[i].inputs[k] = src;
                }
                _ => {}
            }
        }
    }
    prune(&out)
}
