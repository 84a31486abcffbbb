//! Writes the seed corpus: `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus`.
//! The files are committed; `cargo test` in `fuzz/` checks they match this generator.
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in fuzz_harness::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), &bytes)?;
        println!("{target}/{name}: {} bytes", bytes.len());
    }
    Ok(())
}
