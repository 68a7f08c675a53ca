"""Command line: ``multimodal {train,generate,evaluate,demo,replay,serve,export,plot,list} ...``.

Errors a user can cause print one message and exit with status 2; ``--debug`` shows the
traceback instead.

``multimodal generate TASK`` owns the command line of every task: its options are derived from
the pipeline's ``__call__`` (each keyword argument a ``--kebab-case`` option, its type and
default from the annotation and default, ``bool`` a flag, ``Literal`` a choice, help from the
docstring's ``Args:``), so a plugin's pipeline has a command line without writing one; where a
signature cannot say today's command line exactly, :data:`OVERRIDES` says it. The CLI adds the
options it owns (``--checkpoint``, ``--device``, ``--torch-dtype``, ``--compile``, ``--out``,
``--grid``, ``--strip``, ``--no-progress``), calls ``pipe(**kwargs)`` and writes the output
through :func:`multimodal.outputs.write_outputs`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import socket
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from multimodal.checkpoint import export_checkpoint, find_checkpoint
from multimodal.config import load_config
from multimodal.demo import run_demo
from multimodal.errors import InputError, MultimodalError, UnknownComponentError, did_you_mean
from multimodal.evaluation import evaluate
from multimodal.interop import export_hf
from multimodal.io import OutputFiles, atomic_write_text, check_new_folder
from multimodal.outputs import check_overwrite, output_stems, write_outputs
from multimodal.pipelines import check_device, load_pipeline, prepare
from multimodal.pipelines.base import DTYPES, check_compile, check_dtype
from multimodal.pipelines.composed import composed_task
from multimodal.pipelines.text_generation import TextStreamer
from multimodal.plot import plot_run
from multimodal.registry import KINDS, get_registry, pipelines, plugin_failures
from multimodal.replay import replay
from multimodal.safety import EXIT_BLOCKED, PromptBlockedError
from multimodal.training.init_from import init_from_problems
from multimodal.training.plan import memory_plan, parse_memory
from multimodal.training.run_dir import run_dir
from multimodal.training.trainer import resolve_device, train

EXIT_USAGE = 2
DEVICE_HELP = "where the networks run: cpu (default), cuda, cuda:N or mps (Apple silicon)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multimodal", description="Generate text, images, audio and video from text.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser(
        "train", help="train a model from a YAML config",
        description="A run directory holds one run: a new run refuses one that already holds "
                    "checkpoints (use --resume, another --out-dir, or remove it), and a run "
                    "in progress locks it. The device is the config's train.device (auto: "
                    "CUDA where there is one, else the CPU; cpu, cuda, cuda:N or mps), e.g. "
                    "the override train.device=cuda.")
    train.__class__ = _IntermixedParser  # flags may follow the overrides
    train.add_argument("config", help="YAML config file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. train.max_steps=100 backbone.depth=4")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in the run directory, with "
                            "the same train settings (a change is refused, listed)")
    train.add_argument("--allow-changes", metavar="KEY[,KEY]", action="append", default=[],
                       help="with --resume: train settings this run may change on purpose, "
                            "e.g. --allow-changes max_steps to extend a run")
    train.add_argument("--out-dir", help="run directory (default: out_dir of the config)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--plan", action="store_true",
                       help="print the memory plan per process (parameters, gradients, "
                            "optimizer state, activations) and the largest batch that fits "
                            "--memory, then exit without training")
    train.add_argument("--memory", metavar="SIZE",
                       help="memory one process may use, e.g. 24GB: a run whose plan exceeds "
                            "it is refused before it starts (default: the GPU's memory; on "
                            "CPU the available memory shared by the processes)")
    train.add_argument("--processes", type=int, metavar="N",
                       help="with --plan: the process count to plan for (default: torchrun's "
                            "WORLD_SIZE, else 1)")

    gen = sub.add_parser("generate", help="generate from a prompt",
                         description="Options after TASK depend on the task; "
                                     "see `multimodal generate TASK --help`.")
    gen.add_argument("task", help="task name, e.g. text-generation")
    gen.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    ev = sub.add_parser("evaluate", help="measure a checkpoint's quality")
    ev.add_argument("task", help="task name, e.g. text-generation")
    ev.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    ev.add_argument("--num-samples", type=int, default=None,
                    help="samples to judge per class or concept (default: the evaluation's "
                         "own, 32 for Fashion-MNIST, 8 for emoji)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="also write the report as JSON to this file")
    ev.add_argument("--device", default="cpu", help=DEVICE_HELP)

    demo = sub.add_parser("demo", help="generate one of everything the default model can make")
    demo.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    demo.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu", help=DEVICE_HELP)

    rp = sub.add_parser("replay", help="regenerate an output file from the settings it carries")
    rp.add_argument("file", help="a PNG, or a WAV/MP4/GIF/TXT with its sidecar .json")
    rp.add_argument("--checkpoint", action="append",
                    help="the model that made it (default: embedded); for a composed task "
                         "STEP=DIR, repeatable")
    rp.add_argument("--out", default="out/replay", help="output directory (default out/replay)")
    rp.add_argument("--device", default="cpu", help=DEVICE_HELP)
    rp.add_argument("--overwrite", action="store_true",
                    help="replace files of the same names in --out (default: refuse them)")

    srv = sub.add_parser("serve", help="serve every task of a checkpoint over an "
                                       "OpenAI-compatible HTTP API")
    srv.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    srv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request")
    srv.add_argument("--device", default="cpu", help=DEVICE_HELP)

    ex = sub.add_parser(
        "export", help="write a checkpoint for shipping, or as Hugging Face folders",
        description="--format multimodal (default): a copy with fp16 weights and no optimizer "
                    "state, which every command loads. --format hf: the backbone and text head "
                    "as a transformers model folder (AutoModelForCausalLM.from_pretrained(OUT)) "
                    "with its tokenizer, the image VAE as a diffusers AutoencoderKL (OUT/vae), "
                    "LoRA adapters merged or, with --lora, as a PEFT folder (OUT/lora), and a "
                    "model card (OUT/README.md). OUT must not exist, or be empty.")
    ex.add_argument("checkpoint", help="checkpoint or run directory")
    ex.add_argument("out", help="the folder to write (new, or empty)")
    ex.add_argument("--format", choices=("multimodal", "hf"), default="multimodal",
                    help="multimodal (default) or hf (Hugging Face transformers/diffusers/peft)")
    ex.add_argument("--lora", action="store_true",
                    help="with --format hf: the LoRA adapters as a PEFT adapter folder beside "
                         "the base weights, instead of merged into them")

    pl = sub.add_parser("plot", help="draw a run's loss curves and learning rate as a PNG",
                        description="Reads RUN/log.csv: the training loss of each modality "
                                    "(its validation loss as dots), the weighted total when "
                                    "there are several, and the learning rate.")
    pl.add_argument("run", help="run folder (the out_dir of `multimodal train`) or its log.csv")
    pl.add_argument("--out", help="PNG to write (default: RUN/loss_curves.png)")
    pl.add_argument("--overwrite", action="store_true",
                    help="replace --out if it exists (default: refuse)")

    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument("kind", nargs="?", help="one kind (backbones, decoders, pipelines, ...), "
                    "or voices: the speakers of a speech checkpoint and their languages")
    ls.add_argument("--checkpoint", help="with voices: the checkpoint or run directory "
                    "(default: the embedded model)")
    return parser


class _IntermixedParser(argparse.ArgumentParser):
    """``train``'s parser: options anywhere among the positionals
    (``train CONFIG key=value --resume key=value``), through ``parse_known_intermixed_args``."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back here
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line (``warning: ...``), not Python's file:line format."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
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
        if args.debug or not isinstance(exc, (MultimodalError, OSError)):
            raise
        if isinstance(exc, PromptBlockedError):
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_BLOCKED
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# -- commands ----------------------------------------------------------------------------------
def _cmd_train(args) -> int:
    # Every problem at once, before any work: the init_from checkpoints are opened here too
    # (not when resuming, which starts from the run's own checkpoint).
    config = load_config(args.config, args.overrides,
                         checks=() if args.resume else (init_from_problems,))
    memory = parse_memory(args.memory) if args.memory else None
    if args.plan:
        processes = args.processes or int(os.environ.get("WORLD_SIZE", "1"))
        if processes < 1:
            raise InputError(f"--processes must be at least 1, got {processes}")
        device = resolve_device(config.get("train", {}).get("device", "auto")).type
        plan = memory_plan(config, processes=processes, device=device, memory=memory,
                           checkpoint_dir=find_checkpoint(run_dir(config, args.out_dir))
                           if args.resume else None)
        if os.environ.get("RANK", "0") == "0":
            print(plan.format())
        return 0 if plan.fits else 1
    result = train(config, out_dir=args.out_dir, resume=args.resume,
                   allow_changes=args.allow_changes, progress=not args.no_progress,
                   memory=memory)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(json.dumps(result, default=str))
    return 0


def _cmd_generate(args) -> int:
    if args.task.endswith((".yaml", ".yml")):  # a task file of composed pipelines
        cls = composed_task(args.task)
    elif args.task in pipelines:
        cls = pipelines.get(args.task)
    else:
        known = pipelines.names()
        raise UnknownComponentError(f"unknown task '{args.task}'{did_you_mean(args.task, known)}; "
                                    f"known tasks: {', '.join(known)} (or a task file .yaml)")
    task = cls.task if getattr(cls, "composed", False) else args.task
    options = task_options(cls, task)
    parser = task_parser(cls, task, options, prog=f"multimodal generate {args.task}")
    ns = parser.parse_args(args.rest)
    if getattr(cls, "composed", False):  # a task file's class is not registered: load it here
        check_device(ns.device)
        dtype = None if ns.torch_dtype is None else check_dtype(ns.torch_dtype)
        if ns.compile:
            check_compile(ns.device)
        pipe = prepare(cls.from_checkpoint(ns.checkpoint, device=ns.device), dtype, ns.compile)
    else:
        pipe = load_pipeline(args.task, ns.checkpoint, device=ns.device,
                             torch_dtype=ns.torch_dtype, compile=ns.compile)
    kwargs = {}
    for option in options:
        value = getattr(ns, option.dest)
        kwargs[option.dest] = option.resolve(pipe, value) if option.resolve else value
    if "no_progress" in ns:
        kwargs["progress"] = not ns.no_progress
    output, written = run_task(task, pipe, kwargs, out=ns.out, grid=getattr(ns, "grid", False),
                               strip=getattr(ns, "strip", False), stream=True,
                               overwrite=ns.overwrite)
    report(task, output, written, kwargs)
    return 0


# -- a task's command line, derived from its pipeline's __call__ -------------------------------
# Arguments of __call__ never set from the command line: objects, not words; and the other
# libraries' names of an option the command line already has (num_images_per_prompt,
# num_videos_per_prompt, num_waveforms_per_prompt, num_return_sequences: --num-samples) or
# that only the Python API uses (output_type: the files are written from uint8 images and clips
# and float32 waveforms whatever it is).
NOT_OPTIONS = ("self", "generator", "streamer", "progress", "callback_on_step_end",
               "callback_on_step_end_tensor_inputs", "output_type", "num_images_per_prompt",
               "num_return_sequences", "num_videos_per_prompt",
               "num_waveforms_per_prompt")


@dataclass(frozen=True)
class Option:
    """One option of a task's command line.

    Attributes:
        dest: The ``__call__`` argument it sets.
        flags: Its option strings, e.g. ``("--num-samples",)``.
        kwargs: The rest of ``argparse.add_argument``'s arguments (type, default, help, ...).
        resolve: ``resolve(pipe, value) -> __call__ value``, once the pipeline is loaded
            (a default that depends on the model, a flag that inverts an argument).
    """

    dest: str
    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    resolve: Callable[[Any, Any], Any] | None = None


# Where a __call__ signature cannot say the command line a task has always had: per task,
# __call__ argument -> replacement Option settings (``flags``, ``resolve`` and argparse
# arguments).
OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "text-generation": {
        # sampling is the default; --greedy turns it off
        "do_sample": {"flags": ("--greedy",), "action": "store_true", "default": False,
                      "help": "greedy decoding", "resolve": lambda pipe, greedy: not greedy},
    },
    "image-to-text": {
        # several files after one --image
        "images": {"flags": ("--image",), "nargs": "+", "required": True,
                   "help": "image file(s) to caption (PNG, JPEG, ...)"},
    },
}

# Tasks that print their texts and write files only when --out is given: its help.
OPTIONAL_OUT = {"text-generation": "also write 000.txt (+ 000.json settings), ... here",
                "image-to-text": "also write 000.txt + 000.json per image here"}

# Written files a task does not list on stdout (text-to-audio lists its WAVs only).
UNLISTED_SUFFIXES = {"text-to-audio": (".json",)}


def task_options(cls, task: str) -> list[Option]:
    """The options of ``task`` derived from ``cls.__call__`` (see the module docstring), with
    :data:`OVERRIDES` applied. An argument whose type a command line cannot give (an object)
    is left out."""
    call = cls.__call__
    try:
        hints = typing.get_type_hints(call)
    except Exception:  # an annotation that does not resolve here: read each one alone
        hints = {}
    docs = docstring_args(call)
    overrides = OVERRIDES.get(task, {})
    options = []
    for name, param in inspect.signature(call).parameters.items():
        if name in NOT_OPTIONS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in overrides:
            settings = dict(overrides[name])
            flags = settings.pop("flags", (_flag(name),))
            resolve = settings.pop("resolve", None)
            settings.setdefault("help", docs.get(name))
            options.append(Option(name, tuple(flags), settings, resolve))
            continue
        kwargs = _argparse_kwargs(hints.get(name, param.annotation), param)
        if kwargs is None:
            continue
        help_text = docs.get(name)
        if kwargs.get("action") == "store_false" and help_text:
            help_text = f"turn off (on by default): {help_text}"
        kwargs.setdefault("help", help_text)
        flag = kwargs.pop("flag", _flag(name))
        options.append(Option(name, (flag,), kwargs))
    return options


def task_parser(cls, task: str, options: list[Option], *, prog: str) -> argparse.ArgumentParser:
    """The parser of ``task``: the CLI's own options around the derived ``options``."""
    parser = argparse.ArgumentParser(prog=prog)
    composed = getattr(cls, "composed", False)
    if composed:
        parser.add_argument("--checkpoint", action="append", metavar="STEP=DIR",
                            help="checkpoint of one step, e.g. video=runs/x (repeatable; "
                                 "default: each step's embedded one)")
    else:
        parser.add_argument("--checkpoint", help="checkpoint or run directory (default: embedded)")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--torch-dtype", "--dtype", dest="torch_dtype", choices=list(DTYPES),
                        metavar="DTYPE",
                        help="the networks' dtype: float32 (default), bfloat16 (bf16: CPUs "
                             "and GPUs), float16 (fp16: GPUs; on a CPU it runs, slowly, with a "
                             "warning); also fp32, half")
    parser.add_argument("--compile", action="store_true",
                        help="compile the networks with torch.compile (inductor; on a CPU it "
                             "needs a C++ compiler): the first sample waits for the compile, "
                             "tens of seconds or more, so it pays off over many samples")
    for option in options:
        parser.add_argument(*option.flags, dest=option.dest, **option.kwargs)
    if task in OPTIONAL_OUT:
        parser.add_argument("--out", default=None, help=OPTIONAL_OUT[task])
    else:
        parser.add_argument("--out", default=f"out/{task}",
                            help=f"output directory (default out/{task})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files of the same names in --out (default: refuse them, "
                             "naming them, before generating)")
    produces = getattr(cls, "produces", "")
    if produces == "image":
        parser.add_argument("--grid", action="store_true", help="also write grid.png")
    if produces == "video":
        parser.add_argument("--strip", action="store_true",
                            help="also write 000.png: the frames side by side")
    if "progress" in inspect.signature(cls.__call__).parameters:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_kwargs(annotation: Any, param: inspect.Parameter) -> dict[str, Any] | None:
    """``add_argument`` arguments for a ``__call__`` parameter, or ``None`` when its type is
    not one a command line gives (str, int, float, bool, a Literal, a path, or those or
    ``None``)."""
    kwargs: dict[str, Any] = {}
    required = param.default is inspect.Parameter.empty
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = param.default
    if isinstance(annotation, str):  # unresolved: the simple spellings only
        annotation = {"str": str, "int": int, "float": float, "bool": bool}.get(
            annotation.replace(" | None", "").replace("Optional[", "").rstrip("]"))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
    else:
        args = [annotation]
    if len(args) > 1:  # a union: a path where str or a path type is among its members
        if not any(a is str or (isinstance(a, type) and issubclass(a, os.PathLike))
                   for a in args):
            return None
        args = [str]
    kind = args[0]
    if kind is bool:
        if param.default is True:
            return {"flag": "--no-" + param.name.replace("_", "-"), "action": "store_false",
                    "default": True}
        return {"action": "store_true", "default": False}
    if typing.get_origin(kind) is Literal:
        choices = list(typing.get_args(kind))
        kwargs.update(choices=choices, type=type(choices[0]))
        return kwargs
    if isinstance(kind, type) and issubclass(kind, os.PathLike):
        kind = str
    if kind not in (str, int, float):
        return None
    kwargs["type"] = kind
    return kwargs


def docstring_args(function: Callable) -> dict[str, str]:
    """``{argument: description}`` from the ``Args:`` section of a Google-style docstring
    (``a, b: ...`` describes both), in one line each, ready for argparse's help."""
    doc = inspect.getdoc(function) or ""
    found: dict[str, str] = {}
    in_args, indent, names = False, None, []
    for line in doc.splitlines():
        stripped = line.strip()
        if not in_args:
            in_args = stripped == "Args:"
            continue
        if stripped and not line.startswith(" "):
            break  # the next section (Returns:, Raises:)
        if not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        match = re.match(r"^([A-Za-z_][\w, ]*):\s*(.*)$", stripped)
        if match and (indent is None or depth <= indent):
            indent = depth
            names = [n.strip() for n in match.group(1).split(",")]
            for name in names:
                found[name] = match.group(2)
        elif names:
            for name in names:
                found[name] = f"{found[name]} {stripped}".strip()
    return {name: _plain(text) for name, text in found.items()}


def _plain(text: str) -> str:
    """Docstring markup as a terminal shows it: ``:attr:`~a.b.voices``` -> ``voices``,
    ````x```` -> ``x``, and ``%`` escaped for argparse."""
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", text)
    return text.replace("``", "").replace("%", "%%")


# -- generating and reporting -------------------------------------------------------------------
def run_task(task: str, pipe, kwargs: dict[str, Any], *, out: str | Path | None,
             grid: bool = False, strip: bool = False, stream: bool = False,
             overwrite: bool = False) -> tuple[Any, list[Path]]:
    """``pipe(**kwargs)``, written into ``out`` (``None``: no files) through
    :func:`write_outputs`. The directory is checked before generating (files of the names this
    run writes are refused unless ``overwrite``), and a failed run leaves nothing behind. With
    ``stream``, text-generation prints its one sample as it is made: the prompt is echoed once
    the pipeline has accepted its arguments, so a refused call prints nothing on stdout.

    Returns:
        ``(output, paths written)``.
    """
    if out:
        check_overwrite(out, output_stems(_expected_samples(kwargs), grid), overwrite)
    with (OutputFiles(out) if out else contextlib.nullcontext()) as files:
        if task == "text-generation" and stream:
            kwargs = dict(kwargs)
            if kwargs.get("num_samples", 1) == 1:
                kwargs["streamer"] = TextStreamer(pipe.tokenizer,
                                                  prefix=kwargs.get("prompt", ""))
        output = pipe(**kwargs)
        written = [] if files is None else write_outputs(
            output, files.out, produces=pipe.produces, grid=grid, strip=strip,
            overwrite=overwrite)
    return output, written


def _expected_samples(kwargs: dict[str, Any]) -> int:
    """How many samples a call with ``kwargs`` makes, as far as they tell (``num_samples``, or
    the images to caption; else 1): the files checked before generating."""
    count = kwargs.get("num_samples")
    if isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 4096:
        return count
    images = kwargs.get("images")
    return len(images) if isinstance(images, (list, tuple)) and images else 1


def report(task: str, output: Any, written: list[Path], kwargs: dict[str, Any],
           streamed: bool = True) -> None:
    """Print what ``task`` prints: text-generation its texts (a streamed one only ends its
    line), image-to-text each image's caption, the others the files written and the seed."""
    if task == "text-generation":
        prompt = kwargs.get("prompt", "")
        if len(output.texts) == 1:
            print("" if streamed else prompt + output.texts[0])
        else:
            for i, text in enumerate(output.texts):
                print(f"--- sample {i}\n{prompt}{text}")
        return
    if task == "image-to-text":
        for name, text in zip(output.images, output.texts):
            print(f"{name}: {text}")
        return
    hidden = UNLISTED_SUFFIXES.get(task, ())
    for path in written:
        if path.suffix not in hidden:
            print(path)
    seed = getattr(output, "seed", None)
    print(f"seed {output.metadata(0).get('seed') if seed is None else seed}")


def _cmd_evaluate(args) -> int:
    check_device(args.device)
    given = {} if args.num_samples is None else {"num_samples": args.num_samples}
    result = evaluate(args.task, checkpoint=args.checkpoint, seed=args.seed,
                      device=args.device, **given)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    return 0


def _cmd_replay(args) -> int:
    check_device(args.device)
    result = replay(args.file, checkpoint=args.checkpoint, out=args.out, device=args.device,
                    overwrite=args.overwrite)
    report(result["task"], result["output"], result["written"], result["kwargs"],
           streamed=False)
    verdict = "identical to" if result["identical"] else "DIFFERENT from"
    print(f"replayed {result['task']}: {result['replayed']} is {verdict} {result['original']}")
    return 0 if result["identical"] else 1


def _cmd_demo(args) -> int:
    for line in run_demo(args.out, checkpoint=args.checkpoint, seed=args.seed,
                         device=args.device):
        print(line)
    return 0


def _check_address(host: str, port: int) -> None:
    """Refuse, before the checkpoint loads, an address the server could not listen on.

    Raises:
        InputError: a port outside 0..65535, a host that does not resolve, or an address that
            is in use or not this machine's.
    """
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a port; give 1..65535 (0: any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--host {host!r} does not resolve ({exc}); give an address of this "
                         "machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every "
                         "interface)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; give "
                             "another --port (or stop what uses it)") from None


def _cmd_serve(args) -> int:
    check_device(args.device)
    _check_address(args.host, args.port)
    try:  # deferred: the server's stack (FastAPI, uvicorn) loads only for this command
        from multimodal.serve import run_server
    except ImportError as exc:
        raise InputError(f"multimodal serve needs the serving extra ({exc.name} is missing): "
                         "pip install 'multimodal[serve]' (fastapi, uvicorn, "
                         "prometheus-client, python-multipart)") from None

    run_server(args.checkpoint, host=args.host, port=args.port, api_key=args.api_key,
               device=args.device)
    return 0


def _cmd_export(args) -> int:
    out = check_new_folder(args.out)
    if args.format == "hf":
        report = export_hf(args.checkpoint, out, lora=args.lora)
        for part, what in report.parts.items():
            print(f"{part}: {what}")
        for figure, value in report.measured.items():
            print(f"{figure}: {value:.3g}" if isinstance(value, float) else f"{figure}: {value}")
        if report.not_exported:
            print("not exported (no Hugging Face form; they stay in the checkpoint): "
                  + ", ".join(report.not_exported))
    else:
        if args.lora:
            raise InputError("--lora applies to --format hf (the multimodal format keeps the "
                             "adapters in the checkpoint)")
        export_checkpoint(args.checkpoint, out)
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def _cmd_plot(args) -> int:
    report = plot_run(args.run, args.out, overwrite=args.overwrite)
    print(f"wrote {report.path}: {report.rows} rows, steps {report.first_step}.."
          f"{report.last_step}, loss of {', '.join(report.modalities) or 'the run'}")
    return 0


def _cmd_list(args) -> int:
    if args.kind == "voices":
        pipe = load_pipeline("text-to-audio", checkpoint=args.checkpoint)
        width = max(len(v) for v in pipe.voices)
        print("voices (speaker, the espeak-ng language its prompts are read in):")
        for voice in pipe.voices:
            print(f"  {voice:<{width}}  {pipe.phonemes.language_of(voice)}")
        return 0
    if args.checkpoint:
        raise InputError("--checkpoint applies to `list voices` only")
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
             "replay": _cmd_replay, "export": _cmd_export,
             "demo": _cmd_demo, "serve": _cmd_serve, "plot": _cmd_plot, "list": _cmd_list}


if __name__ == "__main__":
    raise SystemExit(main())
