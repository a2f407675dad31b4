#!/usr/bin/env bash
# The one entry point: ./build.sh build | serve [PORT] | test | fuzz [SECONDS]
# Installs what it needs and is missing: the wasm32 target, wasm-bindgen-cli (pinned to the
# wasm-bindgen crate's version), Mesa's lavapipe Vulkan driver, Chromium and the npm
# packages of the browser tests.
set -euo pipefail
cd "$(dirname "$0")"

WASM_BINDGEN_VERSION=0.2.130 # must equal the `wasm-bindgen = "=..."` pin in Cargo.toml
CRATE=diffusion_playground

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_rust_parts() {
    if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        log "rustup target add wasm32-unknown-unknown"
        rustup target add wasm32-unknown-unknown
    fi
    for c in rustfmt clippy; do
        rustup component list --installed | grep -q "^$c" || rustup component add "$c"
    done
}

ensure_wasm_bindgen() {
    if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $WASM_BINDGEN_VERSION"; then
        log "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION"
        # Not --locked: its lockfile pins a dependency that no longer resolves.
        cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
    fi
}

ensure_vulkan() {
    apt_install mesa-vulkan-drivers
    # The loader and lavapipe want a runtime dir; CI shells have none.
    if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
        export XDG_RUNTIME_DIR
        XDG_RUNTIME_DIR=$(mktemp -d)
    fi
}

ensure_browser() {
    apt_install chromium
    command -v node >/dev/null || apt_install nodejs npm
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$major" -lt 20 ]; then
        echo "build.sh: the browser tests need Node.js 20 or newer (playwright-core); found $(node --version)" >&2
        exit 1
    fi
    # npm ci when playwright-core is missing or package-lock.json changed since the last one.
    local stamp=node_modules/.package-lock.sha256
    if [ ! -d node_modules/playwright-core ] || ! sha256sum --check --status "$stamp" 2>/dev/null; then
        log "npm ci"
        npm ci --no-audit --no-fund
        sha256sum package-lock.json >"$stamp"
    fi
}

build() {
    ensure_rust_parts
    ensure_wasm_bindgen
    log "cargo build (wasm32, release)"
    cargo build --lib --release --target wasm32-unknown-unknown
    log "wasm-bindgen -> www/pkg/"
    wasm-bindgen --target web --no-typescript --out-dir www/pkg \
        "target/wasm32-unknown-unknown/release/$CRATE.wasm"
}

serve() {
    build
    cargo build --release --bin serve
    exec target/release/serve www "${1:-8080}"
}

test_all() {
    ensure_rust_parts
    ensure_vulkan
    log "cargo fmt --check"
    cargo fmt --check
    log "cargo clippy (native and wasm32)"
    cargo clippy --all-targets -- -D warnings
    cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings
    log "cargo test (kernels on $(vulkaninfo --summary 2>/dev/null | grep -m1 deviceName | sed 's/.*= //' || echo 'the default Vulkan adapter'))"
    cargo test --profile test-release
    build
    ensure_browser
    # The browser tests start `serve` and compare the page with the native CLI (`sample`).
    cargo build --release --bin serve --bin sample
    log "browser tests (headless Chromium, WebGPU on SwiftShader)"
    # Explicit files: harness.mjs is a helper, and node >= 21 reads arguments as globs.
    node --test tests/e2e/*.test.mjs
}

# Runs each cargo-fuzz target (fuzz/: model-folder loading, .npy parsing) for SECONDS
# (default 60) on one core at the lowest priority, from the committed seeds
# (fuzz/seeds/<target>/) plus the shipped configs; the corpus grows in fuzz/corpus/ and
# crashes land in fuzz/artifacts/. Not part of `test`: it needs nightly and takes as long
# as it is given.
fuzz() {
    local seconds=${1:-60}
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        log "cargo install cargo-fuzz"
        cargo +nightly install cargo-fuzz --locked
    fi
    local sep=$'\n#####\n'
    mkdir -p fuzz/corpus/load_model fuzz/corpus/parse_npy
    cp fuzz/seeds/load_model/* fuzz/corpus/load_model/
    cp fuzz/seeds/parse_npy/* fuzz/corpus/parse_npy/
    # The shipped configs with their schedulers and the first 4 KiB of their weights (a
    # header and a cut-off file): every config field's parser gets real input.
    for dir in www/models/* tests/fixtures/unet_small; do
        local sched="$dir/scheduler_config.json"
        [ -f "$sched" ] || sched=www/models/fashion/scheduler_config.json
        {
            cat "$dir/config.json"
            printf '%s' "$sep"
            cat "$sched"
            printf '%s' "$sep"
            head -c 4096 "$dir/diffusion_pytorch_model.safetensors"
        } >"fuzz/corpus/load_model/shipped_$(basename "$dir")"
    done
    for target in load_model parse_npy; do
        log "fuzz $target for ${seconds}s (log: fuzz/$target.log)"
        local dict=()
        [ -f "fuzz/$target.dict" ] && dict=("-dict=$target.dict")
        # -rss_limit_mb: a load past 2 GiB is a bug (the caps allow far less for these
        # inputs); -timeout: one input past 10 s is a hang; -max_len: room for the seeds.
        # --codegen-units 4: the instrumented build of the whole tree takes minutes, not most
        # of an hour, on two cores (see fuzz/Cargo.toml for the opt-levels).
        # detect_stack_use_after_return=0: ASan's fake stacks were ~16% of a load_model
        # run's profile, for a bug class safe Rust cannot have.
        (cd fuzz && ASAN_OPTIONS=detect_stack_use_after_return=0 nice -n 19 \
            cargo +nightly fuzz run --codegen-units 4 "$target" "corpus/$target" -- \
            "${dict[@]}" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -max_total_time="$seconds" \
            -print_final_stats=1 2>&1 | tee "$target.log" | grep -E '^#[0-9]+.*(DONE|pulse)|ERROR|SUMMARY|stat::' || true)
        grep -q 'Done [0-9]* runs' "fuzz/$target.log" || { log "fuzz $target did not finish cleanly"; return 1; }
    done
}

case "${1:-}" in
build) build ;;
serve) shift; serve "$@" ;;
test) test_all ;;
fuzz) shift; fuzz "$@" ;;
*)
    echo "usage: ./build.sh build | serve [PORT] | test | fuzz [SECONDS]" >&2
    exit 2
    ;;
esac
