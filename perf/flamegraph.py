#!/usr/bin/env python3
"""Folds `perf script` output into stacks and renders a self-contained SVG flame graph.

    perf script -i perf.data | perf/flamegraph.py --title "..." --folded out.folded --top 10 > out.svg

Stacks are folded root first (thread name, then the outermost frame); each frame's width is proportional to
the samples that pass through it (inclusive time); colour: orange = kernel, green = Swift runtime/stdlib,
red/pink = everything else. Swift symbols are demangled with `swift demangle --simplified` when it exists.
Hover a frame in a browser for its full name, samples and percentage. --top N prints the N widest frames
(inclusive, merged over the graph) and the N with the most self samples to stderr.
"""
import argparse, collections, html, os, re, shutil, subprocess, sys, zlib

def parse(lines):
    """Yields (thread, [frames leaf first]) from `perf script` text (header line, then one line per frame)."""
    thread, frames = None, []
    for line in lines:
        if not line.strip():
            if thread is not None:
                yield thread, frames
            thread, frames = None, []
        elif not line[0].isspace():
            thread = re.split(r"\s+\d+(/\d+)?\s+", line.strip(), maxsplit=1)[0] or "?"
        else:
            m = re.match(r"\s*[0-9a-fA-F]+\s+(.*?)\s+\((.*)\)\s*$", line)
            if not m:
                continue
            sym, dso = m.group(1), m.group(2)
            sym = re.sub(r"\+0x[0-9a-fA-F]+$", "", sym)
            if sym in ("[unknown]", ""):
                sym = f"[{os.path.basename(dso)}]"
            if "kernel.kallsyms" in dso or dso.startswith("[kernel"):
                sym += "_[k]"
            frames.append(sym)
    if thread is not None:
        yield thread, frames

def demangle(names):
    """Maps each mangled Swift name to its simplified demangling (one name per line in, one out)."""
    swift = shutil.which("swift")
    todo = sorted(n for n in names if re.match(r"^\$?(s|S|_T)", n.removesuffix("_[k]")) and "_[k]" not in n)
    if not swift or not todo:
        return {}
    try:
        out = subprocess.run([swift, "demangle", "--simplified"], input="\n".join(todo) + "\n",
                             capture_output=True, text=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(zip(todo, out)) if len(out) == len(todo) else {}

def colour(name):
    h = zlib.crc32(name.encode()) % 1000 / 1000
    if name.endswith("_[k]"):
        return f"rgb({235 + int(20 * h)},{150 + int(50 * h)},{30 + int(30 * h)})"
    if name.startswith(("swift_", "Swift.", "[libswiftCore")) or "libswift" in name:
        return f"rgb(60,{160 + int(60 * h)},{80 + int(40 * h)})"
    return f"rgb({200 + int(55 * h)},{70 + int(70 * h)},{80 + int(50 * h)})"

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", nargs="?", help="perf script output (default: stdin)")
    ap.add_argument("--title", default="Flame graph")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--folded", help="also write the folded stacks (FlameGraph's format) here")
    ap.add_argument("--top", type=int, default=0, help="print the N widest and the N most-self frames")
    ap.add_argument("--min-width", type=float, default=0.5, help="hide frames narrower than this many pixels")
    a = ap.parse_args()
    src = open(a.input, errors="replace") if a.input else sys.stdin
    folded = collections.Counter()
    for thread, frames in parse(src):
        folded[tuple([thread] + frames[::-1])] += 1
    names = {f for stack in folded for f in stack}
    dm = demangle(names)
    if dm:  # two mangled names may demangle alike (--simplified drops details): merge their stacks
        folded = _merge(folded, dm)
    total = sum(folded.values())
    if not total:
        sys.exit("no samples in the input")
    if a.folded:
        with open(a.folded, "w") as f:
            for s, n in sorted(folded.items()):
                f.write(";".join(x.replace(";", ",") for x in s) + f" {n}\n")
    # Tree: node = [samples, children dict].
    root = [0, {}]
    for s, n in folded.items():
        node = root; node[0] += n
        for f in s:
            node = node[1].setdefault(f, [0, {}]); node[0] += n
    depth = max(len(s) for s in folded)
    fh, top_pad, bottom_pad, side = 17, 50, 30, 10
    height = top_pad + depth * fh + bottom_pad
    scale = (a.width - 2 * side) / total
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{a.width}" height="{height}" '
           f'font-family="DejaVu Sans Mono,monospace" font-size="11">',
           f'<rect width="100%" height="100%" fill="#f8f8f0"/>',
           f'<text x="{a.width / 2}" y="22" text-anchor="middle" font-size="16" font-family="DejaVu Sans,sans-serif">'
           f'{html.escape(a.title)}</text>',
           f'<text x="{a.width / 2}" y="40" text-anchor="middle" font-size="11" fill="#555">{total:,} samples; width = '
           f'share of samples (inclusive); root at the bottom; orange = kernel, green = Swift runtime, red = the rest</text>']
    def draw(name, node, x, level):
        w = node[0] * scale
        if w < a.min_width:
            return
        y = height - bottom_pad - (level + 1) * fh
        pct = 100 * node[0] / total
        out.append(f'<g><title>{html.escape(name)} ({node[0]:,} samples, {pct:.2f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.1):.1f}" height="{fh - 1}" rx="2" '
                   f'fill="{colour(name)}"/>')
        chars = int((w - 6) / 6.7)
        if chars >= 3:
            label = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 3:.1f}" y="{y + fh - 5}">{html.escape(label)}</text>')
        out.append("</g>")
        for cname, child in sorted(node[1].items()):
            draw(cname, child, x, level + 1)
            x += child[0] * scale
    draw("all", root, side, 0)
    out.append("</svg>")
    sys.stdout.write("\n".join(out) + "\n")
    if a.top:
        inclusive, self_ = collections.Counter(), collections.Counter()
        for s, n in folded.items():
            for f in set(s):            # a recursive frame counts once per sample
                inclusive[f] += n
            self_[s[-1]] += n
        kernel = sum(n for s, n in folded.items() if s[-1].endswith("_[k]"))
        print(f"== leaf in the kernel: {100 * kernel / total:.1f}% of samples", file=sys.stderr)
        for title, c in (("widest frames (inclusive)", inclusive), ("most self samples", self_)):
            print(f"== {title}, of {total:,} samples", file=sys.stderr)
            for f, n in c.most_common(a.top):
                print(f"{100 * n / total:6.2f}%  {n:8,}  {f}", file=sys.stderr)

def _merge(folded, dm):
    merged = collections.Counter()
    for s, n in folded.items():
        merged[tuple(dm.get(f, f) for f in s)] += n
    return merged

if __name__ == "__main__":
    main()
