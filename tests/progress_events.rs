//! The library reports progress through an observer and prints nothing itself: a recording
//! observer sees each expert epoch as a task of the training set's images, one result line per
//! epoch, and the distillation as one task of its iterations, resumed runs counted from the
//! checkpoint.

mod common;

use std::sync::{Arc, Mutex};
use tesla_distill::distill::run::{run_with, Labels};
use tesla_distill::experts::run_experts_with;
use tesla_distill::progress::{Event, Observer, SharedObserver};

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Observer for Recorder {
    fn event(&self, e: Event<'_>) {
        let line = match e {
            Event::Begin {
                label,
                total,
                done,
                unit,
            } => format!("begin {label} {done}/{total} {unit}"),
            Event::Advance { n, status } => format!("advance {n} {}", status.unwrap_or("")),
            Event::Relabel(l) => format!("relabel {l}"),
            Event::Line(l) => format!("line {l}"),
            Event::Notice(l) => format!("notice {l}"),
            Event::Warning(l) => format!("warning {l}"),
            Event::End => "end".to_string(),
        };
        self.0.lock().unwrap().push(line);
    }
}

fn recorded(r: &Arc<Recorder>) -> Vec<String> {
    std::mem::take(&mut *r.0.lock().unwrap())
}

#[test]
fn experts_and_distillation_report_through_the_observer() {
    let d = tempfile::tempdir().unwrap();
    let ex = d.path().join("experts");
    let rec = Arc::new(Recorder::default());
    let obs: SharedObserver = rec.clone();
    let cfg = common::tiny_experts_config(&ex, 1, 2, 0);
    run_experts_with(&cfg, &obs).unwrap();
    let ev = recorded(&rec);
    assert_eq!(ev.first().unwrap(), "begin expert 0 epoch 1/2 0/200 images");
    let images: u64 = ev
        .iter()
        .filter_map(|e| e.strip_prefix("advance "))
        .map(|e| e.trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(images, 2 * 200, "two epochs of 200 images: {ev:?}");
    let lines: Vec<&String> = ev.iter().filter(|e| e.starts_with("line ")).collect();
    assert_eq!(lines.len(), 2, "{ev:?}");
    assert!(
        lines[1].starts_with("line expert 0 epoch 2: train loss"),
        "{ev:?}"
    );
    assert!(ev.contains(&"relabel expert 0 epoch 2/2".to_string()));
    assert_eq!(ev.last().unwrap(), "end");
    // Trained experts are skipped, and the observer hears why.
    run_experts_with(&cfg, &obs).unwrap();
    let ev = recorded(&rec);
    assert!(
        ev.len() == 1 && ev[0].starts_with("notice expert 0: already trained"),
        "{ev:?}"
    );

    let out = d.path().join("run");
    run_with(
        common::tiny_distill_config(&ex, &out, 2, Labels::Hard),
        false,
        &obs,
    )
    .unwrap();
    let ev = recorded(&rec);
    assert_eq!(ev.first().unwrap(), "begin distill 0/2 it", "{ev:?}");
    let steps: Vec<&String> = ev
        .iter()
        .filter(|e| e.starts_with("advance 1 loss "))
        .collect();
    assert_eq!(steps.len(), 2, "{ev:?}");
    assert_eq!(ev.last().unwrap(), "end");
    // Resumed past its checkpoint: the task starts at the iterations done.
    run_with(
        common::tiny_distill_config(&ex, &out, 3, Labels::Hard),
        true,
        &obs,
    )
    .unwrap();
    let ev = recorded(&rec);
    assert_eq!(ev.first().unwrap(), "begin distill 2/3 it", "{ev:?}");
}
