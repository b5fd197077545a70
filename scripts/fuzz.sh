#!/usr/bin/env bash
# make fuzz: run every fuzz target of fuzz/ for SECONDS each (default 15), with the best engine
# this machine has:
#   1. cargo-fuzz (libFuzzer, coverage-guided) when `cargo +nightly` and cargo-fuzz exist;
#   2. cargo-fuzz on stable with RUSTC_BOOTSTRAP=1 when only cargo-fuzz exists;
#   3. otherwise the stable runner (fuzz/src/bin/stable_fuzz.rs: seeds plus random mutations).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# FUZZ_ENGINE=libfuzzer|stable forces an engine; FUZZ_INSTALL=1 installs cargo-fuzz first
# (about a minute and a half of compiling, too slow for the CI budget). New corpus entries go to
# fuzz/work/ (not committed; fuzz/corpus/ holds the small committed seeds); a crash is saved in
# fuzz/artifacts/<target>/ and fails the run (exit 1). Rerun one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"

die() { echo "fuzz: $*" >&2; exit 2; }

seconds="${1:-15}"
[[ "$seconds" =~ ^[0-9]+$ ]] || die "SECONDS must be a number, got ${seconds:?}"
shift || true
all=(spec_plan start_input helper_protocol host_text)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# The repository's .cargo/config.toml makes release builds fat-LTO with one codegen unit (for
# the shim's size); the fuzz builds want a quick build instead.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export CARGO_PROFILE_RELEASE_OPT_LEVEL=2

# The targets write cgroup-file fixtures under $TMPDIR: on tmpfs (ten times the execs of a
# disk), in one place that is removed at the end.
shm=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && shm=/dev/shm
work_tmp="$(mktemp -d "$shm/pelagos-fuzz.XXXXXX")"
trap 'rm -rf "$work_tmp"' EXIT
export TMPDIR="$work_tmp"

if [ "${FUZZ_INSTALL:-}" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

engine="${FUZZ_ENGINE:-}"
toolchain=()
if [ -z "$engine" ] || [ "$engine" = libfuzzer ]; then
    if cargo fuzz --version >/dev/null 2>&1; then
        if cargo +nightly --version >/dev/null 2>&1; then
            engine=libfuzzer
            toolchain=(+nightly)
        else
            # -s none passes no -Z sanitizer flag; the rest is stable rustc with unstable
            # cargo options, which RUSTC_BOOTSTRAP unlocks.
            engine=libfuzzer
            export RUSTC_BOOTSTRAP=1
        fi
    elif [ "$engine" = libfuzzer ]; then
        die "FUZZ_ENGINE=libfuzzer but cargo-fuzz is not installed (FUZZ_INSTALL=1 installs it)"
    else
        engine=stable
    fi
fi

if [ "$engine" = libfuzzer ] && [ -n "${RUSTC_BOOTSTRAP:-}" ] \
    && ! cargo fuzz build -s none "${targets[@]:0:1}"; then
    echo "fuzz: cargo-fuzz does not build on this stable toolchain; the stable runner instead" >&2
    unset RUSTC_BOOTSTRAP
    engine=stable
fi

status=0
case "$engine" in
libfuzzer)
    # No sanitizer: the code under test is safe Rust plus libseccomp; ASan would only slow it.
    # Run one target at a time: the machine is shared.
    for t in "${targets[@]}"; do
        mkdir -p "work/$t"
        echo "fuzz: $t for ${seconds}s (cargo ${toolchain[*]} fuzz, libFuzzer)" >&2
        if ! cargo "${toolchain[@]}" fuzz run -s none "$t" "work/$t" "corpus/$t" -- \
            -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
            status=1
        fi
    done
    ;;
stable)
    echo "fuzz: the stable runner (seeds plus random mutations, no coverage feedback)" >&2
    # A debug build (overflow checks on) in the main target directory: after `make test` only
    # pelagos-fuzz itself is compiled, which keeps CI's short run short.
    target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    CARGO_TARGET_DIR="$target_dir" cargo build --quiet --no-default-features --features stable --bin stable-fuzz
    "$target_dir/debug/stable-fuzz" --seconds "$seconds" "${targets[@]}" || status=1
    ;;
*) die "unknown FUZZ_ENGINE $engine (libfuzzer or stable)" ;;
esac
exit "$status"
