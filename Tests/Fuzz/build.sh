#!/usr/bin/env bash
# Builds the libFuzzer targets (and the seed-corpus generator) with swiftc alone, outside SwiftPM:
#   SwitchboardIO (ByteBuffer.swift only: the codec needs nothing else from it) -> SwitchboardProtocol
#   -> one executable per target under $FUZZ_BUILD (default .build-fuzz), linked with libFuzzer + ASan.
# The `core` target (the server core, SwitchboardSession) builds its own stack into $FUZZ_BUILD/core:
#   CSwitchboard (shim.c with clang, plus a generated module map) -> all of SwitchboardIO -> SwitchboardProtocol
#   -> SwitchboardStore (system modules CLMDB and COpenSSL from Sources/, linked with -llmdb -lssl -lcrypto)
#   -> SwitchboardRelay -> SwitchboardSession, linked with libFuzzer + ASan. SwitchboardSession imports swift-log's
#   `Logging`; a clean checkout has no SwiftPM checkouts, so this build compiles a small stand-in module named
#   Logging instead (Tests/Fuzz/Shims/Logging.swift: only the API SwitchboardSession uses; never used by SwiftPM).
#   Needs only the Swift toolchain (swiftc, clang), liblmdb-dev and libssl-dev.
# Usage: Tests/Fuzz/build.sh [target...]   (targets: decoder roundtrip core seeds; default: decoder roundtrip core)
# Environment: FUZZ_BUILD (output dir), FUZZ_OPT (default -O; -Onone for debugging), SWIFTC, CC (default clang).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fuzz="$root/Tests/Fuzz"
out="${FUZZ_BUILD:-$root/.build-fuzz}"
SWIFTC=${SWIFTC:-swiftc}
opt=${FUZZ_OPT:--O}
targets=("$@")
CC=${CC:-clang}
[ ${#targets[@]} -gt 0 ] || targets=(decoder roundtrip core)

# Every step: Swift 6 mode, warnings are errors (like the package). The libraries get the full libFuzzer
# instrumentation (edges and comparisons), so feedback comes from the decoder's own branches.
common=(-swift-version 6 -warnings-as-errors -parse-as-library -g "$opt")

build_modules() { # $1 = variant dir, rest = sanitizer flags
    local dir=$1; shift
    mkdir -p "$dir"
    "$SWIFTC" "${common[@]}" "$@" -module-name SwitchboardIO -emit-module -emit-module-path "$dir/SwitchboardIO.swiftmodule" \
        -emit-object -o "$dir/SwitchboardIO.o" -wmo "$root/Sources/SwitchboardIO/ByteBuffer.swift"
    "$SWIFTC" "${common[@]}" "$@" -I "$dir" -module-name SwitchboardProtocol \
        -emit-module -emit-module-path "$dir/SwitchboardProtocol.swiftmodule" \
        -emit-object -o "$dir/SwitchboardProtocol.o" -wmo "$root"/Sources/SwitchboardProtocol/*.swift
}

# The harness itself gets edge coverage but no comparison tracing: its byte loops (validation oracles,
# byte-for-byte compares) would otherwise take most of the time (~3x fewer execs/s for roundtrip).
link_fuzzer() { # $1 = variant dir, $2 = output, $3 = target source
    local dir=$1 exe=$2 src=$3 module
    module="Fuzz_$(basename "$exe" | tr -c 'A-Za-z0-9_\n' _)"
    "$SWIFTC" "${common[@]}" -sanitize=address -sanitize-coverage=edge,inline-8bit-counters,pc-table -I "$dir" \
        -module-name "$module" -wmo -c "$fuzz/FuzzSupport.swift" "$src" -o "$exe.o"
    "$SWIFTC" -sanitize=fuzzer,address -use-ld=lld "$exe.o" "$dir/SwitchboardIO.o" "$dir/SwitchboardProtocol.o" -o "$exe"
}

link_plain() { # $1 = variant dir, $2 = output, $3 = source
    local dir=$1 exe=$2 src=$3
    "$SWIFTC" "${common[@]}" -I "$dir" -module-name "Fuzz_$(basename "$exe" | tr -c 'A-Za-z0-9_\n' _)" -use-ld=lld \
        "$fuzz/FuzzSupport.swift" "$src" "$dir/SwitchboardIO.o" "$dir/SwitchboardProtocol.o" -o "$exe"
}

# The server core's stack (target `core`), every Swift library with the full libFuzzer instrumentation
# like the codec's; the Logging stand-in gets none (it only drops messages).
build_core() { # $1 = dir
    local dir=$1 src=$root/Sources
    mkdir -p "$dir/cmod"
    "$CC" -O2 -g -I "$src/CSwitchboard/include" -c "$src/CSwitchboard/shim.c" -o "$dir/CSwitchboard.o"
    printf 'module CSwitchboard {\n    header "%s"\n    export *\n}\n' "$src/CSwitchboard/include/CSwitchboard.h" \
        >"$dir/cmod/module.modulemap"
    local inc=(-I "$dir" -I "$dir/cmod" -I "$src/CLMDB" -I "$src/COpenSSL")
    local san=(-sanitize=fuzzer,address)
    "$SWIFTC" "${common[@]}" -module-name Logging -emit-module -emit-module-path "$dir/Logging.swiftmodule" \
        -emit-object -o "$dir/Logging.o" -wmo "$fuzz/Shims/Logging.swift"
    local m
    for m in SwitchboardIO SwitchboardProtocol SwitchboardStore SwitchboardRelay SwitchboardSession; do
        "$SWIFTC" "${common[@]}" "${san[@]}" "${inc[@]}" -module-name "$m" \
            -emit-module -emit-module-path "$dir/$m.swiftmodule" -emit-object -o "$dir/$m.o" -wmo "$src/$m"/*.swift
    done
}

link_core() { # $1 = dir, $2 = output, $3 = target source
    local dir=$1 exe=$2 src=$3
    "$SWIFTC" "${common[@]}" -sanitize=address -sanitize-coverage=edge,inline-8bit-counters,pc-table \
        -I "$dir" -I "$dir/cmod" -I "$root/Sources/CLMDB" -I "$root/Sources/COpenSSL" \
        -module-name Fuzz_core -wmo -c "$fuzz/FuzzSupport.swift" "$src" -o "$exe.o"
    "$SWIFTC" -sanitize=fuzzer,address -use-ld=lld "$exe.o" "$dir"/Switchboard{IO,Protocol,Store,Relay,Session}.o \
        "$dir/Logging.o" "$dir/CSwitchboard.o" -llmdb -lssl -lcrypto -o "$exe"
}

need_fuzz=0; need_plain=0; need_core=0
for t in "${targets[@]}"; do
    case $t in
        decoder|roundtrip) need_fuzz=1 ;;
        core) need_core=1 ;;
        seeds) need_plain=1 ;;
        *) echo "build.sh: unknown target '$t' (decoder, roundtrip, core, seeds)" >&2; exit 2 ;;
    esac
done

if [ $need_fuzz = 1 ]; then
    echo "build.sh: modules (fuzzer,address) -> $out/fuzz"
    build_modules "$out/fuzz" -sanitize=fuzzer,address
fi
if [ $need_core = 1 ]; then
    echo "build.sh: server core stack (fuzzer,address) -> $out/core"
    build_core "$out/core"
fi
if [ $need_plain = 1 ]; then
    echo "build.sh: modules (plain) -> $out/plain"
    build_modules "$out/plain"
fi
for t in "${targets[@]}"; do
    case $t in
        decoder)   link_fuzzer "$out/fuzz" "$out/fuzz-decoder" "$fuzz/DecoderFuzz.swift" ;;
        roundtrip) link_fuzzer "$out/fuzz" "$out/fuzz-roundtrip" "$fuzz/RoundtripFuzz.swift" ;;
        core)      link_core "$out/core" "$out/fuzz-core" "$fuzz/CoreFuzz.swift" ;;
        seeds)     link_plain "$out/plain" "$out/fuzz-seeds" "$fuzz/SeedCorpus.swift" ;;
    esac
    echo "build.sh: built $t"
done
