#!/usr/bin/env bash
# `make run`: start the server on its embedded default data directory, open the shell on it,
# and stop the server when the shell exits. The server's fingerprint is passed to the shell,
# so this trusted local pairing needs no question; other servers are still asked about.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${VITRINE_PORT:-7878}"
LOG="$(mktemp -t vitrine-server.XXXXXX.log)"

# The server gets a session of its own, away from the terminal: Ctrl-C at the shell (the way
# to stop add_image) and Ctrl-Z are the shell's, and used to stop the server too. Its stop is
# then ours to make: the EXIT trap below, which bash also runs when the terminal closes (SIGHUP)
# or on SIGTERM, and SIGTERM from the kernel if this script dies where no trap runs (SIGKILL).
# `setsid --wait` keeps $! the server's parent even if setsid has to fork. Both tools are
# util-linux; where they are missing the server starts as before.
DETACH=()
# Probed, not assumed: BusyBox's setsid and util-linux before 2.31 have no --wait.
if setsid --wait true >/dev/null 2>&1; then DETACH+=(setsid --wait); fi
if command -v setpriv >/dev/null 2>&1 && setpriv --pdeathsig TERM true 2>/dev/null; then
    DETACH+=(setpriv --pdeathsig TERM)
fi

${DETACH[@]+"${DETACH[@]}"} "$PY" server.py --port "$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!

# The log goes once the server has stopped cleanly; a server that failed, or stopped before
# the shell did, keeps it, and its path is the last thing said.
stop_server() {
    local status=0
    if kill -TERM "$SERVER_PID" 2>/dev/null; then
        wait "$SERVER_PID" 2>/dev/null || status=$?
        if [ "$status" -eq 0 ]; then
            rm -f "$LOG"
            return
        fi
        echo "The server did not stop cleanly (exit status $status); its log: $LOG" >&2
    else
        wait "$SERVER_PID" 2>/dev/null || status=$?
        echo "The server had stopped (exit status $status); its log: $LOG" >&2
    fi
}
trap stop_server EXIT

for _ in $(seq 1 300); do
    if grep -q "fingerprint" "$LOG"; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$LOG" >&2; exit 1; fi
    sleep 0.1
done
FINGERPRINT="$(grep -o 'SHA256:[A-Za-z0-9+/=]*' "$LOG" | head -n1)"
echo "Server running (log: $LOG), fingerprint $FINGERPRINT"
"$PY" client.py --server "127.0.0.1:$PORT" --fingerprint "$FINGERPRINT" "$@"
