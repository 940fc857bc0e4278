# make demo : set up .venv if needed, then the whole PLRC pipeline on the embedded demo data.
# make test : set up .venv if needed, then the test suite (temporary folders of passing tests are removed:
#             the suite writes ~3 GB of checkpoints and training outputs).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.plrc_d2-setup-stamp
SETUP_INPUTS := requirements/torch.txt requirements/base.txt setup.py tools/setup_env.sh
PYTEST_ARGS ?=

.PHONY: demo test setup env-info clean-demo

setup: $(STAMP)

# The stamp holds a hash of the set-up inputs: a changed requirement file or a missing venv re-runs set-up.
$(STAMP): $(SETUP_INPUTS) FORCE
	@want=$$(cat $(SETUP_INPUTS) | sha256sum | cut -d' ' -f1); \
	if [ -x $(PY) ] && [ -f $@ ] && [ "$$(cat $@)" = "$$want" ]; then exit 0; fi; \
	VENV=$(VENV) bash tools/setup_env.sh && echo "$$want" > $@

FORCE:

env-info: setup
	@$(PY) -m plrc_d2.env_info

test: setup
	@$(PY) -m plrc_d2.env_info
	$(PY) -m pytest tests -o tmp_path_retention_policy=failed $(PYTEST_ARGS)

demo: setup
	@$(PY) -m plrc_d2.env_info
	$(PY) tools/demo.py

clean-demo:
	rm -rf output/demo
