#!/usr/bin/env bash
# The main job: sets the machine up (installs and starts MariaDB, RabbitMQ and
# Redis when missing, builds), then runs the whole fleet — a coordinator and two
# workers — through a scenario, and prints what happened.
#
# State lives in the database `aegis_demo` (recreated each run) and in .demo/
# (logs and the demo's encryption key).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=$ROOT/.demo
mkdir -p "$DEMO"

scripts/services.sh --install
# rustup installs cargo under ~/.cargo/bin when the machine had none.
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
echo "[demo] building (the first build takes a few minutes)" >&2
cargo build --workspace --bins --quiet
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug

export AEGIS_DATABASE_URL=mysql://root@127.0.0.1:3306/aegis_demo
export AEGIS_NAMESPACE=demo
export AEGIS_POLL_INTERVAL=250ms
export AEGIS_LOG_COLOR=never
[ -f "$DEMO/encryption.key" ] || "$BIN/aegis" secrets generate-key --key-id demo > "$DEMO/encryption.key"
export AEGIS_ENCRYPTION_KEY_FILE=$DEMO/encryption.key

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
aegis() { "$BIN/aegis" "$@"; }

step "Fresh database and schema"
mysql -h 127.0.0.1 -u root -e 'DROP DATABASE IF EXISTS aegis_demo'
aegis migrate

step "The vendor simulators (JIRA, Qualys, Nexpose) stand in for the real vendors"
"$BIN/aegis-sim" --jira-port 18080 --qualys-port 18081 --nexpose-port 18082 --control-port 18083 \
  --hosts 20 --detections-per-host 4 --scan-queued-secs 1 --scan-running-secs 3 --scan-processing-secs 1 \
  > "$DEMO/sim.json" 2> "$DEMO/sim.log" & PIDS+=($!)
for _ in $(seq 1 40); do [ -s "$DEMO/sim.json" ] && break; sleep 0.25; done
cat "$DEMO/sim.json"
suggested() { curl -sf http://127.0.0.1:18083/_sim/source-configs | python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)['$1']['payload']))"; }

step "An organization, its JIRA and Qualys source configs (credentials sealed), and the installer's job configs"
aegis org create --code DEMO --description "Aegis demo organization"
SIM_PASSWORD=aegis aegis source add --org DEMO --source JIRA --address http://127.0.0.1:18080 \
  --username aegis --password-env SIM_PASSWORD --payload "$(suggested jira)" --delay-ns 20000000 --concurrency 4
SIM_PASSWORD=aegis aegis source add --org DEMO --source Qualys --address http://127.0.0.1:18081 \
  --username aegis --password-env SIM_PASSWORD --payload "$(suggested qualys)" --delay-ns 20000000 --concurrency 2
JIRA=$(mysql -N -h 127.0.0.1 -u root aegis_demo -e "SELECT ID FROM SourceConfig WHERE Source='JIRA'")
QUALYS=$(mysql -N -h 127.0.0.1 -u root aegis_demo -e "SELECT ID FROM SourceConfig WHERE Source='Qualys'")
aegis jobconfig create-defaults --org DEMO --scanner "$QUALYS" --ticketing "$JIRA" --groups 1 --no-auto-start --scan-sync-wait 2 >/dev/null
aegis source list
aegis jobconfig list --org DEMO

step "Starting the fleet: one coordinator, two workers (logs in .demo/)"
"$BIN/aegis-coordinator" > "$DEMO/coordinator.log" 2>&1 & PIDS+=($!)
AEGIS_WORKER_ID=worker-a "$BIN/aegis-worker" > "$DEMO/worker-a.log" 2>&1 & PIDS+=($!)
AEGIS_WORKER_ID=worker-b "$BIN/aegis-worker" > "$DEMO/worker-b.log" 2>&1 & PIDS+=($!)
sleep 1

step "A job queued with the FAQ's SQL INSERT"
mysql -h 127.0.0.1 -u root aegis_demo -e "INSERT INTO JobHistory (JobId, StatusId, Priority, Payload)
  VALUES ((SELECT ID FROM Job WHERE Struct = 'DiagnosticJob'), 1, 0, '{\"message\": \"hello from a SQL-queued job\", \"sleep_ms\": 300}')"
SQL_JOB=$(mysql -N -h 127.0.0.1 -u root aegis_demo -e "SELECT ID FROM JobHistory ORDER BY CreatedDate DESC LIMIT 1")
aegis job wait "$SQL_JOB" --timeout 60

step "A job submitted by queue (aegis.submit), with the reply giving its ID"
QUEUE_JOB=$(aegis job submit --queue --job DiagnosticJob --payload '{"message": "hello from a queued submission"}' | cut -d' ' -f1)
aegis job wait "$QUEUE_JOB" --timeout 60

step "A failing job and a panicking job end as ERROR with their reason"
FAIL_JOB=$(aegis job submit --job DiagnosticJob --payload '{"fail": "the scanner refused the credentials"}' | cut -d' ' -f1)
PANIC_JOB=$(aegis job submit --job DiagnosticJob --payload '{"panic": "simulated bug"}' | cut -d' ' -f1)
aegis job wait "$FAIL_JOB" --timeout 60 || true
aegis job wait "$PANIC_JOB" --timeout 60 || true

step "A long job cancelled while it runs"
LONG_JOB=$(aegis job submit --job DiagnosticJob --payload '{"sleep_ms": 600000}' | cut -d' ' -f1)
for _ in $(seq 1 40); do [ "$(mysql -N -h 127.0.0.1 -u root aegis_demo -e "SELECT StatusId FROM JobHistory WHERE ID='$LONG_JOB'")" = 2 ] && break; sleep 0.25; done
aegis job cancel "$LONG_JOB"
aegis job wait "$LONG_JOB" --timeout 30 || true

step "A burst of 500 jobs across both workers"
mysql -h 127.0.0.1 -u root aegis_demo -e "INSERT INTO JobHistory (JobId, StatusId, Priority, Payload)
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
  SELECT (SELECT ID FROM Job WHERE Struct = 'DiagnosticJob'), 1, 3, '{\"record\": true}' FROM n"
START=$(date +%s.%N)
until [ "$(mysql -N -h 127.0.0.1 -u root aegis_demo -e "SELECT COUNT(*) FROM DiagnosticRun")" -ge 500 ]; do sleep 0.2; done
END=$(date +%s.%N)
mysql -h 127.0.0.1 -u root aegis_demo -e "SELECT WorkerID, COUNT(*) AS JobsRun FROM DiagnosticRun GROUP BY WorkerID"
python3 -c "print(f'[demo] 500 jobs in {($END-$START):.2f} s')"

step "What happened (aegis job list)"
aegis job list --limit 8
echo
echo "Log lines of the SQL-queued job, as the FAQ shows them:"
grep -h "$SQL_JOB" "$DEMO"/worker-*.log | head -5

step "The remediation loop: sync, ticket, a person resolves tickets, the fleet rescans and decides"
cfg() { mysql -N -h 127.0.0.1 -u root aegis_demo -e "SELECT c.ID FROM JobConfig c JOIN Job j ON j.Id = c.JobId WHERE j.Struct = '$1' ${2:-} ORDER BY c.CreatedDate LIMIT 1"; }
run() { local id; id=$(aegis job submit --config "$1" ${2:+--payload "$2"} | cut -d' ' -f1); aegis job wait "$id" --timeout 120 >/dev/null && echo "[demo] $3 completed ($id)"; }
# The installer's queues are continuous (every 60 s); the demo runs each once, on demand.
mysql -h 127.0.0.1 -u root aegis_demo -e "UPDATE JobConfig SET Continuous = 0 WHERE JobId = (SELECT Id FROM Job WHERE Struct = 'RescanQueueJob')"
run "$(cfg VulnSyncJob)" "" VulnSyncJob
run "$(cfg AssetSyncJob)" "" AssetSyncJob
run "$(cfg TicketingJob)" "" TicketingJob
C=http://127.0.0.1:18083
python3 - "$DEMO/tickets.json" <<'PY'
import json, sys, urllib.request, base64
auth = {"Authorization": "Basic " + base64.b64encode(b"aegis:aegis").decode()}
def get(url):
    return json.load(urllib.request.urlopen(urllib.request.Request(url, headers=auth)))
fields = {f["name"]: f["id"] for f in get("http://127.0.0.1:18080/rest/api/2/field")}
state = get("http://127.0.0.1:18083/_sim/state")
out = []
for i in state["jira"]["issues"]:
    issue = get(f"http://127.0.0.1:18080/rest/api/2/issue/{i['key']}")["fields"]
    port, _, proto = (issue.get(fields["Service Port"]) or "").partition(" ")
    out.append({"key": i["key"], "status": i["status"], "ip": issue.get(fields["IP Address"]),
                "qid": issue.get(fields["VulnerabilityID"]), "port": port, "proto": proto})
json.dump(out, open(sys.argv[1], "w"))
print(f"[demo] {len(out)} tickets opened, e.g. " + ", ".join(t["key"] for t in out[:5]))
PY
# Three hosts: one fixed, one still vulnerable, one gone for good.
read -r FIXED VULN DEAD DEAD_IP < <(python3 -c "
import json; t = json.load(open('$DEMO/tickets.json'))
ips = sorted({x['ip'] for x in t}, key=lambda s: tuple(int(p) for p in s.split('.')))
first = lambda ip: next(x for x in t if x['ip'] == ip)
print(first(ips[0])['key'], first(ips[1])['key'], first(ips[2])['key'], ips[2])")
python3 -c "
import json; t = {x['key']: x for x in json.load(open('$DEMO/tickets.json'))}[ '$FIXED' ]
print(json.dumps({'ip': t['ip'], 'qid': int(t['qid']), 'port': int(t['port'] or 0), 'protocol': t['proto'], 'vulnerable': False}))" > "$DEMO/truth.json"
echo "[demo] the owner of $FIXED fixes it (POST /_sim/truth) and resolves it; $VULN is resolved without a fix"
curl -sf -XPOST $C/_sim/truth -d @"$DEMO/truth.json" >/dev/null
for k in "$FIXED" "$VULN"; do curl -sf -XPOST "$C/_sim/jira/issues/$k/transition" -d '{"to":"Resolved-Remediated","as_user":"remediator"}' >/dev/null; done
echo "[demo] host $DEAD_IP is switched off (POST /_sim/hosts/$DEAD_IP) and $DEAD marked Resolved-Decommissioned"
curl -sf -XPOST "$C/_sim/hosts/$DEAD_IP" -d '{"alive":false}' >/dev/null
curl -sf -XPOST "$C/_sim/jira/issues/$DEAD/transition" -d '{"to":"Resolved-Decommissioned","as_user":"remediator"}' >/dev/null
curl -sf $C/_sim/state > "$DEMO/before.json"
run "$(cfg RescanQueueJob "AND c.Payload LIKE '%\"NORMAL\"%'")" "" "RescanQueueJob NORMAL"
run "$(cfg RescanQueueJob "AND c.Payload LIKE '%\"DECOMMISSIONED\"%'")" "" "RescanQueueJob DECOMMISSIONED"
SYNC=$(aegis job submit --config "$(cfg ScanSyncJob)" | cut -d' ' -f1)
echo "[demo] ScanSyncJob $SYNC polls the scans every 2 s (continuous)"
busy() { mysql -N -h 127.0.0.1 -u root aegis_demo -e "SELECT
  (SELECT COUNT(*) FROM ScanSummary WHERE ScanStatus NOT IN ('finished','canceled','stopped','error')) +
  (SELECT COUNT(*) FROM JobHistory h JOIN Job j ON j.Id = h.JobId WHERE j.Struct IN ('RescanJob','ScanCloseJob') AND h.StatusId IN (1,2))"; }
for _ in $(seq 1 120); do [ "$(busy)" = 0 ] && break; sleep 1; done
aegis job cancel "$SYNC" >/dev/null || true
aegis job wait "$SYNC" --timeout 30 >/dev/null 2>&1 || true
mysql -h 127.0.0.1 -u root aegis_demo -e "SELECT SourceKey AS Scan, ScanStatus, JSON_UNQUOTE(JSON_EXTRACT(ScanClosePayload, '$.type')) AS Type,
  JSON_LENGTH(JSON_EXTRACT(ScanClosePayload, '$.tickets')) AS Tickets FROM ScanSummary ORDER BY CreatedDate"
mysql -h 127.0.0.1 -u root aegis_demo -e "SELECT j.Struct AS Job, h.StatusId AS Status, COUNT(*) AS N FROM JobHistory h JOIN Job j ON j.Id = h.JobId
  WHERE j.Struct IN ('RescanQueueJob','RescanJob','ScanSyncJob','ScanCloseJob') GROUP BY j.Struct, h.StatusId"
echo "Ignore rows for decommissioned devices:"
mysql -h 127.0.0.1 -u root aegis_demo -e "SELECT DeviceID, TypeId, Active, DueDate FROM \`Ignore\` WHERE TypeId = 2"
echo
echo "What happened to each ticket the loop touched:"
python3 - "$DEMO/tickets.json" "$DEMO/before.json" <<'PY'
import json, sys, urllib.request
ips = {t["key"]: t["ip"] for t in json.load(open(sys.argv[1]))}
before = {i["key"]: i for i in json.load(open(sys.argv[2]))["jira"]["issues"]}
state = json.load(urllib.request.urlopen("http://127.0.0.1:18083/_sim/state"))
rows = []
for i in state["jira"]["issues"]:
    b = before.get(i["key"])
    if b and (i["status"] != b["status"] or i["comments"] != b["comments"]):
        last = (i["comments"][-1] if i["comments"] else "").strip().splitlines()
        rows.append((i["key"], ips.get(i["key"], ""), b["status"], i["status"], last[0][:70] if last else ""))
print(f"{'ticket':<10} {'ip':<12} {'before':<24} {'after':<24} last comment")
for r in rows:
    print(f"{r[0]:<10} {r[1]:<12} {r[2]:<24} {r[3]:<24} {r[4]}")
PY
