#!/bin/sh
# A ticket per death, closed when the agent is revived: a `[notify] command` for Lazarus Pit, with
# Taskwarrior as the ticket tool (apt-get install taskwarrior jq). In lazarus.toml:
#
#   [notify]
#   command = ["/usr/local/bin/lazarus-ticket"]
#   min_interval = 0        # every death and every revival (the default 60 s rate-limits each kind)
#
# The event arrives on stdin as one JSON line. One open task per agent (project lazarus.<cell>.<agent>):
# a second death annotates it, a revival (of the agent, or of a substitute for it) annotates and closes it.
set -eu
event=$(cat)
field() { printf '%s' "$event" | jq -r "$1"; }
type=$(field .type)
cell=$(field .cell)
agent=$(field '.substitute_for // .agent // empty')
[ -n "$agent" ] || exit 0
project="lazarus.$cell.$agent"
t() { task rc.confirmation=off rc.bulk=0 rc.verbose=nothing "$@"; }
case "$type" in
  agent.declared_dead)
    why="$(field .reason): $(field '.detail.error // .detail.returncode // .detail.age // "" | tostring')"
    if [ "$(t project.is:"$project" status:pending count)" = 0 ]; then
      t add project:"$project" +lazarus "agent $agent of cell $cell is dead ($why)"
    else
      t project.is:"$project" status:pending annotate "dead again ($why)"
    fi
    ;;
  agent.revived)
    how=$(field 'if .via != "" and .via != null then "via " + .via else "by lazarus" end')
    t project.is:"$project" status:pending annotate "revived $how, attempt $(field .attempt)" || true
    t project.is:"$project" status:pending done || true
    ;;
esac
