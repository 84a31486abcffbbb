//! Replays the seed corpus and every saved crash input through the fuzz targets'
//! code (without libFuzzer), and checks the committed seeds match the generator.
use std::path::Path;

fn replay(dir: &str, target: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        match target {
            "wire_decode" => fuzz_harness::decoder(&data),
            _ => fuzz_harness::assembler(&data),
        }
        n += 1;
    }
    n
}

#[test]
fn seed_corpus_matches_the_generator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in fuzz_harness::seeds() {
        let on_disk = std::fs::read(root.join(target).join(&name)).unwrap_or_default();
        assert!(on_disk == bytes, "corpus/{target}/{name} is stale: run `cargo run --example gen_corpus`");
    }
}

#[test]
fn corpus_and_regressions_replay_cleanly() {
    for target in ["wire_decode", "assembler"] {
        assert!(replay("corpus", target) > 0, "no seeds for {target}");
        replay("regressions", target);
    }
}

#[test]
fn assembler_seeds_reach_what_they_are_meant_to() {
    let stats: std::collections::BTreeMap<String, fuzz_harness::Stats> = fuzz_harness::seeds()
        .into_iter()
        .filter(|(target, _, _)| *target == "assembler")
        .map(|(_, name, bytes)| (name, fuzz_harness::assembler_stats(&bytes)))
        .collect();
    for (name, s) in &stats {
        eprintln!("{name}: {s:?}");
    }
    let s = &stats["in_order"];
    assert!(s.complete == 1 && s.parts > 1, "{s:?}");
    let s = &stats["two_files_rereads"];
    assert!(s.complete == 2 && s.duplicate > 0, "{s:?}");
    let s = &stats["tight_memory"];
    assert!(s.deferred > 0 && s.complete == 1, "{s:?}");
    let s = &stats["corrupt_truncate"];
    assert!(s.failed == 1 && s.rejected >= 2 && s.complete == 1, "{s:?}");
    let s = &stats["generations"];
    assert!(s.complete == 1 && s.superseded == 1 && s.stale > 0, "{s:?}");
    let s = &stats["same_file_rechunked"];
    assert!(s.complete == 2 && s.rejected > 0, "{s:?}");
    let s = &stats["forged"];
    assert!(s.rejected >= 2 && s.complete == 1, "{s:?}");
    let s = &stats["empty_file"];
    assert!(s.complete >= 1, "{s:?}");
    let s = &stats["big_parts"];
    assert!(s.deferred > 0 && s.complete == 1 && s.parts > 1, "{s:?}");
}
