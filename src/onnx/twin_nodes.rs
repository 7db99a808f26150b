//! Twin nodes of a written ONNX graph merged: nodes of one op type with the same attributes on the
//! same inputs, and initializers of the same type, shape and bytes.
//!
//! The IR merges its own twins before export (`compiler::passes::merge_duplicates`), but a
//! primitive written as several ONNX nodes can repeat another's: two weight-gradient forms over
//! one activation each transpose, pad and slice it the same way (ConvNet-D3's pass 2: 65 such
//! nodes, 27 of them slices, 8.8 M values per call of 8 images). ONNX Runtime merges them when it
//! loads a graph; tract does not.

use super::pb;
use prost::Message;
use std::collections::{HashMap, HashSet};

/// Merges the twin nodes and initializers of `graph` in place, keeping the first of each; a node
/// that writes a graph output is kept, so every output keeps its own producer.
pub(crate) fn merge(graph: &mut pb::GraphProto) {
    let mut rename: HashMap<String, String> = HashMap::new();
    // Initializers by content: the tensor without its name, encoded.
    let mut first_by_content: HashMap<Vec<u8>, String> = HashMap::new();
    graph.initializer.retain(|t| {
        let name = t.name.clone().unwrap_or_default();
        let content = pb::TensorProto {
            name: None,
            ..t.clone()
        }
        .encode_to_vec();
        match first_by_content.get(&content) {
            Some(first) => {
                rename.insert(name, first.clone());
                false
            }
            None => {
                first_by_content.insert(content, name);
                true
            }
        }
    });
    let declared: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    // The nodes kept so far, by op type, domain and inputs.
    let mut kept: HashMap<(String, String, Vec<String>), Vec<usize>> = HashMap::new();
    let mut nodes: Vec<pb::NodeProto> = Vec::with_capacity(graph.node.len());
    for mut node in std::mem::take(&mut graph.node) {
        for input in node.input.iter_mut() {
            if let Some(to) = rename.get(input.as_str()) {
                *input = to.clone();
            }
        }
        let key = (
            node.op_type.clone().unwrap_or_default(),
            node.domain.clone().unwrap_or_default(),
            node.input.clone(),
        );
        let twin = kept.get(&key).and_then(|candidates| {
            candidates.iter().copied().find(|&i| {
                nodes.get(i).is_some_and(|k| {
                    k.attribute == node.attribute && k.output.len() == node.output.len()
                })
            })
        });
        let writes_output = node.output.iter().any(|o| declared.contains(o));
        match twin {
            Some(i) if !writes_output => {
                for (from, to) in node.output.iter().zip(&nodes[i].output) {
                    rename.insert(from.clone(), to.clone());
                }
            }
            _ => {
                kept.entry(key).or_default().push(nodes.len());
                nodes.push(node);
            }
        }
    }
    graph.node = nodes;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, input: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: Some(op.into()),
            input: input.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn scalar(name: &str, v: f32) -> pb::TensorProto {
        pb::TensorProto {
            name: Some(name.into()),
            data_type: Some(1),
            raw_data: Some(v.to_le_bytes().to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn twins_and_equal_initializers_merge_and_outputs_stay() {
        let mut g = pb::GraphProto {
            initializer: vec![
                scalar("zero_a", 0.0),
                scalar("zero_b", 0.0),
                scalar("one", 1.0),
            ],
            node: vec![
                node("Greater", &["x", "zero_a"], "m1"),
                node("Greater", &["x", "zero_b"], "m2"),
                node("Greater", &["x", "one"], "m3"),
                node("Mul", &["m1", "y"], "p1"),
                node("Mul", &["m2", "y"], "p2"),
                node("Add", &["p1", "p2"], "out"),
                node("Add", &["p1", "p2"], "out2"),
            ],
            output: vec![
                pb::ValueInfoProto {
                    name: Some("out".into()),
                    ..Default::default()
                },
                pb::ValueInfoProto {
                    name: Some("out2".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        merge(&mut g);
        let names: Vec<&str> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        assert_eq!(names, ["zero_a", "one"]);
        let written: Vec<(&str, Vec<String>)> = g
            .node
            .iter()
            .map(|n| (n.output[0].as_str(), n.input.clone()))
            .collect();
        assert_eq!(
            written,
            [
                ("m1", vec!["x".to_string(), "zero_a".to_string()]),
                ("m3", vec!["x".to_string(), "one".to_string()]),
                ("p1", vec!["m1".to_string(), "y".to_string()]),
                ("out", vec!["p1".to_string(), "p1".to_string()]),
                ("out2", vec!["p1".to_string(), "p1".to_string()]),
            ]
        );
    }
}
