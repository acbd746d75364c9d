//! Writes the hand-built seeds to `corpus/<target>/seed-<name>` (run from anywhere:
//! `cargo run --example gen_corpus`), replacing earlier `seed-*` files and leaving the rest.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets = [
        ("nbd_options", tandem_fuzz::seeds::options()),
        ("nbd_requests", tandem_fuzz::seeds::requests()),
        ("peer_wire", tandem_fuzz::peer::wire_seeds()),
        ("peer_handshake", tandem_fuzz::peer::handshake_seeds()),
        ("metadata_loader", tandem_fuzz::metadata::seeds()),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(p)?;
            }
        }
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    Ok(())
}
