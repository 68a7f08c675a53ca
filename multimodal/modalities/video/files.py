"""Video files: MP4 (H.264 through imageio-ffmpeg), GIF (Pillow) and a PNG strip of the frames.

imageio and its ffmpeg binary are imported only when a file is written or read, so a missing
ffmpeg never breaks ``import multimodal``: :func:`ffmpeg_available` tells, and the pipeline
falls back to GIF with a warning.

GIF stores frame durations in hundredths of a second: :func:`gif_timing` gives each frame
the difference of the rounded frame boundaries (15 fps: 7, 7, 6, 7, ... cs), so the clip
lasts ``frames / fps`` to the centisecond, and its mean rate is recorded (``gif_fps``) where it
is not ``fps`` exactly (it is for 1, 2, 4, 5, 10, 20, 25, 50 and 100 frames per second and
whole seconds of others). Browsers play durations under 2 cs as 10 cs, so rates above 50 fps
are written with a warning. Pillow merges consecutive identical frames into one longer frame.

H.264 (yuv420p) frames are whole 16x16 macro-blocks: frames of other sizes are padded with
black at the bottom and right (:func:`mp4_padding`), their size recorded (``frame_size``) with
the clip's settings, and :func:`read_video_frames` crops them back.

Axes: t frames, h w height and width, c channels.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from multimodal.data.video import read_video_file
from multimodal.errors import DataError, InputError

MP4_CRF = 18  # x264 quality: visually lossless for these small grayscale frames
MACRO_BLOCK = 16  # H.264 codes whole 16x16 blocks
GIF_MAX_SMOOTH_FPS = 50.0  # 2 cs a frame: browsers play shorter GIF frames as 10 cs


def gif_timing(num_frames: int, fps: float) -> tuple[list[int], float]:
    """``(durations, real_fps)``: each frame's GIF duration in centiseconds (differences of the
    rounded frame boundaries ``round(k * 100 / fps)``, so the total is the clip's length to
    the centisecond) and the mean rate those make, rounded to 3 decimals (``fps`` itself when
    exact)."""
    bounds = [round(k * 100 / fps) for k in range(num_frames + 1)]
    durations = [max(1, b - a) for a, b in zip(bounds, bounds[1:])]
    total = sum(durations)
    real = num_frames * 100 / total if total else float(fps)
    return durations, (float(fps) if abs(real - fps) < 1e-9 else round(real, 3))


def mp4_padding(size: tuple[int, int]) -> tuple[int, int] | None:
    """The ``(h, w)`` an MP4 holds frames of ``size`` ``(h, w)`` at (padded up to whole
    macro-blocks), or ``None`` when they need no padding."""
    h, w = (int(x) for x in size)
    padded = (-(-h // MACRO_BLOCK) * MACRO_BLOCK, -(-w // MACRO_BLOCK) * MACRO_BLOCK)
    return None if padded == (h, w) else padded


def _pad_to_blocks(frames: np.ndarray) -> np.ndarray:
    """(t, h, w, 3) frames padded with black at the bottom and right to whole macro-blocks."""
    padded = mp4_padding(frames.shape[1:3])
    if padded is None:
        return frames
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, padded[0] - h), (0, padded[1] - w), (0, 0)))


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg and its ffmpeg binary can be used."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # not installed, or no binary for this platform
        return False


def _rgb(frames: np.ndarray) -> np.ndarray:
    """(t, h, w) or (t, h, w, c) uint8 -> (t, h, w, 3) uint8."""
    if frames.ndim == 3:
        return np.repeat(frames[..., None], 3, axis=-1)
    return frames if frames.shape[-1] == 3 else np.repeat(frames[..., :1], 3, axis=-1)


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Encode (t, h, w[, c]) uint8 frames as an H.264 MP4 (yuv420p) at ``fps``.

    Sides that are not multiples of 16 are padded with black at the bottom and right (never
    stretched); :func:`read_video_frames` crops them back given the ``frame_size`` recorded.

    Raises:
        RuntimeError: ffmpeg is not available (see :func:`ffmpeg_available`).
    """
    import imageio.v2 as imageio

    with tempfile.TemporaryDirectory(prefix="multimodal-mp4-") as tmp:
        path = os.path.join(tmp, "clip.mp4")
        writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=16,
                                    output_params=["-crf", str(MP4_CRF)],
                                    ffmpeg_log_level="error")
        try:
            for frame in _pad_to_blocks(_rgb(frames)):
                writer.append_data(frame)
        finally:
            writer.close()
        return Path(path).read_bytes()


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Encode (t, h, w[, c]) uint8 frames as a looping GIF at ``fps``, its frame durations from
    :func:`gif_timing` (see the module note on GIF timing); above 50 fps with a warning."""
    import warnings

    from PIL import Image

    if fps > GIF_MAX_SMOOTH_FPS:
        warnings.warn(f"a GIF at {fps:g} fps has frames shorter than 2/100 s, which browsers "
                      f"play as 1/10 s; use at most {GIF_MAX_SMOOTH_FPS:g} fps for GIFs",
                      stacklevel=3)
    images = [Image.fromarray(f) for f in (frames if frames.ndim == 3 or frames.shape[-1] == 3
                                           else frames[..., 0])]
    durations = [10 * cs for cs in gif_timing(len(images), fps)[0]]  # ms; Pillow stores ms // 10
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=durations if len(set(durations)) > 1 else durations[0], disposal=1)
    return buffer.getvalue()


def clip_bytes(frames: np.ndarray, fps: float) -> dict[str, bytes]:
    """One clip's files by suffix: ``{".mp4": ..., ".gif": ...}`` (t, h, w[, c]) uint8 frames
    at ``fps``; without ffmpeg only the GIF, with a warning."""
    import warnings

    if not ffmpeg_available():
        warnings.warn("ffmpeg is not available (imageio-ffmpeg found no binary); writing "
                      "GIFs only", stacklevel=2)
        return {".gif": gif_bytes(frames, fps)}
    return {".mp4": mp4_bytes(frames, fps), ".gif": gif_bytes(frames, fps)}


def frame_strip(frames: np.ndarray) -> np.ndarray:
    """(t, h, w[, c]) frames side by side: (h, t * w[, c])."""
    return np.concatenate(list(frames), axis=1)


def read_video_info(path: str | Path) -> dict:
    """``{"frames": int, "fps": float, "size": (w, h)}`` of an MP4 or GIF written here.

    Raises:
        InputError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image, ImageSequence

            with Image.open(path) as image:
                durations = [f.info.get("duration", 0) for f in ImageSequence.Iterator(image)]
                size = image.size
            total = sum(durations)
            return {"frames": len(durations), "size": size,
                    "fps": 1000 * len(durations) / total if total else 0.0}
        import imageio.v2 as imageio

        with imageio.get_reader(str(path), "ffmpeg") as reader:
            meta = reader.get_meta_data()
            return {"frames": reader.count_frames(), "fps": float(meta["fps"]),
                    "size": tuple(meta["size"])}
    except Exception as exc:  # imageio and Pillow raise many kinds
        raise InputError(f"cannot read video {path}: {type(exc).__name__}: {exc}") from None


def read_video_frames(path: str | Path) -> np.ndarray:
    """The frames of an MP4 or GIF as (t, h, w, 3) uint8; an MP4 whose settings (the JSON of
    the same stem) record a ``frame_size`` ``[h, w]`` is cropped back to it (see
    :func:`mp4_bytes`).

    Raises:
        InputError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        frames = read_video_file(path)
    except DataError as exc:
        raise InputError(str(exc)) from None
    size = _recorded_frame_size(path) if path.suffix.lower() == ".mp4" else None
    return frames if size is None else frames[:, : size[0], : size[1]]


def _recorded_frame_size(path: Path) -> tuple[int, int] | None:
    """``frame_size`` ``(h, w)`` from the sidecar JSON of ``path``, if it records one."""
    import json

    try:
        size = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["frame_size"]
        return int(size[0]), int(size[1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def av_mp4_bytes(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int) -> bytes:
    """Encode (t, h, w[, c]) uint8 frames and a mono float waveform (in [-1, 1]) as one MP4:
    H.264 video (yuv420p) at ``fps`` and an AAC sound track, through imageio-ffmpeg.

    The caller makes the two equally long (see :func:`multimodal.pipelines.composed.mux`);
    AAC adds its usual encoder delay of about 1,024 samples (64 ms at 16 kHz).

    Raises:
        RuntimeError: ffmpeg is not available (see :func:`ffmpeg_available`).
    """
    import imageio_ffmpeg
    import soundfile

    frames = np.ascontiguousarray(_pad_to_blocks(_rgb(frames)))
    with tempfile.TemporaryDirectory(prefix="multimodal-av-") as tmp:
        wav, path = os.path.join(tmp, "sound.wav"), os.path.join(tmp, "clip.mp4")
        soundfile.write(wav, np.asarray(audio, dtype=np.float32), sample_rate,
                        subtype="PCM_16")
        height, width = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(
            path, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            macro_block_size=16, ffmpeg_log_level="error", audio_path=wav, audio_codec="aac",
            output_params=["-crf", str(MP4_CRF)])
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(frame)
        writer.close()
        return Path(path).read_bytes()


def read_av_info(path: str | Path) -> dict:
    """Streams of an MP4: ``{"video_streams", "audio_streams", "frames", "fps",
    "video_seconds", "audio_seconds", "sample_rate"}``, from ffmpeg's own decoding (the
    audio length is that of the decoded sound track).

    Raises:
        InputError: the file is missing or ffmpeg cannot read it.
    """
    import re
    import subprocess

    import imageio_ffmpeg
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    probe = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True,
                           text=True)
    streams = re.findall(r"Stream #\d+:\d+.*?: (Video|Audio):", probe.stderr)
    if not streams:
        raise InputError(f"cannot read video {path}: {probe.stderr.strip()[-300:]}")
    info = {"video_streams": streams.count("Video"), "audio_streams": streams.count("Audio")}
    video = read_video_info(path)
    info.update(frames=video["frames"], fps=video["fps"],
                video_seconds=video["frames"] / video["fps"] if video["fps"] else 0.0,
                audio_seconds=0.0, sample_rate=0)
    if info["audio_streams"]:
        decoded = subprocess.run([exe, "-v", "error", "-i", str(path), "-vn", "-f", "wav", "-"],
                                 capture_output=True)
        audio, rate = soundfile.read(io.BytesIO(decoded.stdout), dtype="float32")
        info.update(audio_seconds=len(audio) / rate, sample_rate=rate)
    return info
