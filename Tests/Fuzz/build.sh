#!/usr/bin/env bash
# Builds the libFuzzer targets (and the seed-corpus generator) with swiftc alone, outside SwiftPM:
#   SwitchboardIO (ByteBuffer.swift only: the codec needs nothing else from it) -> SwitchboardProtocol
#   -> one executable per target under $FUZZ_BUILD (default .build-fuzz), linked with libFuzzer + ASan.
# Usage: Tests/Fuzz/build.sh [target...]   (targets: decoder roundtrip seeds; default: decoder roundtrip)
# Environment: FUZZ_BUILD (output dir), FUZZ_OPT (default -O; -Onone for debugging), SWIFTC.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fuzz="$root/Tests/Fuzz"
out="${FUZZ_BUILD:-$root/.build-fuzz}"
SWIFTC=${SWIFTC:-swiftc}
opt=${FUZZ_OPT:--O}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decoder roundtrip)

# Every step: Swift 6 mode, warnings are errors (like the package). Sanitized builds instrument the
# libraries too, so coverage feedback reaches the decoder's own branches.
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

link() { # $1 = variant dir, $2 = output, $3 = target source, rest = flags
    local dir=$1 exe=$2 src=$3; shift 3
    "$SWIFTC" "${common[@]}" "$@" -I "$dir" -module-name "Fuzz_$(basename "$exe" | tr -c "A-Za-z0-9_\n" _)" -use-ld=lld \
        "$fuzz/FuzzSupport.swift" "$src" "$dir/SwitchboardIO.o" "$dir/SwitchboardProtocol.o" -o "$exe"
}

need_fuzz=0; need_plain=0
for t in "${targets[@]}"; do
    case $t in
        decoder|roundtrip) need_fuzz=1 ;;
        seeds) need_plain=1 ;;
        *) echo "build.sh: unknown target '$t' (decoder, roundtrip, seeds)" >&2; exit 2 ;;
    esac
done

if [ $need_fuzz = 1 ]; then
    echo "build.sh: modules (fuzzer,address) -> $out/fuzz"
    build_modules "$out/fuzz" -sanitize=fuzzer,address
fi
if [ $need_plain = 1 ]; then
    echo "build.sh: modules (plain) -> $out/plain"
    build_modules "$out/plain"
fi
for t in "${targets[@]}"; do
    case $t in
        decoder)   link "$out/fuzz" "$out/fuzz-decoder" "$fuzz/DecoderFuzz.swift" -sanitize=fuzzer,address ;;
        roundtrip) link "$out/fuzz" "$out/fuzz-roundtrip" "$fuzz/RoundtripFuzz.swift" -sanitize=fuzzer,address ;;
        seeds)     link "$out/plain" "$out/fuzz-seeds" "$fuzz/SeedCorpus.swift" ;;
    esac
    echo "build.sh: built $t"
done
