//! Replays the committed fuzz corpus (`agent/fuzz/corpus/<target>/`) and any
//! committed crash inputs (`agent/fuzz/artifacts/<target>/`) through the very
//! functions the cargo-fuzz targets call (`tokenscope::fuzzing`), on stable
//! Rust and without root, so a regression on any input the fuzzer found
//! interesting fails CI.

use std::path::{Path, PathBuf};

use tokenscope::fuzzing::TARGETS;

/// The files of a corpus directory, in name order; none if it is absent.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn fuzz_dir() -> PathBuf {
    // The corpus is a directory listed at run time, not a fixture compiled in.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn every_fuzz_binary_has_a_shared_target_and_a_corpus() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz manifest");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            line.split('"').nth(1)
        })
        .collect();
    bins.sort_unstable();
    let mut targets: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    targets.sort_unstable();
    assert_eq!(
        bins, targets,
        "agent/fuzz/Cargo.toml and tokenscope::fuzzing::TARGETS"
    );
    for name in targets {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(
            corpus.len() >= 8,
            "{name}: only {} corpus inputs",
            corpus.len()
        );
    }
}

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let mut failures = Vec::new();
    let mut replayed = 0usize;
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        let artifacts = inputs(&fuzz_dir().join("artifacts").join(name));
        for (path, bytes) in corpus.iter().chain(&artifacts) {
            replayed += 1;
            if std::panic::catch_unwind(|| target(bytes)).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "fuzz inputs that fail: {failures:#?}");
    assert!(replayed > 0);
}
