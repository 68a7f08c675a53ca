"""espeak-ng as the text front end of speech: text -> IPA phonemes (as Piper and VITS use it).

``phonemize("Hello there, seven", "en-us")`` -> ``"həlˈoʊ ðˈɛɹ , sˈɛvən"``: one line of IPA per
clause from ``espeak-ng -q --ipa``, joined by ``" , "`` so a clause break is a token (a pause).
Only the language part of a voice (``en-us`` of ``en-us+f3``) changes the phonemes.

espeak-ng reads letters of a script its voice does not speak letter-name by letter-name
("Chinese letter ..."): :func:`foreign_letters` finds them (for the voices of Latin-script
languages), so the speech pipeline can refuse such a prompt instead.

It sits with the data readers, which phonemize their transcripts, one floor below the audio
modality's ``espeak_phonemes`` tokenizer, which maps the IPA to ids.
"""

from __future__ import annotations

import errno
import subprocess
import unicodedata

from multimodal.errors import DataError, InputError

DEFAULT_VOICES = ("en-us", "en-us+f3", "en-gb+m3", "en-us+m7")
# Languages (the part of a voice before "-") written in the Latin script.
LATIN_SCRIPT_LANGUAGES = frozenset(
    "af ca cs cy da de en eo es et eu fi fr ga gd hr hu id is it lt lv ms mt nl no pl pt ro sk "
    "sl sq sv sw tr vi".split())


def language_of(voice: str) -> str:
    """``"en-us+f3"`` -> ``"en-us"``."""
    return voice.split("+", 1)[0]


def foreign_letters(text: str, voice: str) -> list[str]:
    """The letters of ``text`` outside the script of ``voice``'s language, in order of first
    appearance: for a Latin-script language (:data:`LATIN_SCRIPT_LANGUAGES`) every letter whose
    Unicode name is not LATIN (Chinese, Cyrillic, Greek, ...); for other languages none (not
    checked)."""
    if language_of(voice).split("-", 1)[0].lower() not in LATIN_SCRIPT_LANGUAGES:
        return []
    found: dict[str, None] = {}
    for ch in text:
        if unicodedata.category(ch).startswith("L") and \
                not unicodedata.name(ch, "").startswith("LATIN"):
            found.setdefault(ch)
    return list(found)


def phonemize(text: str, voice: str = "en-us") -> str:
    """IPA phonemes of ``text`` from espeak-ng in the language of ``voice``.

    Raises:
        DataError: espeak-ng is missing or does not know the voice, or ``text`` or ``voice``
            holds a NUL character (a command line cannot carry one).
        InputError: ``text`` is too long for a command line (above 128 KiB).
    """
    if "\0" in text or "\0" in voice:
        raise DataError("espeak-ng cannot read a NUL character (text and voice go on its "
                        "command line)")
    try:
        out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", language_of(voice), "--", text],
                             capture_output=True, check=True, timeout=60)
    except FileNotFoundError:
        raise DataError("espeak-ng is not installed; install it with "
                        "`apt-get install espeak-ng`") from None
    except OSError as exc:
        if exc.errno == errno.E2BIG:  # one argument is at most 128 KiB on Linux
            raise InputError(f"a text of {len(text)} characters is too long for espeak-ng's "
                             "command line; give it in shorter pieces (sentences)") from None
        raise DataError(f"cannot run espeak-ng: {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
        raise DataError(f"espeak-ng failed for voice {voice!r}: {detail or exc}") from None
    lines = out.stdout.decode("utf-8", "replace").splitlines()
    return " , ".join(line.strip() for line in lines if line.strip())
