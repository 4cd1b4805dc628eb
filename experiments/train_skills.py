"""Train the skills demo: a tiny base model that copies, then one LoRA adapter per skill.

    python experiments/train_skills.py                  # a few minutes on 2 CPU cores

1. Pre-trains the ``tiny`` preset (every weight) to copy the prompt of the synthetic language
   of :mod:`jlora.train.tasks` (and strings of digits), and writes it as a Hugging Face
   directory ``OUT/base``.
2. Trains one LoRA per skill (reverse, sort, shift, count) on the frozen base, on the same prompt
   distribution, and exports each as a PEFT adapter ``OUT/<skill>``.
3. Serves the exported files through the engine and measures exact-match rates on held-out
   prompts, all adapters mixed in one batch (greedy over ``Engine.score``, checked against
   ``Engine.generate``), and writes ``OUT/skills.json`` and the table (``--results``).

TensorBoard logs go to ``--log-dir``, orbax checkpoints to ``--log-dir``/checkpoints: rerunning
the same command resumes an interrupted run (a finished one is restored, not retrained).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from jlora.bench.results_file import run_header, write_results_file
from jlora.config import EngineConfig
from jlora.engine import Engine
from jlora.train import TrainConfig, export_base_model, export_peft_adapter, train_base, train_lora
from jlora.train.assets import SKILLS_DIR, load_skills_assets, write_manifest
from jlora.train.evaluate import EngineGreedyGenerator, ScoreGreedyGenerator, evaluate_skills
from jlora.train.skills_tokenizer import write_skills_tokenizer
from jlora.train.tasks import SkillLanguage
from models.presets import get_preset
from models.weights import init_dummy_weights

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(SKILLS_DIR), help="assets directory to write")
    p.add_argument("--log-dir", default="runs/skills", help="TensorBoard logs and checkpoints")
    p.add_argument("--skills", nargs="+", default=["reverse", "sort", "shift", "count"])
    p.add_argument("--base-steps", type=int, default=1500)
    p.add_argument("--lora-steps", type=int, default=2000)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts per adapter")
    p.add_argument(
        "--results", default=str(ROOT / "experiments/results/skills.md"), help="'' to skip"
    )
    p.add_argument("--log", default=None, help="the Log entry's verdict (default: the claim)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out, log_dir = Path(args.out), Path(args.log_dir)
    lang = SkillLanguage()
    cfg = get_preset("tiny")
    common = dict(batch_size=args.batch_size, progress=not args.no_progress)
    t0 = time.perf_counter()

    base_config = TrainConfig(
        lr=3e-3,
        warmup_steps=50,
        total_steps=args.base_steps,
        weight_decay=0.01,
        seed=args.seed,
        checkpoint_dir=str(log_dir / "checkpoints" / "base"),
        log_dir=str(log_dir / "base"),
        checkpoint_every=500,
        **common,
    )
    init = init_dummy_weights(cfg, "float32", seed=args.seed)
    base = train_base(
        init, cfg, lambda i: lang.pretrain_batch(args.batch_size, args.seed, i), base_config
    )
    export_base_model(base, cfg, out / "base")
    write_skills_tokenizer(out / "base")  # text in, text out: the language's own ids
    t_base = time.perf_counter() - t0

    lora_config = TrainConfig(
        rank=args.rank,
        alpha=args.alpha,
        lr=3e-3,
        warmup_steps=30,
        total_steps=args.lora_steps,
        seed=args.seed + 1,
        checkpoint_every=500,
        **common,
    )
    adapters = {}
    for k, skill in enumerate(args.skills):
        config = lora_config.replace(
            seed=args.seed + 1 + k,
            checkpoint_dir=str(log_dir / "checkpoints" / skill),
            log_dir=str(log_dir / skill),
        )
        lora = train_lora(
            base,
            cfg,
            lambda i, s=skill, c=config: lang.batch(s, c.batch_size, c.seed, i),
            config,
            name=skill,
        )
        export_peft_adapter(lora, config, out / skill, name=skill, base_model="base")
        adapters[skill] = {
            "path": skill,
            "skill": skill,
            "rank": config.rank,
            "alpha": config.alpha,
        }
    t_train = time.perf_counter() - t0

    training = {"base": base_config.fingerprint(), "lora": lora_config.fingerprint()}
    write_manifest(out, lang, base_skill="copy", adapters=adapters, training=training)

    # Evaluate what was written, as a user would load it: files -> engine -> greedy decoding.
    assets = load_skills_assets(out)
    engine = Engine(EngineConfig(**assets.engine_kwargs()))
    rows = {"none": None, **{s: s for s in args.skills}}
    prompts = lang.heldout_prompts(args.eval_prompts)
    result = evaluate_skills(
        ScoreGreedyGenerator(engine), lang, prompts, rows, ["copy", *args.skills]
    )
    # The same mixed batch through the serving path (scheduler, paged KV cache) must agree.
    served = evaluate_skills(
        EngineGreedyGenerator(engine), lang, prompts, rows, ["copy", *args.skills]
    )
    same = served.outputs == result.outputs
    write_manifest(
        out,
        lang,
        base_skill="copy",
        adapters=adapters,
        training=training,
        exact_match={"num_prompts": len(prompts), "rates": result.rates},
    )
    t_all = time.perf_counter() - t0

    table = result.table()
    print(f"\nexact match on {len(prompts)} held-out prompts (one mixed batch):\n{table}")
    print(f"Engine.generate, same mixed batch: {'identical' if same else 'DIFFERENT'} outputs")
    print(f"base {t_base:.0f} s, base + adapters {t_train:.0f} s, total {t_all:.0f} s")
    if args.results:
        command = "PYTHONPATH=. python experiments/train_skills.py " + shlex.join(
            argv or sys.argv[1:]
        )
        times = (t_base, t_train, t_all)
        write_results(
            Path(args.results), table, command.strip(), len(prompts), same, times, args.log
        )


def write_results(
    path: Path,
    table: str,
    command: str,
    n: int,
    same: bool,
    times: tuple[float, float, float],
    verdict: str | None = None,
) -> None:
    """Write ``path`` through ``write_results_file``: ``## Current`` (header, claim, the exact-match
    ``table``) over the old one, and a Log entry (``verdict``, default the claim) with the table
    and how it was served on top of the file's Log, which is kept."""
    t_base, t_train, t_all = times
    header = run_header(command=command)
    adapters = len(table.splitlines()) - 3
    claim = (
        f"exact match of {adapters} skills adapters on {n} held-out prompts, served in one "
        f"mixed batch (the table); `Engine.generate` gives "
        + ("the same outputs as" if same else "DIFFERENT outputs from")
        + " score-based greedy decoding"
    )
    current = f"""# Skills adapters: exact match on held-out prompts

## Current

{chr(10).join(header.lines())}
- claim: {claim}
- time: base {t_base:.0f} s, base + {adapters} adapters {t_train:.0f} s, total with evaluation \
{t_all:.0f} s
- raw data: the table (also in the newest Log entry; `jlora/assets/skills/skills.json` keeps \
the rates)

{table}

"""
    body = (
        "Rows: the adapter each request was served with (`none`: the base model alone). "
        "Columns: the skill whose answer the greedy output was checked against, token for "
        f"token, EOS included. All {adapters + 1} rows x {n} held-out prompts were served as one "
        "mixed batch through `Engine.score`-based greedy decoding of the exported files "
        "(`jlora/assets/skills`). The same mixed batch served through `Engine.generate` "
        "(scheduler, paged KV cache, adapter slots) gave "
        f"{'identical' if same else 'DIFFERENT'} outputs.\n\n{table}\n"
    )
    write_results_file(path, current, verdict or claim, body=body)


if __name__ == "__main__":
    main()
