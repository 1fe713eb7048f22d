# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
# The PyTorch build this project is tested with (pip takes it from the local disk here).
TORCH   ?= torch==2.14.1 torchvision==0.29.1
DATASET ?= $(shell test -d /usr/share/datasets/fashion-mnist && echo fashion-mnist || echo digits)
RUN     ?= runs/demo

.PHONY: install demo test test-slow lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# A short MEC pretraining on a real dataset, then kNN top-1 next to the same backbone at
# random init. DATASET=digits for the 30-second version.
demo: install
	$(VENV)/bin/mec train --dataset $(DATASET) --backbone convnet --proj-dim 512 \
	  --epochs $(if $(filter digits,$(DATASET)),30,2) --batch-size 256 \
	  --warmup-epochs 0.5 --lambda-warmup-epochs 0.5 --no-resume --out $(RUN)
	@$(VENV)/bin/mec eval knn --checkpoint $$(ls -d $(RUN)/checkpoints/step_*.pt | tail -1) \
	  --dataset $(DATASET) > $(RUN)/knn.json
	@$(VENV)/bin/mec eval knn --random-init --backbone convnet --dataset $(DATASET) \
	  > $(RUN)/knn-random.json
	@$(PY) -c "import json; t, r = (json.load(open('$(RUN)/' + f)) for f in ('knn.json', 'knn-random.json')); \
	  print(f\"kNN top-1 on $(DATASET): MEC {t['top1']:.1f}%  vs  random init {r['top1']:.1f}%\")"

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
