//! Writes N synthetic ~1 KB audit records as NDJSON to stdout, for measuring dry-run end to end:
//! `cargo run --release --example gen_audit -- 300000 > big.ndjson`

use std::io::Write;

#[path = "../benches/common/records.rs"]
mod records;

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..n {
        out.write_all(records::record(i).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
