# The course's commands. Each target sets up what it needs first, and does nothing
# that is already done: a second `make test` with nothing changed starts in seconds.
#
#   make lab     open JupyterLab at notebooks/00_start_here.ipynb
#   make test       run the whole test suite (unit, data, notebook and browser tests)
#   make bench      run every notebook with SOLUTION=True: seconds, peak MB, verdict
#   make solutions  the answer-key handout: every notebook executed, as HTML
#   make reset      forget exercise progress and caches (your notebook edits stay)
#   make classroom  twenty simulated learners on a real JupyterHub (about half an hour)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
# JupyterLab refuses to run as root without this flag (CI and containers run as root).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup model lab test chromium bench solutions reset lock course-map strip git-filter classroom

$(PY):
	$(PYTHON) -m venv $(VENV)

# PyTorch's own index of CPU-only wheels. torch comes from there first, so that the lock's
# torch==2.13.0 is met by the CPU build (about 200 MB) and not by PyPI's Linux build, which
# pulls several GB of CUDA libraries this course never uses. Where the index cannot be
# reached (an offline mirror with the CPU wheel on disk), pip fails over at once
# (--retries 0) to its other sources. Set TORCH_INDEX= (empty) to skip the index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN   := $(shell grep -m1 '^torch==' requirements.lock)

# Reinstall only when the lock or the package metadata changed.
$(DEPS): requirements.lock pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check --retries 0 --no-deps \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) '$(TORCH_PIN)'
	$(PY) -m pip install --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Extract and verify the embedding model once (a few tenths of a second when cached).
model: $(DEPS)
	$(PY) -m labsupport.embeddings

# JupyterLab's settings for the course (no "Would you like to get notified about official
# Jupyter news?" prompt: it would fetch from the internet), in the environment's app dir.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_OVERRIDES): etc/jupyterlab/overrides.json | $(DEPS)
	mkdir -p $(dir $@) && cp $< $@

# In a git clone: notebook metadata that JupyterLab rewrites on open (the kernel's exact
# Python version) does not count as a change, so `git pull` is not blocked (.gitattributes).
git-filter:
	@git rev-parse --git-dir >/dev/null 2>&1 && \
	  git config filter.course-notebook.clean "python3 etc/notebook_clean.py" || true

setup: $(DEPS) model $(LAB_OVERRIDES) git-filter

lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 $(ROOT_FLAG) notebooks/00_start_here.ipynb

# Two workers (pytest-xdist): notebook runs, browser tests and the Binder install wait on
# processes much of the time, so two of them share a 2-core machine well. The browser tests
# share one JupyterLab and stay on one worker (--dist loadgroup). Tests marked `serial`
# (the load-independence test: it adds exactly two busy processes) run afterwards, alone.
# TEST_WORKERS=0: everything serially, in one run.
TEST_WORKERS ?= 2

test: setup chromium
ifeq ($(TEST_WORKERS),0)
	$(PY) -m pytest
else
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not serial"
	$(PY) -m pytest -m serial
endif

# The browser tests drive Debian's Chromium (Playwright's own download is not possible
# offline). Installed when missing and we may; without it those tests are skipped.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "chromium is not installed: the browser tests will be skipped"; fi; }

bench: setup
	$(PY) tests/bench.py

# The answer-key handout: every notebook run with SOLUTION=True, as HTML (not committed).
solutions: setup
	$(PY) tests/bench.py --export-html build/solutions

# Forget exercise progress and derived caches (embeddings of the data sets). Notebooks,
# and so your edits, are not touched; the verified model and build/ (handouts) stay.
reset: $(DEPS)
	$(PY) -c "from labsupport import embeddings, exercises; exercises.reset_progress(); embeddings.clear_caches()"

# Regenerate the lock from pyproject.toml in a throwaway venv (torch pinned to 2.13.0,
# which installs the CPU build here).
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --disable-pip-version-check torch==2.13.0 -e '.[dev]'
	{ sed -n '1,3p' requirements.lock; build/lock-venv/bin/pip freeze --all --exclude-editable \
	  | grep -v '^pip==' | sed 's/^torch==2.13.0+cpu/torch==2.13.0/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf build/lock-venv

# Refresh the course map (README.md, 00_start_here) and every notebook's navigation
# cells after a notebook lands; after `make bench`, the times use its measurements.
course-map: $(DEPS)
	$(PY) -m labsupport.start_here --write-course-map

# Strip outputs from every notebook before committing.
strip: $(DEPS)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

# The class test (tests/classroom): a real JupyterHub on 127.0.0.1 (JupyterHub from PyPI,
# configurable-http-proxy from npm, both installed here, not by `make test`), twenty learners
# each running every notebook through the hub's proxy. CLASS_SIZES="1 5 10 20" holds several
# classes (default "1 20": the class of one gives the times alone). It mounts the shared
# folder read-only, so as root it needs CAP_SYS_ADMIN.
CLASSROOM := .classroom
HUB_DEPS  := $(CLASSROOM)/.hub-installed
CHP       := $(CLASSROOM)/node_modules/.bin/configurable-http-proxy

$(HUB_DEPS): tests/classroom/requirements.txt | $(DEPS)
	$(PY) -m pip install --disable-pip-version-check -r $< -c requirements.lock
	mkdir -p $(CLASSROOM) && touch $@

$(CHP):
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; \
	  else echo "npm is missing: install Node.js (20 or later) and npm"; exit 1; fi; }
	npm install --no-audit --no-fund --prefix $(CLASSROOM) configurable-http-proxy@5.3.0

classroom: setup $(HUB_DEPS) $(CHP)
	$(PY) -m pytest tests/classroom -s -p no:cacheprovider
