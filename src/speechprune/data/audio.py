"""Audio in and out: read any soundfile-readable file (or bytes) as float32 mono at a set rate,
write 16-bit WAV atomically, and add noise at a set SNR.

Resampling uses ``scipy.signal.resample_poly`` (torchaudio does not load beside torch 2.13).
"""

from __future__ import annotations

import io
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from speechprune.errors import UserError
from speechprune.options.data import NOISE_KINDS

SAMPLE_RATE = 16000
# One utterance is at most this long: longer files are refused from their header, before any
# decoding (a two-hour file resampled to float32 would take gigabytes). Cut long recordings into
# utterances first.
MAX_AUDIO_SECONDS = 600.0


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling of a 1-D float signal; returns float32."""
    wave = np.asarray(wave, dtype=np.float32)
    if orig_rate == new_rate or wave.size == 0:
        return wave
    from scipy.signal import resample_poly  # imported on use: text-only runs never need scipy.signal

    g = gcd(int(orig_rate), int(new_rate))
    return resample_poly(wave, int(new_rate) // g, int(orig_rate) // g).astype(np.float32)


def _to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.astype(np.float32)


def _read(source, sample_rate: int, max_seconds: float | None, name: str) -> np.ndarray:
    try:
        with sf.SoundFile(source) as handle:
            frames = -1
            if max_seconds is not None:
                frames = min(handle.frames, int(round(max_seconds * handle.samplerate)))
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
            rate = handle.samplerate
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read audio {name}: {reason}") from None
    wave = resample(_to_mono(data), rate, sample_rate)
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sample_rate))]
    return wave


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Read ``path`` as float32 mono (channels averaged) at ``sample_rate``.

    ``max_seconds`` keeps only the first seconds (read no further). An unreadable or missing file
    raises :class:`UserError` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    frames, rate = audio_info(path)
    check_duration(frames, rate, str(path))
    return check_samples(_read(str(path), sample_rate, max_seconds, str(path)), str(path))


def check_duration(frames: int, rate: int, name: str) -> None:
    """Refuse an empty file or one longer than :data:`MAX_AUDIO_SECONDS` (from the header)."""
    if frames <= 0:
        raise UserError(f"empty audio file {name}")
    if frames / rate > MAX_AUDIO_SECONDS:
        raise UserError(f"audio {name} lasts {frames / rate:.0f} s, over the {MAX_AUDIO_SECONDS:.0f} s limit for one "
                        "utterance; cut it into utterances first")


def check_samples(wave: np.ndarray, name: str) -> np.ndarray:
    """Refuse NaN or infinite samples (a broken float file) and all-zero audio (a failed export:
    nothing to hear, and a zero-variance input to normalising encoders)."""
    if not np.isfinite(wave).all():
        raise UserError(f"audio {name} has NaN or infinite samples")
    if not wave.any():
        raise UserError(f"audio {name} is all zeros (digital silence)")
    return wave


def decode_audio_bytes(data: bytes, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
                       name: str = "<bytes>") -> np.ndarray:
    """Like :func:`load_audio` for an encoded file held in memory (WAV, FLAC, OGG, ...)."""
    return _read(io.BytesIO(data), sample_rate, max_seconds, name)


def audio_info(path: str | Path) -> tuple[int, int]:
    """(frames, sample rate) from the file header; :class:`UserError` naming the path if unreadable."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read audio {path}: {reason}") from None
    return info.frames, info.samplerate


def save_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16",
               atomic: bool = True) -> None:
    """Write a mono WAV (16-bit PCM by default; samples clipped to [-1, 1]).

    Atomic by default (a temporary file, then a rename); ``atomic=False`` writes in place, for
    folders that are themselves staged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    if not atomic:
        sf.write(str(path), wave, sample_rate, subtype=subtype, format="WAV")
        return
    from speechprune.files import atomic_path

    with atomic_path(path) as tmp:
        sf.write(str(tmp), wave, sample_rate, subtype=subtype, format="WAV")


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    # A 4-pole/4-zero IIR 'pinking' filter on white noise: about -3 dB per octave.
    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1.0, -2.494956002, 2.017265875, -0.522189400]
    from scipy.signal import lfilter

    return lfilter(b, a, rng.standard_normal(n + 2000))[2000:]


def _babble(n: int, rng: np.random.Generator, sample_rate: int, talkers: int = 6) -> np.ndarray:
    """Speech-shaped noise with syllable-rate modulation from several 'talkers' (no real speech)."""
    from scipy.signal import lfilter

    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    for _ in range(talkers):
        carrier = _pink(n, rng)
        # Low-pass around 3 kHz (one-pole) for a speech-like long-term spectrum.
        alpha = np.exp(-2 * np.pi * 3000 / sample_rate)
        carrier = lfilter([1 - alpha], [1, -alpha], carrier)
        rate = rng.uniform(3.0, 6.0)
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))) ** 2
        out += carrier * envelope
    return out


def make_noise(n: int, rng: np.random.Generator, kind: str = "white", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``n`` samples of zero-mean noise of ``kind`` (white, pink, babble), unit-free scale."""
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        noise = _pink(n, rng)
    elif kind == "babble":
        noise = _babble(n, rng, sample_rate)
    else:
        raise UserError(f"unknown noise kind {kind!r} (choose from {', '.join(NOISE_KINDS)})")
    return noise - noise.mean() if n else noise


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator, kind: str = "white",
              sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` plus noise scaled so that 10*log10(P_wave / P_noise) == ``snr_db``.

    Powers are mean squares over the whole wave. Silence stays silent. The result is float32 and
    not clipped (a caller that writes it may need to rescale both together).
    """
    wave = np.asarray(wave, dtype=np.float32)
    signal_power = float(np.mean(wave.astype(np.float64) ** 2)) if wave.size else 0.0
    if signal_power == 0.0:
        return wave.copy()
    noise = make_noise(wave.size, rng, kind, sample_rate)
    noise_power = float(np.mean(noise**2))
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave.astype(np.float64) + scale * noise).astype(np.float32)
