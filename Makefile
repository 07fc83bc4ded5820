# Set-up and the two commands the README promises.  Installs into the active
# Python environment; a GPU user who installed a CUDA torch keeps it.
PYTHON ?= python3

.PHONY: install demo lint test bench

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[all,dev]"

demo: install
	dce-demo --out demo

lint: install
	$(PYTHON) -m ruff check .

test: lint
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) benchmarks/raster_throughput.py
	$(PYTHON) benchmarks/curvature_speed.py
	$(PYTHON) benchmarks/fit_speed.py
	$(PYTHON) benchmarks/fit_accuracy.py
	$(PYTHON) benchmarks/world_speed.py
	$(PYTHON) benchmarks/build_throughput.py
	$(PYTHON) benchmarks/train_throughput.py
	$(PYTHON) benchmarks/loader_throughput.py
	$(PYTHON) benchmarks/detail_speed.py
	$(PYTHON) benchmarks/eval_mesh_speed.py
