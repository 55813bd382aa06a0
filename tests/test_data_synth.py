"""Synthetic corpus: grammar agreement in four languages, determinism, disjoint splits, parallel
meanings, held-out OOD voices, loadable manifests, CLI, nothing half-written on failure."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from speechprune.cli import main
from speechprune.data import grammar
from speechprune.data.grammar import Meaning, Phrase, render
from speechprune.data.manifest import load_manifest
from speechprune.data.synth import SynthConfig, synthesize
from speechprune.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

N_AGENTS = len(grammar.AGENTS)
DOG, CAT, BIRD, COW = 0, 1, 2, 4
APPLE, BOOK, CUP = N_AGENTS + 0, N_AGENTS + 1, N_AGENTS + 5
RED, WHITE, HEAVY, DRY = 0, 4, 6, 10
SEES, HAS = 0, 1
KITCHEN, ROOF = 1, 4

RENDER_CASES = [
    (Meaning("act_def", subj=Phrase(DOG, False), verb=SEES, obj=Phrase(APPLE, False, RED)),
     {"en": "The dog sees the red apple.", "fr": "Le chien voit la pomme rouge.",
      "de": "Der Hund sieht den roten Apfel.", "es": "El perro ve la manzana roja."}),
    (Meaning("act_count", subj=Phrase(CAT, True, WHITE), verb=SEES, count=1, obj=Phrase(BOOK, False, RED)),
     {"en": "The white cats see one red book.", "fr": "Les chats blancs voient un livre rouge.",
      "de": "Die weißen Katzen sehen ein rotes Buch.", "es": "Los gatos blancos ven un libro rojo."}),
    (Meaning("act_count", subj=Phrase(DOG, False), verb=HAS, count=1, obj=Phrase(APPLE, False, RED)),
     {"en": "The dog has one red apple.", "fr": "Le chien a une pomme rouge.",
      "de": "Der Hund hat einen roten Apfel.", "es": "El perro tiene una manzana roja."}),
    (Meaning("exist", count=3, obj=Phrase(CUP, True, HEAVY), place=KITCHEN),
     {"en": "There are three heavy cups in the kitchen.", "fr": "Il y a trois tasses lourdes dans la cuisine.",
      "de": "Es gibt drei schwere Tassen in der Küche.", "es": "Hay tres tazas pesadas en la cocina."}),
    (Meaning("prop", subj=Phrase(BIRD, False, WHITE), adj2=DRY),
     {"en": "The bird is white and dry.", "fr": "L'oiseau est blanc et sec.",
      "de": "Der Vogel ist weiß und trocken.", "es": "El pájaro es blanco y seco."}),
    (Meaning("loc", subj=Phrase(COW, True), place=ROOF),
     {"en": "The cows are on the roof.", "fr": "Les vaches sont sur le toit.",
      "de": "Die Kühe sind auf dem Dach.", "es": "Las vacas están en el tejado."}),
]


@pytest.mark.parametrize("meaning,expected", RENDER_CASES, ids=[c[1]["en"] for c in RENDER_CASES])
def test_one_meaning_renders_with_agreement_in_every_language(meaning: Meaning, expected: dict) -> None:
    assert {lang: render(meaning, lang) for lang in grammar.LANGUAGES} == expected


def test_sampled_meanings_are_distinct_short_and_reproducible() -> None:
    meanings = grammar.sample_meanings(500, seed=3)
    assert meanings == grammar.sample_meanings(500, seed=3)
    assert meanings != grammar.sample_meanings(500, seed=4)
    for lang in grammar.LANGUAGES:
        texts = [render(m, lang) for m in meanings]
        assert len(set(texts)) == len(texts)
        assert all(3 <= len(t.split()) <= 12 and t.endswith(".") and t[0].isupper() for t in texts)
    assert {m.template for m in meanings} == set(grammar.TEMPLATES)
    assert len(grammar.vocabulary([render(m, "en") for m in meanings])) < 200


TINY = dict(languages=["en", "fr"], st_pairs=["en-fr"], train_sentences=8, dev_sentences=2, test_sentences=3,
            test_ood_sentences=2, seed=5, workers=2)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synth")
    a = synthesize(SynthConfig(out=str(root / "a"), **TINY))
    b = synthesize(SynthConfig(out=str(root / "b"), **TINY))
    return a, b


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "timing.json"}


def test_layout_and_counts(corpora) -> None:
    a, _ = corpora
    names = {p.name for p in a.glob("*.jsonl")}
    expected = {f"{kind}.{split}.jsonl" for kind in ("asr-en", "asr-fr", "st-en-fr")
                for split in ("train", "dev", "test", "test-ood")}
    assert names == expected
    corpus = json.loads((a / "corpus.json").read_text())
    assert corpus["sentences"] == {"train": 8, "dev": 2, "test": 3, "test-ood": 2}
    assert corpus["utterances"] == 2 * (8 + 2 + 3 + 2)
    assert corpus["manifests"]["st-en-fr.test-ood.jsonl"] == 2
    assert corpus["total_hours"] > 0
    assert (a / "config.yaml").is_file() and (a / "timing.json").is_file()
    assert not list(a.parent.glob(".a.*"))  # no staging folder left behind


def test_same_seed_gives_identical_bytes(corpora) -> None:
    a, b = corpora
    files_a, files_b = _files(a), _files(b)
    assert len([f for f in files_a if f.endswith(".wav")]) == 2 * (8 + 2 + 3 + 2)
    assert files_a.keys() == files_b.keys()
    assert [f for f in files_a if files_a[f] != files_b[f] and f != "config.yaml" and f != "corpus.json"] == []


def test_manifests_load_and_audio_is_16k_mono(corpora) -> None:
    a, _ = corpora
    for manifest in sorted(a.glob("*.jsonl")):
        utterances = load_manifest(manifest)
        for u in utterances:
            assert Path(u.audio).is_relative_to(a)
            info = sf.info(u.audio)
            assert (info.samplerate, info.channels) == (16000, 1)
            assert u.duration == pytest.approx(info.frames / 16000, abs=1e-3)
            assert 0.5 < u.duration <= 6.0
        raw = manifest.read_text(encoding="utf-8")
        assert '"audio": "audio/' in raw  # stored relative


def _by_split(folder: Path, kind: str) -> dict[str, list]:
    return {split: load_manifest(folder / f"{kind}.{split}.jsonl") for split in ("train", "dev", "test", "test-ood")}


def test_no_sentence_shared_between_splits(corpora) -> None:
    a, _ = corpora
    for lang in ("en", "fr"):
        sets = {split: {u.text for u in items} for split, items in _by_split(a, f"asr-{lang}").items()}
        assert not sets["train"] & sets["dev"]
        assert not sets["train"] & sets["test"]
        assert not sets["dev"] & sets["test"]
        assert not sets["train"] & sets["test-ood"]
        assert sets["test-ood"] <= sets["test"]  # the same test meanings, spoken out of domain


def test_meanings_are_parallel_across_languages(corpora) -> None:
    a, _ = corpora
    for split in ("train", "test", "test-ood"):
        en = {u.extra["meaning"]: u for u in load_manifest(a / f"asr-en.{split}.jsonl")}
        fr = {u.extra["meaning"]: u for u in load_manifest(a / f"asr-fr.{split}.jsonl")}
        st = load_manifest(a / f"st-en-fr.{split}.jsonl")
        assert en.keys() == fr.keys()
        assert len(st) == len(en)
        for u in st:
            source = en[u.extra["meaning"]]
            assert (u.task, u.src_lang, u.tgt_lang) == ("st", "en", "fr")
            assert u.audio == source.audio and u.text == source.text  # ST reuses the English audio
            assert u.target == fr[u.extra["meaning"]].target  # and its target is the French sentence
            assert u.id != source.id
    for u in load_manifest(a / "asr-fr.train.jsonl"):
        assert u.task == "asr" and u.text == u.target and u.src_lang == u.tgt_lang == "fr"
        assert u.extra["voice"].startswith("fr-fr+")


def test_ood_voices_and_speeds_are_held_out(corpora) -> None:
    a, _ = corpora
    config = SynthConfig(out="x", **TINY)
    for lang in ("en", "fr"):
        split = _by_split(a, f"asr-{lang}")
        seen = {u.extra["voice"] for s in ("train", "dev", "test") for u in split[s]}
        ood = {u.extra["voice"] for u in split["test-ood"]}
        assert seen <= set(config.voices(lang, "train"))
        assert ood <= set(config.voices(lang, "test-ood"))
        assert not seen & ood
        assert not {u.extra["speed"] for u in split["train"]} & {u.extra["speed"] for u in split["test-ood"]}
        assert all(u.extra["snr_db"] == config.ood_snr_db and u.extra["noise"] in config.ood_noise
                   for u in split["test-ood"])
        assert all("noise" not in u.extra for u in split["test"])


def test_config_validation_names_the_option() -> None:
    with pytest.raises(UserError, match="unsupported language 'it'"):
        SynthConfig(out="x", languages=["en", "it"], st_pairs=[])
    with pytest.raises(UserError, match="'en-es' uses 'es'"):
        SynthConfig(out="x", languages=["en", "fr"], st_pairs=["en-es"])
    with pytest.raises(UserError, match="held out of training"):
        SynthConfig(out="x", ood_variants=["m1"])
    with pytest.raises(UserError, match="--ood-speeds"):
        SynthConfig(out="x", ood_speeds=[160])
    with pytest.raises(UserError, match="--test-ood-sentences"):
        SynthConfig(out="x", test_sentences=2, test_ood_sentences=3)


def test_existing_output_needs_overwrite_and_unknown_voice_is_caught(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        synthesize(SynthConfig(out=str(tmp_path / "full"), **TINY))
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="no voice variant 'nosuchvoice'"):
        synthesize(SynthConfig(out=str(tmp_path / "v"), **{**TINY, "variants": ["nosuchvoice"]}))
    assert not (tmp_path / "v").exists()


def test_a_failed_run_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    from speechprune.data import synth

    calls = {"n": 0}
    real = synth._render_job

    def flaky(job, out, config):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return real(job, out, config)

    monkeypatch.setattr(synth, "_render_job", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        synthesize(SynthConfig(out=str(tmp_path / "corpus"), **{**TINY, "workers": 1}))
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_and_bad_input_exit_codes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["data", "synth", "--out", str(out), "--languages", "en,de", "--st-pairs", "de-en",
                 "--train-sentences", "3", "--dev-sentences", "1", "--test-sentences", "1",
                 "--test-ood-sentences", "1", "--seed", "2"])
    assert code == 0
    assert len(load_manifest(out / "st-de-en.train.jsonl")) == 3
    assert load_manifest(out / "st-de-en.test.jsonl")[0].target.endswith(".")
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--languages", "en,xx"]) == 2
    assert "unsupported language 'xx'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_voice_lists_per_language_and_split() -> None:
    config = SynthConfig(out="x", accents=["en:en-us", "en:en-gb"], ood_accents=["en:en-gb-scotland"],
                         variants=["m1"], ood_variants=["f4"])
    assert config.voices("en", "train") == ["en-us+m1", "en-gb+m1"]
    assert config.voices("en", "dev") == config.voices("en", "train")
    assert config.voices("en", "test-ood") == ["en-gb-scotland+f4"]
    assert config.voices("fr", "test-ood") == ["fr+f4"]  # no accent given: the language code
    # held out by accent alone is enough
    SynthConfig(out="x", languages=["en", "fr"], st_pairs=["en-fr"], variants=["m1"], ood_variants=["m1"],
                ood_accents=["en:en-gb", "fr:fr-be"])
    with pytest.raises(UserError, match="held out of training; fr shares"):
        SynthConfig(out="x", languages=["en", "fr"], st_pairs=["en-fr"], variants=["m1"], ood_variants=["m1"],
                    ood_accents=["en:en-gb"])
