"""Audio: mono mixing, resampling keeps frequencies, length limits, errors, noise at a set SNR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.audio import add_noise, decode_audio_bytes, load_audio, make_noise, resample, save_audio
from speechprune.errors import UserError


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def test_resampled_sine_keeps_its_frequency(tmp_path: Path) -> None:
    rate = 44100
    t = np.arange(rate) / rate
    sf.write(tmp_path / "sine.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), rate)
    wave = load_audio(tmp_path / "sine.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == 16000
    assert abs(_peak_hz(wave, 16000) - 1000) <= 1.0
    assert np.sqrt(np.mean(wave[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left = np.full(1600, 0.4)
    right = np.full(1600, -0.2)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(tmp_path / "stereo.wav")
    assert wave.shape == (1600,)
    assert np.allclose(wave, 0.1, atol=1e-6)


def test_max_seconds_and_other_rates(tmp_path: Path) -> None:
    sf.write(tmp_path / "long.flac", np.full(8000 * 3, 0.1), 8000)  # not all zeros: digital silence is refused
    assert len(load_audio(tmp_path / "long.flac")) == 48000
    assert len(load_audio(tmp_path / "long.flac", max_seconds=1.25)) == 20000
    assert len(load_audio(tmp_path / "long.flac", sample_rate=8000)) == 24000


def test_bytes_decode_like_files(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(np.arange(22050) * 0.2), 22050)
    from_file = load_audio(tmp_path / "a.wav")
    from_bytes = decode_audio_bytes((tmp_path / "a.wav").read_bytes())
    assert np.array_equal(from_file, from_bytes)


def test_unreadable_and_missing_files_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "junk.wav").write_bytes(b"\x00\x01 definitely not audio")
    with pytest.raises(UserError, match=r"cannot read audio .*junk\.wav"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(UserError, match=r"audio file not found: .*absent\.wav"):
        load_audio(tmp_path / "absent.wav")
    with pytest.raises(UserError, match="cannot read audio row 7"):
        decode_audio_bytes(b"garbage", name="row 7")


def test_save_load_round_trip_is_16bit_16khz(tmp_path: Path) -> None:
    wave = (0.5 * np.sin(np.arange(4000) * 0.05)).astype(np.float32)
    wave[10] = 3.0  # clipped, not wrapped
    save_audio(tmp_path / "sub" / "x.wav", wave)
    info = sf.info(tmp_path / "sub" / "x.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    back = load_audio(tmp_path / "sub" / "x.wav")
    assert np.max(np.abs(back - np.clip(wave, -1, 1))) < 1e-4
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "x.wav"]  # no temporary left


def test_resample_identity_and_length() -> None:
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    assert resample(x, 16000, 16000) is not None and np.array_equal(resample(x, 16000, 16000), x)
    assert len(resample(x, 22050, 16000)) == 16000


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_add_noise_hits_the_snr(kind: str, snr_db: float) -> None:
    rate = 16000
    t = np.arange(2 * rate) / rate
    clean = (0.3 * np.sin(2 * np.pi * 220 * t) * (t < 1.5)).astype(np.float32)
    noisy = add_noise(clean, snr_db, np.random.default_rng(1), kind=kind)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    noise = noisy.astype(np.float64) - clean
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.05)


def test_noise_is_seeded_and_silence_stays_silent() -> None:
    clean = np.sin(np.arange(8000) * 0.3).astype(np.float32)
    a = add_noise(clean, 5, np.random.default_rng(7), kind="babble")
    b = add_noise(clean, 5, np.random.default_rng(7), kind="babble")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, add_noise(clean, 5, np.random.default_rng(8), kind="babble"))
    silent = np.zeros(100, dtype=np.float32)
    assert np.array_equal(add_noise(silent, 10, np.random.default_rng(0)), silent)
    with pytest.raises(UserError, match="unknown noise kind"):
        make_noise(10, np.random.default_rng(0), "purple")


def test_pink_noise_falls_with_frequency() -> None:
    noise = make_noise(1 << 16, np.random.default_rng(0), "pink")
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise), 1 / 16000)
    low = spectrum[(freqs > 100) & (freqs < 200)].mean()
    high = spectrum[(freqs > 3200) & (freqs < 6400)].mean()
    assert low > 5 * high
