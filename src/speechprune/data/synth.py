"""``speechprune data synth``: a seeded multilingual ASR / speech-translation corpus spoken by
espeak-ng, from the parallel template grammar in :mod:`speechprune.data.grammar`.

Layout of ``OUT`` (built under a temporary name, moved into place only when complete):

    audio/{lang}/{split}/{lang}-{split}-{index}.wav   16 kHz mono 16-bit WAV
    asr-{lang}.{split}.jsonl                           for every language
    st-{src}-{tgt}.{split}.jsonl                       for every pair (source audio, translated target)
    corpus.json  config.yaml  timing.json

Splits: ``train``, ``dev``, ``test`` (disjoint meanings: no sentence of any language is in two of
them) and ``test-ood``: the first test meanings again, spoken with voices, speeds and pitches held
out of training, with noise added at ``ood_snr_db``. Same seed -> byte-identical manifests and audio.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from math import ceil
from pathlib import Path

import numpy as np

from speechprune.config import save_config
from speechprune.console import note, show, table
from speechprune.data import grammar
from speechprune.data.audio import SAMPLE_RATE, add_noise, resample, save_audio
from speechprune.data.manifest import Utterance, write_manifest
from speechprune.errors import UserError
from speechprune.files import claims_output, read_json, run_signature, staged_dir, write_json
from speechprune.options.data import SynthConfig

SPLITS = ("train", "dev", "test", "test-ood")
ESPEAK = "espeak-ng"
DONE_DIR = ".done"  # inside the staging folder: one small JSON per utterance already spoken


@dataclass(frozen=True)
class _Job:
    """One utterance to speak."""

    audio_id: str
    lang: str
    split: str
    meaning_index: int  # index into the split's meanings
    text: str
    voice: str
    speed: int
    pitch: int
    noise: str | None
    relpath: str


# --------------------------------------------------------------------------------------------
# espeak-ng


@lru_cache(maxsize=1)
def _espeak_inventory() -> tuple[str, frozenset[str], frozenset[str]]:
    """(version line, known base voice names, known variant names)."""
    if shutil.which(ESPEAK) is None:
        raise UserError("espeak-ng not found: 'data synth' and 'demo' speak their corpus with it; install it "
                        "(e.g. 'apt-get install espeak-ng', or 'make setup', which does)")
    version = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True).stdout.strip()
    listing = subprocess.run([ESPEAK, "--voices"], capture_output=True, text=True).stdout.splitlines()
    bases: set[str] = set()
    for row in listing[1:]:
        cols = row.split()
        if len(cols) >= 5:
            bases.update({cols[1].lower(), cols[4].lower(), cols[4].split("/")[-1].lower()})
    match = re.search(r"Data at:\s*(\S+)", version)
    variants: set[str] = set()
    if match and (Path(match.group(1)) / "voices" / "!v").is_dir():
        variants = {p.name.lower() for p in (Path(match.group(1)) / "voices" / "!v").iterdir()}
    return version.splitlines()[0] if version else "espeak-ng", frozenset(bases), frozenset(variants)


def _check_voices(config: SynthConfig, languages: list[str]) -> None:
    _, bases, variants = _espeak_inventory()
    for lang in languages:
        for split in ("train", "test-ood"):
            for voice in config.voices(lang, split):
                base, _, variant = voice.partition("+")
                if bases and base.lower() not in bases:
                    raise UserError(f"espeak-ng has no voice {base!r} (see 'espeak-ng --voices')")
                if variants and variant and variant.lower() not in variants:
                    raise UserError(f"espeak-ng has no voice variant {variant!r} (see 'espeak-ng --voices=variant')")


def speak(text: str, voice: str, speed: int, pitch: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 mono at ``sample_rate`` (espeak speaks at 22.05 kHz)."""
    result = subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                            capture_output=True)
    raw = result.stdout
    start = raw.find(b"data", 12)
    if result.returncode != 0 or raw[:4] != b"RIFF" or start < 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"espeak-ng failed for voice {voice!r}: {message[0] if message else 'no audio'}")
    rate = int.from_bytes(raw[24:28], "little")
    pcm = raw[start + 8:]
    pcm = pcm[: len(pcm) // 2 * 2]
    wave = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return resample(wave, rate, sample_rate)


def _noise_rng(seed: int, audio_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(audio_id.encode())])


def _render_job(job: _Job, out: Path, config: SynthConfig) -> tuple[float, int]:
    """Speak one job into ``out/job.relpath``; returns (duration in seconds, speed used)."""
    speed = job.speed
    wave = speak(job.text, job.voice, speed, job.pitch)
    for _ in range(3):  # too long: speak faster, proportionally
        if len(wave) <= config.max_seconds * SAMPLE_RATE or speed >= 450:
            break
        speed = min(450, ceil(speed * len(wave) / (config.max_seconds * SAMPLE_RATE) * 1.05))
        wave = speak(job.text, job.voice, speed, job.pitch)
    if job.noise is not None:
        wave = add_noise(wave, config.ood_snr_db, _noise_rng(config.seed, job.audio_id), job.noise)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    save_audio(out / job.relpath, wave)  # atomic: a rerun after a kill trusts every WAV it finds
    result = round(len(wave) / SAMPLE_RATE, 4), speed
    write_json(out / DONE_DIR / f"{job.audio_id}.json", result)
    return result


def _done(job: _Job, out: Path) -> tuple[float, int] | None:
    """The result of a job a killed run finished already (its WAV is whole: written atomically)."""
    path = out / DONE_DIR / f"{job.audio_id}.json"
    if not path.is_file() or not (out / job.relpath).is_file():
        return None
    duration, speed = read_json(path)
    return duration, speed


# --------------------------------------------------------------------------------------------
# The corpus


def _split_meanings(config: SynthConfig) -> dict[str, list[grammar.Meaning]]:
    counts = {"train": config.train_sentences, "dev": config.dev_sentences, "test": config.test_sentences}
    try:
        meanings = grammar.sample_meanings(sum(counts.values()), config.seed, grammar.LANGUAGES)
    except ValueError as error:
        raise UserError(f"--train/dev/test-sentences too many: {error}") from None
    splits: dict[str, list[grammar.Meaning]] = {}
    start = 0
    for split, n in counts.items():
        splits[split] = meanings[start:start + n]
        start += n
    splits["test-ood"] = splits["test"][: config.test_ood_sentences]
    return splits


def _jobs(config: SynthConfig, splits: dict[str, list[grammar.Meaning]]) -> list[_Job]:
    jobs: list[_Job] = []
    for split in SPLITS:
        ood = split == "test-ood"
        speeds = config.ood_speeds if ood else config.speeds
        pitches = config.ood_pitches if ood else config.pitches
        repeats = config.train_repeats if split == "train" else 1
        for lang in config.languages:
            voices = config.voices(lang, split)
            for index, meaning in enumerate(splits[split]):
                text = grammar.render(meaning, lang)
                for rep in range(repeats):
                    audio_id = f"{lang}-{split}-{index:05d}" + (f"-r{rep}" if repeats > 1 else "")
                    rng = random.Random(f"{config.seed}/{audio_id}")
                    jobs.append(_Job(
                        audio_id=audio_id, lang=lang, split=split, meaning_index=index, text=text,
                        voice=rng.choice(voices), speed=rng.choice(speeds), pitch=rng.choice(pitches),
                        noise=rng.choice(config.ood_noise) if ood else None,
                        relpath=f"audio/{lang}/{split}/{audio_id}.wav",
                    ))
    return jobs


def _run_jobs(jobs: list[_Job], out: Path, config: SynthConfig) -> list[tuple[float, int]]:
    from speechprune.console import track

    workers = config.workers or os.cpu_count() or 1
    done = sum(_done(job, out) is not None for job in jobs)
    if done:
        note(f"data synth: resumed: {done} of {len(jobs)} utterances already spoken")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        spoken = pool.map(lambda job: _done(job, out) or _render_job(job, out, config), jobs, chunksize=1)
        return list(track(spoken, "data synth: speaking", total=len(jobs), unit="utterances"))


def _manifests(config: SynthConfig, splits: dict[str, list[grammar.Meaning]], jobs: list[_Job],
               results: list[tuple[float, int]], out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    by_group: dict[tuple[str, str], list[tuple[_Job, float, int]]] = {}
    for job, (duration, speed) in zip(jobs, results):
        by_group.setdefault((job.lang, job.split), []).append((job, duration, speed))

    def base_utterance(job: _Job, duration: float, speed: int) -> Utterance:
        meaning_split = "test" if job.split == "test-ood" else job.split
        meaning = splits[job.split][job.meaning_index]
        extra = {"split": job.split, "meaning": f"{meaning_split}-{job.meaning_index:05d}",
                 "template": meaning.template, "voice": job.voice, "speed": speed, "pitch": job.pitch}
        if job.noise is not None:
            extra.update({"noise": job.noise, "snr_db": config.ood_snr_db})
        return Utterance(id=job.audio_id, audio=str(out / job.relpath), text=job.text, task="asr",
                         src_lang=job.lang, tgt_lang=job.lang, target=job.text, duration=duration, extra=extra)

    for split in SPLITS:
        if not splits[split]:
            continue
        for lang in config.languages:
            items = [base_utterance(*item) for item in by_group[(lang, split)]]
            name = f"asr-{lang}.{split}.jsonl"
            write_manifest(out / name, items)
            counts[name] = len(items)
        for pair in config.st_pairs:
            src, tgt = pair.split("-")
            items = []
            for job, duration, speed in by_group[(src, split)]:
                utterance = base_utterance(job, duration, speed)
                utterance.id = f"{job.audio_id}-{tgt}"
                utterance.task, utterance.tgt_lang = "st", tgt
                utterance.target = grammar.render(splits[split][job.meaning_index], tgt)
                items.append(utterance)
            name = f"st-{src}-{tgt}.{split}.jsonl"
            write_manifest(out / name, items)
            counts[name] = len(items)
    return counts


def _summary(config: SynthConfig, splits: dict[str, list[grammar.Meaning]], jobs: list[_Job],
             results: list[tuple[float, int]], manifest_counts: dict[str, int]) -> dict:
    seconds: dict[str, dict[str, float]] = {}
    voices: dict[str, dict[str, list[str]]] = {}
    durations = []
    for job, (duration, _) in zip(jobs, results):
        seconds.setdefault(job.lang, Counter())[job.split] += duration
        durations.append(duration)
    for split in ("train", "test-ood"):
        voices[split] = {lang: config.voices(lang, split) for lang in config.languages}
    texts = {split: {lang: [grammar.render(m, lang) for m in meanings] for lang in grammar.LANGUAGES}
             for split, meanings in splits.items()}
    unseen = {}
    for lang in config.languages:
        train_words = grammar.vocabulary(texts["train"][lang])
        test_words = grammar.vocabulary(texts["test"][lang] + texts["dev"][lang])
        unseen[lang] = sorted(test_words - train_words)
    templates = Counter(m.template for m in splits["train"])
    return {
        "generator": "speechprune data synth",
        "espeak_ng": _espeak_inventory()[0],
        "sample_rate": SAMPLE_RATE,
        "config": asdict(config),
        "sentences": {split: len(meanings) for split, meanings in splits.items()},
        "utterances": len(jobs),
        "manifests": manifest_counts,
        "hours": {lang: {split: round(s / 3600, 4) for split, s in per.items()} for lang, per in seconds.items()},
        "total_hours": round(sum(durations) / 3600, 4),
        "duration_seconds": {"min": min(durations), "mean": round(float(np.mean(durations)), 4),
                             "max": max(durations)},
        "voices": voices,
        "speeds": {"train": config.speeds, "test-ood": config.ood_speeds},
        "pitches": {"train": config.pitches, "test-ood": config.ood_pitches},
        "ood_noise": {"kinds": config.ood_noise, "snr_db": config.ood_snr_db},
        "train_templates": dict(sorted(templates.items())),
        "vocabulary_size": {lang: len(grammar.vocabulary(texts["train"][lang])) for lang in config.languages},
        "dev_test_words_unseen_in_train": unseen,
    }


@claims_output("data synth")
def synthesize(config: SynthConfig) -> Path:
    """Speak a seeded multilingual ASR/ST corpus with espeak-ng into ``config.out``; returns it.

    Writes per-language ASR manifests ``asr-{lang}.{split}.jsonl``, per-pair ST manifests
    ``st-{src}-{tgt}.{split}.jsonl`` (splits train, dev, test, test-ood), the audio under
    ``audio/``, and ``corpus.json`` (config, counts, hours, voices). Nothing appears at ``out``
    until the whole corpus is written.
    """
    out = Path(config.out)
    _check_voices(config, config.languages)
    if config.dropped_st_pairs:
        note(f"--st-pairs: left out {', '.join(config.dropped_st_pairs)} (a language not in --languages); "
             f"speech translation: {', '.join(config.st_pairs) or 'none'}")
    splits = _split_meanings(config)
    jobs = _jobs(config, splits)
    started = time.perf_counter()
    with staged_dir(out, overwrite=True, resume_signature=run_signature("data synth", config)) as stage:
        results = _run_jobs(jobs, stage, config)
        shutil.rmtree(stage / DONE_DIR)
        elapsed = time.perf_counter() - started
        counts = _manifests(config, splits, jobs, results, stage)
        write_json(stage / "corpus.json", _summary(config, splits, jobs, results, counts))
        save_config(config, stage / "config.yaml")
        write_json(stage / "timing.json", {
            "utterances": len(jobs), "speak_seconds": round(elapsed, 2),
            "utterances_per_second": round(len(jobs) / max(elapsed, 1e-9), 1),
            "workers": config.workers or os.cpu_count(),
        })
    bases = dict.fromkeys(name.split(".")[0] for name in counts)  # asr-en.train.jsonl -> asr-en
    used = [split for split in SPLITS if any(f"{base}.{split}.jsonl" in counts for base in bases)]
    show(table(f"data synth: {len(jobs)} utterances spoken in {elapsed:.0f}s -> {out}",
               ("utterances in", *(f"{split}.jsonl" for split in used)),
               [(base, *(counts.get(f"{base}.{split}.jsonl") for split in used)) for base in bases]))
    return out
