"""espeak-ng as the text front end of speech: text -> IPA phonemes (as Piper and VITS use it).

``phonemize("Hello there, seven", "en-us")`` -> ``"həlˈoʊ ðˈɛɹ , sˈɛvən"``: one line of IPA per
clause from ``espeak-ng -q --ipa``, joined by ``" , "`` so a clause break is a token (a pause).
Only the language part of a voice (``en-us`` of ``en-us+f3``) changes the phonemes.

It sits with the data readers, which phonemize their transcripts, one floor below the audio
modality's ``espeak_phonemes`` tokenizer, which maps the IPA to ids.
"""

from __future__ import annotations

import subprocess

from multimodal.errors import DataError

DEFAULT_VOICES = ("en-us", "en-us+f3", "en-gb+m3", "en-us+m7")


def language_of(voice: str) -> str:
    """``"en-us+f3"`` -> ``"en-us"``."""
    return voice.split("+", 1)[0]


def phonemize(text: str, voice: str = "en-us") -> str:
    """IPA phonemes of ``text`` from espeak-ng in the language of ``voice``.

    Raises:
        DataError: espeak-ng is missing or does not know the voice.
    """
    try:
        out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", language_of(voice), "--", text],
                             capture_output=True, check=True, timeout=60)
    except OSError:
        raise DataError("espeak-ng is not installed; install it with "
                        "`apt-get install espeak-ng`") from None
    except subprocess.SubprocessError as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
        raise DataError(f"espeak-ng failed for voice {voice!r}: {detail or exc}") from None
    lines = out.stdout.decode("utf-8", "replace").splitlines()
    return " , ".join(line.strip() for line in lines if line.strip())
