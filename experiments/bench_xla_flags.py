"""Launch cost of the LoRA step under XLA flag sets: an A/B of ``XLA_FLAGS``, each in a fresh
process.

For each set of :data:`FLAG_SETS`, ``experiments/bench_kernels.py`` times the T=1 and T=64 steps
(scenario ``3x16``, methods ``pallas`` and ``onehot``, no checks) in a subprocess started with
those flags (XLA reads them when its backend starts). Each line gives the step times and, from
the CUPTI kernel time at T=1, the cost of a launch beyond its kernel. The fastest set for
``pallas`` (T=1 plus T=64) is named, with the commands that use it: ``bench_kernels.py
--xla-flags`` for the table, ``tune_kernel_blocks.py --launch-ms`` for the tuning.

    PYTHONPATH=. python experiments/bench_xla_flags.py    # on the GPU, writes xla_flags.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from jlora.bench.kernel_bench import log, parser, write_results
from jlora.bench.results_file import REPO_ROOT, run_header

TABLE = REPO_ROOT / "experiments" / "bench_kernels.py"

FLAG_SETS = {
    "default": "",
    "no-graphs": "--xla_gpu_enable_command_buffer=",
    "graphs+custom": (
        "--xla_gpu_enable_command_buffer=+CUSTOM_CALL --xla_gpu_graph_min_graph_size=1"
        " --xla_gpu_require_exclusive_lock=true"
    ),
    "exclusive-lock": "--xla_gpu_require_exclusive_lock=true",
}


def ab_flag_sets(layers: int, small: bool = False) -> tuple[str, list[str], float | None]:
    """Time T=1 and T=64 steps (pallas, one-hot) under each XLA flag set, each in a fresh
    process; return the fastest set for pallas, the report lines, and its cost per launch."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    best, lines, gap = ("", float("inf")), [], None
    for name, flags in FLAG_SETS.items():
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [
                sys.executable, str(TABLE), "--tokens", "1,64", "--scenarios", "3x16",
                "--methods", "pallas,onehot", "--no-check", "--reps", "5", "--out", "",
                "--json", tmp.name, "--layers", str(layers), f"--xla-flags={flags}", "--no-copy",
                *(["--small"] if small else []),
            ]  # fmt: skip
            try:
                r = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=200, cwd=REPO_ROOT, env=env
                )
                rows = json.load(open(tmp.name))["rows"] if r.returncode == 0 else None
            except Exception as e:  # noqa: BLE001
                rows, r = None, None
                log(f"ab {name}: {type(e).__name__}: {e}")
        if not rows:
            tail = (r.stdout + r.stderr)[-600:] if r is not None else ""
            line = f"ab {name:14s} FAILED: {tail}"
        else:
            t = {row["tokens"]: row for row in rows}
            total = t[1].get("pallas_ms", float("inf")) + t[64].get("pallas_ms", float("inf"))
            kern = t[1].get("pallas_kernels_ms")
            n = t[1].get("pallas_kernels_n")
            per = (t[1]["pallas_ms"] - kern) / n if kern is not None and n else None
            line = (
                f"ab {name:14s} pallas T=1 {t[1].get('pallas_ms', 0):.3f} ms, T=64 "
                f"{t[64].get('pallas_ms', 0):.3f} ms; one-hot T=1 {t[1].get('onehot_ms', 0):.3f} "
                f"ms, T=64 {t[64].get('onehot_ms', 0):.3f} ms; pallas kernels T=1 {kern} ms "
                f"({n} launches) -> {per * 1e3 if per is not None else float('nan'):.1f} us "
                "per launch beyond its kernel"
            )
            if total < best[1]:
                best, gap = (flags, total), per
        log(line)
        lines.append(f"{line}  [XLA_FLAGS={flags!r}]")
    return best[0], lines, gap


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/results/xla_flags.md")
    p.add_argument("--layers", type=int, default=32, help="layers of each timed step")
    args = p.parse_args(argv)
    header = run_header(argv)  # this process's device: each set runs in its own
    flags, lines, gap = ab_flag_sets(args.layers, args.small)
    gap_text = f"{gap * 1e3:.1f} us" if gap is not None else "not measured (no CUPTI)"
    claims = [
        f"- claim: the fastest set for pallas (T=1 plus T=64): `XLA_FLAGS={flags!r}`; a launch "
        f"under it costs {gap_text} beyond its kernel",
        f"- next: `bench_kernels.py --xla-flags={flags!r}`"
        + (f", `tune_kernel_blocks.py --launch-ms {gap:.4f}`" if gap is not None else ""),
    ]
    body = "\n".join(f"    {line}" for line in lines)
    verdict = f"fastest XLA_FLAGS {flags!r}, {gap_text} per launch beyond its kernel"
    title = f"LoRA kernels: launch cost under XLA flag sets ({args.layers} layers)"
    raw = {"lines": lines, "best": flags, "launch_ms": gap}
    write_results(args, header, title, claims, verdict, body, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
