"""Configuration of the data stage: ``speechprune data synth`` (:class:`SynthConfig`) and
``speechprune data hf`` (:class:`HFDataConfig`), with the constants their validators check against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from speechprune.config import option, require, require_choice
from speechprune.errors import UserError

LANGUAGES = ("en", "fr", "de", "es")  # the languages the parallel grammar (data/grammar.py) renders
NOISE_KINDS = ("white", "pink", "babble")
DEFAULT_ST_PAIRS = ("en-fr", "en-de", "fr-en", "de-en")


@dataclass
class SynthConfig:
    out: str = option(help="output folder of the corpus (replaced only when the new one is complete)")
    seed: int = option(0, help="seed of sentences, voices and noise: same seed, identical corpus")
    languages: list[str] = option(["en", "fr", "de", "es"],
                                  help="languages to speak, each with ASR manifests (from: en, fr, de, es)")
    st_pairs: list[str] = option(list(DEFAULT_ST_PAIRS),
                                 help="speech-translation pairs SRC-TGT (both in --languages); by default those "
                                      "of en-fr,en-de,fr-en,de-en whose languages are in --languages")
    train_sentences: int = option(3000, help="distinct meanings in train (each spoken in every language)")
    dev_sentences: int = option(200, help="distinct meanings in dev (0: no dev split)")
    test_sentences: int = option(200, help="distinct meanings in test (0: no test split)")
    test_ood_sentences: int = option(200, help="test meanings re-spoken out of domain (<= test sentences)")
    train_repeats: int = option(1, help="times each train sentence is spoken (each time another voice)")
    accents: list[str] = option(["en:en-us", "fr:fr-fr", "de:de", "es:es"],
                                help="espeak-ng base voices LANG:VOICE for train/dev/test (a language not listed: its code)")
    variants: list[str] = option(["m1", "m2", "m3", "m4", "f1", "f2", "f3"],
                                 help="espeak-ng voice variants for train/dev/test (voice = accent+variant)")
    speeds: list[int] = option([145, 160, 175], help="speaking rates (words per minute) for train/dev/test")
    pitches: list[int] = option([35, 50, 65], help="pitches (0-99) for train/dev/test")
    ood_accents: list[str] = option([], help="base voices LANG:VOICE for test-ood (a language not listed: its --accents)")
    ood_variants: list[str] = option(["m6", "m7", "f4", "f5"], help="voice variants held out for test-ood")
    ood_speeds: list[int] = option([125, 195], help="speaking rates held out for test-ood")
    ood_pitches: list[int] = option([20, 80], help="pitches for test-ood")
    ood_snr_db: float = option(30.0, help="signal-to-noise ratio (dB) of the noise added to test-ood (the WER it "
                                          "gives: BENCHMARKS.md, measured defaults)")
    ood_noise: list[str] = option(["white", "babble"], help="noise kinds for test-ood (white, pink, babble)")
    max_seconds: float = option(6.0, help="an utterance longer than this is spoken again, faster, to fit")
    workers: int = option(0, help="parallel espeak-ng processes (0: one per CPU core)")
    overwrite: bool = option(False, help="replace an existing corpus at --out")

    def __post_init__(self) -> None:
        supported = LANGUAGES
        require(len(self.languages) > 0, "--languages is empty")
        for lang in self.languages:
            require(lang in supported, f"--languages: unsupported language {lang!r} (the grammar has {', '.join(supported)})")
        require(len(set(self.languages)) == len(self.languages), "--languages lists a language twice")
        # the default pairs follow --languages; pairs the user chose are checked as given
        self.dropped_st_pairs = []
        if list(self.st_pairs) == list(DEFAULT_ST_PAIRS):
            chosen = set(self.languages)
            self.dropped_st_pairs = [p for p in self.st_pairs if not set(p.split("-")) <= chosen]
            self.st_pairs = [p for p in self.st_pairs if p not in self.dropped_st_pairs]
        for pair in self.st_pairs:
            parts = pair.split("-")
            require(len(parts) == 2 and all(parts), f"--st-pairs: {pair!r} is not SRC-TGT (e.g. en-fr)")
            require(parts[0] != parts[1], f"--st-pairs: {pair!r} translates a language into itself")
            for lang in parts:
                require(lang in self.languages, f"--st-pairs: {pair!r} uses {lang!r}, which is not in --languages "
                                                f"(pass --st-pairs with pairs of those languages, or '' for none)")
        require(len(set(self.st_pairs)) == len(self.st_pairs), "--st-pairs lists a pair twice")
        require(self.seed >= 0, "--seed must be >= 0")
        require(self.train_sentences >= 1, "--train-sentences must be at least 1")
        for name in ("dev_sentences", "test_sentences", "test_ood_sentences"):
            require(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be >= 0")
        require(self.test_ood_sentences <= self.test_sentences,
                "--test-ood-sentences must not exceed --test-sentences (test-ood re-speaks test meanings)")
        require(self.train_repeats >= 1, "--train-repeats must be at least 1")
        for name in ("accents", "ood_accents"):
            for entry in getattr(self, name):
                lang, _, voice = entry.partition(":")
                require(bool(voice) and lang in supported,
                        f"--{name.replace('_', '-')}: {entry!r} is not LANG:VOICE with LANG in {', '.join(supported)}")
        for name in ("variants", "ood_variants", "speeds", "ood_speeds", "pitches", "ood_pitches", "ood_noise"):
            require(len(getattr(self, name)) > 0, f"--{name.replace('_', '-')} is empty")
        for speed in self.speeds + self.ood_speeds:
            require(80 <= speed <= 450, f"speed {speed} out of espeak-ng's range 80-450 words per minute")
        for pitch in self.pitches + self.ood_pitches:
            require(0 <= pitch <= 99, f"pitch {pitch} out of espeak-ng's range 0-99")
        for kind in self.ood_noise:
            require(kind in NOISE_KINDS, f"--ood-noise: unknown kind {kind!r} (choose from {', '.join(NOISE_KINDS)})")
        require(not set(self.ood_speeds) & set(self.speeds),
                f"--ood-speeds must be held out of --speeds; both have {sorted(set(self.ood_speeds) & set(self.speeds))}")
        for lang in self.languages:
            shared = set(self.voices(lang, "test-ood")) & set(self.voices(lang, "train"))
            require(not shared, f"test-ood voices must be held out of training; {lang} shares {sorted(shared)}")
        require(self.max_seconds > 0, "--max-seconds must be positive")
        require(self.workers >= 0, "--workers must be >= 0")

    def voices(self, lang: str, split: str) -> list[str]:
        """The espeak-ng voices (accent+variant) that speak ``lang`` in ``split``."""
        def accents_of(entries: list[str]) -> list[str]:
            return [e.partition(":")[2] for e in entries if e.partition(":")[0] == lang]

        ood = split == "test-ood"
        accents = (accents_of(self.ood_accents) if ood else []) or accents_of(self.accents) or [lang]
        variants = self.ood_variants if ood else self.variants
        return [f"{accent}+{variant}" for accent in accents for variant in variants]


# Column candidates per preset: the first one the dataset has is used. ``langs_from_name``: the
# subset name carries the languages (CoVoST2 "en_de" -> en, de; FLEURS "fr_fr" -> fr).
PRESETS: dict[str, dict[str, Any]] = {
    "librispeech": {"task": "asr", "src_lang": "en", "audio": ["audio"], "text": ["text"],
                    "target": [], "id": ["id"]},
    "covost2": {"task": "st", "audio": ["audio"], "text": ["sentence"], "target": ["translation"],
                "id": ["id", "file"], "langs_from_name": True},
    "fleurs": {"task": "asr", "audio": ["audio"], "text": ["raw_transcription", "transcription"],
               "target": [], "id": ["id"], "langs_from_name": True},
    "audiofolder": {"task": "asr", "audio": ["audio"],
                    "text": ["text", "transcription", "sentence", "transcript"],
                    "target": ["target", "translation"], "id": ["id", "file_name"]},
    "custom": {"audio": ["audio"], "text": [], "target": [], "id": []},
}


@dataclass
class HFDataConfig:
    dataset: str = option(help="hub id, a save_to_disk folder, or a local audio folder (with metadata.csv)")
    out: str = option(help="manifest to write (.jsonl); the WAV files go to audio/STEM/ beside it")
    name: Optional[str] = option(None, help="subset / config name (e.g. en_de for CoVoST2, en_us for FLEURS)")
    split: str = option("test", help="split to export")
    preset: str = option("custom", help="column preset: " + ", ".join(PRESETS))
    audio_column: Optional[str] = option(None, help="audio column (default: the preset's)")
    text_column: Optional[str] = option(None, help="source transcript column (default: the preset's)")
    target_column: Optional[str] = option(None, help="translation column for task st (default: the preset's)")
    id_column: Optional[str] = option(None, help="id column (default: the preset's, else the row number)")
    task: Optional[str] = option(None, help="asr or st (default: the preset's)")
    src_lang: Optional[str] = option(None, help="source language code (default: from the preset or subset name)")
    tgt_lang: Optional[str] = option(None, help="target language code for st (asr: the source language)")
    max_items: Optional[int] = option(None, help="stop after this many utterances")
    prompt: Optional[str] = option(None, help="instruction written into every line (key prompt), which then replaces "
                                              "the model's own prompt for the task (default ASR: 'Transcribe speech "
                                              "to text.', ST: 'Translate the speech into {target_language}.'); "
                                              "{target_language} and {source_language} are filled in")
    max_seconds: Optional[float] = option(None, help="skip utterances longer than this (their text would not fit a cut)")
    streaming: bool = option(False, help="stream a hub dataset instead of downloading it whole")
    cache_dir: Optional[str] = option(None, help="datasets cache folder (default: the datasets default)")
    overwrite: bool = option(False, help="replace an existing manifest at --out")

    def __post_init__(self) -> None:
        require_choice(self.preset, list(PRESETS), "--preset")
        require(self.task in (None, "asr", "st"), f"--task: unknown {self.task!r} (asr or st)")
        require(self.max_items is None or self.max_items > 0, "--max-items must be positive")
        require(self.max_seconds is None or self.max_seconds > 0, "--max-seconds must be positive")
        require(str(self.out).endswith(".jsonl"), f"--out {self.out}: a manifest path ending in .jsonl")
        if self.prompt is not None:
            import string

            try:
                fields = {name for _, name, _, _ in string.Formatter().parse(self.prompt) if name is not None}
            except ValueError as error:
                raise UserError(f"--prompt {self.prompt!r}: {error}") from None
            unknown = sorted(fields - {"target_language", "source_language"})
            require(bool(self.prompt.strip()), "--prompt is empty")
            require(not unknown, f"--prompt {self.prompt!r}: unknown field {{{unknown[0] if unknown else ''}}} "
                                 "(only {target_language} and {source_language} are filled in)")

