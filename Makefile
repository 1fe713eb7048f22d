# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
# The PyTorch build this project is tested with (pip takes it from the local disk here).
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow lint clean

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ./client -e '.[dev,bench,onnx,ray]'
	touch $@

install: $(VENV)/.installed

# The whole loop on embedded defaults: start API, worker and TorchServe, pretrain with MEC
# (Fashion-MNIST when installed, else digits), kNN next to random init, deploy, embed and
# retrieve test images, stop everything.
demo: install
	@echo "while the demo runs, its dashboard is the 'dashboard' URL it prints (log in with an API key); 'mec up' keeps one at http://127.0.0.1:8000/ui/"
	$(VENV)/bin/mec demo

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q -m "not slow" --durations=20

test-slow: install
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
