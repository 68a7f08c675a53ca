"""Command line: ``multimodal {train,generate,evaluate,demo,replay,list} ...``.

Errors a user can cause print one message and exit with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multimodal", description="Generate text, images, audio and video from text.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. train.max_steps=100 backbone.depth=4")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in the run directory")
    train.add_argument("--out-dir", help="run directory (default: out_dir of the config)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    gen = sub.add_parser("generate", help="generate from a prompt",
                         description="Options after TASK depend on the task; "
                                     "see `multimodal generate TASK --help`.")
    gen.add_argument("task", help="task name, e.g. text-generation")
    gen.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    ev = sub.add_parser("evaluate", help="measure a checkpoint's quality")
    ev.add_argument("task", help="task name, e.g. text-generation")
    ev.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    ev.add_argument("--num-samples", type=int, default=32, help="generated samples to judge")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="also write the report as JSON to this file")

    demo = sub.add_parser("demo", help="generate one of everything the default model can make")
    demo.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    demo.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    demo.add_argument("--seed", type=int, default=0)

    rp = sub.add_parser("replay", help="regenerate an output file from the settings it carries")
    rp.add_argument("file", help="a PNG, or a WAV/MP4/GIF/TXT with its sidecar .json")
    rp.add_argument("--checkpoint", action="append",
                    help="the model that made it (default: embedded); for a composed task "
                         "STEP=DIR, repeatable")
    rp.add_argument("--out", default="out/replay", help="output directory (default out/replay)")
    rp.add_argument("--device", default="cpu", help="cpu or cuda")

    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument("kind", nargs="?", help="one kind (backbones, decoders, pipelines, ...)")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line (``warning: ...``), not Python's file:line format."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.debug:
        warnings.showwarning = _show_warning
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from multimodal.errors import MultimodalError

        from multimodal.safety import EXIT_BLOCKED, PromptBlockedError

        if args.debug or not isinstance(exc, (MultimodalError, OSError)):
            raise
        if isinstance(exc, PromptBlockedError):
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_BLOCKED
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# -- commands ----------------------------------------------------------------------------------
def _cmd_train(args) -> int:
    from multimodal.config import load_config
    from multimodal.training.trainer import train

    config = load_config(args.config, args.overrides)
    result = train(config, out_dir=args.out_dir, resume=args.resume,
                   progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(json.dumps(result, default=str))
    return 0


def _cmd_generate(args) -> int:
    from multimodal.errors import UnknownComponentError, did_you_mean
    from multimodal.pipelines import check_device, load_pipeline
    from multimodal.registry import pipelines

    if args.task.endswith((".yaml", ".yml")):  # a task file of composed pipelines
        from multimodal.pipelines.composed import composed_task

        cls = composed_task(args.task)
    elif args.task in pipelines:
        cls = pipelines.get(args.task)
    else:
        known = pipelines.names()
        raise UnknownComponentError(f"unknown task '{args.task}'{did_you_mean(args.task, known)}; "
                                    f"known tasks: {', '.join(known)} (or a task file .yaml)")
    task_parser = argparse.ArgumentParser(prog=f"multimodal generate {args.task}")
    if getattr(cls, "composed", False):
        task_parser.add_argument("--checkpoint", action="append", metavar="STEP=DIR",
                                 help="checkpoint of one step, e.g. video=runs/x (repeatable; "
                                      "default: each step's embedded one)")
    else:
        task_parser.add_argument("--checkpoint",
                                 help="checkpoint or run directory (default: embedded)")
    task_parser.add_argument("--device", default="cpu", help="cpu or cuda")
    cls.add_cli_arguments(task_parser)
    task_args = task_parser.parse_args(args.rest)
    if getattr(cls, "composed", False):
        check_device(task_args.device)
        pipe = cls.from_checkpoint(task_args.checkpoint, device=task_args.device)
    else:
        pipe = load_pipeline(args.task, task_args.checkpoint, device=task_args.device)
    return pipe.run_cli(task_args)


def _cmd_evaluate(args) -> int:
    from multimodal.evaluation import evaluate

    report = evaluate(args.task, checkpoint=args.checkpoint, num_samples=args.num_samples,
                      seed=args.seed)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        from multimodal.io import atomic_write_text

        atomic_write_text(Path(args.out), text + "\n")
    return 0


def _cmd_replay(args) -> int:
    from multimodal.replay import replay

    result = replay(args.file, checkpoint=args.checkpoint, out=args.out, device=args.device)
    verdict = "identical to" if result["identical"] else "DIFFERENT from"
    print(f"replayed {result['task']}: {result['replayed']} is {verdict} {result['original']}")
    return 0 if result["identical"] else 1


def _cmd_demo(args) -> int:
    from multimodal.demo import run_demo

    for line in run_demo(args.out, checkpoint=args.checkpoint, seed=args.seed):
        print(line)
    return 0


def _cmd_list(args) -> int:
    from multimodal.registry import KINDS, get_registry, plugin_failures

    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        registry = get_registry(kind)
        entries = registry.entries()
        print(f"{kind}:")
        if not entries:
            print("  (none)")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            summary = f"  {e.summary}" if e.summary else ""
            print(f"  {e.name:<{width}}  {e.owner}{summary}")
    for name, error in plugin_failures.items():
        print(f"plugin {name} failed to load: {error}", file=sys.stderr)
    return 0


_COMMANDS = {"train": _cmd_train, "generate": _cmd_generate, "evaluate": _cmd_evaluate,
             "replay": _cmd_replay,
             "demo": _cmd_demo, "list": _cmd_list}


if __name__ == "__main__":
    raise SystemExit(main())
