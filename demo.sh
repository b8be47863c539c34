#!/usr/bin/env bash
# The method working on a laptop, in about 4 minutes on 2 CPU cores once the downloads are done: SmolLM2-135M-Instruct,
# a 135M-parameter chat model (from the Hugging Face hub on first use, about 270 MB), answers SST-2's sentiment question with the
# untuned origin_0 prompt, then with a prompt tuned from it on 64 training sentences; both are scored on SST-2's
# 872 test sentences, and the two accuracies are printed side by side.
#
#   ./demo.sh                          # downloads the model and SST-2 (GLUE), then untuned vs tuned
#   ./demo.sh --samples ../shared/data # SST-2 prepared from the dataset samples instead of downloaded
#
# Options: --model NAME (default HuggingFaceTB/SmolLM2-135M-Instruct: any decoder-only chat model tpv knows),
# --samples DIR, --out DIR (default runs/demo), --data-dir DIR (default OUT/data: the demo's own, so that the sample
# never replaces the full SST-2 of tpv's data cache). Paths are relative to where you run it. It redoes both runs.
# The tuned run: 64 stratified shots, 50 steps of batch 4, lr 0.03 (the paper's 0.3 is too large for this small
# model's embeddings: docs/llama.md), --loss answer, label words ranked (--scoring rank).
set -euo pipefail
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct OUT=runs/demo DATA_DIR="" SAMPLES=""
die() { echo "demo.sh: $1" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --model|--samples|--out|--data-dir) [ $# -ge 2 ] || die "$1 needs a value"
      case $1 in --model) MODEL=$2 ;; --samples) SAMPLES=$2 ;; --out) OUT=$2 ;; --data-dir) DATA_DIR=$2 ;; esac
      shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print substr($0, 3)}' "$0"; exit 0 ;;
    *) die "unknown option $1 (./demo.sh --help lists them)" ;;
  esac
done
[ -z "$SAMPLES" ] || [ -d "$SAMPLES/sst2" ] || die "$SAMPLES/sst2: no such folder; give --samples the folder that holds sst2/"
absolute() { case $1 in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
OUT=$(absolute "$OUT") DATA_DIR=$(absolute "${DATA_DIR:-$OUT/data}")
[ -z "$SAMPLES" ] || SAMPLES=$(absolute "$SAMPLES")
[ ! -e "$MODEL" ] || MODEL=$(absolute "$MODEL")  # a folder here; else a hub name
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")"  # tpv.py's folder
where=(--model "$MODEL" --data-dir "$DATA_DIR" --out "$OUT")
if [ -n "$SAMPLES" ]; then
  "$PYTHON" tpv.py prepare sst2 --from "$SAMPLES/sst2" --data-dir "$DATA_DIR" --model "$MODEL" --force
else
  "$PYTHON" tpv.py download-data sst2 --data-dir "$DATA_DIR" --model "$MODEL"
fi
start=$SECONDS
"$PYTHON" tpv.py train sst2 "${where[@]}" --shots 0 --scoring rank --name untuned --force
"$PYTHON" tpv.py train sst2 "${where[@]}" --shots 64 --batch-size 4 --max-steps 50 --lr 0.03 --warmup 2 \
  --eval-every 25 --loss answer --scoring rank --name tuned --force
"$PYTHON" - "$OUT" "$MODEL" "$((SECONDS - start))" <<'EOF'
import json, os, sys
import runs
out, model, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
folder = runs.run_folder(out, model, 0)
test = {name: json.load(open(os.path.join(folder, name + ".json")))["test"]["sst2"] for name in ("untuned", "tuned")}
print(f"\nSST-2 test accuracy of {model}'s origin_0 prompt, {test['tuned']['examples']} sentences "
      f"({seconds // 60} min {seconds % 60} s for both runs):")
print(f"  untuned  {100 * test['untuned']['accuracy']:5.1f} %")
print(f"  tuned    {100 * test['tuned']['accuracy']:5.1f} %   (64 shots, 50 steps)")
EOF
