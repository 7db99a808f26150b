//! Calls of one graph run at once, each on its own session and thread.
//!
//! A split batch (see [`super::row_chunks`]) is a series of independent calls of one graph. One
//! call on every core leaves the cores idle wherever the engine runs an op on one thread (tract's
//! elementwise ops; ONNX Runtime's instance norm, padding and slicing, and the 8×8 convolutions of
//! a call of ten images). On two cores, ConvNet-D3's step over a batch of 256 as calls of 8 ran at
//! 458 img/s with two single-threaded calls side by side against 377 one after the other on both
//! cores.

use anyhow::{anyhow, Result};

/// The most sessions of one graph a CPU backend runs side by side by default: each holds its own
/// intermediates, and beyond a few the calls of one batch run out before the lanes do.
const MAX_LANES: usize = 4;

/// `TESLA_LANES` when set: how many calls of a split batch run side by side (1: one after the
/// other). Anything but a positive whole number is an error, which [`super::backend`] reports
/// before a run starts.
pub(crate) fn requested_lanes() -> Result<Option<usize>> {
    match std::env::var("TESLA_LANES") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(anyhow!(
                "TESLA_LANES must be a positive number of calls to run side by side, not {v:?}"
            )),
        },
    }
}

/// How many sessions of one graph a CPU backend with `threads` threads runs side by side:
/// `TESLA_LANES` if set (1 turns side-by-side calls off), else one per thread up to
/// [`MAX_LANES`].
pub(crate) fn cpu_lanes(threads: usize) -> usize {
    match requested_lanes() {
        Ok(Some(n)) => n,
        // A malformed value never gets this far: making the backend checks it first.
        _ => threads.clamp(1, MAX_LANES),
    }
}

/// The threads each of `lanes` sessions gets out of `threads`.
pub(crate) fn threads_per_lane(threads: usize, lanes: usize) -> usize {
    (threads / lanes.max(1)).max(1)
}

/// Runs `f` on every element of `calls`, call `i` on session `i % sessions.len()`, the sessions
/// on threads of their own at once; returns the results in the order of `calls`, or the first
/// call's error in that order.
pub(crate) fn run<S, I, O>(
    sessions: &mut [S],
    calls: &[I],
    f: impl Fn(&mut S, &I) -> Result<O> + Sync,
) -> Result<Vec<O>>
where
    S: Send,
    I: Sync,
    O: Send,
{
    if sessions.is_empty() {
        return Err(anyhow!("no session to run the calls on"));
    }
    // A round with fewer calls than sessions starts no thread for the idle ones.
    let lanes = sessions.len().min(calls.len());
    let f = &f;
    let per_lane: Vec<Vec<(usize, Result<O>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter_mut()
            .take(lanes)
            .enumerate()
            .map(|(lane, session)| {
                scope.spawn(move || {
                    calls
                        .iter()
                        .enumerate()
                        .skip(lane)
                        .step_by(lanes)
                        .map(|(i, inputs)| (i, f(session, inputs)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![(0, Err(anyhow!("a graph call panicked")))])
            })
            .collect()
    });
    let mut slots: Vec<Option<Result<O>>> = (0..calls.len()).map(|_| None).collect();
    for (i, out) in per_lane.into_iter().flatten() {
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(out);
        }
    }
    slots
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(anyhow!("a graph call returned nothing"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_the_order_of_the_calls() {
        let mut sessions = vec![Vec::new(), Vec::new(), Vec::new()];
        let calls: Vec<usize> = (0..10).collect();
        let out = run(&mut sessions, &calls, |seen: &mut Vec<usize>, &c| {
            seen.push(c);
            Ok(c * c)
        })
        .unwrap();
        assert_eq!(out, calls.iter().map(|c| c * c).collect::<Vec<_>>());
        // Call i ran on session i mod 3, in order.
        assert_eq!(sessions[0], vec![0, 3, 6, 9]);
        assert_eq!(sessions[1], vec![1, 4, 7]);
        assert_eq!(sessions[2], vec![2, 5, 8]);
    }

    #[test]
    fn the_first_error_in_call_order_is_returned() {
        let mut sessions = vec![(), ()];
        let calls: Vec<usize> = (0..6).collect();
        let e = run(&mut sessions, &calls, |_, &c| {
            if c == 3 || c == 4 {
                Err(anyhow!("call {c} failed"))
            } else {
                Ok(c)
            }
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "call 3 failed");
    }

    #[test]
    fn lanes_split_the_threads() {
        assert_eq!(threads_per_lane(2, 2), 1);
        assert_eq!(threads_per_lane(16, 4), 4);
        assert_eq!(threads_per_lane(3, 4), 1);
    }
}
