//! A full disk in the middle of a distillation: the run directory lives on a small tmpfs (in a
//! private mount namespace, `unshare -rm`) filled so that the first checkpoint fits and the
//! second does not. The run must stop with one error line that names the file and the
//! checkpoint to continue from, and that checkpoint must resume, on a disk with room, to the
//! uninterrupted run's images.

mod common;

use common::{tensor_hash, tesla_ok};
use std::path::Path;
use std::process::Command;

const PAGE: u64 = 4096;

/// Bytes a file takes on tmpfs (whole pages).
fn pages(path: &Path) -> u64 {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    len.div_ceil(PAGE) * PAGE
}

fn tree_pages(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("reads the run directory") {
        let p = e.expect("an entry").path();
        total += if p.is_dir() {
            tree_pages(&p)
        } else {
            pages(&p)
        };
    }
    total
}

fn distill_args(experts: &Path, out: &Path, resume: bool) -> Vec<String> {
    let mut extra = vec!["--checkpoint-every", "5", "--backend", "tract"];
    if resume {
        extra.push("--resume");
    }
    common::tiny_distill_args(experts, out, 15, &extra)
}

#[test]
fn a_full_disk_stops_with_one_line_and_the_last_checkpoint_resumes() {
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        common::missing("`unshare -rm` with a tmpfs mount (util-linux, user namespaces)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let experts = d.path().join("experts");
    tesla_ok(&common::tiny_experts_args(&experts, 1, 2, 200));
    let whole = d.path().join("whole");
    tesla_ok(&distill_args(&experts, &whole, false));
    let want = tensor_hash(&whole.join("distilled.safetensors"), &["images"]);

    // Room for everything the run writes up to its first checkpoint (iteration 0) and a few
    // pages of slack for the metrics and the picture, which vary in size: fewer pages than the
    // second checkpoint's temporary copy needs while the first still exists.
    let checkpoint = pages(&whole.join("checkpoint/state.safetensors"));
    let room = tree_pages(&whole) + 4 * PAGE;
    assert!(
        4 * PAGE < checkpoint,
        "the slack must not hold a checkpoint"
    );
    let mnt = d.path().join("mnt");
    let saved = d.path().join("saved");
    std::fs::create_dir(&mnt).unwrap();
    let args = distill_args(&experts, &mnt.join("run"), false);
    let script = format!(
        "set -e; mount -t tmpfs -o size=8m tmpfs '{mnt}'; \
         avail=$(df -B1 --output=avail '{mnt}' | tail -n 1); \
         fallocate -l $((avail - {room})) '{mnt}/filler'; \
         set +e; '{bin}' {args} 2> '{err}'; echo $? > '{rc}'; cp -a '{mnt}/run' '{saved}'",
        mnt = mnt.display(),
        bin = env!("CARGO_BIN_EXE_tesla"),
        args = args
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" "),
        err = d.path().join("stderr").display(),
        rc = d.path().join("rc").display(),
        saved = saved.display(),
    );
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .expect("runs unshare");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rc: i32 = std::fs::read_to_string(d.path().join("rc"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let err = std::fs::read_to_string(d.path().join("stderr")).unwrap();
    assert_ne!(rc, 0, "a full disk must fail the run: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    let line = errors[0];
    eprintln!("{line}");
    assert!(line.contains("No space left on device"), "{line}");
    assert!(
        line.contains("the last good checkpoint (iteration"),
        "{line}"
    );
    assert!(
        line.contains("checkpoint/state.safetensors"),
        "names the file: {line}"
    );
    assert!(
        std::fs::read_dir(saved.join("checkpoint"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")),
        "a temporary file is left"
    );

    // The saved directory, now on a disk with room, resumes to the uninterrupted result.
    tesla_ok(&distill_args(&experts, &saved, true));
    assert_eq!(
        tensor_hash(&saved.join("distilled.safetensors"), &["images"]),
        want,
        "the resumed run differs from the uninterrupted one"
    );
}
