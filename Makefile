# tidal: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STACK := scripts/stack.sh
CLUSTER := scripts/cluster.sh
# Every command below sees the embedded stack's settings (ports, generated credentials).
WITH_ENV = set -a && source "$$($(STACK) env)" && set +a &&

.PHONY: venv jvm demo up up-cluster down status test test-fast test-cluster lock clean

venv: $(VENV)/.installed jvm

# The venv is built from the committed lock only; torch resolves to the CPU build 2.13.0.
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	@touch $@

# tidal's JVM code (jvm/src: the features job's event line reader), compiled against the venv's Spark and Jackson.
# Needs a JDK 17's javac and jar (Spark itself needs only the Java runtime); without them the jar is skipped with a
# warning and the features job reads every line with Spark's variant functions alone (correct, slower).
JVM_SOURCES := $(shell find jvm/src -name '*.java')
JVM_JAR := build/tidal-spark.jar
SPARK_JARS = $(shell $(BIN)/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')

jvm: $(JVM_JAR)

$(JVM_JAR): $(JVM_SOURCES) $(VENV)/.installed
	@if ! command -v javac >/dev/null || ! command -v jar >/dev/null; then \
		echo "warning: no javac/jar (a JDK 17): $(JVM_JAR) not built; the features job will read lines without tidal's event line reader" >&2; \
		exit 0; fi; \
	jars="$(SPARK_JARS)"; rm -rf build/jvm-classes && mkdir -p build/jvm-classes && \
	javac --release 17 -Xlint:all -Werror -d build/jvm-classes \
		-cp "$$(ls "$$jars"/spark-sql-api_*.jar "$$jars"/jackson-core-*.jar "$$jars"/scala-library-*.jar | paste -sd:)" \
		$(JVM_SOURCES) && \
	jar --create --file $@.tmp -C build/jvm-classes . && mv $@.tmp $@

up: venv
	$(STACK) up all

# The cluster profile (docs/cluster.md): PostgreSQL, Airflow's components with two Celery workers, a Spark
# standalone master and two workers, SeaweedFS and Valkey, each by PID on 127.0.0.1, beside the embedded stack.
up-cluster: venv
	$(CLUSTER) up

# Both stacks: the embedded one and, when it was ever started, the cluster profile.
down:
	@rc=0; $(STACK) down || rc=1; $(CLUSTER) down || rc=1; exit $$rc

status:
	$(STACK) status
	@$(CLUSTER) status

# Starts the stack in the background, feeds the stream, runs three cycles under the scheduler, prints a summary.
demo: venv
	$(STACK) up all
	$(WITH_ENV) $(BIN)/python -m devtools.demo

# The whole suite. SeaweedFS is started for it (and stopped afterwards only if this target started it).
test: venv
	@$(WITH_ENV) started_s3=0; \
	if ! $(STACK) status | grep -q 'seaweedfs: running'; then $(STACK) up s3 && started_s3=1; fi; \
	$(BIN)/python -m pytest tests -m "not cluster" $(PYTEST_ARGS); rc=$$?; \
	if [ $$started_s3 = 1 ]; then $(STACK) down; fi; \
	exit $$rc

test-fast: venv
	$(BIN)/python -m pytest tests -m "not slow and not stack and not cluster" $(PYTEST_ARGS)

# The cluster profile's proof (tests/cluster): each test module starts a private profile on free ports and stops it.
test-cluster: venv
	$(BIN)/python -m pytest tests/cluster -m cluster $(PYTEST_ARGS)

# The speed benchmarks side by side (benchmarks/run.py): features vs DuckDB, the 10k cycle, drift, the training loop.
# Heavy (minutes); BENCH_ARGS passes options, e.g. BENCH_ARGS="--events 1000000 --freshness".
.PHONY: bench
bench: venv
	PYTHONPATH=. $(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Regenerate the lock from a fresh resolve of pyproject's direct dependencies.
lock:
	rm -rf /tmp/tidal-lock-venv && $(PYTHON) -m venv /tmp/tidal-lock-venv
	/tmp/tidal-lock-venv/bin/pip install -q ".[test]"
	( head -3 requirements.lock; /tmp/tidal-lock-venv/bin/pip freeze --exclude tidal | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean: down
	rm -rf .stack data reports

# Headless Chromium and its driver from Debian, for the browser test (tests/plugins/test_browser.py). Installs
# only when either is missing (apt-get, as root or through sudo); prints both versions.
.PHONY: browser
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }
	@chromium --version && chromedriver --version
