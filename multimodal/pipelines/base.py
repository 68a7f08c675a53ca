"""What every pipeline shares: loading from a checkpoint, and the seed of its random draws.

A pipeline class names the checkpoint parts its constructor takes in ``parts`` (constructor
argument -> config key, e.g. ``{"denoiser": "decoders.image"}``) and what to train when they
are missing in ``needs``; :meth:`Pipeline.from_checkpoint` does the rest, so no pipeline
copies the load / check / build stanza.

The argument checks every pipeline shares live here too (:func:`check_int`,
:func:`check_float`, :func:`check_bool`, :func:`check_seed`, :func:`check_text`): each raises
one :class:`~multimodal.errors.InputError` naming the argument, an excerpt of the value and
what is accepted, so the command line, ``replay`` and the Python API refuse alike.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import unicodedata
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch

from multimodal.checkpoint import LoadedCheckpoint, load_checkpoint
from multimodal.errors import CheckpointError, InputError, excerpt

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1
MAX_SAMPLES = 4096  # samples of one call: more is a typo, not a batch that fits
# Control characters a prompt may hold: a subprocess's argv cannot carry NUL, and the files
# the settings go into (JSON sidecars, PNG text chunks) are no place for the rest.
ALLOWED_CONTROLS = "\t\n\r"


# -- argument checks ---------------------------------------------------------------------------
def _refuse(name: str, value: Any, accepted: str) -> InputError:
    return InputError(f"{name} must be {accepted}, got {excerpt(value)}")


def _range_text(lo: Any, hi: Any, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        if isinstance(lo, int) and isinstance(hi, int) and not (lo_open or hi_open):
            return f"in {lo}..{hi}"
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, *,
              optional: bool = False, accepted: str | None = None) -> int | None:
    """``value`` as an ``int`` when it is an integer (not a bool) in ``lo..hi``; ``None``
    passes when ``optional``.

    Raises:
        InputError: naming ``name``, an excerpt of ``value`` and ``accepted`` (default: the
            range).
    """
    if value is None and optional:
        return None
    what = accepted or " ".join(filter(None, ["an integer", _range_text(lo, hi)]))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _refuse(name, value, what + (" or None" if optional and not accepted else ""))
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _refuse(name, value, what)
    return value


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, optional: bool = False,
                accepted: str | None = None) -> float | None:
    """``value`` as a finite ``float`` when it is a real number (not a bool) within
    ``[lo, hi]`` (``lo_open``/``hi_open``: the bound itself excluded); ``None`` passes when
    ``optional``.

    Raises:
        InputError: not a number, not finite (``inf``, ``nan``), or out of range; the message
            names ``name``, an excerpt of ``value`` and ``accepted`` (default: the range).
    """
    if value is None and optional:
        return None
    bounded = lo is not None and hi is not None  # "in [lo, hi]" says finite
    what = accepted or " ".join(filter(None, ["a number" if bounded else "a finite number",
                                              _range_text(lo, hi, lo_open, hi_open)]))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _refuse(name, value, what + (" or None" if optional and not accepted else ""))
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an int too large for a float
        raise _refuse(name, value, what) from None
    if not math.isfinite(number):
        raise _refuse(name, value, what)
    if lo is not None and (number < lo or (lo_open and number == lo)):
        raise _refuse(name, value, what)
    if hi is not None and (number > hi or (hi_open and number == hi)):
        raise _refuse(name, value, what)
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is ``True`` or ``False`` (a number is not a switch).

    Raises:
        InputError: anything else.
    """
    if not isinstance(value, bool):
        raise _refuse(name, value, "True or False")
    return value


def check_callable(name: str, value: Any, form: str, *, optional: bool = True) -> Any:
    """``value`` when it is callable (``None`` passes when ``optional``): a hook checked
    before any work rather than failing with a bare ``TypeError`` inside a loop.

    Args:
        form: How it is called, e.g. ``"f(pipe, step_index, timestep, callback_kwargs) ->
            dict"``.

    Raises:
        InputError: ``"{name} must be a callable {form}, got ..."``.
    """
    if value is None and optional:
        return None
    if not callable(value):
        raise _refuse(name, value, f"a callable {form}")
    return value


def check_output_type(value: Any, accepted: tuple[str, ...]) -> str:
    """``value`` when it is one of ``accepted`` (the forms a pipeline's outputs take).

    Raises:
        InputError: naming the accepted ones.
    """
    if not isinstance(value, str) or value not in accepted:
        raise InputError(f"output_type must be one of {', '.join(accepted)}, got "
                         f"{excerpt(value)}")
    return value


def check_num_samples(value: Any) -> int:
    """``value`` when it is an integer in ``1 .. MAX_SAMPLES``.

    Raises:
        InputError: a bool, a non-integer, or out of range.
    """
    return check_int("num_samples", value, 1, MAX_SAMPLES,
                     accepted=f"an integer >= 1 (at most {MAX_SAMPLES})")


def check_seed(seed: Any) -> int | None:
    """``seed`` as an ``int`` in ``0 .. 2**64 - 1`` (what ``torch.Generator.manual_seed``
    takes), or ``None`` (a random seed is drawn and recorded).

    Raises:
        InputError: a bool, a non-integer, a negative seed or one beyond 64 bits.
    """
    return check_int("seed", seed, 0, MAX_SEED, optional=True,
                     accepted=f"an integer in 0..2**64-1 ({MAX_SEED}) or None")


def check_text(name: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` when it is a string every output file and subprocess can carry: no NUL or
    other control character (but tab and newlines) and no lone surrogate (what Python makes
    of bytes that are not UTF-8); ``None`` passes when ``optional``.

    Raises:
        InputError: not a string, or a character it cannot hold (named with its position).
    """
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _refuse(name, value, "a string" + (" or None" if optional else ""))
    for i, ch in enumerate(value):
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in ALLOWED_CONTROLS) or category == "Cs":
            kind = "a lone surrogate (not UTF-8)" if category == "Cs" else "a control character"
            raise InputError(f"{name} holds {kind} {ch!r} at position {i}, which the output "
                             f"files cannot carry; got {excerpt(value)}")
    return value


def check_prompts(prompt: Any, name: str = "prompt") -> tuple[list[str], bool]:
    """``(prompts, is_list)``: the prompts of a call, ``prompt`` alone or the items of a list
    (diffusers' and transformers' batch of prompts), each checked as :func:`check_text` checks
    it (an item named ``prompt[i]``).

    Raises:
        InputError: not a string or a list (tuple) of strings; an empty list; an item that
            is not a string or holds a character the files cannot carry.
    """
    accepted = "a string or a non-empty list of strings (one output group per prompt)"
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise InputError(f"{name} is an empty list; give {accepted}")
        for i, item in enumerate(prompt):
            if not isinstance(item, str):
                raise _refuse(f"{name}[{i}]", item, f"a string ({name} must be {accepted})")
            check_text(f"{name}[{i}]", item)
        return list(prompt), True
    if not isinstance(prompt, str):
        raise _refuse(name, prompt, accepted)
    return [check_text(name, prompt)], False


def locate_sample(prompt: str | list[str], counts: list[int] | None, index: int, total: int,
                  noun: str = "sample") -> tuple[int | None, int, int]:
    """Where output ``index`` of a call sits: ``(prompt index or None, sample within its
    prompt, samples of that prompt)``; ``None`` and ``total`` for a call with one prompt
    (``prompt`` a string), else found through ``counts``, the samples of each prompt.

    Raises:
        IndexError: ``index`` past the last sample, saying how many there are.
    """
    if not isinstance(prompt, list):
        return None, index, total
    start = 0
    for group, count in enumerate(counts or []):
        if index < start + count:
            return group, index - start, count
        start += count
    raise IndexError(f"{noun} {index} of {start}")


def per_prompt(name: str, value: Any, count: int) -> list | None:
    """``value`` as a list of one item per prompt when it is a list (tuple), else ``None``
    (one value for every prompt).

    Raises:
        InputError: a list whose length is not ``count``, the number of prompts.
    """
    if not isinstance(value, (list, tuple)):
        return None
    if len(value) != count:
        raise InputError(f"{name} has {len(value)} items but there are {count} prompts; give "
                         "one per prompt (or one value for all)")
    return list(value)


def samples_per_prompt(num_samples: Any, alias: Any, alias_name: str) -> Any:
    """``num_samples``, or another library's name of it (diffusers' ``num_images_per_prompt``,
    ``num_videos_per_prompt``, ``num_waveforms_per_prompt``; transformers'
    ``num_return_sequences``) when that is given (not ``None``).

    Raises:
        InputError: both given, with different values.
    """
    if alias is None:
        return num_samples
    if num_samples != 1 and num_samples != alias:
        raise InputError(f"num_samples={num_samples!r} and {alias_name}={alias!r} name the same "
                         "setting; give one of them")
    return alias


def derive_seed(seed: int, index: int) -> int:
    """A 64-bit seed for sample ``index`` of a call seeded with ``seed`` (SHA-256 of both:
    unrelated to ``seed + 1``'s samples)."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index`` of a list call seeded with ``seed``: ``seed`` itself for
    the first prompt (so a prompt alone and first in a list agree), a SHA-256 derivation for
    the others (recorded with their images, so each replays alone)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/prompt/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sample_generators(seed: int | None, generator: torch.Generator, num_samples: int
                      ) -> list[torch.Generator]:
    """One CPU generator per sample for the draws a sampler makes after the initial noise (a
    scheduler step's noise), so sample ``i`` is the same whatever ``num_samples`` is.

    Seeded with :func:`derive_seed` from ``seed``; with a caller's ``generator`` and no seed,
    from a number drawn from a copy of it (``generator`` itself is not advanced).
    """
    if seed is None:
        copy = torch.Generator(device=generator.device).set_state(generator.get_state())
        seed = int(torch.randint(0, 2**62, (), generator=copy).item())
    return [torch.Generator().manual_seed(derive_seed(seed, i)) for i in range(num_samples)]


def check_seed_or_generator(seeds: list[Any], generator: Any) -> None:
    """Refuse a call given both a seed and a generator (one, or diffusers' list of them): the
    samples would come from the generator while the outputs record the seed, so a replay with
    that seed would make other samples.

    Args:
        seeds: The call's per-prompt seeds, all ``None`` unless a seed was given.
        generator: The call's ``generator`` argument.

    Raises:
        InputError: both given, saying which to keep.
    """
    if generator is None or all(seed is None for seed in seeds):
        return
    if isinstance(generator, (list, tuple)):
        raise InputError("seed and a list of generators were both given; give one: each "
                         "generator seeds its own sample")
    raise InputError("seed and a generator were both given; give one: the generator would "
                     "draw the samples while the outputs record the seed, so a replay with "
                     "the seed would make other samples")


def check_generators(generator: Any, total: int, seeds: list[Any]) -> list[torch.Generator] | None:
    """diffusers' list of generators: one CPU ``torch.Generator`` per sample of the call
    (``total`` of them, prompt-major), sample ``i`` drawing from ``generator[i]`` alone;
    ``None`` when ``generator`` is not a list (tuple). A single generator given with a seed
    is refused too (:func:`check_seed_or_generator`), so every pipeline that checks its
    generators here refuses both alike.

    Raises:
        InputError: a list whose length is not ``total``; an item that is not a CPU
            ``torch.Generator``; a seed given as well as a generator or a list of them
            (``seeds``: the call's per-prompt seeds, all ``None`` unless a seed was given),
            since the generators are the samples' seeds.
    """
    if not isinstance(generator, (list, tuple)):
        check_seed_or_generator(seeds, generator)
        return None
    if len(generator) != total:
        raise InputError(f"generator is a list of {len(generator)} but the call makes {total} "
                         "sample(s) (prompts x samples per prompt); give one torch.Generator "
                         "per sample, or one torch.Generator for all")
    check_seed_or_generator(seeds, generator)
    for i, item in enumerate(generator):
        if not isinstance(item, torch.Generator):
            raise _refuse(f"generator[{i}]", item, "a torch.Generator")
        seeded(None, item)  # on the CPU, as a single generator must be
    return list(generator)


def initial_noise(shape: tuple[int, ...], counts: list[int], seeds: list[int | None],
                  generator: torch.Generator | list[torch.Generator] | None
                  ) -> tuple[torch.Tensor, list[torch.Generator], list[int | None]]:
    """The draws of a diffusion call, each prompt's as it would draw alone.

    Args:
        shape: One sample's noise shape, e.g. (l, y, x) or (t, l, y, x).
        counts: Samples of each prompt.
        seeds: Each prompt's seed (``None``: drawn, or the caller's generator's).
        generator: ``None``, one CPU generator (every prompt draws from it in turn), or one
            per sample (:func:`check_generators`): sample ``i`` draws from ``generator[i]``
            alone, as a call with ``generator=generator[i]`` and one sample does.

    Returns:
        ``(noise (s, *shape) float32 on the CPU, one step generator per sample
        (:func:`sample_generators`), each prompt's seed as used)``.
    """
    noises, step_generators, used = [], [], []
    if isinstance(generator, list):
        for gen in generator:
            step_generators += sample_generators(None, gen, 1)
            noises.append(torch.randn((1, *shape), generator=gen))
        return torch.cat(noises), step_generators, [None] * len(counts)
    for count, seed in zip(counts, seeds):
        gen, seed = seeded(seed, generator)
        step_generators += sample_generators(seed, gen, count)
        noises.append(torch.randn((count, *shape), generator=gen))
        used.append(seed)
    return torch.cat(noises), step_generators, used


def draw_seed() -> int:
    """A random seed from torch's global generator (recorded with outputs, so a run without
    ``seed`` can still be replayed)."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def seeded(seed: int | None, generator: torch.Generator | None = None
           ) -> tuple[torch.Generator, int | None]:
    """``(generator, seed)``: ``generator`` itself when one is given (``seed`` returned as is),
    else a CPU generator seeded with ``seed``, drawn by :func:`draw_seed` when ``None``.

    Raises:
        InputError: a seed :func:`check_seed` refuses, or a ``generator`` that is not one or
            not on the CPU.
    """
    seed = check_seed(seed)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise _refuse("generator", generator, "a torch.Generator or None")
        if generator.device.type != "cpu":
            # diffusers draws on the CPU for MPS too: the same seed, the same noise anywhere
            raise InputError(f"generator is on {generator.device}; give a CPU torch.Generator "
                             "(the pipelines draw their noise on the CPU and move it to the "
                             "device, so a seed gives the same draws on every device)")
        return generator, seed
    if seed is None:
        seed = draw_seed()
    return torch.Generator().manual_seed(seed), seed


# torch_dtype names load_pipeline takes (diffusers' and transformers' spellings).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16}


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` as one of the dtypes the pipelines run in, ``torch.float32``,
    ``torch.float16`` or ``torch.bfloat16`` (a ``torch.dtype`` or a name of :data:`DTYPES`).
    Other floating dtypes (float64, the float8 kinds) are refused as int8 is: the networks and
    the loops' casts are made and checked for these three.

    Raises:
        InputError: anything else, naming what is accepted.
    """
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise _refuse("torch_dtype", dtype, "torch.float32, torch.float16 or torch.bfloat16 (or "
                  f"one of {', '.join(map(repr, DTYPES))})")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (a name :func:`check_dtype` takes back)."""
    return str(dtype).removeprefix("torch.")


def runtime_settings(pipe: Any) -> dict[str, str]:
    """How ``pipe`` runs, where that changes the numbers, as its outputs record it:
    ``torch_dtype`` (its networks' dtype, e.g. ``"bfloat16"``) when not float32, and
    ``device`` (the kind: ``"cuda"``, ``"mps"``) when not the CPU. A float32 run on the CPU
    records neither, as files made before they were recorded; ``multimodal replay`` loads the
    recorded dtype and warns on another device kind."""
    settings = {}
    dtype = getattr(pipe, "dtype", torch.float32)
    if isinstance(dtype, torch.dtype) and dtype != torch.float32:
        settings["torch_dtype"] = dtype_name(dtype)
    device = getattr(pipe, "device", None)
    if device is not None and torch.device(device).type != "cpu":
        settings["device"] = torch.device(device).type
    return settings


def check_device(device: Any) -> None:
    """Raise :class:`InputError` unless ``device`` (a name or a ``torch.device``) is
    ``"cpu"``, ``"cuda"``/``"cuda:N"`` with CUDA available, or ``"mps"``/``"mps:0"`` with MPS
    available (Apple silicon and a torch built with MPS)."""
    name = str(device)
    kind, colon, index = name.partition(":")
    if not (name == "cpu" or (kind in ("cuda", "mps") and (not colon or index.isdigit()))):
        raise InputError(f"unknown device {name!r}; use 'cpu', 'cuda' (or 'cuda:N') or 'mps'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but CUDA is not available here; use 'cpu'")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {name!r} asked for, but MPS is not available here (it "
                             "needs Apple silicon and a torch built with MPS); use 'cpu'")
        if colon and int(index) != 0:
            raise InputError(f"device {name!r}: MPS has one device, 'mps' (or 'mps:0')")


def check_compile(device: Any = "cpu", backend: Any = "inductor") -> None:
    """Refuse, before any work, a ``torch.compile`` that cannot run here: Python or platform
    without TorchDynamo, an unknown backend, inductor for a CPU without a C++ compiler
    (inductor writes C++ for CPU code and builds it with ``g++``/``clang++``, or ``$CXX``), or
    inductor for CUDA without Triton (its GPU kernels are Triton's).

    Raises:
        InputError: naming what is missing and what would work.
    """
    import torch._dynamo  # deferred: loads the compiler stack, only when compiling

    if not torch._dynamo.is_dynamo_supported():
        raise InputError("torch.compile is not supported by this Python or platform (see "
                         "torch._dynamo.is_dynamo_supported()); load the pipeline without "
                         "compile")
    if callable(backend):
        return
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise InputError(f"unknown torch.compile backend {excerpt(backend)}; this torch has: "
                         f"{', '.join(known)}")
    if backend == "inductor" and torch.device(device).type == "cpu":
        from torch._inductor import cpp_builder  # deferred, as above

        try:
            cpp_builder.get_cpp_compiler()
        except (RuntimeError, OSError):  # torch._inductor.exc.InvalidCxxCompiler: none found
            raise InputError(
                "torch.compile's inductor backend needs a C++ compiler for CPU code and found "
                "none; install g++ (or clang++, or set CXX), or compile with "
                "backend='aot_eager' (no speed-up), or leave compile off") from None
    if backend == "inductor" and torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton  # deferred, as above

        if not has_triton():
            raise InputError("torch.compile's inductor backend needs Triton for CUDA and it is "
                             "not installed; pip install triton, or compile with "
                             "backend='aot_eager' (no speed-up), or leave compile off")


def require_parts(ckpt, task: str, found: dict[str, bool], needs: str) -> None:
    """Raise :class:`CheckpointError` naming every part of ``found`` (config key -> present)
    that the checkpoint ``ckpt`` lacks, and what ``task`` ``needs`` (a phrase, with the config
    to train)."""
    missing = [key for key, present in found.items() if not present]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path} has no {', '.join(missing)}; "
                              f"{task} needs {needs}")


def checkpoint_part(ckpt: LoadedCheckpoint, key: str) -> Any:
    """The part of a loaded checkpoint at config key ``key`` (``"backbone"``,
    ``"decoders.NAME"`` or ``"tokenizers.NAME"``), or ``None`` when it has none."""
    if key == "backbone":
        return ckpt.model.backbone
    kind, _, name = key.partition(".")
    if kind == "decoders":
        return ckpt.model.decoders[name] if name in ckpt.model.decoders else None
    if kind == "tokenizers":
        return ckpt.tokenizers.get(name)
    raise ValueError(f"unknown checkpoint part {key!r}")  # a bug in a pipeline's table


class Pipeline:
    """Base of the pipelines: one :meth:`from_checkpoint` driven by the class's ``parts``.

    Class attributes:
        task: The task name it is registered under.
        produces: What its outputs hold, the name of a spec whose writer writes them
            (``"text"``, ``"image"``, ``"audio"``, ``"video"``, ...).
        parts: Constructor argument -> config key of the checkpoint part it takes; a tuple of
            keys takes the first the checkpoint has (``("tokenizers.video",
            "tokenizers.image")``). Tokenizers with a ``to`` method are moved to the device.
        needs: What the task needs, said when parts are missing (with the config to train).
    """

    task: ClassVar[str] = ""
    produces: ClassVar[str] = ""
    parts: ClassVar[dict[str, str | tuple[str, ...]]] = {}
    needs: ClassVar[str] = ""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the networks run in: that of the first floating parameter of the first
        ``torch.nn.Module`` part (float32 when there is none)."""
        for name in self.parts:
            part = getattr(self, name, None)
            if isinstance(part, torch.nn.Module):
                for param in part.parameters():
                    if param.is_floating_point():
                        return param.dtype
        return torch.float32

    def to(self, *args: Any, device: str | torch.device | None = None,
           dtype: torch.dtype | str | None = None):
        """Move the pipeline's networks, as diffusers' ``pipe.to("cuda", torch.float16)``:
        positional arguments are a device and/or a dtype.

        Every ``torch.nn.Module`` part goes to ``device`` and ``dtype``; other parts with a
        ``to`` method (the tokenizers, the image VAE, the vocoders) to ``device`` only: they
        keep float32 and the loops cast at their borders (the diffusion loops keep the
        scheduler's latents in float32 and run the denoiser in ``dtype``). bf16 and fp16 run
        on CPUs and GPUs (and MPS); fp16 is a GPU format: torch's CPU kernels compute it
        correctly but slowly (a 1024x1024 matmul 70x slower than float32 on the CPU measured
        in ``docs/design.md``), so fp16 on a CPU warns, as diffusers does, and bf16 is the
        CPU's half precision. ``device`` is checked as :func:`check_device` checks it.

        Returns:
            The pipeline itself.

        Raises:
            InputError: a dtype that is not a floating one; an unknown or unavailable
                device.
        """
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        if dtype is not None:
            dtype = check_dtype(dtype)
        if device is not None:
            check_device(device)
        on_cpu = False
        for name in self.parts:
            part = getattr(self, name, None)
            if isinstance(part, torch.nn.Module):
                part.to(device=device, dtype=dtype)
                first = next(part.parameters(), None)
                on_cpu = on_cpu or (first is not None and first.device.type == "cpu")
            elif device is not None and hasattr(part, "to"):
                part.to(device)
        if dtype == torch.float16 and on_cpu:
            warnings.warn("float16 on a CPU computes correctly but slowly (torch's CPU kernels "
                          "for it are many times slower than float32's); on a CPU use "
                          "torch.bfloat16 (CLI: --torch-dtype bf16)", stacklevel=2)
        return self

    def compile(self, **compile_kwargs: Any):
        """Compile the pipeline's networks in place with :func:`torch.compile`, as
        transformers' ``model.compile()`` and diffusers' ``pipe.unet =
        torch.compile(pipe.unet)`` do: every ``torch.nn.Module`` part (the backbone, the
        denoiser, the LM head, captioner or acoustic decoder) through
        ``module.compile(**compile_kwargs)``, and every other part with a ``compile`` method
        through it (the audio tokenizer: its learned vocoders).

        In place: each module keeps its class and its ``state_dict`` keys (no ``_orig_mod.``
        prefix), so the pipeline moves, casts and exports as before; outputs equal the
        uncompiled ones up to float rounding. Nothing compiles here: the first call of each
        new shape does (seconds to minutes on a CPU, once per process), later calls run the
        compiled code. Worth it for many calls (a server), not for one.

        Args:
            **compile_kwargs: ``torch.compile``'s keyword arguments: ``backend`` (default
                ``"inductor"``; ``"aot_eager"`` or ``"eager"`` trace without generating
                code), ``mode``, ``dynamic``, ``fullgraph``, ``options``.

        Returns:
            The pipeline itself.

        Raises:
            InputError: ``torch.compile`` cannot run here (see :func:`check_compile`).
        """
        device = getattr(self, "device", "cpu")
        check_compile(device, compile_kwargs.get("backend", "inductor"))
        for name in self.parts:
            part = getattr(self, name, None)
            if isinstance(part, torch.nn.Module) or hasattr(part, "compile"):
                part.compile(**compile_kwargs)
        return self

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu"):
        """Load from a checkpoint (or a run directory's newest one).

        Raises:
            CheckpointError: unusable checkpoint, or one without the parts the task needs.
        """
        return cls.from_loaded(load_checkpoint(path, device=device), device=device)

    @classmethod
    def from_loaded(cls, ckpt: LoadedCheckpoint, *, device: str = "cpu"):
        """Build from an already loaded checkpoint (see :meth:`from_checkpoint`).

        Raises:
            CheckpointError: it lacks a part the task needs (every missing part named).
        """
        found, present = {}, {}
        for arg, keys in cls.parts.items():
            keys = (keys,) if isinstance(keys, str) else keys
            part = next((p for p in (checkpoint_part(ckpt, k) for k in keys) if p is not None),
                        None)
            label = keys[0] if len(keys) == 1 else \
                f"{keys[0]} (or .{', .'.join(k.partition('.')[2] for k in keys[1:])})"
            present[label] = part is not None
            if part is not None and keys[0].startswith("tokenizers.") and hasattr(part, "to"):
                part = part.to(device)
            found[arg] = part
        require_parts(ckpt, cls.task, present, cls.needs)
        return cls(**found, checkpoint_id=ckpt.checkpoint_id)
