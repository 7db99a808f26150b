//! Model-local functions (`ModelProto.functions`): calls are inlined before lowering, with the
//! function's internal values renamed per call and attribute references resolved.

use crate::onnx::pb;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Calls nested deeper than this are taken for recursion.
const MAX_DEPTH: usize = 16;

/// The graph's nodes with every call of a model-local function replaced by the function's body.
pub fn inline(m: &pb::ModelProto, nodes: &[pb::NodeProto]) -> Result<Vec<pb::NodeProto>> {
    if m.functions.is_empty() {
        return Ok(nodes.to_vec());
    }
    let funcs: HashMap<(&str, &str), &pb::FunctionProto> = m
        .functions
        .iter()
        .map(|f| {
            (
                (
                    f.domain.as_deref().unwrap_or(""),
                    f.name.as_deref().unwrap_or(""),
                ),
                f,
            )
        })
        .collect();
    let mut out = Vec::with_capacity(nodes.len());
    let mut counter = 0;
    for n in nodes {
        expand(n, &funcs, 0, &mut counter, &mut out)?;
    }
    Ok(out)
}

fn expand(
    n: &pb::NodeProto,
    funcs: &HashMap<(&str, &str), &pb::FunctionProto>,
    depth: usize,
    counter: &mut usize,
    out: &mut Vec<pb::NodeProto>,
) -> Result<()> {
    let key = (
        n.domain.as_deref().unwrap_or(""),
        n.op_type.as_deref().unwrap_or(""),
    );
    let Some(f) = funcs.get(&key) else {
        out.push(n.clone());
        return Ok(());
    };
    if depth >= MAX_DEPTH {
        bail!(
            "function '{}' calls nest deeper than {MAX_DEPTH} (recursion?)",
            key.1
        );
    }
    *counter += 1;
    let call = format!("{}#{}", n.name.as_deref().unwrap_or(key.1), counter);
    // Formal parameters map to the call's actual values; everything else gets a per-call name.
    let mut rename: HashMap<&str, String> = HashMap::new();
    for (k, formal) in f.input.iter().enumerate() {
        rename.insert(formal, n.input.get(k).cloned().unwrap_or_default());
    }
    for (k, formal) in f.output.iter().enumerate() {
        rename.insert(formal, n.output.get(k).cloned().unwrap_or_default());
    }
    let map = |s: &String| -> String {
        if s.is_empty() {
            return String::new();
        }
        rename
            .get(s.as_str())
            .cloned()
            .unwrap_or_else(|| format!("{call}/{s}"))
    };
    for b in &f.node {
        let mut b2 = b.clone();
        b2.input = b.input.iter().map(map).collect();
        b2.output = b.output.iter().map(map).collect();
        b2.name = Some(format!(
            "{call}/{}",
            b.name
                .as_deref()
                .unwrap_or(b.op_type.as_deref().unwrap_or(""))
        ));
        let mut attrs = Vec::with_capacity(b.attribute.len());
        for a in &b.attribute {
            match a.ref_attr_name.as_deref() {
                None | Some("") => attrs.push(a.clone()),
                Some(r) => {
                    // The caller's value, else the function's default; absent means omitted.
                    let v = n
                        .attribute
                        .iter()
                        .find(|c| c.name.as_deref() == Some(r))
                        .or_else(|| {
                            f.attribute_proto
                                .iter()
                                .find(|c| c.name.as_deref() == Some(r))
                        });
                    if let Some(v) = v {
                        let mut v = v.clone();
                        v.name = a.name.clone();
                        attrs.push(v);
                    }
                }
            }
        }
        b2.attribute = attrs;
        expand(&b2, funcs, depth + 1, counter, out)?;
    }
    Ok(())
}
