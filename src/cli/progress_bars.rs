//! The CLI's rendering of the library's progress events: one progress bar per running task on
//! stderr (hidden when stderr is not a terminal), result lines and notices above it, and each
//! distinct warning once per command (several stores and batch sizes build the same model).

use crate::progress::{Event, Observer, SharedObserver};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// Result lines go to stdout (`tesla eval`'s figures), not above the bar on stderr.
    results_on_stdout: bool,
    bar: Option<ProgressBar>,
    label: String,
    status: String,
    warned: HashSet<String>,
}

/// Progress bars and lines on stderr.
#[derive(Default)]
pub struct Bars(Mutex<State>);

/// A fresh renderer for one command.
pub fn bars() -> SharedObserver {
    Arc::new(Bars::default())
}

/// A renderer that prints result lines on stdout, for commands whose output is those lines.
pub fn bars_with_results_on_stdout() -> SharedObserver {
    Arc::new(Bars(Mutex::new(State {
        results_on_stdout: true,
        ..State::default()
    })))
}

impl State {
    fn message(&self) -> String {
        if self.status.is_empty() {
            self.label.clone()
        } else {
            format!("{}, {}", self.label, self.status)
        }
    }

    /// Prints a line above the bar (or plainly, with no bar or a hidden one).
    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(text),
            _ => eprintln!("{text}"),
        }
    }
}

impl Observer for Bars {
    fn event(&self, event: Event<'_>) {
        let Ok(mut st) = self.0.lock() else { return };
        match event {
            Event::Begin {
                label,
                total,
                done,
                unit,
            } => {
                let bar = ProgressBar::new(total);
                let template = format!(
                    "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}"
                );
                bar.set_style(
                    ProgressStyle::with_template(&template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_position(done);
                st.label = label.to_string();
                st.status.clear();
                bar.set_message(st.message());
                st.bar = Some(bar);
            }
            Event::Advance { n, status } => {
                if let Some(s) = status {
                    st.status = s.to_string();
                }
                if let Some(b) = &st.bar {
                    b.inc(n);
                    if status.is_some() {
                        b.set_message(st.message());
                    }
                }
            }
            Event::Relabel(label) => {
                st.label = label.to_string();
                if let Some(b) = &st.bar {
                    b.reset();
                    b.set_message(st.message());
                }
            }
            Event::Line(text) if st.results_on_stdout => match &st.bar {
                Some(b) => b.suspend(|| println!("{text}")),
                None => println!("{text}"),
            },
            Event::Line(text) | Event::Notice(text) => st.line(text),
            Event::Warning(text) => {
                if st.warned.insert(text.to_string()) {
                    st.line(&format!("warning: {text}"));
                }
            }
            Event::End => {
                if let Some(b) = st.bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}
