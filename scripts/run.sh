#!/usr/bin/env bash
# `make run`: start the server on its embedded default data directory, open the shell on it,
# and stop the server when the shell exits. The server's fingerprint is passed to the shell,
# so this trusted local pairing needs no question; other servers are still asked about.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${VITRINE_PORT:-7878}"
LOG="$(mktemp -t vitrine-server.XXXXXX.log)"

"$PY" server.py --port "$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 300); do
    if grep -q "fingerprint" "$LOG"; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$LOG" >&2; exit 1; fi
    sleep 0.1
done
FINGERPRINT="$(grep -o 'SHA256:[A-Za-z0-9+/=]*' "$LOG" | head -n1)"
echo "Server running (log: $LOG), fingerprint $FINGERPRINT"
"$PY" client.py --server "127.0.0.1:$PORT" --fingerprint "$FINGERPRINT" "$@"
