#!/usr/bin/env bash
# version 6 (../README.md, "Version 6"): the dropout model's seventh version, version 5's script (v5/dropout.sh:
# the same data, lengths, route pool, scoring and lanes) with 60% of the sequences at full depth, 35% on the
# shipped routes, 5% layer dropout and 480 steps; runs/v6/dropout-sSEED, aliases _v6-dropout-sSEED.
# usage: v6/dropout.sh A|B   (lane A trains seed 0, lane B seed 1). Resumable: run again.
[ $# -eq 1 ] || { echo "usage: $0 A|B" >&2; exit 2; }
exec bash "$(dirname "$0")/../v5/dropout.sh" "$1" v6 0.6 0.35 480
