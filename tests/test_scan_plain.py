"""Plain LLMs on plain text: the ``plain`` layout against an independent reference (hidden states
of a direct forward of each tokenized text), text files and Hugging Face text datasets as data,
the ``--layout`` option, calibration and greedy-score pruning on text (against transformers' own
language-model loss), and the refusals (speech input on text-only data, regions the plain layout
does not have)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from speechprune.cli import main
from speechprune.data.manifest import load_manifest
from speechprune.data.sources import load_data
from speechprune.errors import UserError
from speechprune.model.tokenizer import train_bpe_tokenizer
from speechprune.scan.run import ScanConfig, scan
from tests.helpers import SENTENCES, build_tiny_speechllm, write_tiny_manifest

TEXTS = ["the red cat sleeps on the mat.", "two dogs run.", "a big bird sings a long song in the tall tree.",
         "three birds fly.", "the cat sees a dog and the dog sees the cat.", "ok.", "the dog eats."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama whose tokenizer puts <bos> before every text, a .txt of TEXTS (with a
    blank line and surrounding spaces), a tiny manifest and SpeechLLM."""
    root = tmp_path_factory.mktemp("plain")
    tokenizer = train_bpe_tokenizer(TEXTS + [en for en, _ in SENTENCES], vocab_size=300)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    text_file = root / "texts.txt"
    text_file.write_text("".join(f"  {t} \n" + ("\n" if i == 2 else "") for i, t in enumerate(TEXTS)))
    manifest = write_tiny_manifest(root / "data")
    torch.manual_seed(0)
    build_tiny_speechllm(load_manifest(manifest), layers=3).save(root / "slm")
    return {"root": root, "llm": root / "llm", "txt": text_file, "manifest": manifest, "slm": root / "slm"}


def reference_angular(model_dir: Path, texts: list[str]) -> tuple[dict, dict]:
    """Mean angular distance over all positions and over the last position, computed here from
    ``output_hidden_states`` of one unpadded forward per text, tokenized as its tokenizer frames it.
    The final norm is replaced by the identity so that the last hidden state is x_L before it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.model.norm = torch.nn.Identity()
    layers = model.config.num_hidden_layers
    sums = {"all": np.zeros((layers + 1, layers + 1)), "last": np.zeros((layers + 1, layers + 1))}
    counts = {"all": 0, "last": 0}
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            assert ids[0] == tokenizer.bos_token_id  # the tokenizer frames the text with <bos>
            out = model(torch.tensor([ids]), output_hidden_states=True)
            assert len(out.hidden_states) == layers + 1
            states = torch.stack(out.hidden_states)[:, 0].double().numpy()  # [L+1, T, H]
            unit = states / np.linalg.norm(states, axis=-1, keepdims=True)
            cos = np.clip(np.einsum("itd,jtd->tij", unit, unit), -1, 1)  # [T, L+1, L+1]
            angular = np.arccos(cos) / np.pi
            sums["all"] += angular.sum(axis=0)
            sums["last"] += angular[-1]
            counts["all"] += len(ids)
            counts["last"] += 1
    means = {region: sums[region] / counts[region] for region in sums}
    for mean in means.values():
        np.fill_diagonal(mean, 0.0)
    return means, counts


def test_plain_layout_scan_equals_a_direct_forward_of_the_tokenized_text(setup, tmp_path):
    out = tmp_path / "scan"
    assert main(["scan", "--model", str(setup["llm"]), "--data", str(setup["txt"]), "--out", str(out),
                 "--batch-size", "3", "--bootstrap", "20", "--plots=false"]) == 0
    payload = json.loads((out / "scan.json").read_text())
    assert payload["settings"]["layout"] == "plain" and list(payload["inputs"]) == ["text"]
    assert set(payload["settings"]["regions"]) == {"all", "last"} and payload["data"]["text_only"]
    regions = payload["inputs"]["text"]["regions"]
    assert set(regions) == {"all", "last"}
    expected, counts = reference_angular(setup["llm"], TEXTS)
    for region in ("all", "last"):
        assert regions[region]["count"] == counts[region]
        # The scan runs padded batches of 3, the reference one unpadded text at a time: float32
        # states then differ by ~1e-6 relative, and arccos amplifies that by 1/sqrt(1 - cos^2),
        # under 100 here (layers of a random model are far from parallel): 1e-4 bounds it.
        np.testing.assert_allclose(np.array(regions[region]["angular"]), expected[region], rtol=0, atol=1e-4)
    assert len(regions["all"]["stability"]) == 5


def test_task_layout_stays_behind_the_option(setup, tmp_path):
    plain = scan(ScanConfig(model=str(setup["llm"]), data=str(setup["manifest"]), out=str(tmp_path / "p"),
                            bootstrap=0, plots=False))
    task = scan(ScanConfig(model=str(setup["llm"]), data=str(setup["manifest"]), out=str(tmp_path / "t"),
                           layout="task", bootstrap=0, plots=False))
    tokenizer = AutoTokenizer.from_pretrained(setup["llm"])
    utterances = load_manifest(setup["manifest"])
    assert plain["settings"]["layout"] == "plain" and task["settings"]["layout"] == "task"
    assert set(task["inputs"]["text"]["regions"]) == {"speech", "prompt", "target", "last", "all"}
    # plain: each transcript as its tokenizer frames it (<bos> first); task: the transcript (no
    # special tokens) stands in the speech slot, then prompt, separator, target and <eos>
    assert plain["inputs"]["text"]["regions"]["all"]["count"] == sum(len(tokenizer(u.text)["input_ids"])
                                                                     for u in utterances)
    assert task["inputs"]["text"]["regions"]["speech"]["count"] == sum(
        len(tokenizer(u.text, add_special_tokens=False)["input_ids"]) for u in utterances)
    assert task["inputs"]["text"]["regions"]["all"]["count"] > 2 * plain["inputs"]["text"]["regions"]["all"]["count"]


def test_text_file_loading(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("  first text \n\n   \nsecond\r\nthird line.\n")
    utterances = load_data(path)
    assert [(u.id, u.text, u.target, u.audio) for u in utterances] == [
        ("line-1", "first text", "first text", None), ("line-4", "second", "second", None),
        ("line-5", "third line.", "third line.", None)]
    assert all(u.task == "asr" and u.src_lang == u.tgt_lang == "und" for u in utterances)
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="no text"):
        load_data(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_data(tmp_path / "latin1.txt")
    with pytest.raises(UserError, match="not found"):
        load_data(tmp_path / "absent.txt")
    with pytest.raises(UserError, match="--text-column is for a Hugging Face dataset"):
        load_data(path, text_column="text")


def test_hugging_face_text_dataset_loading(tmp_path):
    import datasets

    rows = {"id": ["a", "b", "a", "c"], "sentence": ["one text.", "  ", "two texts.", "three."], "n": [1, 2, 3, 4]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    utterances = load_data(tmp_path / "single")
    assert [(u.id, u.text, u.audio) for u in utterances] == [("a", "one text.", None), ("a-1", "two texts.", None),
                                                              ("c", "three.", None)]
    with pytest.raises(UserError, match="holds int"):
        load_data(tmp_path / "single", text_column="n")
    with pytest.raises(UserError, match="no column 'body'.*sentence"):
        load_data(tmp_path / "single", text_column="body")
    split = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["x y.", "z."]}),
                                  "dev": datasets.Dataset.from_dict({"body": ["dev text."]})})
    split.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(UserError, match="choose a split with --split"):
        load_data(tmp_path / "dict", text_column="body")
    with pytest.raises(UserError, match="cannot tell the text column"):
        load_data(tmp_path / "dict", split="dev")
    assert [(u.id, u.text) for u in load_data(tmp_path / "dict", text_column="body", split="dev")] == [
        ("row-0", "dev text.")]
    with pytest.raises(UserError, match="no split 'test'"):
        load_data(tmp_path / "dict", text_column="body", split="test")


def test_a_text_dataset_scans_as_the_same_texts_in_a_file(setup, tmp_path):
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"content": TEXTS})}).save_to_disk(str(tmp_path / "ds"))
    common = dict(model=str(setup["llm"]), batch_size=3, bootstrap=0, plots=False)
    from_file = scan(ScanConfig(data=str(setup["txt"]), out=str(tmp_path / "a"), **common))
    from_dataset = scan(ScanConfig(data=str(tmp_path / "ds"), out=str(tmp_path / "b"), **common))
    assert from_dataset["inputs"] == from_file["inputs"]  # same texts, same batches: bit for bit
    assert main(["scan", "--model", str(setup["llm"]), "--data", str(tmp_path / "ds"), "--text-column", "content",
                 "--split", "test", "--out", str(tmp_path / "c"), "--bootstrap", "0", "--plots=false"]) == 0


def test_speechllm_on_text_only_data(setup, tmp_path, capsys):
    out = tmp_path / "auto"
    assert main(["scan", "--model", str(setup["slm"]), "--data", str(setup["txt"]), "--out", str(out),
                 "--bootstrap", "0", "--plots=false"]) == 0
    payload = json.loads((out / "scan.json").read_text())
    assert list(payload["inputs"]) == ["text"] and payload["settings"]["layout"] == "task"
    capsys.readouterr()
    for speech_input in ("speech", "both"):
        assert main(["scan", "--model", str(setup["slm"]), "--data", str(setup["txt"]), "--out", str(tmp_path / "x"),
                     "--input", speech_input]) == 2
        err = capsys.readouterr().err
        assert "text only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    plain = tmp_path / "plain"
    assert main(["scan", "--model", str(setup["slm"]), "--data", str(setup["txt"]), "--out", str(plain),
                 "--layout", "plain", "--bootstrap", "0", "--plots=false"]) == 0
    assert set(json.loads((plain / "scan.json").read_text())["inputs"]["text"]["regions"]) == {"all", "last"}


def test_plain_layout_refuses_regions_it_does_not_have(setup, tmp_path, capsys):
    common = ["--data", str(setup["txt"]), "--out", str(tmp_path / "x")]
    assert main(["scan", "--model", str(setup["llm"]), "--regions", "all,target"] + common) == 2
    err = capsys.readouterr().err
    assert "--regions target" in err and "only the regions last and all" in err and "--layout task" in err
    assert main(["scan", "--model", str(setup["slm"]), "--layout", "plain", "--input", "both",
                 "--data", str(setup["manifest"]), "--out", str(tmp_path / "x")]) == 2
    assert "--layout plain is a text layout" in capsys.readouterr().err
    assert main(["scan", "--model", str(setup["llm"]), "--layout", "words"] + common) == 2
    assert main(["scan", "--model", str(setup["llm"]), "--stability-regions", "prompt"] + common) == 2
    assert "not among the scanned regions" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_calibration_reads_text_files_on_the_plain_layout(setup):
    from speechprune.model.layout import IGNORE_INDEX
    from speechprune.prune.calibration import cached_decoder_inputs

    _, batches = cached_decoder_inputs(str(setup["llm"]), str(setup["txt"]), "text", batch_size=4)
    tokenizer = AutoTokenizer.from_pretrained(setup["llm"])
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert [b.attention_mask.shape[0] for b in batches] == [4, 3]
    first = batches[0]
    for row, expected in enumerate(ids[:4]):
        n = len(expected)
        assert int(first.attention_mask[row].sum()) == n
        # every position predicts the next token of the text, as a language model's loss does
        assert first.labels[row, : n - 1].tolist() == expected[1:]
        assert (first.labels[row, n - 1:] == IGNORE_INDEX).all()
    with pytest.raises(UserError, match="text only"):
        cached_decoder_inputs(str(setup["slm"]), str(setup["txt"]), "speech")


def language_model_losses(model_dir: Path, texts: list[str], layers: int) -> dict[int, float]:
    """For each layer c, the token-weighted mean next-token loss of the model without layer c,
    from transformers' own loss (``labels=input_ids``) of one unpadded forward per tokenized text;
    the layer is made an identity by a forward hook."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    losses = {}
    with torch.no_grad():
        for candidate in range(layers):
            handle = model.model.layers[candidate].register_forward_hook(identity, with_kwargs=True)
            total, count = 0.0, 0
            for text in texts:
                ids = torch.tensor([tokenizer(text)["input_ids"]])
                total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
            handle.remove()
            losses[candidate] = total / count
    return losses


def test_prune_greedy_score_on_a_text_file_is_the_language_model_loss(setup, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(setup["llm"]), "--out", str(out), "--remove", "1", "--strategy",
                 "greedy-score", "--data", str(setup["txt"]), "--batch-size", "3", "--device", "cpu"]) == 0
    record = json.loads((out / "pruning.json").read_text())
    assert record["layout"] == "plain" and record["score"] == "next-token cross-entropy"
    assert record["utterances"] == len(TEXTS)
    expected = language_model_losses(setup["llm"], TEXTS, 5)
    scores = {int(c): s for c, s in record["steps"][0]["scores"].items()}
    assert sorted(scores) == sorted(expected)
    # padded batches of 3 against one unpadded text at a time: float32 logits differ by ~1e-6
    # relative, so mean losses near 6 agree to a few 1e-6 (2e-7 seen); 1e-5 bounds it
    for candidate, loss in expected.items():
        assert scores[candidate] == pytest.approx(loss, abs=1e-5)
    best, second = sorted(expected.values())[:2]
    assert second - best > 1e-4  # no near-tie (ten times the tolerance): the loss decides the choice below
    assert record["removed"] == [min(expected, key=expected.get)]

    import datasets  # the same texts as a dataset with two splits: the same batches, bit for bit

    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"body": TEXTS}),
                          "dev": datasets.Dataset.from_dict({"body": ["other."]})}).save_to_disk(str(tmp_path / "ds"))
    assert main(["prune", "--model", str(setup["llm"]), "--out", str(tmp_path / "ds-pruned"), "--remove", "1",
                 "--strategy", "greedy-score", "--data", str(tmp_path / "ds"), "--text-column", "body",
                 "--split", "test", "--batch-size", "3", "--device", "cpu"]) == 0
    from_dataset = json.loads((tmp_path / "ds-pruned" / "pruning.json").read_text())
    assert from_dataset["steps"] == record["steps"] and from_dataset["data"] == str((tmp_path / "ds").resolve())

    capsys.readouterr()
    common = ["--model", str(setup["llm"]), "--remove", "1", "--strategy", "iterative", "--data", str(setup["txt"])]
    assert main(["prune", "--out", str(tmp_path / "x"), "--region", "target"] + common) == 2
    err = capsys.readouterr().err
    assert "--region target: the plain layout has only last, all" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert main(["prune", "--out", str(tmp_path / "task"), "--region", "target", "--layout", "task"] + common) == 0
    task = json.loads((tmp_path / "task" / "pruning.json").read_text())
    assert task["layout"] == "task" and task["region"] == "target" and task["utterances"] == len(TEXTS)
