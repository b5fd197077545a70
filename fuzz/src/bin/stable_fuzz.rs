//! Stable-toolchain fuzzing for machines without nightly or cargo-fuzz: each target runs over
//! its seed corpus, then over random mutations of it (byte flips, inserts, deletes, splices,
//! interesting values, tokens from the corpus) for its share of the time. No coverage
//! feedback, so it finds far less than libFuzzer; it keeps CI honest on every commit.
//!
//! Build: `cargo build --no-default-features --features stable --bin stable-fuzz`.
//! Usage: `stable-fuzz [--seconds N] [--corpus DIR] [--artifacts DIR] [--seed S] [TARGET...]`.
//! A panic saves the input as `<artifacts>/<target>/crash-<hash>` and exits 1.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pelagos_fuzz::TARGETS;

/// Inputs are kept below libFuzzer's default -max_len scale, so a round stays cheap.
const MAX_LEN: usize = 16 << 10;

/// xorshift64*: a deterministic stream from `--seed`, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"-2",
    b"1",
    b"2",
    b"255",
    b"65535",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551615",
    b"1e308",
    b"null",
    b"true",
    b"\"\"",
    b"[]",
    b"{}",
    b"\\u0000",
    b"\\\\",
    b"\\040",
    b"..",
    b"/",
    b":",
    b",",
    b"\n",
    b" - ",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], tokens: &[Vec<u8>]) -> Vec<u8> {
    let mut v = if seeds.is_empty() {
        Vec::new()
    } else {
        seeds[rng.below(seeds.len())].clone()
    };
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let t = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, t.iter().copied());
            }
            4 if !tokens.is_empty() => {
                let t = &tokens[rng.below(tokens.len())];
                v.splice(at..at, t.iter().copied());
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(64)).min(other.len());
                v.splice(at..at, other[from..to].iter().copied());
            }
            6 if !v.is_empty() => {
                // Replace a run with a token: turns a valid value into another valid one.
                let end = (at + 1 + rng.below(8)).min(v.len());
                let t = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at.min(end)..end, t.iter().copied());
            }
            _ => {
                let b = rng.next() as u8;
                v.insert(at, b);
            }
        }
    }
    v.truncate(MAX_LEN);
    v
}

/// Quoted strings and words of the seeds, spliced in by mutations.
fn tokens_of(seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in seeds {
        for word in s.split(|b| b" \n\t,:[]{}".contains(b)) {
            if !word.is_empty() && word.len() <= 40 && !out.iter().any(|t| t == word) {
                out.push(word.to_vec());
            }
        }
    }
    out
}

fn read_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn save_crash(artifacts: &Path, target: &str, input: &[u8]) -> PathBuf {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let dir = artifacts.join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("crash-{:016x}", h.finish()));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("stable-fuzz: cannot save {}: {e}", path.display());
    }
    path
}

struct Args {
    seconds: u64,
    corpus: PathBuf,
    artifacts: PathBuf,
    seed: u64,
    targets: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        seconds: 10,
        corpus: here.join("corpus"),
        artifacts: here.join("artifacts"),
        seed: 0x5eed,
        targets: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--corpus" => a.corpus = value("--corpus")?.into(),
            "--artifacts" => a.artifacts = value("--artifacts")?.into(),
            "--seed" => {
                a.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            t if TARGETS.iter().any(|(n, _)| *n == t) => a.targets.push(t.to_string()),
            other => return Err(format!("unknown argument or target {other:?}")),
        }
    }
    if a.targets.is_empty() {
        a.targets = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stable-fuzz: {e}");
            std::process::exit(2);
        }
    };
    // A panic is reported once, with its input, below.
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(args.seed | 1);
    let mut failed = false;
    for name in &args.targets {
        let (_, target) = TARGETS.iter().find(|(n, _)| n == name).expect("known");
        let seeds = read_corpus(&args.corpus.join(name));
        let tokens = tokens_of(&seeds);
        let budget = Duration::from_secs(args.seconds);
        let start = Instant::now();
        let mut execs = 0u64;
        let mut run = |input: &[u8]| -> bool {
            execs += 1;
            catch_unwind(AssertUnwindSafe(|| target(input))).is_ok()
        };
        let mut crash = seeds.iter().find(|s| !run(s)).cloned();
        while crash.is_none() && start.elapsed() < budget {
            let input = mutate(&mut rng, &seeds, &tokens);
            if !run(&input) {
                crash = Some(input);
            }
        }
        match crash {
            Some(input) => {
                let saved = save_crash(&args.artifacts, name, &input);
                let why = catch_unwind(AssertUnwindSafe(|| target(&input)))
                    .err()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_default();
                eprintln!(
                    "stable-fuzz: {name}: PANIC after {execs} execs: {why}\n  input saved to {}",
                    saved.display()
                );
                failed = true;
            }
            None => eprintln!(
                "stable-fuzz: {name}: {execs} execs in {:.1}s over {} seeds, no panic",
                start.elapsed().as_secs_f64(),
                seeds.len()
            ),
        }
    }
    pelagos_fuzz::cleanup();
    std::process::exit(i32::from(failed));
}
