//! Evaluation protocol: train fresh networks on a (distilled) set, test on real data.
