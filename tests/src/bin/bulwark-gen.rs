//! Generates benchmark inputs: `bulwark-gen dump|random SIZE_MIB OUT [SEED]` or
//! `bulwark-gen mutate IN OUT PERCENT RUNS` (clustered changes, same length).

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bulwark-gen dump|random SIZE_MIB OUT [SEED] | bulwark-gen mutate IN OUT PERCENT RUNS";
    match args.get(1).map(String::as_str) {
        Some(kind @ ("dump" | "random")) if args.len() >= 4 => {
            let mib: usize = args[2].parse().expect(usage);
            let seed: u64 = args.get(4).map_or(1, |s| s.parse().expect(usage));
            let mut out =
                std::io::BufWriter::new(std::fs::File::create(&args[3]).expect("create output"));
            // 64 MiB pieces keep memory low for large sizes.
            for piece in 0..mib.div_ceil(64) {
                let len = (mib - piece * 64).min(64) << 20;
                let data = if kind == "dump" {
                    bulwark_tests::dump_text(len, seed * 1000 + piece as u64)
                } else {
                    bulwark_tests::random_bytes(len, seed * 1000 + piece as u64)
                };
                out.write_all(&data).expect("write output");
            }
        }
        Some("mutate") if args.len() == 6 => {
            let mut data = std::fs::read(&args[2]).expect("read input");
            let percent: f64 = args[4].parse().expect(usage);
            let runs: usize = args[5].parse().expect(usage);
            bulwark_tests::mutate_clustered(&mut data, percent / 100.0, runs, 42);
            std::fs::write(&args[3], data).expect("write output");
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
